"""Checkpoints: ``output_dir/checkpoint-{global_step}/``, written atomically, loaded safely.

A checkpoint holds only tensors and plain data:

==========================  ====================================================================
``model.safetensors`` (+ ``config.json``)  the student (``save_pretrained`` layout for Hugging Face models)
``projections.safetensors``  the trainable projections of intermediate matches
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pt``  state dicts (``torch.load(weights_only=True)``)
``trainer_state.json``       step, epoch, data position, loss-weight state, fingerprint; transformers' TrainerState
                             keys (``log_history``, ``max_steps``, ``best_metric``, ...) when the loop gives them
``*_config.json``            the resolved configs
==========================  ====================================================================

It is written into a hidden temporary directory and renamed into place, so a crash at any point leaves
either the complete checkpoint or none. :func:`latest_checkpoint` only ever returns complete ones.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .errors import CheckpointError
from .logging_utils import logger

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
#: brewkit's own ``trainer_state.json`` keys (the engine reads them on resume; transformers' keys never replace them).
BREWKIT_STATE_KEYS = ("global_step", "epoch", "batch_in_epoch", "world_size", "weights", "plan", "fingerprint",
                      "brewkit_version")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_student(model: nn.Module, directory: str) -> None:
    """Save weights as safetensors; Hugging Face models in their ``save_pretrained`` layout."""
    model = unwrap(model)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory, safe_serialization=True)
    else:
        save_model(model, os.path.join(directory, "model.safetensors"))


def short_cause(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` of ``e`` on one line, at most ``limit`` characters."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


DAMAGED = "the checkpoint is damaged (a full disk, or a copy cut short)"


def recovery_hint(path: str, why: str = DAMAGED) -> str:
    """``why``, then what to do about the unusable checkpoint ``path``: resume from the latest other complete
    checkpoint next to it, or start over."""
    parent = os.path.dirname(os.path.abspath(path))
    others = [p for _, p in list_checkpoints(parent) if os.path.abspath(p) != os.path.abspath(path)]
    if others:
        return (f"{why}: resume from {others[-1]} (--set training.resume_from_checkpoint={others[-1]}, or delete "
                f"{path})")
    return f"{why}: delete it and train from the start"


def load_student(model: nn.Module, directory: str) -> None:
    """Load weights saved by :func:`save_student` into ``model`` (strict). A missing, truncated or damaged
    ``model.safetensors``, or one that does not fit ``model``, is a :class:`CheckpointError`."""
    model = unwrap(model)
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        raise CheckpointError(f"no model.safetensors in {directory}")
    try:
        missing, unexpected = load_model(model, path, strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} ({short_cause(e)}); {recovery_hint(directory)}") from None
    except RuntimeError as e:  # load_state_dict: a tensor of another shape
        raise CheckpointError(f"checkpoint {directory} does not match the student: {short_cause(e, 400)}") from None
    # save_pretrained drops tied copies; anything else missing is an error
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "all_tied_weights_keys", None), dict):
        tied |= set(model.all_tied_weights_keys)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {directory} does not match the student: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def _fsync_tree(directory: str) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def reports_write_errors(save: Callable[..., str]) -> Callable[..., str]:
    """Make a failed write of :func:`save_checkpoint` one :class:`CheckpointError` that leaves no partial directory.

    A full disk shows as ``OSError`` (errno 28) or as torch.save's ``RuntimeError: ... iostream error`` /
    ``file write failed``. The temporary ``.tmp-checkpoint-{step}-*`` directory is removed and a checkpoint moved
    aside for a re-write of the same step is put back, so the checkpoints listed are those that were complete.
    """
    @functools.wraps(save)
    def wrapper(output_dir: str, step: int, **kwargs: Any) -> str:
        try:
            return save(output_dir, step, **kwargs)
        except CheckpointError:
            raise
        except (OSError, RuntimeError) as e:
            final = os.path.join(output_dir, f"{PREFIX}{step}")
            names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
            partial = [n for n in names if n.startswith(f".tmp-{PREFIX}{step}-")]
            for name in partial:
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            aside = final + f".old-{os.getpid()}"
            restored = not os.path.exists(final) and os.path.isdir(aside)
            if restored:
                os.rename(aside, final)
            latest = latest_checkpoint(output_dir)
            if not partial and not restored and latest is not None and os.path.samefile(latest, final):
                raise CheckpointError(f"{PREFIX}{step} was written in {output_dir}, but removing older checkpoints "
                                      f"(save_total_limit) failed: {short_cause(e)}") from e
            then = (f"resume with --set training.resume_from_checkpoint=true: the previous checkpoint, "
                    f"{os.path.basename(latest)}, is intact" if latest is not None
                    else "train again: no earlier checkpoint was written")
            raise CheckpointError(f"cannot write {PREFIX}{step} in {output_dir}: {short_cause(e)}; free disk space "
                                  f"(or choose another output_dir) and {then}") from e
    return wrapper


@reports_write_errors
def save_checkpoint(output_dir: str, step: int, *, student: nn.Module, projections: nn.Module | None,
                    optimizer: Any, scheduler: Any, scaler: Any, rng_state: dict, trainer_state: dict,
                    configs: dict[str, dict], save_total_limit: int | None = None,
                    extra: dict[str, Any] | None = None, staged: str | None = None) -> str:
    """Write ``output_dir/checkpoint-{step}`` atomically; prune old ones beyond ``save_total_limit``.

    ``staged``: a temporary directory that already holds the sharded student, projections and optimizer
    (``parallel='fsdp'``, written by every process); then ``student`` / ``projections`` / ``optimizer`` are not
    written again and the rest is added to it before the rename."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = staged or os.path.join(output_dir, f".tmp-{PREFIX}{step}-{os.getpid()}")
    if staged is None:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        save_student(student, tmp)
        if projections is not None and len(list(projections.parameters())):
            save_file({k: v.detach().contiguous().cpu() for k, v in projections.state_dict().items()},
                      os.path.join(tmp, "projections.safetensors"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
    if scheduler is not None:
        torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
    if scaler is not None:
        torch.save(scaler.state_dict(), os.path.join(tmp, "scaler.pt"))
    torch.save(rng_state, os.path.join(tmp, "rng_state.pt"))
    for name, obj in (extra or {}).items():  # e.g. every DDP rank's RNG state
        torch.save(obj, os.path.join(tmp, f"{name}.pt"))
    for name, cfg in configs.items():
        write_json(os.path.join(tmp, f"{name}.json"), cfg)
    write_json(os.path.join(tmp, STATE_FILE), trainer_state)  # written last: marks completeness too
    _fsync_tree(tmp)
    if os.path.exists(final):  # a re-run over an old checkpoint of the same step
        old = final + f".old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fd = os.open(output_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if save_total_limit is not None:
        for _, path in list_checkpoints(output_dir)[:-save_total_limit]:
            # hide it first (one atomic rename), so a crash mid-delete never leaves a listed, broken checkpoint
            doomed = os.path.join(output_dir, f".deleting-{os.path.basename(path)}-{os.getpid()}")
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _NAME.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def load_state(path: str) -> dict[str, Any]:
    """Read a checkpoint's non-model parts (``weights_only=True`` for everything pickled).

    Every failure is one :class:`CheckpointError` naming the file: an empty or broken ``trainer_state.json``, a
    truncated or damaged ``.pt`` / ``.safetensors`` file, and a pickle that ``weights_only=True`` refuses
    ("refused to unpickle FILE: it is not a brewkit checkpoint file"; nothing in it runs).
    """
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_file):
        raise CheckpointError(f"{path} is not a complete brewkit checkpoint (no {STATE_FILE})")

    def unpickle(file: str) -> Any:
        try:
            return torch.load(file, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # what the pickle wanted to call or build
            what = f" (it refers to {found.group(1)[:100]})" if found else ""
            raise CheckpointError(f"refused to unpickle {file}: it is not a brewkit checkpoint file{what}; brewkit "
                                  "reads only tensors and plain data (torch.load(weights_only=True)), so nothing in it "
                                  f"ran; {recovery_hint(path, 'it was not written by brewkit')}") from None
        except Exception as e:  # noqa: BLE001 -- a damaged file: RuntimeError (zip), EOFError (empty), KeyError, ...
            raise CheckpointError(f"cannot read {file} ({short_cause(e)}); {recovery_hint(path)}") from None

    try:
        with open(state_file, encoding="utf-8") as f:
            trainer_state = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {state_file} ({short_cause(e)}); {recovery_hint(path)}") from None
    if not isinstance(trainer_state, dict) or not isinstance(trainer_state.get("global_step"), int):
        raise CheckpointError(f"{state_file} is not a brewkit trainer state (a JSON object with global_step); "
                              f"{recovery_hint(path)}")
    state = {"trainer_state": trainer_state}
    for name in ("optimizer", "scheduler", "scaler", "rng_state"):
        file = os.path.join(path, f"{name}.pt")
        state[name] = unpickle(file) if os.path.exists(file) else None
    state["extra"] = {}
    for name in sorted(os.listdir(path)):
        if name.startswith("rng_state_rank") and name.endswith(".pt"):
            state["extra"][name[:-3]] = unpickle(os.path.join(path, name))
    proj = os.path.join(path, "projections.safetensors")
    try:
        state["projections"] = load_file(proj) if os.path.exists(proj) else None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {proj} ({short_cause(e)}); {recovery_hint(path)}") from None
    return state


def read_trainer_state(path: str) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint ``path`` as a dict (a :class:`CheckpointError` when unreadable)."""
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {os.path.join(path, STATE_FILE)}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{os.path.join(path, STATE_FILE)} is not a JSON object")
    return state


def save_textbrewer_state_dict(student: nn.Module, output_dir: str, step: int) -> str:
    """TextBrewer's checkpoint: the student's ``state_dict`` as ``output_dir/gs{step}.pkl`` (plain tensors, so
    ``torch.load(path, weights_only=True)`` reads it), written to a temporary file and renamed into place."""
    path = os.path.join(output_dir, f"gs{step}.pkl")
    tmp = os.path.join(output_dir, f".tmp-gs{step}-{os.getpid()}.pkl")
    torch.save({k: v.detach().cpu() for k, v in unwrap(student).state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path


def data_position(step: int, steps_per_epoch: int | None, accumulation: int, batches: int) -> tuple[int, int]:
    """``(pass, micro-batches to skip)`` after ``step`` optimizer steps: in epoch mode ``steps_per_epoch`` steps
    per pass; in step mode (None) ``accumulation`` micro-batches per step over passes of ``batches``."""
    if steps_per_epoch is not None:
        return step // steps_per_epoch, min((step % steps_per_epoch) * accumulation, batches)
    done = step * accumulation
    return done // batches, done % batches


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly: the student, the projections, the
    optimizer, LR scheduler and fp16 scaler, the data position, every rank's RNG state, the loss-weight state and
    the plan. Rank 0 writes (with every rank's RNG gathered to it); every rank reads.

    ``fingerprint`` is what a checkpoint must match to be resumed (models and objective; see
    ``AbstractDistiller.fingerprint``); ``configs`` are written next to it as ``{name}.json``.
    """

    def __init__(self, output_dir: str, ctx: Any, *, fingerprint: dict, configs: dict[str, dict],
                 save_total_limit: int | None = None, force_resume: bool = False, student_state_dicts: bool = False,
                 trainables: nn.Module | None = None):
        self.output_dir, self.ctx = output_dir, ctx
        self.trainables = trainables  # parallel='fsdp': the student and projections, saved sharded (brewkit.fsdp)
        self.student_state_dicts = student_state_dicts
        self.fingerprint, self.configs = fingerprint, configs
        self.save_total_limit, self.force_resume = save_total_limit, force_resume
        #: ``f(step) -> dict``: more ``trainer_state.json`` keys (transformers' TrainerState fields, set by the loop:
        #: :meth:`brewkit.engine.hf_callbacks.CallbackBridge.trainer_state_fields`); brewkit's own keys win.
        self.trainer_state_fields: Any = None

    def save(self, step: int, *, student: nn.Module, projections: nn.Module | None, stepper: Any, cursor: Any,
             weights: dict, plan: dict, version: str) -> str | None:
        """Write ``checkpoint-{step}`` (rank 0), between barriers; returns its path (None on other ranks)."""
        from .engine.rng import get_rng_state

        cur = cursor.state_dict()
        rng = get_rng_state()
        rng["cursor"] = cur
        staged = self.stage_sharded(step, stepper.optimizer) if self.trainables is not None else None
        gathered = self.ctx.gather_to_main(rng)
        if not self.ctx.is_main:
            self.ctx.barrier()
            return None
        extra = {f"rng_state_rank{r}": g for r, g in enumerate(gathered)} if self.ctx.world_size > 1 else {}
        state = {"global_step": step, "epoch": cur.get("pass_index"), "batch_in_epoch": cur.get("index"),
                 "world_size": self.ctx.world_size,
                 "weights": weights, "plan": plan, "fingerprint": self.fingerprint, "brewkit_version": version}
        if self.trainer_state_fields is not None:
            state = {**self.trainer_state_fields(step), **state}
        scaler = stepper.scaler if stepper.scaler.is_enabled() else None
        path = save_checkpoint(self.output_dir, step, student=student, projections=projections,
                               optimizer=stepper.optimizer, scheduler=stepper.scheduler, scaler=scaler,
                               rng_state=rng, trainer_state=state, configs=self.configs,
                               save_total_limit=self.save_total_limit, extra=extra, staged=staged)
        if self.student_state_dicts:
            save_textbrewer_state_dict(student, self.output_dir, step)
        self.ctx.barrier()
        return path

    def stage_sharded(self, step: int, optimizer: Any) -> str:
        """Every process writes its shards into the step's staging directory (one name on every process)."""
        from .fsdp import save_sharded

        tmp = os.path.join(self.output_dir, f".tmp-{PREFIX}{step}-sharded")
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        self.ctx.barrier()
        save_sharded(tmp, self.trainables, optimizer)
        self.ctx.barrier()
        return tmp

    def refresh_trainer_state(self, path: str, step: int, scheduler: Any = None) -> None:
        """Rewrite the :attr:`trainer_state_fields` keys of checkpoint ``path`` (of ``step``), e.g. after the
        evaluation at that step, and ``scheduler.pt`` from ``scheduler`` when given (a schedule that follows the
        evaluation's metric has just stepped); each file is replaced atomically, the other keys are kept."""
        if scheduler is not None and os.path.isfile(os.path.join(path, "scheduler.pt")):
            tmp = os.path.join(path, f".tmp-scheduler.pt-{os.getpid()}")
            torch.save(scheduler.state_dict(), tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(path, "scheduler.pt"))
        if self.trainer_state_fields is None:
            return
        file = os.path.join(path, STATE_FILE)
        state = read_trainer_state(path)
        state.update({k: v for k, v in self.trainer_state_fields(step).items() if k not in BREWKIT_STATE_KEYS})
        tmp = os.path.join(path, f".tmp-{STATE_FILE}-{os.getpid()}")
        write_json(tmp, state)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, file)

    def find(self, resume_from: bool | str | None) -> str | None:
        """The checkpoint to resume from: the latest in ``output_dir`` for ``True`` (None when there is none),
        the given directory for a path."""
        if not resume_from:
            return None
        if resume_from is True:
            return latest_checkpoint(self.output_dir)
        if not os.path.isdir(resume_from):
            raise CheckpointError(f"resume_from_checkpoint: no checkpoint directory at {resume_from}")
        return resume_from

    def load(self, path: str, *, student: nn.Module, projections: nn.Module, stepper: Any, cursor: Any,
             plan: dict, accumulation: int = 1) -> dict:
        """Restore a checkpoint into the given objects (and the RNGs); returns its trainer state."""
        from .engine.rng import set_rng_state

        state = load_state(path)
        ts = state["trainer_state"]
        if ts.get("fingerprint") != self.fingerprint:
            if not self.force_resume:
                raise CheckpointError(f"{path} was written by a different run (models or distillation config "
                                      f"differ: {ts.get('fingerprint')} vs {self.fingerprint}); set "
                                      "force_resume=True to load it anyway")
            logger.warning("force_resume: loading %s although it was written by a different run", path)
        if ts["plan"] != plan:
            raise CheckpointError(f"{path} was written for a different schedule ({ts['plan']}); this run has {plan}")
        from .fsdp import is_sharded_checkpoint, load_sharded

        if is_sharded_checkpoint(path):  # written under parallel='fsdp', at any world size
            if self.trainables is None:
                raise CheckpointError(f"{path} holds a sharded (parallel='fsdp') checkpoint; resume it with "
                                      "training.parallel: fsdp (at any number of processes)")
            load_sharded(path, self.trainables, stepper.optimizer)
        elif self.trainables is not None and self.ctx.world_size > 1:
            raise CheckpointError(f"{path} is an unsharded checkpoint; resume it with training.parallel: ddp (or in "
                                  "one process)")
        else:
            load_student(student, path)
            if state["projections"] is not None:
                projections.load_state_dict(state["projections"])
            stepper.optimizer.load_state_dict(state["optimizer"])
        if stepper.scheduler is not None and state["scheduler"] is not None:
            stepper.scheduler.load_state_dict(state["scheduler"])
        if stepper.scaler.is_enabled() and state["scaler"] is not None:
            stepper.scaler.load_state_dict(state["scaler"])
        rng = state["extra"].get(f"rng_state_rank{self.ctx.rank}", state["rng_state"])
        cursor_state = rng.pop("cursor")
        saved_world = ts.get("world_size", 1)
        if saved_world == self.ctx.world_size:
            cursor.load_state_dict(cursor_state)
        else:  # another world size: the position follows from the steps done (each rank has its own shard now)
            logger.warning("resuming %s (written by %d processes) with %d: the data position is recomputed from the "
                           "step; exact when every optimizer step sees the same examples at both sizes (the same "
                           "effective batch, an unshuffled or seed-shuffled sampler)", path, saved_world,
                           self.ctx.world_size)
            cursor.start_pass(*data_position(ts["global_step"], plan.get("steps_per_epoch"), accumulation,
                                             len(cursor)))
        set_rng_state(rng)
        logger.info("resumed from %s at step %d", path, ts["global_step"])
        return ts
