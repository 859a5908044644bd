"""The data side of a run: read local files, split, tokenise once (cached), batch with dynamic padding.

``DataConfig`` is the ``data:`` section of a YAML run; ``build_dataloaders`` turns it and the teacher's
(and optionally the student's) tokenizer into train / eval DataLoaders. The pieces are public too:
``load_splits`` -> ``tokenize_dataset`` -> ``TokenizedDataset`` + a batch sampler + a collator.
"""
from .augment import AugmentConfig, NeighbourAugmenter, augmenter_for
from .collate import PadCollator, PairCollator, SelectCollator
from .config import FORMATS, DataConfig, SplitRule, infer_format, resolve_data_path
from .loaders import TokenizedDataset, build_dataloaders, resolve_loader_settings
from .loading import load_splits, read_table, split_by_group
from .sampler import LengthGroupedBatchSampler, RandomBatchSampler
from .tokenization import CacheDirError, check_cache_dir, default_cache_dir, tokenize_dataset, tokenizer_fingerprint

__all__ = ["DataConfig", "SplitRule", "AugmentConfig", "NeighbourAugmenter", "augmenter_for", "FORMATS",
           "infer_format", "resolve_data_path", "load_splits", "read_table", "split_by_group", "tokenize_dataset",
           "tokenizer_fingerprint", "default_cache_dir", "check_cache_dir", "CacheDirError", "PadCollator",
           "PairCollator", "SelectCollator", "LengthGroupedBatchSampler", "RandomBatchSampler", "TokenizedDataset",
           "build_dataloaders", "resolve_loader_settings"]
