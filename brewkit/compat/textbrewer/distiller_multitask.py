"""``textbrewer.distiller_multitask``: ``MultiTaskDistiller`` (a teacher per task, one student, by steps)."""
from __future__ import annotations

from ... import distillers
from .distiller_utils import TextBrewerBehaviour

__all__ = ["MultiTaskDistiller"]


class MultiTaskDistiller(TextBrewerBehaviour, distillers.MultiTaskDistiller):
    """brewkit's :class:`~brewkit.MultiTaskDistiller` with TextBrewer's leniency (see
    :class:`~brewkit.compat.textbrewer.distiller_utils.TextBrewerBehaviour`).

    ``MultiTaskDistiller(train_config, distill_config, model_T={task: m}, model_S, adaptor_T={task: fn},
    adaptor_S={task: fn})``; ``train(optimizer, dataloaders={task: loader}, num_steps, ..., tau=1)``.
    """
