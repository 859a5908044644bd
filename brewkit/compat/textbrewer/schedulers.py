"""``textbrewer.schedulers``: the loss-weight and temperature schedulers (brewkit's, :mod:`brewkit.schedulers`).

``flsw`` / ``cwsm`` take an optional ``tau_min`` keyword in brewkit; without it the numbers are TextBrewer's.
"""
from __future__ import annotations

from ...schedulers import (
                           constant_temperature_scheduler,
                           cwsm_temperature_scheduler_builder,
                           flsw_temperature_scheduler_builder,
                           linear_decay_weight_scheduler,
                           linear_growth_weight_scheduler,
)

__all__ = [
                           "constant_temperature_scheduler",
                           "cwsm_temperature_scheduler_builder",
                           "flsw_temperature_scheduler_builder",
                           "linear_decay_weight_scheduler",
                           "linear_growth_weight_scheduler",
]
