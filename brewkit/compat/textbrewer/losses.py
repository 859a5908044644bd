"""``textbrewer.losses``: TextBrewer's loss functions, with TextBrewer's names and numbers (GitHub master).

They are brewkit's (:mod:`brewkit.losses`), which raise :class:`~brewkit.errors.ConfigError` for bad shapes and
define 0 where TextBrewer divided 0 by 0. PyPI 0.2.1's masked ``mmd_loss`` scaling is
``mmd_loss(..., legacy_pypi_scaling=True)``, or ``DistillationConfig(textbrewer_numerics='0.2.1')`` in a run.
"""
from __future__ import annotations

from ...losses import (
                       att_ce_loss,
                       att_ce_mean_loss,
                       att_mse_loss,
                       att_mse_sum_loss,
                       cos_loss,
                       fsp_loss,
                       hid_mse_loss,
                       kd_ce_loss,
                       kd_mse_loss,
                       mmd_loss,
                       pkd_loss,
)
from .compatibility import mask_dtype

__all__ = [
                       "att_ce_loss",
                       "att_ce_mean_loss",
                       "att_mse_loss",
                       "att_mse_sum_loss",
                       "cos_loss",
                       "fsp_loss",
                       "hid_mse_loss",
                       "kd_ce_loss",
                       "kd_mse_loss",
                       "mask_dtype",
                       "mmd_loss",
                       "pkd_loss",
]
