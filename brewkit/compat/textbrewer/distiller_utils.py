"""``textbrewer.distiller_utils``: what custom TextBrewer distillers import, usually with ``import *``.

brewkit's engine supplies the loop; this module supplies TextBrewer's helpers on top of it:

- :class:`TextBrewerBehaviour`, mixed into every distiller of this package: adaptor keys TextBrewer ignored
  are a warning (naming the closest known key) and are then ignored, instead of brewkit's error;
  ``print_freq``, ``logits_cache``, ``local_rank`` and a ``tb_writer`` whose ``add_scalar`` goes to brewkit's
  metrics log exist as in TextBrewer. (The engine reads the loss-weight and temperature schedules through the
  config's ``weight_scheduler_fn`` / ``temperature_scheduler_fn``, so the compat config's TextBrewer-style
  scheduler attributes do not disturb it.)
- :func:`get_outputs_from_batch`, :func:`auto_forward`, :func:`post_adaptor`, :func:`move_to_device`,
  :func:`select_logits_with_mask`, :func:`probability_shift_`: TextBrewer's batch, forward and adaptor helpers
  (GitHub master: any ``Mapping`` batch is unpacked as keyword arguments).
- :class:`DistillationContext`, :class:`AbstractDistiller`, :class:`CustomMatch`, :class:`no_op`, ``logger``.

TextBrewer's ``BasicAdaptor`` (an unused placeholder) is not provided.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import OrderedDict, abc
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Dict, List, Optional, Union  # re-exported: TextBrewer code uses them

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from typing_extensions import Self

from ...adaptors import LenientAdaptor, normalize_output
from ...distillers import AbstractDistiller as BrewkitAbstractDistiller
from ...distillers.logits import probability_shift_, select_logits_with_mask
from ...engine.batches import call_model, move_to_device, split_batch
from ...logging_utils import logger
from .compatibility import is_apex_available, mask_dtype
from .configurations import DistillationConfig, TrainingConfig
from .presets import (
    ADAPTOR_KEYS,
    FEATURES,
    KD_LOSS_MAP,
    MAPS,
    MATCH_LOSS_MAP,
    PROJ_MAP,
    TEMPERATURE_SCHEDULER,
    WEIGHT_SCHEDULER,
    DynamicKeyDict,
    att_ce_loss,
    att_ce_mean_loss,
    att_mse_loss,
    att_mse_sum_loss,
    collections,
    constant_temperature_scheduler,
    cos_loss,
    cwsm_temperature_scheduler_builder,
    cycle,
    flsw_temperature_scheduler_builder,
    fsp_loss,
    hid_mse_loss,
    kd_ce_loss,
    kd_mse_loss,
    linear_decay_weight_scheduler,
    linear_growth_weight_scheduler,
    linear_projection,
    mmd_loss,
    pkd_loss,
    projection_with_activation,
    register_new,
)

__all__ = [
    "ADAPTOR_KEYS",
    "FEATURES",
    "KD_LOSS_MAP",
    "MAPS",
    "MATCH_LOSS_MAP",
    "PROJ_MAP",
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "AbstractDistiller",
    "CustomMatch",
    "Dict",
    "DistillationConfig",
    "DistillationContext",
    "DynamicKeyDict",
    "F",
    "List",
    "Optional",
    "OrderedDict",
    "TextBrewerBehaviour",
    "TrainingConfig",
    "Union",
    "abc",
    "att_ce_loss",
    "att_ce_mean_loss",
    "att_mse_loss",
    "att_mse_sum_loss",
    "auto_forward",
    "collections",
    "constant_temperature_scheduler",
    "cos_loss",
    "cwsm_temperature_scheduler_builder",
    "cycle",
    "flsw_temperature_scheduler_builder",
    "fsp_loss",
    "get_outputs_from_batch",
    "has_apex",
    "hid_mse_loss",
    "is_apex_available",
    "json",
    "kd_ce_loss",
    "kd_mse_loss",
    "linear_decay_weight_scheduler",
    "linear_growth_weight_scheduler",
    "linear_projection",
    "logger",
    "logging",
    "mask_dtype",
    "mmd_loss",
    "move_to_device",
    "nn",
    "no_op",
    "np",
    "os",
    "pkd_loss",
    "post_adaptor",
    "probability_shift_",
    "projection_with_activation",
    "random",
    "register_new",
    "select_logits_with_mask",
    "torch",
    "tqdm",
]

#: Whether apex is installed (TextBrewer imported ``amp`` from it; brewkit's fp16 is native ``torch.amp``).
has_apex = is_apex_available()


class no_op:  # TextBrewer's (lower-case) name
    """TextBrewer's stand-in TensorBoard writer: ``add_scalar`` discards its arguments."""

    @staticmethod
    def add_scalar(*args: Any, **kwargs: Any) -> None:
        return None


