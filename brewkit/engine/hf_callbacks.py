"""``transformers.TrainerCallback`` objects in brewkit's loop, and transformers' ``TrainerState`` of a run.

``train(callbacks=[...])`` takes ``TrainerCallback`` objects (or their classes), or :class:`HFCallbacks` (the
callbacks with the ``TrainingArguments`` values they read, e.g. ``metric_for_best_model``). A
:class:`CallbackBridge` calls them as ``transformers.Trainer`` does, with ``args`` (a TrainingArguments-like
:class:`CallbackArgs`), ``state`` (a ``transformers.TrainerState``) and ``control`` (a ``TrainerControl``):

=================  =========================================================================================
``on_train_begin``  once the run is set up (after a resume, at the resumed step)
``on_step_end``     after each optimizer step, before it is logged
``on_log``          with each record written: a logging step's (``loss``, ``learning_rate``, ``grad_norm``, the
                    loss terms, ...) and each evaluation's (``eval_accuracy``, ...), with ``epoch``
``on_evaluate``     with each evaluation's metrics (what ``log_metrics`` reports: the YAML runs' evaluation)
``on_save``         after each checkpoint
``on_train_end``    when ``train()`` returns
=================  =========================================================================================

``control`` is honoured: ``should_training_stop`` stops the run at that step with a checkpoint (the loop's
``request_stop()``), ``should_save`` writes a checkpoint, ``should_evaluate`` runs ``train()``'s evaluation
callback, ``should_log`` writes a record, each at the step it was set. Under DDP the callbacks run on every
process; a stop is agreed by all (every rank stops at the same step) and so are the other three flags (one
small all-reduce per step while callbacks are given). So ``EarlyStoppingCallback`` works as in transformers.

With ``metric_for_best_model`` (or an early-stopping callback's metric) the bridge keeps ``best_metric``,
``best_global_step`` and ``best_model_checkpoint`` as ``Trainer`` does: after ``on_evaluate``, a value better
than the best so far (``greater_is_better``) becomes the best. :meth:`CallbackBridge.trainer_state_fields` is
what each checkpoint's ``trainer_state.json`` adds to brewkit's own keys: transformers' ``TrainerState`` fields
with ``log_history`` (every record since the first step, ``lr`` as ``learning_rate``, ``epoch`` as the fraction of
epochs done) and the state of ``ExportableState`` callbacks, which a resumed run gives back to them.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from ..errors import ConfigError, brief
from ..logging_utils import logger

EVENTS = ("on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_save", "on_train_end")
#: The start of the loop's ``stop_reason`` when a callback set ``control.should_training_stop`` (early stopping):
#: the run ended on purpose, unlike a signal.
TRAINING_STOP = "should_training_stop"


class HFCallbacks:
    """``TrainerCallback`` objects and the ``TrainingArguments`` values they read (``args``), e.g.
    ``HFCallbacks([EarlyStoppingCallback(3)], metric_for_best_model="eval_accuracy")``. ``args`` override the
    values the bridge derives from the run (:meth:`CallbackBridge.default_args`)."""

    def __init__(self, callbacks: Sequence[Any] = (), **args: Any):
        self.callbacks = list(callbacks)
        self.args = args


class CallbackArgs(SimpleNamespace):
    """The TrainingArguments-like ``args`` the callbacks get: plain attributes, and ``to_dict`` /
    ``to_json_string`` / ``to_sanitized_dict`` as TrainingArguments has them."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def to_sanitized_dict(self) -> dict[str, Any]:
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self.to_dict().items()}


