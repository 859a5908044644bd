"""Batch samplers that are seeded, resumable mid-epoch, and split the work evenly between DDP ranks.

Both samplers build one epoch the same way:

1. an order of the example indices (a permutation drawn from ``seed + epoch``, or 0..N-1 unshuffled);
   :class:`LengthGroupedBatchSampler` then sorts each "mega-batch" of that order by length;
2. the order is cut into *steps* of ``batch_size * num_replicas`` examples; the order of the steps is
   shuffled again, so that long and short steps alternate at random;
3. rank ``r`` takes every ``num_replicas``-th example of each step, so ranks see similar lengths at the
   same step and every rank gets exactly ``len(sampler)`` batches.

With ``drop_last=False`` every example appears exactly once per epoch over all ranks: the last, partial
step is shared out as evenly as possible (batch sizes differ by at most one) and, if it holds fewer
examples than there are ranks, it borrows from the step before it. Only when the whole data set has
fewer examples than ranks are examples repeated. With ``drop_last=True`` the partial step is dropped and
every batch is full.

Everything depends on (seed, epoch) and nothing else, so resuming needs no data: ``load_state_dict``
(or ``set_epoch(epoch, start_batch=k)``) makes the next iteration skip the first ``k`` batches.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from ..errors import CheckpointError, ConfigError


class RandomBatchSampler:
    """Seeded random batches (sequential ones with ``shuffle=False``), DDP-aware and resumable.

    Use it as a DataLoader's ``batch_sampler``; call ``set_epoch(epoch)`` before each epoch.
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        for name, value, minimum in (("num_examples", num_examples, 0), ("batch_size", batch_size, 1),
                                     ("seed", seed, 0), ("num_replicas", num_replicas, 1), ("rank", rank, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", name)
        if rank >= num_replicas:
            raise ConfigError(f"must be < num_replicas ({num_replicas}), got {rank}", "rank")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0  # batches to skip in the next iteration (resume); reset once used
        self._iter_start = 0  # where the running iteration started ...
        self._yielded = 0  # ... and how many batches it has handed out since

    # -- the epoch's plan -------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def _order(self, gen: torch.Generator) -> torch.Tensor:
        """The example indices in the order they are cut into steps."""
        n = self.num_examples
        return torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)

    def _steps(self) -> list[list[int]]:
        """The epoch as a list of steps; a step holds the examples of all ranks for one batch each."""
        gen = self._generator()
        order = self._order(gen).tolist()
        per_step = self.batch_size * self.num_replicas
        steps = [order[i:i + per_step] for i in range(0, len(order), per_step)]
        if steps and len(steps[-1]) < per_step:
            if self.drop_last:
                steps.pop()
            elif len(steps[-1]) < self.num_replicas:
                # Every rank needs at least one example: borrow from the step before, else repeat.
                need = self.num_replicas - len(steps[-1])
                if len(steps) > 1:
                    steps[-1] = steps[-2][-need:] + steps[-1]
                    del steps[-2][-need:]
                else:
                    steps[-1] = [order[i % len(order)] for i in range(self.num_replicas)]
        if self.shuffle and len(steps) > 1:
            steps = [steps[i] for i in torch.randperm(len(steps), generator=gen).tolist()]
        return steps

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch, from the first (ignores ``start_batch``)."""
        return [step[self.rank::self.num_replicas] for step in self._steps()]

    # -- sampler protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch on each rank (a resumed iteration yields ``len - start_batch`` of them)."""
        per_step = self.batch_size * self.num_replicas
        if self.drop_last:
            return self.num_examples // per_step
        return -(-self.num_examples // per_step)

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start_batch = self.start_batch, 0
        self._iter_start, self._yielded = start, 0
        for batch in self.batches()[start:]:
            self._yielded += 1
            yield batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its order depends on ``seed + epoch``); skip ``start_batch`` batches of it."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"must be an integer >= 0, got {epoch!r}", "epoch")
        if not isinstance(start_batch, int) or start_batch < 0:
            raise ConfigError(f"must be an integer >= 0, got {start_batch!r}", "start_batch")
        self.epoch = epoch
        self.start_batch = start_batch
        self._iter_start, self._yielded = start_batch, 0

    # -- resume -----------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "num_replicas": self.num_replicas}

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where this epoch stands: ``{"epoch", "start_batch", ...}`` (plain ints and bools).

        ``batches_done`` is the number of this epoch's batches the training loop has consumed. Leave it
        out to use the number this sampler has handed out, which is right for ``num_workers=0``; worker
        processes fetch batches ahead of use, so with workers pass the loop's own count.
        """
        done = self._iter_start + self._yielded if batches_done is None else batches_done
        return {"epoch": self.epoch, "start_batch": int(done), **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields the rest of that epoch's batches."""
        for key, value in self._identity().items():
            if key in state and state[key] != value:
                raise CheckpointError(f"cannot resume the data order: the checkpoint has {key}={state[key]!r}, "
                                      f"this run {key}={value!r}")
        self.set_epoch(int(state["epoch"]), int(state.get("start_batch", 0)))


class LengthGroupedBatchSampler(RandomBatchSampler):
    """Random batches of examples of similar length (Hugging Face's ``group_by_length``).

    Each epoch draws a permutation from ``seed + epoch``, cuts it into mega-batches of
    ``mega_batch_mult * batch_size * num_replicas`` examples, sorts each mega-batch by length (longest
    first), cuts steps and shuffles their order. Padding shrinks, yet which examples share a batch and
    when they come still changes from epoch to epoch. With ``shuffle=False`` (evaluation) the whole data
    set is sorted by length, longest first. ``mega_batch_mult`` defaults to Hugging Face's choice,
    ``min(N // (4 * batch_size * num_replicas), 50)`` and at least 1.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0, mega_batch_mult: int | None = None):
        lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        super().__init__(len(lengths), batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                         num_replicas=num_replicas, rank=rank)
        if mega_batch_mult is None:
            mega_batch_mult = max(min(len(lengths) // (4 * batch_size * num_replicas), 50), 1)
        if not isinstance(mega_batch_mult, int) or isinstance(mega_batch_mult, bool) or mega_batch_mult < 1:
            raise ConfigError(f"must be an integer >= 1, got {mega_batch_mult!r}", "mega_batch_mult")
        self.lengths = lengths
        self.mega_batch_mult = mega_batch_mult

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "mega_batch_mult": self.mega_batch_mult}

    def _order(self, gen: torch.Generator) -> torch.Tensor:
        if self.num_examples == 0 or not self.shuffle:
            return torch.argsort(self.lengths, descending=True, stable=True)
        perm = torch.randperm(self.num_examples, generator=gen)
        mega = self.mega_batch_mult * self.batch_size * self.num_replicas
        # One stable sort by (mega-batch number, length descending) sorts every mega-batch at once.
        lengths = self.lengths[perm]
        mega_id = torch.arange(self.num_examples) // mega
        key = mega_id * (int(lengths.max()) + 1) + (lengths.max() - lengths)
        return perm[torch.argsort(key, stable=True)]
