"""``transformers.TrainingArguments`` names in a run file's ``training:`` section.

A run file may spell a setting as ``transformers.Trainer`` does (``training.learning_rate: 1e-4``) or as brewkit
does (``training.optimizer.lr: 1e-4``): both are one setting, and giving both is a :class:`ConfigError` that names
both keys. :func:`translate` rewrites the TrainingArguments names into brewkit's before any section is validated;
it returns where each rewritten value came from, so that :func:`renamed` can give a later error about that value
the key the run file used (``training.learning_rate: must be a positive number``).

These TrainingArguments names are brewkit's own names already, with the same meaning:
``gradient_accumulation_steps``, ``max_grad_norm``, ``logging_steps``, ``save_total_limit``, ``seed``, ``bf16``,
``fp16``, ``resume_from_checkpoint``. Where transformers' default differs from brewkit's (``weight_decay`` 0 vs
0.01, ``logging_steps`` 500 vs 50, batch size 8 vs 32, ``save_steps`` 500 vs at the end), a run file that leaves
the setting out gets brewkit's default, so existing run files keep their numbers; ``brewkit validate`` prints
every resolved value. ``docs/transformers.md`` lists each name with what it maps to.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from .errors import ConfigError, brief
from .validation import is_int, is_number

#: TrainingArguments name -> the brewkit setting it is (a dotted path in the run file).
NAMES: dict[str, str] = {
    "learning_rate": "training.optimizer.lr",
    "weight_decay": "training.optimizer.weight_decay",
    "adam_beta1": "training.optimizer.betas",  # [adam_beta1, adam_beta2]; the one not given is transformers' default
    "adam_beta2": "training.optimizer.betas",
    "adam_epsilon": "training.optimizer.eps",
    "optim": "training.optimizer.name",
    "num_train_epochs": "training.num_epochs",
    "max_steps": "training.num_steps",  # -1 (transformers' default) means not set
    "lr_scheduler_type": "training.lr_scheduler.name",
    "lr_scheduler_kwargs": "training.lr_scheduler.kwargs",
    "warmup_ratio": "training.lr_scheduler.warmup_ratio",
    "warmup_steps": "training.lr_scheduler.warmup_steps",  # a number in (0, 1) is a ratio (transformers 5)
    "save_steps": "training.ckpt_steps",
    "logging_dir": "training.log_dir",
    "report_to": "training.log_dir",  # [tensorboard]: TensorBoard in log_dir (default output_dir/runs)
    "per_device_train_batch_size": "data.batch_size",
    "per_device_eval_batch_size": "data.eval_batch_size",
    "dataloader_num_workers": "data.num_workers",
    "eval_steps": "evaluation.steps",
    "metric_for_best_model": "evaluation.metric_for_best_model",
    "greater_is_better": "evaluation.greater_is_better",
}
#: TrainingArguments names that brewkit uses too, with the same meaning.
SAME_NAMES = ("gradient_accumulation_steps", "max_grad_norm", "logging_steps", "save_total_limit", "seed", "bf16",
              "fp16", "resume_from_checkpoint")
#: transformers' default beta1, beta2 (torch's AdamW defaults too).
ADAM_BETAS = (0.9, 0.999)
#: ``report_to`` values: TensorBoard is the one integration brewkit writes (``metrics.jsonl`` is always written).
REPORT_TO = ("tensorboard", "all", "none")
#: The default ``log_dir`` under ``report_to: [tensorboard]``, inside ``output_dir`` (transformers:
#: ``runs/<date>_<host>``; brewkit keeps one directory per run, which a resumed run appends to).
TENSORBOARD_DIR = "runs"
#: Schedules without a warm-up: transformers' ``constant`` (brewkit's ``lr_scheduler.name: constant`` is constant
#: after its warm-up) and the two that follow an evaluation metric.
NO_WARMUP = ("constant", "reduce_lr_on_plateau", "greedy")


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class Translation:
    """The run-file dict being rewritten, and where each rewritten value came from."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.origins: dict[str, str] = {}  # brewkit path -> the TrainingArguments key it came from

    def parent(self, path: str) -> tuple[dict, str]:
        """The mapping that holds ``path``'s last key (created when missing), and that key."""
        parts = path.split(".")
        node = self.raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"must be a mapping, got {type(child).__name__}", ".".join(parts[: i + 1]))
            node = child
        return node, parts[-1]

    def given(self, path: str) -> bool:
        parts = path.split(".")
        node: Any = self.raw
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, path: str) -> Any:
        """The value at ``path``, or None when it is not given."""
        node: Any = self.raw
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def check_free(self, path: str, source: str) -> None:
        """Refuse a second spelling of the setting at ``path``."""
        if self.given(path):
            other = self.origins.get(path, path)
            raise ConfigError(f"{source} and {other} are one setting (transformers' name and brewkit's); give only "
                              "one of them", source)

    def place(self, path: str, value: Any, source: str) -> None:
        self.check_free(path, source)
        node, key = self.parent(path)
        node[key] = value
        self.origins[path] = source