class MetricsScalarWriter:
    """``tb_writer`` of the compat distillers: ``add_scalar(tag, value, global_step)`` writes ``{tag: value}``
    through the distiller's ``log_metrics`` (brewkit's ``metrics.jsonl``, and TensorBoard when ``log_dir`` is
    set; rank 0 only)."""

    def __init__(self, distiller: BrewkitAbstractDistiller):
        self.distiller = distiller

    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None, *args: Any,
                   **kwargs: Any) -> None:
        value = scalar_value.item() if isinstance(scalar_value, torch.Tensor) else float(scalar_value)
        self.distiller.log_metrics({tag: value}, global_step)


class TextBrewerBehaviour:
    """Mixed in front of a brewkit distiller: TextBrewer's leniency and attributes (see the module docstring).

    ``class GeneralDistiller(TextBrewerBehaviour, brewkit.GeneralDistiller)``; the constructor arguments are the
    brewkit class's (which are TextBrewer's).
    """

    print_freq = 20  # TextBrewer's attribute; brewkit logs every ``TrainingConfig.logging_steps`` steps

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.local_rank = self.t_config.local_rank
        self.logits_cache: list = []  # TextBrewer's cache list; brewkit keeps recorded batches elsewhere
        self.tb_writer = MetricsScalarWriter(self)
        self.lenient_adaptors: dict[tuple[int, str], tuple[Any, LenientAdaptor]] = {}

    def lenient(self, adaptor: Any, who: str) -> Any:
        """``adaptor`` wrapped in a :class:`LenientAdaptor` (one per adaptor and role, so each key warns once)."""
        if adaptor is None:
            return None  # brewkit's Hugging Face adaptor returns known keys only
        key = (id(adaptor), who)
        entry = self.lenient_adaptors.get(key)
        if entry is None or entry[0] is not adaptor:
            entry = self.lenient_adaptors[key] = (adaptor, LenientAdaptor(adaptor, who))
        return entry[1]

    def run_adaptor(self, adaptor: Any, batch: Any, outputs: Any, who: str) -> dict:
        return super().run_adaptor(self.lenient(adaptor, who), batch, outputs, who)


class AbstractDistiller(TextBrewerBehaviour, BrewkitAbstractDistiller):
    """brewkit's :class:`~brewkit.distillers.AbstractDistiller` (the loop) with :class:`TextBrewerBehaviour`.
    Subclasses define ``train_on_batch(batch, args)`` and ``compute_loss(results_S, results_T)``."""


class DistillationContext:
    """TextBrewer's context manager: ``with context:`` puts ``model_T`` (a model, or a list / tuple / dict of
    them) in eval mode and ``model_S`` (likewise) in train mode, and restores every model's mode on exit.

    (TextBrewer put a list or dict of students in eval mode; this puts them in train mode.)
    """

    def __init__(self) -> None:
        self.model_S: Any = None
        self.model_T: Any = None

    @staticmethod
    def models(x: Any) -> list[nn.Module]:
        if x is None:
            return []
        if isinstance(x, nn.Module):
            return [x]
        return list(x.values()) if isinstance(x, Mapping) else list(x)

    def __enter__(self) -> Self:
        self.saved_modes = [(m, m.training) for m in self.models(self.model_T) + self.models(self.model_S)]
        for m in self.models(self.model_T):
            m.eval()
        for m in self.models(self.model_S):
            m.train()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for m, mode in self.saved_modes:
            m.train(mode)


