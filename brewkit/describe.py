"""Describing models in one line, for ``brewkit validate`` and run summaries."""
from __future__ import annotations

from torch import nn

from .errors import ConfigError
from .layer_surgery import find_layer_stack


def count_parameters(model: nn.Module | None, trainable_only: bool = False) -> int:
    """Number of parameters (shared / tied tensors counted once); 0 for ``None``."""
    if model is None:
        return 0
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_model(model: nn.Module) -> str:
    """One line: ``BertForSequenceClassification: 6 layers, hidden 384, 22.71M parameters``.

    The depth is ``config.num_hidden_layers``, else the length of the layer stack when one is found.
    """
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if layers is None:
        try:
            layers = len(find_layer_stack(model)[1])
        except ConfigError:
            layers = None
    hidden = getattr(config, "hidden_size", None)
    n = count_parameters(model)
    count = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)
    parts = ([f"{layers} layers"] if layers is not None else []) + \
            ([f"hidden {hidden}"] if hidden is not None else []) + [f"{count} parameters"]
    return f"{type(model).__name__}: {', '.join(parts)}"
