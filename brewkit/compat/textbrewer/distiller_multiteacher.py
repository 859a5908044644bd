"""``textbrewer.distiller_multiteacher``: ``MultiTeacherDistiller`` (same-task teachers, logits averaged)."""
from __future__ import annotations

from ... import distillers
from .distiller_utils import TextBrewerBehaviour

__all__ = ["MultiTeacherDistiller"]


class MultiTeacherDistiller(TextBrewerBehaviour, distillers.MultiTeacherDistiller):
    """brewkit's :class:`~brewkit.MultiTeacherDistiller` with TextBrewer's leniency (see
    :class:`~brewkit.compat.textbrewer.distiller_utils.TextBrewerBehaviour`).

    ``MultiTeacherDistiller(train_config, distill_config, model_T=[...], model_S, adaptor_T, adaptor_S)``:
    ``adaptor_T`` is one adaptor for every teacher or a list of them; the teachers' logits are averaged.
    """
