"""``build_dataloaders``: from a :class:`DataConfig` and tokenizer(s) to train / eval DataLoaders.

Loader defaults. Measured on the demo data (10.8k pre-tokenised reviews, batches of 32, 2 CPU cores):
fetching a batch from the Arrow table and padding it costs about 1-2 ms in the main process; with 1 or
2 worker processes the loop got a batch every 6-9 ms, because shipping batches between processes and
the workers' competition for the cores cost more than the work they take over. So
``num_workers='auto'`` is 0 on CPU. On CUDA it is 2 (capped at half the cores): there the main thread
is better spent queueing kernels while workers pad the next batches (not measured here: no GPU).
``pin_memory='auto'`` pins only for CUDA devices. Both can be set explicitly in the YAML.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from .collate import PadCollator, PairCollator, SelectCollator
from .config import DataConfig
from .loading import load_splits
from .sampler import LengthGroupedBatchSampler, RandomBatchSampler
from .tokenization import check_cache_dir, tokenize_dataset, tokenizer_fingerprint

_ROW_COLUMNS = ("input_ids", "token_type_ids", "labels", "idx")


class TokenizedDataset(Dataset):
    """A map-style dataset over tokenised rows; with a student split, rows are ``{'teacher', 'student'}``.

    ``__getitems__`` (which the DataLoader calls with a whole batch of indices) takes the rows from the
    Arrow table in one go and hands out token sequences as numpy views of it: about 0.3 ms for 32
    rows, against ~1 ms through Python lists.
    """

    def __init__(self, teacher, student=None, num_labels: int | None = None):
        self.teacher = self._columns(teacher)
        self.student = None
        if student is not None:
            if len(student) != len(teacher):
                raise ValueError(f"teacher and student splits differ in size ({len(teacher)} vs {len(student)})")
            self.student = self._columns(student)
        self.num_labels = num_labels

    @staticmethod
    def _columns(ds):
        return ds.select_columns([c for c in _ROW_COLUMNS if c in ds.column_names]).with_format("arrow")

    def __len__(self) -> int:
        return len(self.teacher)

    @staticmethod
    def _rows(table, indices: list[int]) -> list[dict[str, Any]]:
        batch = table[indices]  # a pyarrow.Table
        columns = {}
        for name in batch.column_names:
            col = batch.column(name).combine_chunks()
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                values, offsets = col.values.to_numpy(), col.offsets.to_numpy()
                columns[name] = [values[offsets[i]:offsets[i + 1]] for i in range(len(col))]
            else:
                columns[name] = col.to_pylist()
        return [dict(zip(columns, row)) for row in zip(*columns.values())]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        rows = self._rows(self.teacher, indices)
        if self.student is None:
            return rows
        return [{"teacher": t, "student": s} for t, s in zip(rows, self._rows(self.student, indices))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


def resolve_loader_settings(cfg: DataConfig, device: str | torch.device) -> dict[str, Any]:
    """``num_workers`` / ``pin_memory`` / ``persistent_workers`` for ``device``, honouring explicit values."""
    on_cuda = str(device).startswith("cuda")
    workers = cfg.num_workers
    if workers == "auto":
        workers = min(2, max((os.cpu_count() or 1) // 2, 1)) if on_cuda else 0
    pin = on_cuda if cfg.pin_memory == "auto" else bool(cfg.pin_memory)
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}


def build_dataloaders(cfg: DataConfig, tokenizer_T, tokenizer_S=None, seed: int = 0, num_replicas: int = 1,
                      rank: int = 0, device: str | torch.device = "cpu", base_dir: str | None = None,
                      augment: Callable[[dict], dict] | None = None, task=None,
                      model_inputs: tuple[frozenset[str] | None, frozenset[str] | None] | None = None):
    """``(train_loader, eval_loader)``; ``eval_loader`` is None when the config has no eval set.

    Batches are dicts of tensors (see :class:`PadCollator`). When ``tokenizer_S`` is given and tokenizes
    differently from ``tokenizer_T`` (different fingerprint), batches are ``{'teacher': {...},
    'student': {...}}``, each padded on its own. Each loader's ``batch_sampler`` is a resumable
    :class:`RandomBatchSampler` (or :class:`LengthGroupedBatchSampler`); call
    ``loader.batch_sampler.set_epoch(epoch)`` every epoch. Under DDP (``num_replicas`` > 1) both loaders
    are sharded: every rank gets the same number of batches and, together, every example once, so
    evaluation results must be gathered across ranks (by ``idx``). ``augment`` grows the training rows (see
    :func:`load_splits`); the eval loader never sees altered rows.

    ``task`` (a :class:`brewkit.tasks.Task`; None: sequence classification) reads and encodes the rows its way
    and may add ``position_ids``. ``model_inputs`` = ``(teacher_keys, student_keys)``: the batch keys each
    model takes (:meth:`brewkit.tasks.Task.model_inputs`); batches then carry only those, as ``{'teacher',
    'student'}`` parts when the two differ (:class:`SelectCollator`).
    """
    check_cache_dir(cfg)  # a cache path that is a file or read-only: one line now, not a datasets traceback
    train, evaluation = load_splits(cfg, base_dir, augment, rows=getattr(task, "rows", "text"))
    paired = tokenizer_S is not None and tokenizer_fingerprint(tokenizer_S) != tokenizer_fingerprint(tokenizer_T)
    pad = {"padding": cfg.padding, "max_length": cfg.max_length, "pad_to_multiple_of": cfg.pad_to_multiple_of,
           "padding_side": cfg.padding_side, "position_ids": bool(getattr(task, "position_ids", False))}
    collate = PadCollator.for_tokenizer(tokenizer_T, **pad)
    if paired:
        collate = PairCollator(collate, PadCollator.for_tokenizer(tokenizer_S, **pad))
    if model_inputs is not None:
        collate = SelectCollator(collate, *model_inputs)
    num_labels = len(cfg.labels) if cfg.labels is not None else None
    if num_labels is None and "label" in train.column_names and getattr(task, "rows", "text") == "text":
        num_labels = max(train["label"][:]) + 1
    settings = resolve_loader_settings(cfg, device)

    def loader(split, batch_size: int, shuffle: bool) -> DataLoader:
        tok_T = tokenize_dataset(split, tokenizer_T, cfg, task)
        tok_S = tokenize_dataset(split, tokenizer_S, cfg, task) if paired else None
        data = TokenizedDataset(tok_T, tok_S, num_labels)
        common = {"seed": seed, "shuffle": shuffle, "num_replicas": num_replicas, "rank": rank,
                  "drop_last": cfg.drop_last and shuffle}
        if cfg.group_by_length:
            lengths = tok_T["length"][:]
            if tok_S is not None:
                lengths = [max(a, b) for a, b in zip(lengths, tok_S["length"][:])]
            sampler = LengthGroupedBatchSampler(lengths, batch_size, **common)
        else:
            sampler = RandomBatchSampler(len(data), batch_size, **common)
        return DataLoader(data, batch_sampler=sampler, collate_fn=collate, **settings)

    train_loader = loader(train, cfg.batch_size, cfg.shuffle)
    eval_loader = None
    if evaluation is not None:
        eval_loader = loader(evaluation, cfg.eval_batch_size or cfg.batch_size, False)
    return train_loader, eval_loader
