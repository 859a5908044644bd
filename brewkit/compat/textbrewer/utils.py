"""``textbrewer.utils``: ``display_parameters`` (a parameter-count table of a model), ``LayerNode``, ``cycle``,
``initializer_builder``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError

__all__ = ["LayerNode", "cycle", "display_parameters", "initializer_builder"]

INDENT = "--"  # the marker in front of the root's name
STEP = "  "  # added in front of the marker per level


def cycle(iterable: Iterable) -> Iterator:
    """Iterate ``iterable`` again and again (a new pass each time, so a shuffling DataLoader reshuffles)."""
    while True:
        yield from iterable


def initializer_builder(std: float) -> Callable[[nn.Module], None]:
    """A function for ``model.apply``: Linear and Embedding weights ~ N(0, std^2), Linear biases 0."""

    def init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    return init_weights


class LayerNode:
    """A node of the parameter tree built from dotted ``state_dict`` keys (``bert.encoder.layer.0...``).

    ``value`` is ``[number of elements, memory in MB]`` summed over the node's tensors (None until one is
    added); ``children_name`` maps a child's name to its node (``node[name]``, ``name in node``). A tensor that
    shares storage with one counted earlier counts ``[0, 0]`` and gets ``(shared)`` after its name.
    """

    def __init__(self, name: str, parent: LayerNode | None = None, value: list | None = None,
                 fullname: str | None = None):
        self.name = name
        self.fullname = fullname
        self.value = value
        self.children_name: dict[str, LayerNode] = {}
        self.parent = parent

    def __contains__(self, key: str) -> bool:
        return key in self.children_name

    def __getitem__(self, key: str) -> LayerNode:
        return self.children_name[key]

    def __setitem__(self, key: str, value: LayerNode) -> None:
        self.children_name[key] = value

    def update(self, value: list) -> None:
        """Add ``value`` (``[elements, MB]``) to every ancestor of this node."""
        node = self.parent
        while node is not None:
            node.value = list(value) if node.value is None else [a + b for a, b in zip(node.value, value)]
            node = node.parent

    def name_width(self, level: int = 0, max_level: int | None = None) -> int:
        """The widest ``indent + name`` of this subtree down to ``max_level``."""
        width = len(INDENT) + level * len(STEP) + len(self.name)
        if max_level is not None and level >= max_level:
            return width
        return max([width] + [c.name_width(level + 1, max_level) for c in self.children_name.values()])

    def format(self, level: int = 0, total: int | None = None, indent: str = INDENT, max_level: int | None = None,
               max_length: int | None = None) -> str:
        """The table: a header, then one line per node, children indented below their parent.

        A node with exactly one child shows its name only; every other node (and every node at ``max_level``,
        below which nothing is shown) shows ``name:``, its number of elements, its share of the root's, and its
        memory in MB, separated by tabs.
        """
        if total is None:
            total = self.value[0] if self.value else 0
        text = ""
        if level == 0:
            max_length = self.name_width(0, max_level) + 1
            text += f"\n{'LAYER NAME':<{max_length}}\t{'#PARAMS':>15}\t{'RATIO':>10}\t{'MEM(MB)':>8}\n"
        value = self.value or [0, 0.0]
        ratio = value[0] / total if total else 0.0
        stats = f"{indent + self.name + ':':<{max_length}}\t{value[0]:15,d}\t{ratio:>10.2%}\t{value[1]:>8.2f}\n"
        if max_level is not None and level == max_level:
            return text + stats
        text += f"{indent + self.name:<{max_length}}\n" if len(self.children_name) == 1 else stats
        for child in self.children_name.values():
            text += child.format(level + 1, total, STEP + indent, max_level, max_length)
        return text


def display_parameters(model: nn.Module | Mapping[str, torch.Tensor], max_level: int | None = None
                       ) -> tuple[str, LayerNode]:
    """Print and return a table of the parameters of ``model`` (a module or a state dict), and its tree.

    Every tensor of the ``state_dict`` (buffers included) is counted at the node of its dotted name and at all
    its ancestors: number of elements, ratio to the whole model, memory ``numel * element_size / 2**20`` MB.
    A tensor whose storage (``data_ptr``) was counted already counts 0 and is marked ``(shared)`` (tied
    embeddings). ``max_level`` stops the table at that depth (the root, ``model``, is level 0).
    Returns ``(table, root)``, like TextBrewer.
    """
    if isinstance(model, nn.Module):
        state_dict: Mapping[str, Any] = model.state_dict()
    elif isinstance(model, Mapping):
        state_dict = model
    else:
        raise ConfigError(f"must be a torch.nn.Module or a state dict, got {type(model).__name__}",
                          "display_parameters.model")
    if max_level is not None and (isinstance(max_level, bool) or not isinstance(max_level, int) or max_level < 0):
        raise ConfigError(f"must be a non-negative integer or None, got {max_level!r}", "display_parameters.max_level")
    root = LayerNode("model", fullname="model")
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"{key!r} is a {type(tensor).__name__}, not a tensor", "display_parameters.model")
        names = key.split(".")
        node = root
        for i, name in enumerate(names):
            if name not in node:
                node[name] = LayerNode(name, parent=node, fullname=".".join(names[: i + 1]))
            node = node[name]
        if tensor.data_ptr() in seen:
            node.value = [0, 0]
            node.name += "(shared)"
            node.fullname += "(shared)"
        else:
            seen.add(tensor.data_ptr())
            node.value = [tensor.numel(), tensor.numel() * tensor.element_size() / 1024 / 1024]
        node.update(node.value)
    table = root.format(max_level=max_level)
    print(table)
    return table, root
