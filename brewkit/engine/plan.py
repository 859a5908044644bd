"""``TrainPlan``: the schedule of a training run, decided once before the first step.

It answers, for optimizer step ``g`` (1-based: ``g`` is the step that has just finished), whether the loop logs,
checkpoints, runs the callback or checks the loss for NaN/inf. It is pure: no models, no data, no device, so the
schedule can be tested (and printed by ``brewkit validate``) without training. Its :meth:`state_dict` is stored
in every checkpoint; resuming with a different plan is refused.

Two modes, as in TextBrewer:

* **epoch mode** (``num_epochs``): ``steps_per_epoch = ceil(batches / gradient_accumulation_steps)`` (an epoch's
  last group may be shorter). Checkpoints: ``ckpt_frequency`` evenly spaced points in every
  ``ckpt_epoch_frequency``-th epoch and the last one; or, when ``ckpt_steps`` is set, every ``ckpt_steps`` steps.
* **step mode** (``num_steps``): checkpoints every ``ckpt_steps`` steps (default: only at the end).

Every mode checkpoints and logs the last step. The callback runs after each checkpoint (TextBrewer) or every
``callback_steps`` steps and after the last.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


def integral(value: Any, name: str) -> int:
    """``value`` as a positive int. An integral float (``2.0``, TextBrewer scripts pass ``args.num_train_epochs``)
    is accepted; ``2.5``, a bool, a string or a value below 1 is a :class:`ConfigError` naming ``name``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer() \
            and value >= 1:
        return int(value)
    raise ConfigError(f"must be a positive integer, got {value!r}", name)


@dataclass(frozen=True)
class TrainPlan:
    total_steps: int
    steps_per_epoch: int | None  # None in step mode
    num_epochs: int | None  # None in step mode
    ckpt_steps: int | None  # checkpoint every N steps (step mode, or epoch mode when set)
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    logging_steps: int = 1
    callback_steps: int | None = None

    @classmethod
    def build(cls, config: Any, num_batches: int | None, num_epochs: Any = None, num_steps: Any = None) -> TrainPlan:
        """The plan for ``config`` (a :class:`~brewkit.configs.TrainingConfig`) over a loader of ``num_batches``
        micro-batches per pass (per process; None when the loader has no length: step mode only).
        ``num_steps`` takes precedence over ``num_epochs``."""
        if num_epochs is None and num_steps is None:
            raise ConfigError("give num_epochs or num_steps", "train")
        common = {"ckpt_frequency": config.ckpt_frequency, "ckpt_epoch_frequency": config.ckpt_epoch_frequency,
                  "logging_steps": config.logging_steps, "callback_steps": config.callback_steps}
        if num_steps is not None:
            steps = integral(num_steps, "num_steps")
            return cls(total_steps=steps, steps_per_epoch=None, num_epochs=None,
                       ckpt_steps=config.ckpt_steps or steps, **common)
        epochs = integral(num_epochs, "num_epochs")
        if num_batches is None:
            raise ConfigError("epoch mode needs a dataloader with __len__; pass num_steps instead", "train")
        if num_batches == 0:
            raise ConfigError("the dataloader is empty", "train")
        per_epoch = math.ceil(num_batches / config.gradient_accumulation_steps)
        return cls(total_steps=per_epoch * epochs, steps_per_epoch=per_epoch, num_epochs=epochs,
                   ckpt_steps=config.ckpt_steps, **common)

    @property
    def epoch_mode(self) -> bool:
        return self.steps_per_epoch is not None

    def is_checkpoint_step(self, g: int) -> bool:
        if g == self.total_steps:
            return True
        if self.ckpt_steps is not None:
            return g % self.ckpt_steps == 0
        per_epoch = self.steps_per_epoch
        epoch = (g - 1) // per_epoch
        if (epoch + 1) % self.ckpt_epoch_frequency != 0 and epoch + 1 != self.num_epochs:
            return False
        points = {per_epoch * c // self.ckpt_frequency for c in range(self.ckpt_frequency)}
        return g % per_epoch in points

    def is_callback_step(self, g: int) -> bool:
        if self.callback_steps is None:
            return self.is_checkpoint_step(g)
        return g % self.callback_steps == 0 or g == self.total_steps

    def is_logging_step(self, g: int) -> bool:
        return g % self.logging_steps == 0 or g == self.total_steps

    def checks_finite(self, g: int, device_type: str) -> bool:
        """Whether step ``g``'s loss is checked for NaN/inf as it is computed. The check syncs with the device,
        which is free on CPU (every step) and otherwise done on logging and checkpoint steps only, so that no
        checkpoint is ever written after a bad step."""
        return device_type == "cpu" or g % self.logging_steps == 0 or self.is_checkpoint_step(g)

    def describe(self) -> str:
        if self.epoch_mode:
            return f"{self.total_steps} optimizer steps ({self.num_epochs} epochs x {self.steps_per_epoch} steps)"
        return f"{self.total_steps} optimizer steps (step mode)"

    def state_dict(self) -> dict:
        """What a checkpoint records (and a resumed run must match): the length of the run."""
        return {"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "num_epochs": self.num_epochs}
