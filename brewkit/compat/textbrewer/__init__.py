"""TextBrewer's module layout on brewkit: change ``textbrewer`` to ``brewkit.compat.textbrewer`` in a script's
imports and it runs on brewkit's engine (``sed -i 's/\\btextbrewer\\b/brewkit.compat.textbrewer/g' script.py``).

Top level, as in TextBrewer: the configs, the distillers, ``Distillers``, the registries, ``FEATURES``,
``ADAPTOR_KEYS``, ``register_new``; submodules ``configurations``, ``distiller_utils``, ``distiller_basic``,
``distiller_general``, ``distiller_multiteacher``, ``distiller_multitask``, ``distiller_train``, ``presets``,
``losses``, ``schedulers``, ``projections``, ``utils``, ``data_utils``, ``compatibility``.

What differs from brewkit proper, so that TextBrewer scripts behave as they did (``docs/textbrewer_compat.md``):

- adaptor keys TextBrewer ignored (``'input_mask'``) are a warning naming the closest known key, then ignored;
  brewkit's own distillers raise an AdaptorError for them;
- the scheduler attributes of ``DistillationConfig`` read as TextBrewer's (None or a callable);
- ``TrainingConfig(checkpoint_format='textbrewer')`` by default: ``gs{step}.pkl`` student state dicts are written
  in ``output_dir`` next to brewkit's checkpoint directories; and ``loss_normalization='micro_batch'``: under
  gradient accumulation each micro-batch's loss is its own mean, as in TextBrewer.

Everything else is brewkit's: ``train()`` puts the teachers in eval mode itself, does not reseed unless
``TrainingConfig.seed`` is set, accepts ``num_epochs=2.0`` (not 2.5), clips only the student.
"""
from __future__ import annotations

from . import (  # noqa: F401
               compatibility,
               configurations,
               data_utils,
               distiller_basic,
               distiller_general,
               distiller_multitask,
               distiller_multiteacher,
               distiller_train,
               distiller_utils,
               losses,
               presets,
               projections,
               schedulers,
               utils,
)
from .configurations import DistillationConfig, TrainingConfig
from .distiller_basic import BasicDistiller
from .distiller_general import GeneralDistiller
from .distiller_multitask import MultiTaskDistiller
from .distiller_multiteacher import MultiTeacherDistiller
from .distiller_train import BasicTrainer
from .presets import (
               ADAPTOR_KEYS,
               FEATURES,
               KD_LOSS_MAP,
               MATCH_LOSS_MAP,
               PROJ_MAP,
               TEMPERATURE_SCHEDULER,
               WEIGHT_SCHEDULER,
               register_new,
)

#: The TextBrewer release whose API this layer follows (brewkit's own version: ``brewkit.__version__``).
__version__ = "0.2.1.post1"

Distillers = {
    "Basic": BasicDistiller,
    "General": GeneralDistiller,
    "MultiTeacher": MultiTeacherDistiller,
    "MultiTask": MultiTaskDistiller,
    "Train": BasicTrainer,
}

__all__ = [
               "ADAPTOR_KEYS",
               "FEATURES",
               "KD_LOSS_MAP",
               "MATCH_LOSS_MAP",
               "PROJ_MAP",
               "TEMPERATURE_SCHEDULER",
               "WEIGHT_SCHEDULER",
               "BasicDistiller",
               "BasicTrainer",
               "DistillationConfig",
               "Distillers",
               "GeneralDistiller",
               "MultiTaskDistiller",
               "MultiTeacherDistiller",
               "TrainingConfig",
               "__version__",
               "register_new",
]
