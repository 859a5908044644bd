"""Projections that map a student feature of width ``dim_in`` to the teacher's width ``dim_out``.

Every factory has the signature ``factory(dim_in, dim_out) -> nn.Module``. Linear layers are initialised as
in TextBrewer: weights ~ N(0, 0.02^2), biases 0.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .errors import ConfigError


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise every Linear / Embedding inside ``module`` with N(0, std^2) weights and zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module


def linear_projection(dim_in: int, dim_out: int) -> nn.Module:
    """Linear(dim_in, dim_out), weights N(0, 0.02^2), bias 0."""
    return init_weights(nn.Linear(dim_in, dim_out, bias=True))


def projection_with_activation(act: str | type[nn.Module] | nn.Module) -> Callable[[int, int], nn.Module]:
    """Factory for ``Sequential(Linear(dim_in, dim_out), act)``.

    ``act`` is a name from ``torch.nn`` (``'ReLU'``, ``'GELU'``), an ``nn.Module`` class, or an instance
    (copied per projection). Difference from TextBrewer: classes and instances are accepted, and every
    projection gets its own activation module.
    """
    import copy

    if isinstance(act, str):
        cls = getattr(nn, act, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ConfigError(f"unknown activation {act!r}; use a torch.nn module name such as 'ReLU'",
                              "projection")
        make = cls
    elif isinstance(act, type) and issubclass(act, nn.Module):
        make = act
    elif isinstance(act, nn.Module):
        def make():
            return copy.deepcopy(act)
    else:
        raise ConfigError(f"activation must be a name, an nn.Module class or instance, got {act!r}",
                          "projection")

    def factory(dim_in: int, dim_out: int) -> nn.Module:
        return init_weights(nn.Sequential(nn.Linear(dim_in, dim_out, bias=True), make()))

    factory.__doc__ = f"Linear(dim_in, dim_out) followed by {getattr(make, '__name__', act)}."
    return factory
