"""``textbrewer.distiller_general``: ``GeneralDistiller`` (BasicDistiller plus intermediate matches)."""
from __future__ import annotations

from ... import distillers
from .distiller_utils import TextBrewerBehaviour

__all__ = ["GeneralDistiller"]


class GeneralDistiller(TextBrewerBehaviour, distillers.GeneralDistiller):
    """brewkit's :class:`~brewkit.GeneralDistiller` with TextBrewer's leniency (see
    :class:`~brewkit.compat.textbrewer.distiller_utils.TextBrewerBehaviour`).

    ``GeneralDistiller(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S,
    custom_matches=None)``; ``custom_matches`` never worked in TextBrewer and is refused with a ConfigError.
    """
