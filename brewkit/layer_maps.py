"""Layer-map presets: which teacher layer each student layer learns from, expanded to ``intermediate_matches``.

A preset maps student layer ``l = 1..L_S`` to a teacher layer ``m(l)`` in ``1..L_T`` (layer *numbers*, 1 = the
first transformer layer; 0 stands for the embeddings, which always meet the embeddings)::

    preset          m(l)                         12 -> 4          12 -> 5              12 -> 6
    proportional    ceil(l * L_T / L_S)          3, 6, 9, 12      3, 5, 8, 10, 12      2, 4, 6, 8, 10, 12
    uniform         round(l * L_T / L_S)         3, 6, 9, 12      2, 5, 7, 10, 12      2, 4, 6, 8, 10, 12
    last            L_T - L_S + l                9, 10, 11, 12    8, 9, 10, 11, 12     7, 8, 9, 10, 11, 12

``proportional`` is EasyTransfer's probe map (``build_kd_probes_loss`` uses ``ceil(i * T_L / S_L)`` on lists whose
index 0 is the embeddings); ``uniform`` rounds half up to the nearest layer (TinyBERT's uniform strategy when the
depths divide, where it equals ``proportional``); ``last`` matches the teacher's top layers (BERT-PKD "last").
Every preset ends at the teacher's last layer.

**Index convention.** As in TextBrewer, ``layer_T`` / ``layer_S`` of an intermediate match index the *adaptor's
list* for that feature, not a layer number. For Hugging Face models:

* ``hidden`` (``hidden_states``) has L + 1 entries: index 0 = embeddings, index l = layer l;
* ``attention`` (``attentions``) has L entries: index 0 = layer 1, index l - 1 = layer l (no embeddings entry).

:func:`expand_layer_map` converts layer numbers to list indices accordingly (``has_embeddings`` says which
convention a custom feature follows; by default only ``hidden`` has an embeddings entry) and adds the
embeddings pair ``(0, 0)`` when ``include_embeddings`` (default: whenever the feature has one).

Register your own map with ``@LAYER_MAPS.register("name")`` on ``fn(num_layers_T, num_layers_S) -> list of L_S
teacher layer numbers``, or pass such a list directly as ``preset``.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from .errors import ConfigError
from .registry import Registry

LAYER_MAPS = Registry("LAYER_MAPS", "layer map")


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for integers, exactly (b > 0)."""
    return -(-a // b)


@LAYER_MAPS.register("proportional", description="ceil(l * L_T / L_S): EasyTransfer's probe map")
def proportional_layer_map(num_layers_T: int, num_layers_S: int) -> list[int]:
    """Student layer l -> teacher layer ceil(l * L_T / L_S) (EasyTransfer's ``build_kd_probes_loss`` map)."""
    return [ceil_div(layer * num_layers_T, num_layers_S) for layer in range(1, num_layers_S + 1)]


@LAYER_MAPS.register("uniform", description="round(l * L_T / L_S): evenly spaced teacher layers")
def uniform_layer_map(num_layers_T: int, num_layers_S: int) -> list[int]:
    """Student layer l -> teacher layer nearest to l * L_T / L_S (halves round up)."""
    return [(2 * layer * num_layers_T + num_layers_S) // (2 * num_layers_S) for layer in range(1, num_layers_S + 1)]


@LAYER_MAPS.register("last", description="L_T - L_S + l: the teacher's top L_S layers (BERT-PKD 'last')")
def last_layer_map(num_layers_T: int, num_layers_S: int) -> list[int]:
    """Student layer l -> teacher layer L_T - L_S + l."""
    return [num_layers_T - num_layers_S + layer for layer in range(1, num_layers_S + 1)]


def _depth(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a positive integer (a number of layers), got {value!r}", name)
    return value


def layer_pairs(preset: str | Sequence[int], num_layers_T: int, num_layers_S: int,
                include_embeddings: bool = True) -> list[tuple[int, int]]:
    """``(student_layer, teacher_layer)`` layer-number pairs of a preset (0 = embeddings, first when included).

    ``preset`` is a ``LAYER_MAPS`` name or an explicit list of L_S teacher layer numbers (one per student layer).
    """
    num_layers_T = _depth(num_layers_T, "num_layers_T")
    num_layers_S = _depth(num_layers_S, "num_layers_S")
    if num_layers_S > num_layers_T:
        raise ConfigError(f"the student ({num_layers_S} layers) is deeper than the teacher ({num_layers_T} layers); "
                          "layer-map presets need num_layers_S <= num_layers_T (write intermediate_matches by hand "
                          "otherwise)",
                          "num_layers_S")
    if isinstance(preset, str):
        teacher = LAYER_MAPS[preset](num_layers_T, num_layers_S)
        where = f"layer map {preset!r}"
    elif isinstance(preset, (list, tuple)):
        teacher, where = list(preset), "an explicit layer map"
    else:
        raise ConfigError(f"must be a preset name ({', '.join(map(repr, LAYER_MAPS))}) or a list of teacher layer "
                          f"numbers, got {type(preset).__name__}", "preset")
    ok = isinstance(teacher, list) and len(teacher) == num_layers_S and all(
        isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= num_layers_T for m in teacher)
    if not ok:
        raise ConfigError(f"{where} must give {num_layers_S} teacher layer numbers in 1..{num_layers_T} (one per "
                          f"student layer), got {teacher!r}", "preset")
    pairs = [(layer, m) for layer, m in zip(range(1, num_layers_S + 1), teacher)]
    return [(0, 0)] + pairs if include_embeddings else pairs


def expand_layer_map(preset: str | Sequence[int], num_layers_T: int, num_layers_S: int, feature: str = "hidden",
                     loss: str = "hidden_mse", weight: float = 1.0, proj: list | None = None,
                     include_embeddings: bool | None = None, has_embeddings: bool | None = None) -> list[dict]:
    """TextBrewer-format ``intermediate_matches`` dicts for a layer-map preset.

    Args:
        preset: a ``LAYER_MAPS`` name (``"proportional"``, ``"uniform"``, ``"last"``) or a list of L_S teacher
            layer numbers.
        num_layers_T, num_layers_S: the depths (numbers of transformer layers, embeddings not counted).
        feature, loss, weight, proj: copied into every match (``proj`` = ``[name, dim_S, dim_T(, options)]``,
            a fresh copy per match).
        include_embeddings: add the embeddings pair (index 0 <-> 0); default: when the feature has an
            embeddings entry. An error for features without one.
        has_embeddings: whether the feature's list starts with an embeddings entry (layer l at index l);
            default True for ``"hidden"`` only (otherwise layer l is at index l - 1, like ``"attention"``).

    Returns:
        ``[{"layer_T", "layer_S", "feature", "loss", "weight"(, "proj")}, ...]`` in student-layer order, e.g.
        ``expand_layer_map("proportional", 12, 4)`` pairs hidden indices (S, T) = (0, 0), (1, 3), (2, 6), (3, 9),
        (4, 12), and with ``feature="attention"`` attention indices (0, 2), (1, 5), (2, 8), (3, 11).
    """
    if not isinstance(feature, str) or not feature:
        raise ConfigError(f"must be a feature name such as 'hidden' or 'attention', got {feature!r}", "feature")
    if not isinstance(loss, str) or not loss:
        raise ConfigError(f"must be a match loss name such as 'hidden_mse', got {loss!r}", "loss")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"must be a number, got {weight!r}", "weight")
    if proj is not None and not isinstance(proj, (list, tuple)):
        raise ConfigError(f"must be [name, dim_S, dim_T] or [name, dim_S, dim_T, {{options}}], got {proj!r}", "proj")
    if has_embeddings is None:
        has_embeddings = feature == "hidden"
    if include_embeddings is None:
        include_embeddings = has_embeddings
    if include_embeddings and not has_embeddings:
        raise ConfigError(f"feature {feature!r} has no embeddings entry (its index 0 is the first layer); "
                          "set include_embeddings=False, or has_embeddings=True if its list does start with one",
                          "include_embeddings")
    offset = 0 if has_embeddings else 1
    matches = []
    for layer_S, layer_T in layer_pairs(preset, num_layers_T, num_layers_S, include_embeddings):
        match = {"layer_T": layer_T - offset, "layer_S": layer_S - offset, "feature": feature, "loss": loss,
                 "weight": float(weight)}
        if proj is not None:
            match["proj"] = copy.deepcopy(list(proj))
        matches.append(match)
    return matches
