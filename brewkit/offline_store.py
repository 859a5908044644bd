"""Offline teacher signals: run the teacher once over the training data (``brewkit capture``), then train with
no teacher in memory (``teacher: {store: DIR}``).

The store is a :class:`~brewkit.teacher_store.CapturedTeacherStore`: the per-example teacher store's directory
layout (``data-rank{r}.bin``, ``index-rank{r}.safetensors`` replaced atomically, bytes past the last index cut
on reopen, token hashes per example), with top-k records for token-level tasks and full logits for sequence
classification. This module owns what goes around it:

* the run-file settings: ``teacher.capture`` (:class:`CaptureConfig`: ``dir``, ``k``, ``temperature``,
  ``dtype``, ``selection``, ``seed``, ``flush_every``) and ``teacher.store`` / ``teacher.force`` (:class:`StoreSpec`);
* the **fingerprint items** (:func:`run_items`, :func:`teacher_items`) written to ``manifest.json`` and compared
  by name: ``teacher`` (sha256 of the weights; the model's source too), ``tokenizer``, ``data`` (sha256 of the
  train file), ``max_length``, ``task``, ``positions`` (what the task counts, from its settings),
  ``data.<key>`` (the data settings that change the training rows), ``k``, ``temperature``, ``dtype``,
  ``selection`` (``top_k`` or ``sampled``) and, for a sampled store, ``sample_seed``;
* :func:`capture` (the loop: resumable, one shard per rank under ``torchrun``, a progress bar with examples/s
  and bytes written) and :func:`check_distillation` (what a run from a store can and cannot compute).

A resumed capture compares every item (a store is never extended with another teacher's outputs). A run that
trains from a store compares the items it can know without the teacher: tokenizer, data, max_length, task,
positions, the data settings, the teacher's source when the ``teacher`` section still names the model, and
``k`` / ``dtype`` when it still has ``capture`` settings; each differing item is named in one ConfigError at
``teacher.store``, unless ``teacher.force: true`` (then a WARNING names them). The training temperature is
checked against the capture temperature with the exact rule of :mod:`brewkit.losses.sparse` (force does not
apply: a temperature the store cannot represent would train towards another distribution).
"""
from __future__ import annotations

import glob
import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .adaptors import normalize_output
from .engine.batches import call_model, move_to_device, split_batch, split_example_index
from .errors import ConfigError, brief
from .logging_utils import logger
from .losses.sparse import check_temperature, sampled_form, sampled_log_probs, sparse_form, topk_log_probs
from .teacher_store import (
    CAPTURED_FORMAT,
    MANIFEST,
    CapturedTeacherStore,
    fingerprint,
    ids_dtype,
    read_manifest,
    record_dtype,
    token_hashes,
    value_array,
)
from .validation import ConfigBase, check_bool, check_choice, check_int, check_number

DTYPES = ["float16", "bfloat16", "float32"]
#: The ``data`` keys that change which rows a run trains on or how they are encoded (fingerprinted as
#: ``data.<key>``); batching keys (batch size, shuffling, padding side, grouping) are not: the store re-pads.
DATA_KEYS = ("format", "text_column", "text_pair_column", "label_column", "labels", "max_unlisted_label_fraction",
             "drop_labels", "split", "dedupe", "max_train_examples", "prompt_column", "completion_column",
             "messages_column", "train_on_prompt")
#: Every fingerprint item, in the order messages name them.
ITEMS = ("teacher", "tokenizer", "data", "max_length", "task", "positions", "k", "temperature", "dtype", "selection",
         "sample_seed")
SELECTIONS = ("top_k", "sampled")