def callbacks_of(callbacks: Any) -> tuple[list, dict]:
    """``(TrainerCallback instances, args)`` of ``train()``'s ``callbacks``; a class is instantiated, as
    ``Trainer`` does. Anything else is a :class:`ConfigError` at ``callbacks[i]``."""
    if callbacks is None:
        return [], {}
    if isinstance(callbacks, HFCallbacks):
        items, args = callbacks.callbacks, dict(callbacks.args)
    elif isinstance(callbacks, (list, tuple)):
        items, args = list(callbacks), {}
    else:
        raise ConfigError(f"must be a list of transformers.TrainerCallback objects (or HFCallbacks), got "
                          f"{type(callbacks).__name__}", "callbacks")
    from transformers import TrainerCallback

    out = []
    for i, cb in enumerate(items):
        if isinstance(cb, type) and issubclass(cb, TrainerCallback):
            cb = cb()
        if not isinstance(cb, TrainerCallback):
            raise ConfigError(f"must be a transformers.TrainerCallback (or its class), got {brief(cb, 80)}; a "
                              "TextBrewer-style function callback(model, step) goes to callback=", f"callbacks[{i}]")
        out.append(cb)
    m = args.get("metric_for_best_model")
    if m is not None and not isinstance(m, str):
        raise ConfigError(f"must be a metric name such as 'eval_accuracy', got {brief(m)}",
                          "callbacks.metric_for_best_model")
    return out, args


def checked(callbacks: Any) -> HFCallbacks:
    """``train()``'s ``callbacks`` as :class:`HFCallbacks` of instances (:func:`callbacks_of`), checked once."""
    items, args = callbacks_of(callbacks)
    return HFCallbacks(items, **args)


