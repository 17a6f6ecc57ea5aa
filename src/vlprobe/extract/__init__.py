"""Feature extraction: run a model once, cache every site's activations on disk."""

from __future__ import annotations

from vlprobe.extract.attention import attention_output, parse_output, split_raw_tags
from vlprobe.extract.cache_admin import EntryInfo
from vlprobe.extract.extractor import ExtractionResult, extract_features, feature_keys
from vlprobe.extract.keys import (
    STORE_FORMAT_VERSION,
    activation_key,
    canonical_json,
    hash_key,
    make_key_dict,
    software_versions,
    stimuli_identity,
)
from vlprobe.extract.ragged import RaggedArray
from vlprobe.extract.store import ActivationStore
from vlprobe.pooling import POOLING_METHODS, pool, pool_numpy

__all__ = [
    "POOLING_METHODS",
    "STORE_FORMAT_VERSION",
    "ActivationStore",
    "EntryInfo",
    "ExtractionResult",
    "RaggedArray",
    "activation_key",
    "attention_output",
    "canonical_json",
    "extract_features",
    "feature_keys",
    "hash_key",
    "make_key_dict",
    "parse_output",
    "pool",
    "pool_numpy",
    "software_versions",
    "split_raw_tags",
    "stimuli_identity",
]