@dataclass
class CaptureConfig(ConfigBase):
    """``teacher.capture``: where and how ``brewkit capture`` writes the store.

    ``k``: top-k ids kept per counted position (token-level tasks; at most the vocabulary). ``temperature``:
    the capture temperature (default: ``distillation.temperature``). ``dtype``: the stored log-probabilities /
    logits (default float16 for top-k, float32 for classification logits). ``flush_every``: batches between
    two index flushes (what a kill can lose). ``selection``: ``top_k`` (the teacher's ``k`` most likely ids and
    the tail mass) or ``sampled`` (``k`` ids drawn from the teacher per position, kept as counts: an unbiased
    estimate, :mod:`brewkit.losses.sparse`), drawn with ``seed`` and the example's index (the same draws for an
    example whatever the batching, the resume or the rank)."""

    dir: str | None = None
    k: int = 64
    temperature: float | None = None
    dtype: str | None = None
    flush_every: int = 50
    selection: str = "top_k"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dir is not None:
            if not isinstance(self.dir, str) or not self.dir:
                raise ConfigError(f"must be a directory path, got {brief(self.dir)}", "dir")
            self.dir = os.path.expanduser(self.dir)
        self.k = check_int(self.k, "k", minimum=1)
        if self.temperature is not None:
            check_number(self.temperature, "temperature", positive=True)
            if not math.isfinite(self.temperature):
                raise ConfigError(f"must be a positive number, got {self.temperature!r}", "temperature")
            self.temperature = float(self.temperature)
        if self.dtype is not None:
            check_choice(self.dtype, "dtype", DTYPES)
        self.flush_every = check_int(self.flush_every, "flush_every", minimum=1)
        check_choice(self.selection, "selection", list(SELECTIONS))
        self.seed = check_int(self.seed, "seed", minimum=0)
        if self.seed and self.selection != "sampled":
            raise ConfigError(f"seeds the draws of selection: sampled, but selection is {self.selection!r}: nothing "
                              "is drawn; remove seed or set selection: sampled", "seed")


@dataclass
class StoreSpec:
    """``teacher: {store: DIR, force: false}``: train from a captured store. ``model`` is the section's model
    (path / config / builder) when it still names one (never loaded: its source is compared with the store's),
    ``capture`` its capture settings when given (``k`` and ``dtype`` compared)."""

    directory: str
    force: bool = False
    model: Any = None
    capture: CaptureConfig | None = None


STORE_KEYS = ("store", "force")


def store_spec(section: dict, base_dir: str | None, parse_model: Callable[[dict], Any]) -> StoreSpec:
    """The :class:`StoreSpec` of a ``teacher`` section that has ``store``; ``parse_model`` reads the rest of the
    section as a model spec when it names a model."""
    directory = section.get("store")
    if not isinstance(directory, str) or not directory:
        raise ConfigError(f"must be the directory of a captured teacher store, got {brief(directory)}",
                          "teacher.store")
    directory = os.path.expanduser(directory)
    if base_dir and not os.path.isabs(directory):
        directory = os.path.join(base_dir, directory)
    force = section.get("force", False)
    check_bool(force, "teacher.force")
    capture = section.get("capture")
    capture = capture_config(capture) if capture is not None else None
    rest = {k: v for k, v in section.items() if k not in (*STORE_KEYS, "capture")}
    model = parse_model(rest) if any(rest.get(k) is not None for k in ("path", "config", "builder")) else None
    return StoreSpec(directory, force, model, capture)


def capture_config(raw: Any) -> CaptureConfig:
    """``teacher.capture`` checked (errors at ``teacher.capture.<key>``)."""
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of k, temperature, dtype, selection, seed, dir, flush_every; got "
                          f"{brief(raw)}", "teacher.capture")
    try:
        return CaptureConfig.from_dict(raw)
    except ConfigError as e:
        raise e.at("teacher.capture") from None


# -- fingerprint items ---------------------------------------------------------------------------------------
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (config objects through ``to_dict``)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def run_items(data: Any, task: Any, task_name: str, tokenizer: Any) -> dict:
    """The items a training run and its store share: tokenizer, data, max_length, task, positions and the data
    settings (``data.<key>``)."""
    from .data import tokenizer_fingerprint
    from .paths import resolve_path

    train_file = resolve_path(data.train_file, None, "data.train_file") if data.train_file else None
    if not train_file or not os.path.isfile(train_file):
        raise ConfigError(f"the train file {brief(data.train_file)} does not exist", "data.train_file")
    items = {"tokenizer": tokenizer_fingerprint(tokenizer), "data": file_sha256(train_file),
             "max_length": data.max_length, "task": task_name,
             "positions": [task.positions(data), *[str(x) for x in task.fingerprint(data, tokenizer)]]}
    for key in DATA_KEYS:
        items[f"data.{key}"] = jsonable(getattr(data, key, None))
    return items


