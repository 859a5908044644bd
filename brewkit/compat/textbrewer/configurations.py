"""``textbrewer.configurations``: ``Config``, ``TrainingConfig``, ``IntermediateMatch``, ``DistillationConfig``.

The two configs are brewkit's (every field validated, ``to_dict`` / YAML round trips) with the defaults and
attribute views TextBrewer code relies on:

- ``TrainingConfig.checkpoint_format`` defaults to ``'textbrewer'``: every checkpoint also writes the student's
  ``state_dict`` as ``output_dir/gs{step}.pkl``, which TextBrewer's notebooks ``torch.load``; and
  ``loss_normalization`` to ``'micro_batch'`` (TextBrewer's means under gradient accumulation).
- ``DistillationConfig.temperature_scheduler``, ``kd_loss_weight_scheduler`` and ``hard_label_weight_scheduler``
  read as TextBrewer's did: ``None`` for ``'none'``, else the callable (``temperature_scheduler(logits_S,
  logits_T, base_temperature)``, ``kd_loss_weight_scheduler(progress)``). The constructor still takes the specs
  (``'none'``, ``'linear_decay'``, ``['flsw', 1, 2]``), they are validated as in brewkit, and ``to_dict()`` /
  ``spec(name)`` give them back as plain data. Assigning a spec to one of the three attributes replaces it.
- ``DistillationConfig.intermediate_matches`` is ``[]`` when none are given (TextBrewer's distillers iterate it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ... import configs
from ...configs import IntermediateMatch
from ...validation import ConfigBase as Config

__all__ = ["Config", "DistillationConfig", "IntermediateMatch", "TrainingConfig"]

#: The fields whose attribute shows TextBrewer's resolved callable (or None) instead of the stored spec.
SCHEDULER_FIELDS = ("temperature_scheduler", "hard_label_weight_scheduler", "kd_loss_weight_scheduler")
VIEW_CACHE = "textbrewer_views"  # instance-dict key of the resolved temperature scheduler


@dataclass
class TrainingConfig(configs.TrainingConfig):
    """brewkit's :class:`~brewkit.configs.TrainingConfig` with ``checkpoint_format='textbrewer'`` by default:
    each checkpoint step also writes TextBrewer's ``gs{step}.pkl`` (the student's ``state_dict``, loadable with
    ``torch.load(path, weights_only=True)``) in ``output_dir``, next to brewkit's ``checkpoint-{step}/``.

    ``loss_normalization='micro_batch'`` by default: with gradient accumulation each micro-batch's loss is its
    own mean divided by the accumulation steps, as in TextBrewer (brewkit's default averages every term over the
    whole effective batch, which differs when the micro-batches hold different numbers of tokens).

    Like TextBrewer, ``train()`` does not reseed unless ``seed`` is given, and ``max_grad_norm`` clips the
    student's parameters only (``clip_projections=True`` adds the projections).
    """

    loss_normalization: str = "micro_batch"
    checkpoint_format: str = "textbrewer"


def scheduler_attribute(name: str) -> property:
    """The property that shows field ``name`` as TextBrewer did, keeping the spec in the instance dict."""

    def get(self: DistillationConfig) -> Any:
        if name != "temperature_scheduler":
            # not cached: a base-scaled schedule reads the current kd_loss_weight / hard_label_weight
            return self.weight_scheduler_fn(name)
        views = self.__dict__.setdefault(VIEW_CACHE, {})
        if name not in views:
            views[name] = self.temperature_scheduler_fn()
        return views[name]

    def set(self: DistillationConfig, value: Any) -> None:
        self.__dict__[name] = value
        self.__dict__.pop(VIEW_CACHE, None)

    return property(get, set, doc=f"TextBrewer's view of ``{name}``: None for 'none', else the callable. The "
                                  f"spec itself: ``spec({name!r})``.")


class DistillationConfig(configs.DistillationConfig):
    """brewkit's :class:`~brewkit.configs.DistillationConfig` whose three scheduler attributes read as in
    TextBrewer (``None`` or the callable; see the module docstring) and whose ``intermediate_matches`` is a list.

    ``to_dict()``, ``replace()``, ``==`` and ``repr`` work on the specs, so the config still round-trips and a
    brewkit distiller or checkpoint sees plain data.
    """

    temperature_scheduler = scheduler_attribute("temperature_scheduler")
    hard_label_weight_scheduler = scheduler_attribute("hard_label_weight_scheduler")
    kd_loss_weight_scheduler = scheduler_attribute("kd_loss_weight_scheduler")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.intermediate_matches is None:
            self.intermediate_matches = []

    def specs(self) -> dict[str, Any]:
        """Every field's stored value (the constructor arguments that rebuild this config)."""
        return {f.name: self.spec(f.name) for f in dataclasses.fields(self)}

    def as_brewkit(self) -> configs.DistillationConfig:
        """The same settings as a plain :class:`brewkit.DistillationConfig` (string / list scheduler fields)."""
        return configs.DistillationConfig(**self.specs())

    def to_dict(self) -> dict[str, Any]:
        return self.as_brewkit().to_dict()

    def replace(self, **changes: Any) -> DistillationConfig:
        """A validated copy with some fields changed."""
        return type(self)(**{**self.specs(), **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, configs.DistillationConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, like brewkit's dataclass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop(VIEW_CACHE, None)  # a built scheduler may be a closure; it is rebuilt from the spec on read
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.specs().items())})"
