"""The distillers. ``Distillers`` maps TextBrewer's short names to the classes."""
from .base import AbstractDistiller  # noqa: F401
from .basic import BasicDistiller, BasicTrainer
from .general import GeneralDistiller
from .multi_task import MultiTaskDistiller
from .multi_teacher import MultiTeacherDistiller

Distillers = {
    "Basic": BasicDistiller,
    "General": GeneralDistiller,
    "MultiTeacher": MultiTeacherDistiller,
    "MultiTask": MultiTaskDistiller,
    "Train": BasicTrainer,
}
