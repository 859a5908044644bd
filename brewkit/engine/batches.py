"""Batch structure: moving batches to a device, the teacher / student parts, example indices, padding masks and
the counts that loss terms are normalised by. Nothing here syncs with the device."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def move_to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Recursively move tensors to ``device``: Mappings become dicts, lists/tuples become tuples (as in
    TextBrewer); subclasses of dict and list (brewkit's markers such as ``AttentionProbs``) keep their type."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, Mapping):
        moved = {k: move_to_device(v, device, non_blocking) for k, v in x.items()}
        return type(x)(moved) if isinstance(x, dict) and type(x) is not dict else moved
    if isinstance(x, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in x]
        return type(x)(moved) if isinstance(x, list) and type(x) is not list else tuple(moved)
    return x


def split_example_index(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(batch without 'idx', idx)``. ``idx`` (``[B]`` example indices, added by brewkit's loaders) is taken from
    a mapping batch, or from its ``'student'`` / ``'teacher'`` parts; models never receive it."""
    if not isinstance(batch, Mapping):
        return batch, None
    if "teacher" in batch and "student" in batch:
        parts = {k: split_example_index(v) if k in ("teacher", "student") else (v, None) for k, v in batch.items()}
        idx = parts["student"][1] if parts["student"][1] is not None else parts["teacher"][1]
        return {k: v for k, (v, _) in parts.items()}, idx
    return {k: v for k, v in batch.items() if k != "idx"}, batch.get("idx")


def split_batch(batch: Any) -> tuple[Any, Any, Any]:
    """``(teacher_part, student_part, teacher_cache)``; the parts are the same object unless the batch is a
    Mapping with ``'teacher'`` and ``'student'`` keys (then ``'teacher_cache'``, if present, replaces the
    teacher's forward pass)."""
    if isinstance(batch, Mapping) and "teacher" in batch and "student" in batch:
        return batch["teacher"], batch["student"], batch.get("teacher_cache")
    return batch, batch, None


def call_model(model: torch.nn.Module, batch: Any, kwargs: dict) -> Any:
    """``model(**batch)`` for a Mapping, ``model(*batch)`` for a list/tuple, ``model(batch)`` otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch, **kwargs)
    if isinstance(batch, (list, tuple)):
        return model(*batch, **kwargs)
    return model(batch, **kwargs)


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the first tensor found in ``batch`` (0 when there is none). No device sync."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = batch_size_of(v)
            if n:
                return n
    return 0


#: What a loss term's mean may divide by (its normalisation denominator; see ``denominator`` in
#: brewkit.presets), in the order of :func:`denominator_counts`. ``labelled_tokens`` and ``next_tokens`` count
#: the targets of token-level tasks from the batch's ``(B, L)`` ``labels`` (-100: not a target; see brewkit.tasks).
DENOMINATORS = ("rows", "tokens", "token_pairs", "positions", "position_pairs", "labelled_tokens", "next_tokens")
MASK_KEYS = ("attention_mask", "inputs_mask", "mask")
IGNORE_INDEX = -100


def find_mask(batch: Any) -> torch.Tensor | None:
    """The batch's ``(B, L)`` padding mask (``attention_mask``, ``inputs_mask`` or ``mask``), if it has one."""
    if isinstance(batch, Mapping):
        for key in MASK_KEYS:
            m = batch.get(key)
            if isinstance(m, torch.Tensor) and m.dim() == 2:
                return m
    return None


def denominator_counts(batch: Any) -> torch.Tensor:
    """The :data:`DENOMINATORS` of a batch (float64), from its mask: rows = B, tokens = sum n_b, token_pairs =
    sum n_b^2, positions = B L, position_pairs = B L^2; and from its ``(B, L)`` ``labels``: labelled_tokens =
    #(labels != -100) (token classification's targets), next_tokens = #(labels[:, 1:] != -100) (the positions
    whose next token is a causal LM's target). Without such labels both count tokens.
    Without a mask every denominator counts rows (each example weighs the same)."""
    m = find_mask(batch)
    if m is None:
        n = float(batch_size_of(batch))
        return torch.full((len(DENOMINATORS),), n, dtype=torch.float64)
    n = m.to(torch.float64).sum(-1)
    b, length = m.shape
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if isinstance(labels, torch.Tensor) and labels.shape == m.shape:
        targets = labels != IGNORE_INDEX
        labelled, following = targets.sum().to(torch.float64), targets[:, 1:].sum().to(torch.float64)
    else:
        labelled = following = n.sum()
    return torch.stack([torch.tensor(float(b), dtype=torch.float64, device=m.device), n.sum(), (n * n).sum(),
                        torch.tensor(float(b * length), dtype=torch.float64, device=m.device),
                        torch.tensor(float(b * length * length), dtype=torch.float64, device=m.device),
                        labelled, following])


def detach_to_cpu(x: Any) -> Any:
    """A detached CPU copy of every tensor in ``x`` (containers keep their types where they can)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu")
    if isinstance(x, Mapping):
        moved = {k: detach_to_cpu(v) for k, v in x.items()}
        return type(x)(moved) if isinstance(x, dict) else moved
    if isinstance(x, (list, tuple)):
        vals = [detach_to_cpu(v) for v in x]
        return type(x)(vals) if isinstance(x, list) else tuple(vals)
    return x