def model_source(spec: Any, seed: int | None, base_dir: str | None = None) -> dict:
    """Where a teacher's weights come from, comparable without loading it: the sha256 of a model directory's
    weight and config files, or the config / builder with the seed that initialises it."""
    if spec is None:
        return {}
    out: dict = {"task": spec.task, "num_labels": spec.num_labels, "dtype": spec.dtype,
                 "keep_layers": spec.keep_layers}
    if spec.path is not None:
        from .models import resolve_model_path

        location = resolve_model_path(spec.path, base_dir)
        files = sorted(glob.glob(os.path.join(location, "*.safetensors")) + [os.path.join(location, "config.json")])
        out["files"] = {os.path.basename(p): file_sha256(p) for p in files if os.path.isfile(p)}
    elif spec.config is not None:
        out.update(config=jsonable(spec.config), seed=seed)
    else:
        out.update(builder=spec.builder, args=jsonable(spec.args), seed=seed)
    return out


def differing(stored: Mapping, current: Mapping, names: list[str] | None = None) -> list[str]:
    """The item names whose values differ (``names``: only those; an item the store lacks differs)."""
    out = []
    for name in names if names is not None else list(current):
        if name in current and stored.get(name) != current[name]:
            out.append(name)
    return out


def describe_difference(name: str, stored: Any, current: Any) -> str:
    if name in ("teacher", "tokenizer", "data") and isinstance(stored, str) and isinstance(current, str):
        what = {"teacher": "the teacher's weights", "tokenizer": "the tokenizer",
                "data": "the train file's content"}[name]
        return f"{name} ({what}: sha256 {stored[:12]} in the store, {current[:12]} here)"
    if name == "teacher_source":
        return "teacher (the teacher section names another model than the one the store was captured from)"
    return f"{name} (store {brief(stored, 80)}, this run {brief(current, 80)})"


def refusal(directory: str, stored: Mapping, current: Mapping, names: list[str], what: str) -> str:
    parts = [describe_difference(n, stored.get(n), current.get(n)) for n in names]
    return f"the teacher store {directory} was captured with another {'; another '.join(parts)}; {what}"


# -- the manifest ---------------------------------------------------------------------------------------------
def new_manifest(kind: str, *, items: dict, k: int | None, vocab: int | None, classes: int | None,
                 temperature: float | None, dtype: str, selection: str = "top_k", seed: int = 0) -> dict:
    """The manifest of a new store (``kind`` ``topk`` or ``logits``); ``digest`` is the
    :class:`~brewkit.teacher_store.TeacherStore` fingerprint of the whole of it. A ``topk`` store's
    ``selection`` is ``top_k`` or ``sampled`` (then ``draws`` = ``k`` ids drawn per position with ``seed``,
    kept in ``min(k, vocab)`` slots)."""
    manifest = {"format": CAPTURED_FORMAT, "kind": kind, "dtype": dtype, "fingerprint": items, "complete": False}
    if kind == "topk":
        check_choice(selection, "selection", list(SELECTIONS))
        manifest.update(k=int(min(k, vocab)), vocab=int(vocab), temperature=float(temperature),
                        ids_dtype=ids_dtype(vocab), selection=selection)
        if selection == "sampled":
            manifest.update(draws=int(k), seed=int(seed))
    else:
        manifest.update(classes=int(classes))
    manifest["record_bytes"] = record_dtype(manifest).itemsize
    manifest["digest"] = hashlib.sha256(repr(sorted(items.items())).encode()).hexdigest()
    return manifest


