"""Helpers the distillers share: batches, devices, logits selection, RNG state, resumable data cursors."""
from __future__ import annotations

import inspect
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import AdaptorError


# -- batches --------------------------------------------------------------------------------------------
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
    if hasattr(batch, "task") and hasattr(batch, "batch"):  # a MultiTask micro-batch
        batch = batch.batch
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


#: What a loss's mean may divide by (see ``unit`` in brewkit.presets), in the order of :func:`unit_counts`.
UNITS = ("rows", "tokens", "token_pairs", "positions", "position_pairs")
MASK_KEYS = ("attention_mask", "inputs_mask", "mask")


def find_mask(batch: Any) -> torch.Tensor | None:
    """The batch's ``(B, L)`` padding mask (``attention_mask``, ``inputs_mask`` or ``mask``), if it has one."""
    if isinstance(batch, Mapping):
        for key in MASK_KEYS:
            m = batch.get(key)
            if isinstance(m, torch.Tensor) and m.dim() == 2:
                return m
    return None


def unit_counts(batch: Any) -> torch.Tensor:
    """``[rows, tokens, token_pairs, positions, position_pairs]`` of a batch (float64), from its mask:
    rows = B, tokens = sum n_b, token_pairs = sum n_b^2, positions = B L, position_pairs = B L^2.
    Without a mask every unit counts rows (each example weighs the same)."""
    m = find_mask(batch)
    if m is None:
        n = float(batch_size_of(batch))
        return torch.full((len(UNITS),), n, dtype=torch.float64)
    n = m.to(torch.float64).sum(-1)
    b, length = m.shape
    return torch.stack([torch.tensor(float(b), dtype=torch.float64, device=m.device), n.sum(), (n * n).sum(),
                        torch.tensor(float(b * length), dtype=torch.float64, device=m.device),
                        torch.tensor(float(b * length * length), dtype=torch.float64, device=m.device)])


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


# -- logits ---------------------------------------------------------------------------------------------
def select_logits_with_mask(logits_list: list[torch.Tensor], masks_list: list[torch.Tensor]) -> list[torch.Tensor]:
    """Keep the positions where the mask is non-zero: each 3-D ``(B, L, C)`` tensor becomes ``(M, C)``.

    One mask may serve several logits tensors (TextBrewer crashed on the second one).
    """
    if len(masks_list) not in (1, len(logits_list)):
        raise AdaptorError(f"got {len(logits_list)} logits tensors but {len(masks_list)} logits_mask tensors; "
                           "give one mask per logits tensor or a single mask for all")
    out = []
    for i, logits in enumerate(logits_list):
        mask = masks_list[0] if len(masks_list) == 1 else masks_list[i]
        if logits.dim() == 3:
            out.append(logits[mask.to(logits.device).bool()])
        else:
            out.append(logits)
    return out


def probability_shift_(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Swap, in place, each row's arg-max logit with the gold label's logit (TextBrewer's probability shift).

    ``logits`` is ``(N, C)`` with labels ``(N,)``, or ``(B, L, C)`` with labels ``(B, L)`` where negative
    labels (e.g. -100) leave their row unchanged.
    """
    if logits.dim() not in (2, 3):
        raise AdaptorError(f"probability_shift needs 2-D or 3-D logits, got shape {tuple(logits.shape)}")
    rows = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1).to(rows.device)
    if labels.shape[0] != rows.shape[0]:
        raise AdaptorError(f"probability_shift: {labels.shape[0]} labels for {rows.shape[0]} logits rows "
                           "(with logits_mask, return labels for the selected positions only)")
    argmax = rows.argmax(dim=-1)
    labels = torch.where(labels < 0, argmax, labels)
    idx = torch.arange(rows.shape[0], device=rows.device)
    gold = rows[idx, labels].clone()
    top = rows[idx, argmax].clone()
    rows[idx, labels] = top
    rows[idx, argmax] = gold
    return logits


# -- randomness -----------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every RNG the loop touches, as tensors and plain data (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- resumable iteration --------------------------------------------------------------------------------
def _set_epoch(loader: Any, epoch: int) -> None:
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


_END = object()  # a pass that has no more batches


class LoaderCursor:
    """Iterates a data loader pass after pass and can restart exactly at a saved position.

    At the start of each pass it calls ``set_epoch(pass)`` on the sampler / batch sampler (when they have
    one) and remembers the torch RNG state, from which a shuffling ``DataLoader`` draws its order. Restoring
    that state and skipping ``index`` batches reproduces the same remaining batches.
    """

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.pass_index = -1
        self.index = 0
        self.rng_at_start: torch.Tensor | None = None
        self._it = None
        self._peeked: Any = None

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def start_pass(self, pass_index: int, skip: int = 0, rng_state: torch.Tensor | None = None) -> None:
        self.pass_index = pass_index
        _set_epoch(self.loader, pass_index)
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        self.rng_at_start = torch.get_rng_state()
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        fast = skip and "start_batch" in inspect.signature(getattr(batch_sampler, "set_epoch", len)).parameters \
            if batch_sampler is not None and hasattr(batch_sampler, "set_epoch") else False
        if fast:  # brewkit's samplers jump straight to a batch; other loaders replay the skipped ones
            batch_sampler.set_epoch(pass_index, start_batch=skip)
        self._it = iter(self.loader)
        self.index = skip if fast else 0
        while self.index < skip:
            next(self._it)
            self.index += 1
        # Fetch the pass's next batch now: a shuffling sampler draws its order from the global RNG on its first
        # batch, and a replay from rng_at_start must see that draw at the same point (a multi-task run starts a
        # task's pass long before it takes the task's first batch).
        self._peeked = next(self._it, _END)

    def next(self) -> Any:
        """The next batch of the current pass; raises StopIteration at its end."""
        batch, self._peeked = (self._peeked, None) if self._peeked is not None else (next(self._it), None)
        if batch is _END:
            raise StopIteration
        self.index += 1
        return batch

    def next_cycling(self) -> Any:
        """The next batch, starting a new pass when the current one ends (step mode)."""
        if self._it is None:
            self.start_pass(0)
        try:
            return self.next()
        except StopIteration:
            self.start_pass(self.pass_index + 1)
            try:
                return self.next()
            except StopIteration:
                raise AdaptorError("the dataloader yielded no batches") from None

    def state_dict(self) -> dict:
        return {"pass_index": self.pass_index, "index": self.index, "rng_at_start": self.rng_at_start}

    def load_state_dict(self, state: dict) -> None:
        self.start_pass(state["pass_index"], skip=state["index"], rng_state=state["rng_at_start"])


class CachedCursor(LoaderCursor):
    """A cursor over a list of cached items, reshuffled each pass from ``(seed, pass)`` (no global RNG)."""

    def __init__(self, items: list, seed: int, shuffle: bool = True):
        super().__init__(items)
        self.items, self.seed, self.shuffle = items, seed, shuffle

    def start_pass(self, pass_index: int, skip: int = 0, rng_state: torch.Tensor | None = None) -> None:
        self.pass_index = pass_index
        self.rng_at_start = None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + pass_index)
            order = torch.randperm(len(self.items), generator=g).tolist()
        else:
            order = list(range(len(self.items)))
        self._it = iter([self.items[i] for i in order[skip:]])
        self._peeked = None
        self.index = skip