def hf_log_entry(record: dict, epoch: float | None) -> dict:
    """A brewkit record as a ``log_history`` entry: ``lr`` is ``learning_rate``, ``epoch`` the fraction of epochs
    done (when known; brewkit's record has the pass index)."""
    out = {("learning_rate" if k == "lr" else k): v for k, v in record.items() if k != "epoch"}
    if epoch is not None:
        out["epoch"] = epoch
    return out


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class CallbackBridge:
    """The ``TrainerState`` of a ``train()`` call, and its ``TrainerCallback`` objects (see the module docstring).

    ``loop`` is the distiller (``global_step``, ``model_S``, ``request_stop()``), ``session`` its
    :class:`~brewkit.engine.session.TrainingSession`. ``evaluates``: ``train()`` got an evaluation callback
    (``args.eval_strategy`` is then ``"steps"``).
    """

    def __init__(self, loop: Any, session: Any, callbacks: Any, dataloader: Iterable, *, evaluates: bool,
                 max_grad_norm: float):
        from transformers import TrainerControl, TrainerState

        self.loop, self.session, self.dataloader = loop, session, dataloader
        self.callbacks, overrides = callbacks_of(callbacks)
        self.args = CallbackArgs(**{**self.default_args(evaluates, max_grad_norm), **overrides})
        if self.args.metric_for_best_model is not None and self.args.greater_is_better is None:
            self.args.greater_is_better = not self.args.metric_for_best_model.endswith("loss")  # as transformers
        plan, ctx = session.plan, session.ctx
        self.steps_per_epoch = plan.steps_per_epoch or self.length_in_steps()
        self.state = TrainerState(
            max_steps=plan.total_steps, logging_steps=plan.logging_steps, eval_steps=self.args.eval_steps,
            save_steps=plan.ckpt_steps, train_batch_size=self.args.per_device_train_batch_size,
            num_train_epochs=plan.num_epochs if plan.num_epochs is not None else self.epochs_in(plan.total_steps),
            is_local_process_zero=int(os.environ.get("LOCAL_RANK", "0")) == 0 or ctx.world_size == 1,
            is_world_process_zero=ctx.is_main)
        self.control = TrainerControl()
        self.converted = 0  # records of the step logger's history already in state.log_history
        self.should_log = self.should_save = self.should_evaluate = False
        if session.resumed_from is not None:
            self.resume(session.resumed_from)
        self.state.global_step = loop.global_step
        self.state.epoch = self.epoch_at(loop.global_step)

    # -- the state -------------------------------------------------------------------------------------------
    def default_args(self, evaluates: bool, max_grad_norm: float) -> dict[str, Any]:
        """The TrainingArguments values of this run, under transformers' names."""
        tc, plan, ctx = self.loop.t_config, self.session.plan, self.session.ctx
        group = self.session.stepper.optimizer.param_groups[0]
        return {
            "output_dir": tc.output_dir, "logging_dir": tc.log_dir, "run_name": os.path.basename(tc.output_dir),
            "max_steps": plan.total_steps, "num_train_epochs": plan.num_epochs,
            "per_device_train_batch_size": getattr(self.dataloader, "batch_size", None)
            or getattr(getattr(self.dataloader, "batch_sampler", None), "batch_size", None),  # brewkit's samplers
            "gradient_accumulation_steps": tc.gradient_accumulation_steps,
            "learning_rate": group.get("initial_lr", group["lr"]), "max_grad_norm": max_grad_norm,
            "logging_strategy": "steps", "logging_steps": plan.logging_steps,
            "eval_strategy": "steps" if evaluates else "no", "eval_steps": plan.callback_steps,
            "save_strategy": "steps", "save_steps": plan.ckpt_steps, "save_total_limit": tc.save_total_limit,
            "seed": tc.seed, "bf16": tc.bf16, "fp16": tc.fp16,
            "report_to": ["tensorboard"] if tc.log_dir else [], "resume_from_checkpoint": tc.resume_from_checkpoint,
            "metric_for_best_model": None, "greater_is_better": None, "load_best_model_at_end": False,
            "process_index": ctx.rank, "local_process_index": int(os.environ.get("LOCAL_RANK", "0")),
            "world_size": ctx.world_size, "disable_tqdm": not tc.progress_bar,
        }

    def length_in_steps(self) -> int | None:
        """Optimizer steps per pass over the data in step mode, when the loader has a length."""
        try:
            return max(math.ceil(len(self.session.cursor) / self.session.accumulation), 1)
        except (TypeError, NotImplementedError, AttributeError):
            return None

    def epochs_in(self, steps: int) -> int:
        return math.ceil(steps / self.steps_per_epoch) if self.steps_per_epoch else 0

    def epoch_at(self, step: int) -> float | None:
        """Epochs done after optimizer step ``step`` (``Trainer``'s ``state.epoch``), when the length is known."""
        return step / self.steps_per_epoch if self.steps_per_epoch else None

    def sync_history(self) -> None:
        """Bring ``state.log_history`` up to the step logger's history (records are only ever appended)."""
        history = self.session.logger.history
        for record in history[self.converted:]:
            self.state.log_history.append(hf_log_entry(record, self.epoch_at(record["step"])))
        self.converted = len(history)

    def metric_key(self) -> str | None:
        m = self.args.metric_for_best_model
        return None if m is None else m if m.startswith("eval_") else f"eval_{m}"

    def checkpoint_of(self, step: int | None) -> str:
        return os.path.join(self.loop.t_config.output_dir, f"checkpoint-{step}")

    def trainer_state_fields(self, step: int) -> dict[str, Any]:
        """transformers' ``TrainerState`` fields for the checkpoint of ``step`` (``epoch`` and ``global_step``
        are left to brewkit's own keys): ``log_history``, ``max_steps``, ``logging_steps``, ``eval_steps``,
        ``save_steps``, ``best_metric``, ``best_global_step``, ``best_model_checkpoint``, ... and
        ``stateful_callbacks``."""
        import dataclasses

        from transformers.trainer_callback import ExportableState

        self.sync_history()
        best = self.state.best_global_step
        self.state.best_model_checkpoint = None
        if best is not None and (best == step or os.path.isdir(self.checkpoint_of(best))):
            self.state.best_model_checkpoint = self.checkpoint_of(best)
        fields = dataclasses.asdict(self.state)
        stateful: dict[str, Any] = {"TrainerControl": self.control.state()}
        for cb in self.callbacks:
            if isinstance(cb, ExportableState):
                name = type(cb).__name__
                if name in stateful:
                    previous = stateful[name]
                    stateful[name] = (previous if isinstance(previous, list) else [previous]) + [cb.state()]
                else:
                    stateful[name] = cb.state()
        fields["stateful_callbacks"] = stateful
        fields["log_history"] = list(self.state.log_history)
        del fields["epoch"], fields["global_step"]
        return fields

    def resume(self, path: str) -> None:
        """Take the best metric and the callbacks' state from the ``trainer_state.json`` of checkpoint ``path``."""
        from transformers.trainer_callback import ExportableState

        saved = read_json(os.path.join(path, "trainer_state.json"))
        for key in ("best_metric", "best_global_step", "best_model_checkpoint"):
            setattr(self.state, key, saved.get(key))
        stateful = saved.get("stateful_callbacks") or {}
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            if not isinstance(cb, ExportableState) or name not in stateful:
                continue
            entries = stateful[name] if isinstance(stateful[name], list) else [stateful[name]]
            i = seen[name] = seen.get(name, -1) + 1
            if i < len(entries):
                for k, v in (entries[i].get("attributes") or {}).items():
                    setattr(cb, k, v)

    # -- events ----------------------------------------------------------------------------------------------
    def call(self, event: str, **kwargs: Any) -> None:
        s = self.session
        common = {"model": self.loop.model_S, "optimizer": s.stepper.optimizer, "lr_scheduler": s.stepper.scheduler,
                  "train_dataloader": self.dataloader, "eval_dataloader": None, "processing_class": None}
        for cb in self.callbacks:
            before = self.control.should_training_stop
            result = getattr(cb, event)(self.args, self.state, self.control, **common, **kwargs)
            if result is not None:  # a callback may return a (new) control, as in transformers
                self.control = result
            if self.control.should_training_stop and not before:
                where = f"{type(cb).__name__}.{event} at step {self.state.global_step}"
                self.loop.stop.request(f"{TRAINING_STOP} ({where})")

    def on_train_begin(self) -> None:
        if self.callbacks:
            self.sync_history()
            self.control.should_training_stop = False
            self.call("on_train_begin")

    def on_step_end(self, step: int) -> None:
        """After optimizer step ``step``: the callbacks' ``on_step_end``; then the loop reads ``should_log``,
        ``should_save`` and ``should_evaluate`` (agreed by every process)."""
        self.state.global_step, self.state.epoch = step, self.epoch_at(step)
        if not self.callbacks:
            return
        self.control.should_log = self.control.should_save = self.control.should_evaluate = False
        self.sync_history()
        self.call("on_step_end")
        flags = [self.control.should_log, self.control.should_save, self.control.should_evaluate]
        if self.session.ctx.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor(flags, dtype=torch.int32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.session.ctx.control_group)
            flags = [bool(x) for x in t.tolist()]
        self.should_log, self.should_save, self.should_evaluate = flags

    def on_log(self, record: dict) -> None:
        """A record was written (a logging step's or an evaluation's)."""
        if not self.callbacks:
            return
        self.sync_history()
        logs = {k: v for k, v in self.state.log_history[-1].items() if k != "step"} \
            if self.state.log_history else {}
        self.call("on_log", logs=logs)
        self.control.should_log = self.should_log = False

    def on_evaluate(self, metrics: dict[str, Any], step: int) -> None:
        """The metrics of the evaluation at ``step``: the callbacks' ``on_evaluate`` (against the best so far),
        then the best."""
        if self.callbacks:
            self.sync_history()
            self.call("on_evaluate", metrics=dict(metrics))
        self.control.should_evaluate = self.should_evaluate = False
        key = self.metric_key()
        if key is None:
            return
        if key not in metrics:
            logger.warning("metric_for_best_model is %s but the evaluation gave %s", key, ", ".join(metrics))
            return
        value = float(metrics[key])
        best = self.state.best_metric
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric, self.state.best_global_step = value, step

    def on_save(self, path: str | None) -> None:
        """A checkpoint was written (``path`` on rank 0, None on the others)."""
        self.control.should_save = self.should_save = False
        if self.callbacks:
            self.call("on_save")

    def on_train_end(self) -> None:
        if self.callbacks:
            self.sync_history()
            self.call("on_train_end")