# -- capture ---------------------------------------------------------------------------------------------------
def capture(teacher: torch.nn.Module, adaptor: Callable, loader: Any, directory: str, manifest: dict, *,
            device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
            barrier: Callable[[], None] = lambda: None, flush_every: int = 50, progress: bool = True,
            expected: list[int] | None = None, teacher_keys: Any = None) -> dict:
    """Run ``teacher`` over ``loader`` (this rank's shard) and write what a run needs into ``directory``.

    The teacher receives the batch keys in ``teacher_keys`` (None: all); ``adaptor`` sees the whole batch (the
    labels that say which positions count). Examples already stored (a resumed capture, or another rank's) are
    skipped without running the teacher.
    The index is flushed every ``flush_every`` batches and at the end; after a barrier, rank 0 marks the
    manifest complete when every index of ``expected`` (the training set's ``idx``) is stored. Returns the store's
    ``examples``, ``positions`` (records), ``bytes`` and ``bytes_per_position``, ``top_k_mass``
    (:meth:`~brewkit.teacher_store.CapturedTeacherStore.top_k_mass`), and this rank's ``written`` / ``skipped``
    examples and ``seconds``."""
    store = CapturedTeacherStore(directory, manifest, rank=rank, writable=True)
    kind, dtype = store.kind, manifest["dtype"]
    teacher.eval()
    t0, written, positions, skipped, done = time.perf_counter(), 0, 0, 0, 0
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc="capture", dynamic_ncols=True, unit="batch")
    try:
        for batch in loader:
            batch, idx = split_example_index(batch)
            if idx is None:
                raise ConfigError("capture needs batches with 'idx' (brewkit's data loaders add it)", "data")
            batch_T = split_batch(batch)[0]
            keys = idx.tolist()
            todo = [b for b, k in enumerate(keys) if k not in store]
            if not todo:
                skipped += len(keys)
            else:
                with torch.inference_mode():
                    on_device = move_to_device(batch_T, device)
                    inputs = on_device if teacher_keys is None else \
                        {k: v for k, v in on_device.items() if k in teacher_keys}
                    results = normalize_output(adaptor(on_device, call_model(teacher, inputs, {})), "adaptor_T")
                records, counts = teacher_records(results, store, manifest, keys)
                mask = batch_T["attention_mask"] if "attention_mask" in batch_T else torch.ones_like(
                    batch_T["input_ids"])
                hashes = token_hashes(batch_T["input_ids"], mask)
                starts = np.concatenate([[0], np.cumsum(counts)])
                for b in todo:
                    store.add(keys[b], hashes[b], records[starts[b]:starts[b + 1]])
                    positions += int(counts[b]) if kind == "topk" else 1
                    written += 1
                skipped += len(keys) - len(todo)
            done += 1
            if done % flush_every == 0:
                store.flush()
            if bar is not None:
                seconds = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{written / seconds:.1f} examples/s, {human_bytes(store.stored_bytes())} "
                                    "written")
                bar.update(1)
        store.flush()
    finally:
        if bar is not None:
            bar.close()
        store.close()
    barrier()
    seconds = time.perf_counter() - t0
    store = CapturedTeacherStore(directory, None, rank=rank, writable=rank == 0)
    total = len(store)
    if rank == 0 and expected is not None:
        if all(i in store for i in expected):
            store.mark_complete(len(expected))
        else:
            logger.warning("teacher store %s holds %d of %d examples: run brewkit capture again to finish it",
                           directory, total, len(expected))
    barrier()
    size = store.stored_bytes()
    positions_stored = stored_positions(store) if kind == "topk" else total
    return {"directory": directory, "kind": kind, "examples": total, "written": written, "skipped": skipped,
            "positions": positions_stored, "bytes": size,
            "bytes_per_position": size / max(positions_stored, 1), "seconds": round(seconds, 3),
            "complete": bool(read_manifest(directory).get("complete")), "k": manifest.get("k"),
            "dtype": dtype, "record_bytes": manifest["record_bytes"], "top_k_mass": store.top_k_mass()}


