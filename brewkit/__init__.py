"""brewkit: config-driven knowledge distillation for PyTorch."""
__version__ = "0.1.0"

from .configs import DistillationConfig, TrainingConfig  # noqa: E402,F401
from .distillers import (BasicDistiller, BasicTrainer, Distillers, GeneralDistiller,  # noqa: E402,F401
                         MultiTaskDistiller, MultiTeacherDistiller)
from .errors import BrewkitError, ConfigError  # noqa: E402,F401
