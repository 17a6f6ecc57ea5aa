"""Metrics shared by analyses and training (retrieval, contrastive losses)."""