def teacher_records(results: Mapping, store: CapturedTeacherStore, manifest: Mapping,
                    keys: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(records, counts)``: a batch's teacher results as store records (rows in batch order) and each row's
    number of records. ``keys``: the rows' example indices (a sampled store draws with them)."""
    logits = results.get("logits")
    if not logits:
        raise ConfigError("the teacher's adaptor returned no logits, so there is nothing to capture", "teacher")
    if len(logits) != 1:
        raise ConfigError(f"the teacher's adaptor returned {len(logits)} logits tensors; capture stores one",
                          "teacher")
    z = logits[0]
    rec = np.zeros(0, dtype=store.record)
    if manifest["kind"] == "logits":
        if z.dim() != 2:
            raise ConfigError(f"a classification store holds (B, C) logits; the teacher gave {tuple(z.shape)}",
                              "task")
        rec = np.zeros(z.shape[0], dtype=store.record)
        rec["logits"] = value_array(z.float(), manifest["dtype"])
        return rec, np.ones(z.shape[0], dtype=np.int64)
    if z.dim() != 3:
        raise ConfigError(f"a top-k store holds (B, L, V) token logits; the teacher gave {tuple(z.shape)}", "task")
    if z.shape[-1] != manifest["vocab"]:
        raise ConfigError(f"the teacher's logits have {z.shape[-1]} classes but the store was started for "
                          f"{manifest['vocab']}", "teacher")
    masks = results.get("logits_mask")
    mask = masks[0].bool() if masks else torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    rows = z[mask.to(z.device)]
    counts = mask.sum(-1).cpu().numpy().astype(np.int64)
    if manifest.get("selection", "top_k") == "sampled":
        if keys is None or len(keys) != z.shape[0]:
            raise ConfigError("a sampled capture needs each row's example index", "teacher.capture.selection")
        uniforms = example_uniforms(keys, counts, int(manifest["draws"]), int(manifest["seed"]))
        ids, logp, tail = sampled_log_probs(rows, int(manifest["draws"]), manifest["temperature"], uniforms)
    else:
        ids, logp, tail = topk_log_probs(rows, manifest["k"], manifest["temperature"])
    rec = np.zeros(ids.shape[0], dtype=store.record)
    rec["ids"] = ids.cpu().numpy().astype(rec["ids"].dtype)
    rec["logp"] = value_array(logp, manifest["dtype"])
    rec["log_tail"] = value_array(tail, manifest["dtype"])
    return rec, counts


def example_uniforms(keys: list[int], counts: np.ndarray, draws: int, seed: int) -> torch.Tensor:
    """``(sum(counts), draws)`` uniforms in ``[0, 1)``: example ``keys[b]``'s ``counts[b]`` rows from a generator
    seeded with ``(seed, keys[b])`` alone, so an example gets the same draws in any batch, resume or rank."""
    parts = []
    for key, n in zip(keys, counts.tolist()):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(key)) % (1 << 63))
        parts.append(torch.rand(int(n), draws, generator=g))
    return torch.cat(parts) if parts else torch.zeros(0, draws)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# -- training from a store -----------------------------------------------------------------------------------
def check_distillation(dc: Any, manifest: Mapping, prefix: str = "distillation.") -> None:
    """What a run from a store cannot compute is a ConfigError at the ``distillation`` field: intermediate
    matches (no features are stored), the per-example caches (the teacher is read from a store already), and
    for a top-k store a KD loss
    without a sparse form, ``probability_shift``, a temperature scheduler, ``softcap``, or a temperature the
    store cannot represent (:func:`brewkit.losses.sparse.check_temperature`). A classification store holds
    the full logits: every KD loss and temperature works from it."""
    from .presets import KD_LOSS_MAP

    if dc.intermediate_matches:
        raise ConfigError("a captured teacher store holds the teacher's logits only, so intermediate matches have "
                          "no teacher features; remove them or distill from the live teacher",
                          f"{prefix}intermediate_matches")
    if dc.probability_shift and manifest["kind"] == "topk":
        raise ConfigError("needs the teacher's full logits and the labels; a top-k store keeps only the top-k "
                          "log-probabilities", f"{prefix}probability_shift")
    if dc.is_caching_logits or dc.teacher_cache != "none":
        field = "is_caching_logits" if dc.is_caching_logits else "teacher_cache"
        raise ConfigError("the teacher is already read from a captured store: there is nothing to cache; remove it",
                          f"{prefix}{field}")
    if manifest["kind"] != "topk":
        return
    kind = sparse_form(KD_LOSS_MAP.meta(dc.kd_loss_type).get("kind"), dc.kd_loss_type, f"{prefix}kd_loss_type")
    sampled = manifest.get("selection") == "sampled"
    if sampled:
        sampled_form(kind, dc.kd_loss_type, f"{prefix}kd_loss_type")
    if dc.temperature_scheduler not in ("none", None):
        raise ConfigError("per-row temperatures need every teacher logit; a top-k store holds log-probabilities "
                          f"at temperature {manifest['temperature']:g} only", f"{prefix}temperature_scheduler")
    if (dc.kd_loss_args or {}).get("softcap") is not None:
        raise ConfigError("soft-capping acts on the teacher's raw logits, which a top-k store does not keep",
                          f"{prefix}kd_loss_args.softcap")
    check_temperature(dc.temperature, float(manifest["temperature"]),
                      manifest["k"] >= manifest["vocab"] and not sampled, f"{prefix}temperature")