class CustomMatch:
    """TextBrewer's description of a hook-based match (``module_T``, ``module_S``, ``weight``, ``loss``,
    ``proj_func``, ``proj_group``). TextBrewer never made it work, and brewkit's ``GeneralDistiller`` refuses
    ``custom_matches`` with a ConfigError; return the tensor from an adaptor under a name appended to
    ``FEATURES`` instead."""

    def __init__(self, module_T: Any, module_S: Any, weight: float, loss: Callable,
                 proj_func: Callable | None = None, proj_group: dict | None = None):
        self.module_T, self.module_S = module_T, module_S
        self.weight, self.loss = weight, loss
        self.proj_func = proj_func
        self.proj_group = {} if proj_group is None else proj_group

    def to_dict(self) -> dict:
        return {"module_T": self.module_T, "module_S": self.module_S, "weight": self.weight, "loss": self.loss,
                "proj_func": self.proj_func, "proj_group": self.proj_group}

    @classmethod
    def from_dict(cls, dict_object: dict) -> CustomMatch:
        return cls(**dict_object)


def post_adaptor(dict_object: dict) -> dict:
    """TextBrewer's adaptor-output normalisation, in place: keys whose value is ``None`` are removed (absent),
    and ``logits`` / ``logits_mask`` / ``losses`` / ``labels`` become one-element lists when they are a single
    tensor. ``hidden`` / ``attention`` are left as they are. Returns the (same) dict; unknown keys are kept, as
    TextBrewer kept them (nothing reads them)."""
    normalized = normalize_output(dict_object, "adaptor")
    if isinstance(dict_object, dict):
        dict_object.clear()
        dict_object.update(normalized)
        return dict_object
    return normalized


def auto_forward(model: Any, batch: Any, args: dict) -> Any:
    """Call ``model`` on ``batch`` (keyword arguments for a Mapping batch, positional for a list / tuple) with
    ``args`` added; a list / tuple of models gives a list of outputs, a dict of models a dict."""
    if isinstance(model, (list, tuple)):
        return [call_model(m, batch, args) for m in model]
    if isinstance(model, Mapping):
        return {k: call_model(m, batch, args) for k, m in model.items()}
    return call_model(model, batch, args)


def get_outputs_from_batch(batch: Any, device: Any, model_T: Any, model_S: nn.Module, args: dict,
                           no_teacher_forward: bool = False) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Move ``batch`` to ``device`` and run both models on it: ``((teacher_batch, results_T), (student_batch,
    results_S))``.

    A Mapping batch with ``'teacher'`` and ``'student'`` keys gives each model its own part; its
    ``'teacher_cache'`` entry, when present, is returned as ``results_T`` instead of a teacher forward pass.
    The teacher runs under ``torch.no_grad()`` (``results_T`` is None with ``no_teacher_forward=True``); the
    student with gradients. ``model_T`` may be a list or dict of teachers (see :func:`auto_forward`).
    """
    teacher_batch, student_batch, cache = split_batch(batch)
    split = teacher_batch is not student_batch
    teacher_batch = move_to_device(teacher_batch, device)
    student_batch = move_to_device(student_batch, device) if split else teacher_batch
    if no_teacher_forward:
        results_T = None
    elif cache is not None:
        results_T = move_to_device(cache, device)
    else:
        with torch.no_grad():
            results_T = auto_forward(model_T, teacher_batch, args)
    results_S = call_model(model_S, student_batch, args)
    return (teacher_batch, results_T), (student_batch, results_S)
