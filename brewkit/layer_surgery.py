"""Layer surgery: find a model's stack of transformer blocks, and start a smaller model from chosen blocks of a
bigger one.

* :func:`init_from_teacher` (``student: {init_from_teacher: {layers: [0, 2, 4]}}``): student layer ``i`` <-
  teacher layer ``layers[i]``, plus the embeddings, pooler / final norm and a head of the same shape;
* :func:`keep_layers` (``student: {path: ..., keep_layers: [0, 2, 4]}``): DistilBERT's way, a copy of a
  pretrained model with only those blocks;
* :func:`find_layer_stack`: the ``nn.ModuleList`` of blocks (``bert.encoder.layer``, ``transformer.h``, ...).

Errors are :class:`ConfigError` whose path is the run-file field that asked for the surgery
(``init_from_teacher.layers[1]``, ``keep_layers``).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from .errors import ConfigError
from .validation import is_int


def check_layer_indices(layers: Any, path: str = "init_from_teacher.layers", what: str = "teacher layer") -> list[int]:
    """``layers`` as a list of ints: a non-empty list of layer indices (integers >= 0).

    ``what`` names an index in the messages ("teacher layer", or "layer" for ``keep_layers``).
    """
    if not isinstance(layers, (list, tuple)):
        raise ConfigError(f"must be a list of {what} indices such as [0, 2, 4], got {layers!r}", path)
    if not layers:
        raise ConfigError(f"must list at least one {what}", path)
    for i, idx in enumerate(layers):
        if not is_int(idx) or idx < 0:
            raise ConfigError(f"must be a {what} index (an integer >= 0), got {idx!r}", f"{path}[{i}]")
    return [int(i) for i in layers]


def base_model(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, base model)``: ``("bert", model.bert)`` for a Hugging Face model with a head, else
    ``("", model)``."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    if isinstance(base, nn.Module) and base is not model:
        return prefix, base
    return "", model


def find_layer_stack(model: nn.Module, path: str = "init_from_teacher") -> tuple[str, nn.ModuleList]:
    """``(name, modules)`` of the model's stack of transformer blocks.

    It is the outermost ``nn.ModuleList`` of same-class blocks whose length is ``config.num_hidden_layers``
    (any length when the model has no config): ``encoder.layer`` in BERT / RoBERTa, ``transformer.layer``
    in DistilBERT, ``h`` in GPT-2. None or several candidates: a :class:`ConfigError` at ``path``.
    """
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(b) for b in m}) == 1
             and (depth is None or len(m) == depth)]
    found = [(n, m) for n, m in found if not any(n.startswith(o + ".") for o, _ in found if o != n)]
    if len(found) != 1:
        what = f"{len(found)} candidates ({', '.join(n for n, _ in found)})" if found else "none"
        raise ConfigError(f"cannot find the layer stack of {type(model).__name__} (an nn.ModuleList of "
                          f"{depth if depth is not None else 'N'} blocks): found {what}", path)
    return found[0]


def shape_of(t: torch.Tensor) -> list[int]:
    return list(t.shape)


@dataclass
class InitReport:
    """What :func:`copy_layers` copied; ``str()`` gives the line the CLI prints."""

    layer_stack: str                      # e.g. "bert.encoder.layer"
    layer_map: list[tuple[int, int]]      # (student layer, teacher layer)
    copied: list[str]                     # other tensors copied (embeddings, pooler, head), full names
    skipped: dict[str, str]               # head tensors left as initialised -> why
    base_prefix: str = ""                 # e.g. "bert"; only used to shorten names in str()

    def __str__(self) -> str:
        student = ", ".join(str(s) for s, _ in self.layer_map)
        teacher = ", ".join(str(t) for _, t in self.layer_map)
        parts: list[str] = []  # "embeddings", "pooler", "classifier", ...
        for name in self.copied:
            if self.base_prefix and name.startswith(self.base_prefix + "."):
                name = name[len(self.base_prefix) + 1:]
            if name.split(".")[0] not in parts:
                parts.append(name.split(".")[0])
        line = (f"student layers [{student}] <- teacher layers [{teacher}] ({self.layer_stack}); "
                f"copied {len(self.copied)} other tensors ({', '.join(parts) or 'none'})")
        if self.skipped:
            line += "; left as initialised: " + ", ".join(f"{n} ({why})" for n, why in self.skipped.items())
        return line


def copy_layers(target: nn.Module, source: nn.Module, layers: list[int], *, path: str = "init_from_teacher",
                layers_path: str = "init_from_teacher.layers",
                names: tuple[str, str] = ("student", "teacher")) -> InitReport:
    """Copy into ``target``, in place and without gradients: target layer ``i`` <- source layer ``layers[i]``.

    Copied: the chosen blocks (all of their tensors, which must match by name and shape), every other tensor of
    the base model (embeddings, pooler, final norm; these must exist in the source with the same shape), and
    head tensors whose names and shapes match (a head with a different number of labels is left as initialised
    and reported). ``target`` needs exactly ``len(layers)`` layers. Errors are :class:`ConfigError` at ``path``,
    or at ``layers_path`` (``layers_path[i]``) for the layer list; ``names`` are (target, source) in messages.
    """
    target_word, source_word = names
    layers = check_layer_indices(layers, layers_path, f"{source_word} layer")
    s_prefix, s_base = base_model(target)
    t_prefix, t_base = base_model(source)
    s_name, s_stack = find_layer_stack(s_base, path)
    t_name, t_stack = find_layer_stack(t_base, path)
    for i, idx in enumerate(layers):
        if idx >= len(t_stack):
            raise ConfigError(f"{source_word} layer {idx} does not exist: the {source_word} has {len(t_stack)} "
                              f"layers (0..{len(t_stack) - 1})", f"{layers_path}[{i}]")
    if len(s_stack) != len(layers):
        raise ConfigError(f"lists {len(layers)} {source_word} layers but the {target_word} has {len(s_stack)} "
                          f"layers; list one {source_word} layer per {target_word} layer", layers_path)

    def full(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def check_same(name_s: str, t_s: torch.Tensor, name_t: str, t_t: torch.Tensor | None) -> None:
        if t_t is None:
            raise ConfigError(f"the {source_word} has no {name_t!r} to copy into the {target_word}'s {name_s!r}",
                              path)
        if t_s.shape != t_t.shape:
            raise ConfigError(f"shape mismatch: {target_word} {name_s} is {shape_of(t_s)} but {source_word} "
                              f"{name_t} is {shape_of(t_t)}", path)

    with torch.no_grad():
        # state_dict() tensors share storage with the parameters, so copy_ writes into the target.
        for j, idx in enumerate(layers):
            s_state, t_state = s_stack[j].state_dict(), t_stack[idx].state_dict()
            extra = sorted(t_state.keys() - s_state.keys())
            if extra:
                raise ConfigError(f"the {target_word}'s layer {j} has no {extra[0]!r} ({source_word} "
                                  f"{full(t_prefix, f'{t_name}.{idx}.{extra[0]}')})", path)
            for key, tensor in s_state.items():
                name_s = full(s_prefix, f"{s_name}.{j}.{key}")
                name_t = full(t_prefix, f"{t_name}.{idx}.{key}")
                check_same(name_s, tensor, name_t, t_state.get(key))
                tensor.copy_(t_state[key])

        copied: list[str] = []
        t_state = t_base.state_dict()
        for key, tensor in s_base.state_dict().items():
            if key.startswith(s_name + "."):
                continue
            check_same(full(s_prefix, key), tensor, full(t_prefix, key), t_state.get(key))
            tensor.copy_(t_state[key])
            copied.append(full(s_prefix, key))

        skipped: dict[str, str] = {}
        if s_prefix:  # the head: everything outside the base model
            t_state = source.state_dict()
            for key, tensor in target.state_dict().items():
                if key.startswith(s_prefix + "."):
                    continue
                if key not in t_state:
                    skipped[key] = f"not in the {source_word}"
                elif t_state[key].shape != tensor.shape:
                    skipped[key] = f"shape {shape_of(tensor)}, {source_word} {shape_of(t_state[key])}"
                else:
                    tensor.copy_(t_state[key])
                    copied.append(key)

    return InitReport(layer_stack=full(s_prefix, s_name), layer_map=list(enumerate(layers)), copied=copied,
                      skipped=skipped, base_prefix=s_prefix)


def init_from_teacher(student: nn.Module, teacher: nn.Module, layers: list[int]) -> InitReport:
    """Initialise ``student`` from ``teacher``: student layer ``i`` <- teacher layer ``layers[i]``, plus the
    embeddings, pooler / final norm and matching head tensors (see :func:`copy_layers`). Errors are
    :class:`ConfigError` at ``init_from_teacher...``."""
    return copy_layers(student, teacher, layers)


def keep_layers(model: nn.Module, layers: list[int],
                make_model: Callable[[transformers.PretrainedConfig], nn.Module] | None = None) -> nn.Module:
    """A copy of ``model`` with only the transformer blocks ``layers`` (in that order), plus its embeddings,
    pooler and head: DistilBERT's way to start a student from a pretrained model (e.g. layers [0, 2, 4] of 6).

    ``make_model(config)`` builds the smaller model from the copied config with ``num_hidden_layers =
    len(layers)`` (default: ``type(model)(config)``); it sets the attention implementation and dtype. Errors
    name ``keep_layers``.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, transformers.PretrainedConfig):
        raise ConfigError(f"{type(model).__name__} has no Hugging Face config", "keep_layers")
    small_config = copy.deepcopy(config)
    small_config.num_hidden_layers = len(layers)
    small = make_model(small_config) if make_model is not None else type(model)(small_config)
    copy_layers(small, model, layers, path="keep_layers", layers_path="keep_layers", names=("copy", "model"))
    return small