def open_for_training(spec: StoreSpec, current: dict, *, rank: int = 0) -> CapturedTeacherStore:
    """The store of ``spec`` for a run whose items are ``current``: complete, and with the same items (each
    differing one named; ``spec.force`` turns the refusal into a warning)."""
    manifest = read_manifest(spec.directory)
    if not manifest.get("complete"):
        held = len(CapturedTeacherStore(spec.directory, manifest, rank=rank))
        raise ConfigError(f"the teacher store {spec.directory} is incomplete ({held} examples stored; the capture "
                          "did not finish): run brewkit capture again with the same settings to finish it",
                          "teacher.store")
    stored = manifest.get("fingerprint") or {}
    names = differing(stored, current)
    if names:
        message = refusal(spec.directory, stored, current, names,
                          "capture again for this run, or set teacher.force: true to train from it anyway")
        if not spec.force:
            raise ConfigError(message, "teacher.store")
        logger.warning("teacher.force: %s", message)
    return CapturedTeacherStore(spec.directory, manifest, rank=rank)


def training_items(spec: StoreSpec, manifest: Mapping, items: dict, seed: int | None,
                   base_dir: str | None = None) -> dict:
    """``items`` (:func:`run_items`) plus what the ``teacher`` section still says: the model's source, and the
    capture's ``k`` / ``dtype``."""
    current = dict(items)
    if spec.model is not None:
        current["teacher_source"] = model_source(spec.model, seed, base_dir)
    if spec.capture is not None:
        if manifest["kind"] == "topk":
            current["k"] = int(min(spec.capture.k, manifest["vocab"]))
        if spec.capture.dtype is not None:
            current["dtype"] = spec.capture.dtype
        if spec.capture.temperature is not None and manifest["kind"] == "topk":
            current["temperature"] = spec.capture.temperature
        if manifest["kind"] == "topk":
            current["selection"] = spec.capture.selection
            if spec.capture.selection == "sampled":
                current["sample_seed"] = spec.capture.seed
    return current


def teacher_items(teacher: torch.nn.Module, source: dict) -> dict:
    """``teacher`` (sha256 over the weights, as the per-example store fingerprints them) and
    ``teacher_source`` (:func:`model_source`)."""
    return {"teacher": fingerprint([teacher], {}), "teacher_source": source}


def existing_store_check(directory: str, items: dict) -> None:
    """A capture into a directory that already holds a store: every item must match (it is resumed)."""
    if not os.path.exists(os.path.join(directory, MANIFEST)):
        return
    stored = read_manifest(directory).get("fingerprint") or {}
    names = differing(stored, items)
    if names:
        raise ConfigError(refusal(directory, stored, items, names, "a capture resumes only with the same teacher, "
                                  "data and settings: write to another --out, or delete the directory"), "--out")


RNG_FILE = "rng-after-teacher.safetensors"


def save_teacher_rng(directory: str, state: torch.Tensor, seed: int | None) -> None:
    """Keep torch's RNG state as it was right after the seeded teacher was built: a run from the store restores
    it before building its student, so a randomly initialised student starts from the weights it gets in the
    live run (where building the teacher drew from the RNG first)."""
    from safetensors.torch import save_file

    path = os.path.join(directory, RNG_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({"torch": state.clone(), "seed": torch.tensor([-1 if seed is None else seed], dtype=torch.long)}, tmp)
    os.replace(tmp, path)


def restore_teacher_rng(directory: str, seed: int | None) -> bool:
    """Set torch's RNG to the state :func:`save_teacher_rng` kept, when the run's seed is the capture's;
    returns whether it did."""
    from safetensors.torch import load_file

    path = os.path.join(directory, RNG_FILE)
    if seed is None or not os.path.isfile(path):
        return False
    saved = load_file(path)
    if int(saved["seed"].item()) != seed:
        logger.info("teacher store %s was captured with seed %s; this run's seed %s initialises the student "
                    "differently from a live run", directory, int(saved["seed"].item()), seed)
        return False
    torch.set_rng_state(saved["torch"])
    return True


def describe_store(directory: str) -> str:
    """One line for ``brewkit validate``."""
    m = read_manifest(directory)
    if m["kind"] == "topk":
        ids = f"{m['draws']} ids sampled from {m['vocab']}" if m.get("selection") == "sampled" else \
            f"top-{m['k']} of {m['vocab']} ids"
        return (f"teacher: the captured store {directory} ({ids} at temperature {m['temperature']:g}, {m['dtype']}, "
                f"{m['record_bytes']} B per position; no teacher model loaded)")
    return f"teacher: the captured store {directory} ({m['classes']} logits per example, {m['dtype']}; no teacher " \
           "model loaded)"


def stored_positions(store: CapturedTeacherStore) -> int:
    """How many records the store holds (positions for top-k, examples for logits)."""
    return int(sum(n for _, _, n, _ in store.entries()))