def translate(raw: dict) -> dict[str, str]:
    """Rewrite the TrainingArguments names of ``raw["training"]`` (in place) into brewkit's settings.

    Returns ``{brewkit path: run-file key}`` for each rewritten value (see :func:`renamed`). Conversions:
    ``num_train_epochs`` must be whole (brewkit's epochs are whole passes: give ``max_steps`` for part of one);
    ``max_steps: -1`` and ``warmup_steps: 0`` mean not set; ``warmup_steps`` in (0, 1) is a ratio of the steps
    (transformers 5); ``adam_beta1`` / ``adam_beta2`` form ``optimizer.betas`` (the one not given is 0.9 / 0.999);
    ``report_to: [tensorboard]`` (or ``all`` with tensorboard installed) writes TensorBoard logs to ``log_dir``,
    by default ``output_dir/runs``.
    """
    training = raw.get("training")
    if not isinstance(training, dict) or not any(k in training for k in NAMES):
        return {}
    t = Translation(raw)
    values = {k: training.pop(k) for k in NAMES if k in training}
    for name, value in values.items():
        source, target = f"training.{name}", NAMES[name]
        if name in ("adam_beta1", "adam_beta2", "report_to"):
            continue  # below, once the others are placed
        if name == "num_train_epochs" and is_number(value):
            if not float(value).is_integer():
                raise ConfigError(f"must be a whole number of epochs, got {value!r} (brewkit's epochs are whole passes "
                                  "over the data); give max_steps for part of an epoch", source)
            value = int(value)
        if name == "max_steps" and is_int(value) and value == -1:
            t.check_free(target, source)
            continue
        if name == "warmup_steps" and is_number(value):
            if value == 0:
                t.check_free(target, source)
                continue
            if 0 < value < 1:
                target = "training.lr_scheduler.warmup_ratio"
            elif value >= 1 and float(value).is_integer():
                value = int(value)
            elif value > 0:
                raise ConfigError(f"must be a whole number of steps, or a ratio of the steps below 1; got {value!r}",
                                  source)
        t.place(target, value, source)
    if "adam_beta1" in values or "adam_beta2" in values:
        betas = []
        for i, name in enumerate(("adam_beta1", "adam_beta2")):
            b = values.get(name, ADAM_BETAS[i])
            if not (is_number(b) and 0 <= b < 1):
                raise ConfigError(f"must be a number in [0, 1), got {brief(b)}", f"training.{name}")
            betas.append(float(b))
        source = "training." + ("adam_beta1" if "adam_beta1" in values else "adam_beta2")
        t.place("training.optimizer.betas", betas, source)
    if "report_to" in values:
        report_to(t, values["report_to"])
    check_no_warmup(t)
    return t.origins


def report_to(t: Translation, value: Any) -> None:
    """``report_to``: ``tensorboard`` (or ``all``) -> ``log_dir`` (default ``output_dir/runs``); ``none``."""
    source = "training.report_to"
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"must be a name or a list of names ({', '.join(REPORT_TO)}), got {brief(value)}", source)
    for v in items:
        if v not in REPORT_TO:
            raise ConfigError(f"brewkit reports to tensorboard only (and always writes metrics.jsonl); {v!r} is not "
                              f"available: use one of {', '.join(REPORT_TO)}", source)
    if "none" in items and len(items) > 1:
        raise ConfigError(f"'none' together with {[v for v in items if v != 'none']}: give one of them", source)
    wanted = "tensorboard" in items or ("all" in items and tensorboard_installed())
    has_dir = t.get("training.log_dir") is not None
    if not wanted:
        if has_dir:
            raise ConfigError(f"is {brief(value)}, but {t.origins.get('training.log_dir', 'training.log_dir')} is set "
                              "(TensorBoard logs go there); remove one of them", source)
        return
    if not tensorboard_installed():
        raise ConfigError("tensorboard is not installed: pip install tensorboard (or brewkit[tensorboard]), or "
                          "remove it from report_to", source)
    if not has_dir:
        out = t.raw.get("output_dir")
        if isinstance(out, str) and out:
            node, key = t.parent("training.log_dir")
            node[key] = os.path.join(os.path.expanduser(out), TENSORBOARD_DIR)
            t.origins["training.log_dir"] = source


def check_no_warmup(t: Translation) -> None:
    """transformers' ``constant``, ``reduce_lr_on_plateau`` and ``greedy`` have no warm-up: one given with them is
    a mistake (transformers would ignore it)."""
    source = t.origins.get("training.lr_scheduler.name")
    name = t.get("training.lr_scheduler.name")
    if name not in NO_WARMUP or (name == "constant" and source is None):
        return  # brewkit's own 'constant' (lr_scheduler.name) is constant after its warm-up
    for key in ("warmup_ratio", "warmup_steps"):
        w = t.get(f"training.lr_scheduler.{key}")
        if is_number(w) and w > 0:
            where = t.origins.get(f"training.lr_scheduler.{key}", f"training.lr_scheduler.{key}")
            hint = " (use constant_with_warmup for a warm-up)" if name == "constant" else ""
            raise ConfigError(f"{name!r} has no warm-up, but {where} is {w}; remove the warm-up{hint}",
                              source or "training.lr_scheduler.name")


def renamed(e: ConfigError, origins: dict[str, str]) -> ConfigError:
    """``e`` with its path given as the run file spelled it (``training.optimizer.lr`` -> ``training.learning_rate``
    when the value came from ``learning_rate``)."""
    if not e.path:
        return e
    for path, source in origins.items():
        if e.path == path or e.path.startswith((path + ".", path + "[")):
            err = type(e).__new__(type(e))
            ConfigError.__init__(err, e.message, source + e.path[len(path):])
            return err
    return e
