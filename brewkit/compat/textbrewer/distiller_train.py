"""``textbrewer.distiller_train``: ``BasicTrainer`` (supervised training of one model, no teacher)."""
from __future__ import annotations

from ... import distillers
from .distiller_utils import TextBrewerBehaviour

__all__ = ["BasicTrainer"]


class BasicTrainer(TextBrewerBehaviour, distillers.BasicTrainer):
    """brewkit's :class:`~brewkit.BasicTrainer` with TextBrewer's leniency (see
    :class:`~brewkit.compat.textbrewer.distiller_utils.TextBrewerBehaviour`).

    ``BasicTrainer(train_config, model, adaptor)``: the adaptor returns ``losses``; their sum is the objective.
    """
