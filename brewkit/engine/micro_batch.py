"""``MicroBatch``: one micro-batch on its way through the step, with what the objective needs to know about it.

The loop builds one per micro-batch and passes it explicitly to ``train_on_batch`` / ``compute_loss``; nothing
about the current batch is kept on the distiller.

Effective-batch normalisation. A loss term is a mean over some denominator of its micro-batch (rows, tokens,
token pairs, ... see :data:`~brewkit.engine.batches.DENOMINATORS`). With ``k`` micro-batches per step on ``W``
processes, the loop divides each micro-batch loss by ``k`` and DDP averages over ``W``. To make each term the mean
over the whole effective batch instead, micro-batch ``j`` scales a term whose denominator is ``u`` by
``k * W * count_j(u) / sum_i count_i(u)`` (:func:`normalisation_factors`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .batches import DENOMINATORS, denominator_counts, split_batch


@dataclass
class MicroBatch:
    batch: Any  # on the training device, without the ``idx`` entry
    example_index: torch.Tensor | None = None  # [B] example indices (the per-example teacher store's keys)
    teacher_keys: Any = None  # the teacher part of the batch on the CPU (the store checks its tokens)
    factors: torch.Tensor | None = None  # per denominator, in DENOMINATORS order; None: plain means
    task: str | None = None  # MultiTaskDistiller: the task the batch was drawn from

    def scale(self, denominator: str) -> torch.Tensor | float:
        """The factor for a term whose mean divides by ``denominator`` (1 when nothing is rescaled)."""
        return 1.0 if self.factors is None else self.factors[DENOMINATORS.index(denominator)]


def scale_of(micro: MicroBatch | None, denominator: str) -> torch.Tensor | float:
    """``micro.scale(denominator)``, or 1 outside the loop (a direct ``compute_loss`` call)."""
    return 1.0 if micro is None else micro.scale(denominator)


def normalisation_factors(student_parts: list[Any], device: torch.device, world_size: int,
                          all_reduce: Any = None) -> list[torch.Tensor]:
    """Per micro-batch, per denominator: ``k * W * count_j / total`` (see the module docstring). ``all_reduce``
    sums a tensor over the processes (needed when ``world_size > 1``)."""
    counts = [denominator_counts(split_batch(b)[1]).to(device) for b in student_parts]
    total = torch.stack(counts).sum(0)
    if world_size > 1:
        all_reduce(total)
    factor = len(counts) * world_size
    return [(c * factor / total.clamp_min(1)).float() for c in counts]
