"""Resumable iteration over data loaders: a cursor that can restart exactly at a saved position."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import AdaptorError


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


class RecordedCursor(LoaderCursor):
    """A cursor over recorded batches (``is_caching_logits``: each batch with its teacher results), reshuffled
    each pass from ``(seed, pass)`` (no global RNG)."""

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


class MappedLoader:
    """A dataloader whose batches go through ``fn`` (``batch_postprocessor``); sampler attributes pass through."""

    def __init__(self, loader: Iterable, fn: Callable):
        self.loader, self.fn = loader, fn
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return (self.fn(b) for b in self.loader)


def loader_shuffles(loader: Any) -> bool:
    """Whether a loader draws a new order each pass (then recorded teacher batches are reshuffled each pass too)."""
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    return isinstance(sampler, torch.utils.data.RandomSampler) or bool(getattr(sampler, "shuffle", False)) \
        or bool(getattr(batch_sampler, "shuffle", False))
