"""Checkpoints: ``output_dir/checkpoint-{global_step}/``, written atomically, loaded safely.

A checkpoint holds only tensors and plain data:

==========================  ====================================================================
``model.safetensors`` (+ ``config.json``)  the student (``save_pretrained`` layout for Hugging Face models)
``projections.safetensors``  the trainable projections of intermediate matches
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pt``  state dicts (``torch.load(weights_only=True)``)
``trainer_state.json``       step, epoch, data position, loss-weight state, fingerprint
``*_config.json``            the resolved configs
==========================  ====================================================================

It is written into a hidden temporary directory and renamed into place, so a crash at any point leaves
either the complete checkpoint or none. :func:`latest_checkpoint` only ever returns complete ones.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from .errors import CheckpointError

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
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


def load_student(model: nn.Module, directory: str) -> None:
    """Load weights saved by :func:`save_student` into ``model`` (strict)."""
    model = unwrap(model)
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        raise CheckpointError(f"no model.safetensors in {directory}")
    missing, unexpected = load_model(model, path, strict=False)
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


def save_checkpoint(output_dir: str, step: int, *, student: nn.Module, projections: nn.Module | None,
                    optimizer: Any, scheduler: Any, scaler: Any, rng_state: dict, trainer_state: dict,
                    configs: dict[str, dict], save_total_limit: int | None = None,
                    extra: dict[str, Any] | None = None) -> str:
    """Write ``output_dir/checkpoint-{step}`` atomically; prune old ones beyond ``save_total_limit``."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = os.path.join(output_dir, f".tmp-{PREFIX}{step}-{os.getpid()}")
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
    """Read a checkpoint's non-model parts (``weights_only=True`` for everything pickled)."""
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise CheckpointError(f"{path} is not a complete brewkit checkpoint (no {STATE_FILE})")
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        state = {"trainer_state": json.load(f)}
    for name in ("optimizer", "scheduler", "scaler", "rng_state"):
        file = os.path.join(path, f"{name}.pt")
        state[name] = torch.load(file, weights_only=True, map_location="cpu") if os.path.exists(file) else None
    state["extra"] = {}
    for name in sorted(os.listdir(path)):
        if name.startswith("rng_state_rank") and name.endswith(".pt"):
            state["extra"][name[:-3]] = torch.load(os.path.join(path, name), weights_only=True, map_location="cpu")
    proj = os.path.join(path, "projections.safetensors")
    state["projections"] = load_file(proj) if os.path.exists(proj) else None
    return state
