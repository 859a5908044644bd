"""brewkit: config-driven knowledge distillation for PyTorch."""
__version__ = "0.1.0"  # before the imports below: checkpoints record it

from .configs import DistillationConfig, TrainingConfig  # noqa: E402
from .distillers import (  # noqa: E402
    BasicDistiller,
    BasicTrainer,
    Distillers,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
)
from .errors import BrewkitError, ConfigError  # noqa: E402

__all__ = ["__version__", "DistillationConfig", "TrainingConfig", "BasicDistiller", "BasicTrainer", "Distillers",
           "GeneralDistiller", "MultiTaskDistiller", "MultiTeacherDistiller", "BrewkitError", "ConfigError"]
