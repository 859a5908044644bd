"""``RunDirectory``: the output directory of a ``brewkit train`` run, which is never silently lost.

* **One writer.** The run holds an exclusive lock on ``output_dir/.brewkit.lock`` (``fcntl.flock``: released by
  the kernel when the process dies, so a killed run never leaves a stale lock); a second run on the same directory
  is refused with the process id of the first.
* **No overwrite.** A directory that holds a finished run (``final/``) or an unfinished one (checkpoints) is
  refused unless the run resumes (``training.resume_from_checkpoint``) or says ``training.overwrite_output_dir:
  true``; then the old run's files are removed, but only after the new run's first batch went through
  (:meth:`prepare`).
* **Resumed runs are the same run.** Resuming compares the resolved run file with the one the directory holds and
  refuses, naming the first differing keys, when the data, tokenisation or optimisation differ (unless
  ``training.force_resume: true``).
* **Atomic files.** ``run.yaml``, ``summary.json`` and ``final/`` are written to a temporary name and renamed into
  place; partial ``.tmp-*`` / ``.deleting-*`` directories of a killed run are removed when the next run starts.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import yaml

from .checkpoint import list_checkpoints
from .errors import BrewkitError, ConfigError

LOCK = ".brewkit.lock"
RUN_FILE = "run.yaml"
DIGESTS = ".brewkit-data.json"  # sha256 of the data files the run trained on
#: Resolved run-file keys that may change between a run and its resumption (how it is run, not what it trains).
MAY_CHANGE_ON_RESUME = ("training.resume_from_checkpoint", "training.force_resume", "training.overwrite_output_dir",
                        "training.progress_bar", "training.logging_steps", "training.save_total_limit",
                        "training.log_dir", "training.device", "training.local_rank", "training.compile",
                        "distillation.teacher_cache", "distillation.teacher_cache_dir",
                        "distillation.teacher_cache_dtype", "evaluation", "plugins")
#: Run files whose difference resumption reports (the data, tokenisation, optimisation, models, objective).
STALE_PREFIXES = (".tmp-", ".deleting-")


class RunDirectoryError(BrewkitError, OSError):
    """The output directory cannot be used: it is a file, not writable, or in use by another process."""


class RunDirectory:
    def __init__(self, path: str, *, is_main: bool = True):
        self.path, self.is_main = path, is_main
        self._lock_file = None

    # -- claiming -----------------------------------------------------------------------------------------
    def claim(self, *, resuming: bool, overwrite: bool) -> None:
        """Lock the directory and check that this run may write into it (rank 0; other ranks do nothing)."""
        if not self.is_main:
            return
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirectoryError(f"output_dir: {self.path} is a file, not a directory; choose another output_dir")
        try:
            os.makedirs(self.path, exist_ok=True)
            f = open(os.path.join(self.path, LOCK), "a+", encoding="utf-8")  # noqa: SIM115 -- held until release()
        except OSError as e:
            raise RunDirectoryError(f"output_dir: cannot write to {self.path} ({e.strerror}); choose a writable "
                                    "output_dir") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            other = f.read().strip()[:40] or "another process"
            f.close()
            raise RunDirectoryError(f"output_dir: {self.path} is in use by a running brewkit train (process {other}); "
                                    "wait for it to finish or choose another output_dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f
        if overwrite or resuming:
            return
        if os.path.isdir(os.path.join(self.path, "final")):
            self.release()
            raise ConfigError(f"{self.path} holds a finished run (final/); set training.overwrite_output_dir: true "
                              "to replace it, or choose another output_dir", "output_dir")
        if list_checkpoints(self.path):
            self.release()
            raise ConfigError(f"{self.path} holds checkpoints of an unfinished run; resume it with --set "
                              "training.resume_from_checkpoint=true, replace it with "
                              "training.overwrite_output_dir: true, or choose another output_dir", "output_dir")

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file drops the flock
            self._lock_file = None

    # -- after the first batch ------------------------------------------------------------------------------
    def prepare(self, *, resuming: bool, overwrite: bool) -> None:
        """Once the run is known to work: remove partial directories of a killed run, and for a fresh start the
        previous run's files (with ``overwrite``) or a killed first attempt's metrics (so no step is logged
        twice). Keeps the tokenizer and the disk teacher cache, which do not depend on the run's history."""
        if not self.is_main:
            return
        doomed = [n for n in os.listdir(self.path) if n.startswith(STALE_PREFIXES) or ".old-" in n]
        if not resuming:
            doomed += ["metrics.jsonl", "summary.json"]
            if overwrite:
                doomed += ["final"] + [os.path.basename(p) for _, p in list_checkpoints(self.path)]
                doomed += [n for n in os.listdir(self.path) if n.startswith("gs") and n.endswith(".pkl")]
        for name in doomed:
            target = os.path.join(self.path, name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.exists(target):
                os.remove(target)

    def check_resumable(self, resolved: dict, force: bool) -> None:
        """Refuse to resume when the run file (``resolved``, with the data files' digests under
        ``data_digests``) differs from the one the directory was trained with."""
        if not self.is_main:
            return
        previous_path = os.path.join(self.path, RUN_FILE)
        if not os.path.isfile(previous_path):
            return
        with open(previous_path, encoding="utf-8") as f:
            previous = yaml.safe_load(f) or {}
        digests_path = os.path.join(self.path, DIGESTS)
        if os.path.isfile(digests_path):
            with open(digests_path, encoding="utf-8") as f:
                previous["data_digests"] = json.load(f)
        differing = [k for k in differences(previous, resolved) if not k.startswith(MAY_CHANGE_ON_RESUME)]
        if differing and not force:
            shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
            raise ConfigError(f"cannot resume {self.path}: this run differs from the one it holds in {shown}; "
                              "undo the change, train into another output_dir, or set training.force_resume: true",
                              "training.resume_from_checkpoint")

    # -- atomic writes --------------------------------------------------------------------------------------
    def write_file(self, name: str, write: Callable[[Any], None]) -> str:
        """``write(f)`` into ``.tmp-name``, fsynced, renamed to ``name``."""
        path = os.path.join(self.path, name)
        tmp = os.path.join(self.path, f".tmp-{name}-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def write_json(self, name: str, data: Any) -> str:
        return self.write_file(name, lambda f: json.dump(data, f, indent=2, sort_keys=True))

    def write_yaml(self, name: str, data: Any) -> str:
        return self.write_file(name, lambda f: yaml.safe_dump(data, f, sort_keys=False))

    def write_directory(self, name: str, write: Callable[[str], None]) -> str:
        """``write(tmp_dir)`` then rename to ``name`` (an old ``name`` is moved aside first, then deleted): a kill
        at any point leaves the old directory or the new one, never a half-written one under ``name``."""
        final = os.path.join(self.path, name)
        tmp = os.path.join(self.path, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        for root, _, files in os.walk(tmp):
            for file in files:
                with open(os.path.join(root, file), "rb") as f:
                    os.fsync(f.fileno())
        if os.path.exists(final):
            old = os.path.join(self.path, f".deleting-{name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return final


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two resolved run files differ (``data.max_length``, ``training.optimizer.lr``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(the whole file)"]


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (the data files' contents go into the resolved run file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
