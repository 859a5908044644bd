"""``textbrewer.presets``: the registries (brewkit's own objects, so a registration here is one everywhere),
``MAPS``, ``register_new``, ``DynamicKeyDict``, and the functions TextBrewer's presets module re-exported.

The registries behave like TextBrewer's dicts (``MAP[name]``, ``MAP[name] = fn``, ``name in MAP``), and
``TEMPERATURE_SCHEDULER[['flsw', 1, 2]]`` builds a scheduler as TextBrewer's ``DynamicKeyDict`` did. An unknown
name raises :class:`~brewkit.errors.UnknownNameError` (a ``KeyError``) listing the known names.
``register_new`` accepts ``'match_loss'`` besides TextBrewer's ``'match_Loss'``.
"""
from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ...presets import (
    ADAPTOR_KEYS,
    FEATURES,
    KD_LOSS_MAP,
    MAPS,
    MATCH_LOSS_MAP,
    PROJ_MAP,
    TEMPERATURE_SCHEDULER,
    WEIGHT_SCHEDULER,
    register_new,
)
from .losses import (
    att_ce_loss,
    att_ce_mean_loss,
    att_mse_loss,
    att_mse_sum_loss,
    cos_loss,
    fsp_loss,
    hid_mse_loss,
    kd_ce_loss,
    kd_mse_loss,
    mask_dtype,
    mmd_loss,
    pkd_loss,
)
from .projections import linear_projection, projection_with_activation
from .schedulers import (
    constant_temperature_scheduler,
    cwsm_temperature_scheduler_builder,
    flsw_temperature_scheduler_builder,
    linear_decay_weight_scheduler,
    linear_growth_weight_scheduler,
)
from .utils import cycle

__all__ = [
    "ADAPTOR_KEYS",
    "FEATURES",
    "KD_LOSS_MAP",
    "MAPS",
    "MATCH_LOSS_MAP",
    "PROJ_MAP",
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "DynamicKeyDict",
    "att_ce_loss",
    "att_ce_mean_loss",
    "att_mse_loss",
    "att_mse_sum_loss",
    "collections",
    "constant_temperature_scheduler",
    "cos_loss",
    "cwsm_temperature_scheduler_builder",
    "cycle",
    "flsw_temperature_scheduler_builder",
    "fsp_loss",
    "hid_mse_loss",
    "kd_ce_loss",
    "kd_mse_loss",
    "linear_decay_weight_scheduler",
    "linear_growth_weight_scheduler",
    "linear_projection",
    "mask_dtype",
    "mmd_loss",
    "pkd_loss",
    "projection_with_activation",
    "register_new",
]


class DynamicKeyDict:
    """TextBrewer's dict wrapper for parameterised entries, over a plain dict ``store``.

    ``d[name]`` is ``store[name]``; ``d[[name, *args]]`` (a list or tuple key) calls ``store[name](*args)``, or
    ``store[name](**args[0])`` when the only argument is a dict; ``key in d`` looks at the name;
    ``d[name] = value`` stores. (brewkit's ``TEMPERATURE_SCHEDULER`` is a registry that does the same and
    checks the parameters; this class is for code that builds its own.)
    """

    def __init__(self, kv_dict: dict[str, Any]):
        self.store = kv_dict

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, (list, tuple)):
            return self.store[key]
        name, args = key[0], list(key[1:])
        if len(args) == 1 and isinstance(args[0], dict):
            return self.store[name](**args[0])
        return self.store[name](*args)

    def __setitem__(self, key: str, value: Callable) -> None:
        self.store[key] = value

    def __contains__(self, key: Any) -> bool:
        if isinstance(key, (list, tuple)):
            return bool(key) and key[0] in self.store
        return key in self.store
