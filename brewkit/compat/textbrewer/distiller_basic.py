"""``textbrewer.distiller_basic``: ``BasicDistiller`` (one teacher: KD on logits plus the hard-label losses)."""
from __future__ import annotations

from ... import distillers
from .distiller_utils import TextBrewerBehaviour

__all__ = ["BasicDistiller"]


class BasicDistiller(TextBrewerBehaviour, distillers.BasicDistiller):
    """brewkit's :class:`~brewkit.BasicDistiller` with TextBrewer's leniency (see
    :class:`~brewkit.compat.textbrewer.distiller_utils.TextBrewerBehaviour`).

    ``BasicDistiller(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)``; subclass it and
    override ``train_on_batch(batch, args)`` / ``compute_loss(results_S, results_T)`` as in TextBrewer.
    """
