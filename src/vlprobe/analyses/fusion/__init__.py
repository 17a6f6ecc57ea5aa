"""Fusion-transformer and attention analyses (catalogue F1-F7 and V7)."""
