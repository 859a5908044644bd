"""The per-example teacher store: teacher outputs kept per example, so that epochs after the first skip the
teacher's forward pass.

``DistillationConfig(teacher_cache="memory" | "disk")`` picks :class:`MemoryTeacherStore` or
:class:`DiskTeacherStore`; both are a :class:`TeacherStore` (``get`` / ``put`` / ``flush`` / ``refresh`` /
``close``). Not to be confused with the two other ways teacher outputs reach the loss: ``is_caching_logits``
(TextBrewer's: the whole first pass recorded, batch by batch, see ``AbstractDistiller.record_teacher_outputs``)
and a batch's own ``teacher_cache`` entry (outputs the user computed, standing in for the teacher's forward).

Batches must be mappings carrying ``idx`` (the example's index; brewkit's data loaders add it). The first time an
example is seen, the teacher runs and the part of its results the loss uses (``slim_teacher``: logits, logits mask,
the matched layers) is stored for that example, *unpadded*: a ``(B, L, ...)`` tensor keeps the example's ``n`` real
positions, a ``(B, H, L, L)`` attention map its ``(H, n, n)`` block. When every example of a later batch is cached,
the batch's teacher results are rebuilt from the store, zero-padded to the batch's length (losses mask padded
positions, so the values there never count), and the teacher does not run.

Stored, per example: the tensors (in ``teacher_cache_dtype``) and a hash of its token ids. A batch whose
tokens differ from what was stored under the same index raises (the data changed). The whole store carries a
fingerprint of the teacher's weights, its dtype, adaptor, the matched features and layers and the storage
dtype; ``disk`` caches live in a directory that a later run with the same fingerprint reuses from its first
step, and that a run with another fingerprint refuses to touch.

On disk: ``meta.json`` (fingerprint, layout), ``data-rank{r}.bin`` (tensors, appended) and
``index-rank{r}.safetensors`` (example index, offset, length, token hash), the index replaced atomically on
each flush (checkpoints, the end of each pass, the end of training). Bytes past the last flushed index are
discarded when the cache is reopened, so a killed run leaves a consistent cache behind. Under DDP every rank
writes its own files and reads everyone's at the start of each pass (the memory cache is per process).

A third kind, :class:`CapturedTeacherStore`, is written before training by ``brewkit capture``
(:mod:`brewkit.offline_store`) and read by a run with no teacher model (``teacher: {store: DIR}``; in Python, the
store in place of ``model_T``): the same directory layout, index, flush and truncation rules and token hashes,
with fixed-size records (top-k ids, log-probabilities and tail mass per counted position, or classification
logits) and a ``manifest.json`` of named fingerprint items in place of ``meta.json``.

The cache is exact when the teacher's output for an example does not depend on how its batch is padded: true
for right padding (and for left padding with models that take ``position_ids`` from the mask), not for
BERT-style absolute positions with left padding, where the first epoch's values are reused.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .adaptors import AttentionProbs
from .engine.batches import find_mask
from .errors import CheckpointError, ConfigError
from .losses.sparse import TopKTeacher
from .validation import check_choice

FORMAT = 1
MODES = ["none", "memory", "disk"]
DTYPES = ["float32", "float16", "bfloat16"]


def fingerprint(teachers: Iterable[torch.nn.Module], parts: Mapping[str, Any]) -> str:
    """sha256 over every teacher parameter and buffer (names, dtypes, shapes, bytes) and ``parts`` (JSON)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for i, model in enumerate(teachers):
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def token_hashes(input_ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """One 63-bit hash per row of the row's real tokens (padding, and which side it is on, ignored)."""
    m = mask.bool()
    return [int.from_bytes(hashlib.blake2b(ids[keep].long().numpy().tobytes(), digest_size=8).digest(), "little")
            >> 1 for ids, keep in zip(input_ids.cpu(), m.cpu())]


def _flatten(results: Mapping) -> tuple[list, list[torch.Tensor]]:
    """``results`` -> (template, leaves): the structure (keys, list kinds, where the Nones are) and tensors."""
    template, leaves = [], []
    for key in sorted(results):  # one order in every process (the results' own order may follow a set's)
        value = results[key]
        if isinstance(value, torch.Tensor):
            template.append([key, "tensor", 1, [0]])
            leaves.append(value)
        elif isinstance(value, (list, tuple)):
            present = [i for i, v in enumerate(value) if v is not None]
            kind = "probs" if isinstance(value, AttentionProbs) else "list"
            template.append([key, kind, len(value), present])
            leaves += [value[i] for i in present]
        elif value is not None:
            raise ConfigError(f"teacher_cache stores tensors and lists of tensors; the teacher results' {key!r} is "
                              f"a {type(value).__name__}", "teacher_cache")
    return template, leaves


def _unflatten(template: list, leaves: list[torch.Tensor]) -> dict:
    out, it = {}, iter(leaves)
    for key, kind, n, present in template:
        if kind == "tensor":
            out[key] = next(it)
            continue
        items: list = [None] * n
        for i in present:
            items[i] = next(it)
        out[key] = AttentionProbs(items) if kind == "probs" else items
    return out


def _layout(key: str, t: torch.Tensor, length: int) -> str:
    """How a batch tensor depends on the sequence: 'pair' (B, H, L, L), 'seq' (B, L, ...) or 'row'."""
    if t.dim() == 4 and t.shape[-1] == t.shape[-2] == length:
        return "pair"
    if (t.dim() >= 3 or key.endswith("mask")) and t.dim() >= 2 and t.shape[1] == length:
        return "seq"
    return "row"


class TeacherStore:
    """Per-example teacher results. ``get(idx, batch_T)`` returns the batch's teacher results when every example
    is stored, else None; ``put(idx, batch_T, results)`` stores the examples not stored yet. ``idx`` is ``[B]``
    (example indices) and ``batch_T`` the teacher's batch (its ``input_ids`` and attention mask give lengths and
    token hashes). Subclasses keep the rows: :meth:`_hash_of`, :meth:`_row`, :meth:`_add`."""

    mode = ""

    def __init__(self, fingerprint: str, dtype: str = "float32", rank: int = 0):
        check_choice(dtype, "teacher_cache_dtype", DTYPES)
        self.fingerprint, self.rank = fingerprint, rank
        self.dtype = getattr(torch, dtype)
        self.itemsize = torch.tensor([], dtype=self.dtype).element_size()
        self.template: list | None = None
        self.leaf_info: list[tuple[str, tuple, torch.dtype]] = []  # (layout, shape of one example's row, dtype)
        self.hits = self.misses = 0
        self.directory: str | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def __contains__(self, k: int) -> bool:
        raise NotImplementedError

    def _hash_of(self, k: int) -> int:
        raise NotImplementedError

    def _row(self, k: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def _add(self, k: int, h: int, n: int, row: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _layout_set(self, meta: dict) -> None:
        """Called once the first stored results fix the layout (the disk store records it)."""

    def flush(self) -> None:
        """Make what was stored so far durable and visible to the other processes (disk)."""

    def refresh(self) -> None:
        """Read what the other processes flushed (disk)."""

    def close(self) -> None:
        self.flush()

    # -- lookups ------------------------------------------------------------------------------------------
    def get(self, idx: torch.Tensor, batch_T: Any) -> dict | None:
        keys = _index_list(idx)
        if self.template is None or any(k not in self for k in keys):
            self.misses += 1
            return None
        mask, ids = _mask_and_ids(batch_T)
        hashes = token_hashes(ids, mask) if ids is not None else [None] * len(keys)
        rows = []
        for k, h in zip(keys, hashes):
            if h is not None and self._hash_of(k) != h:
                raise CheckpointError(f"example idx={k}: its tokens differ from the ones the teacher cache holds for "
                                      "that index; the data changed since the cache was written (delete "
                                      f"{self.directory or 'the cache'} or use another teacher_cache_dir)")
            rows.append(self._row(k))
        self.hits += 1
        return _unflatten(self.template, self._assemble(rows, mask))

    def put(self, idx: torch.Tensor, batch_T: Any, results: Mapping) -> None:
        keys = _index_list(idx)
        template, leaves = _flatten(results)
        mask, ids = _mask_and_ids(batch_T)
        if self.template is None:
            self._set_layout(template, leaves, mask.shape[1])
        elif template != self.template:
            raise ConfigError("the teacher results changed structure between batches; teacher_cache needs the same "
                              "keys and layers every batch", "teacher_cache")
        hashes = token_hashes(ids, mask) if ids is not None else [0] * len(keys)
        for b, (k, h) in enumerate(zip(keys, hashes)):
            if k in self:
                continue
            pos = mask[b].nonzero().flatten().cpu()
            row = [_take(t[b], layout, pos).detach().to("cpu", self.dtype).clone()
                   for t, (layout, _, _) in zip(leaves, self.leaf_info)]
            self._add(k, h, len(pos), row)

    # -- layout -------------------------------------------------------------------------------------------
    def _set_layout(self, template: list, leaves: list[torch.Tensor], length: int) -> None:
        info = []
        for (key, *_), t in zip(_leaf_keys(template), leaves):
            layout = _layout(key, t, length)
            info.append((layout, tuple(t.shape[1:]), t.dtype))
        meta = {"template": template, "leaves": [[lay, list(s), str(d).replace("torch.", "")] for lay, s, d in info]}
        self._layout_set(meta)
        self.template, self.leaf_info = template, info

    def _load_layout(self, meta: dict) -> None:
        self.template = meta["template"]
        self.leaf_info = [(lay, tuple(s), getattr(torch, d)) for lay, s, d in meta["leaves"]]

    def _assemble(self, rows: list[list[torch.Tensor]], mask: torch.Tensor) -> list[torch.Tensor]:
        """Per-example rows -> batch tensors zero-padded to the batch's mask."""
        m = mask.bool().cpu()
        B, L = m.shape
        out = []
        for j, (layout, shape, dtype) in enumerate(self.leaf_info):
            parts = [r[j] for r in rows]
            if layout == "row":
                out.append(torch.stack(parts).to(dtype))
                continue
            if layout == "seq":
                t = parts[0].new_zeros((B, L) + tuple(parts[0].shape[1:]))
            else:
                t = parts[0].new_zeros((B, parts[0].shape[0], L, L))
            for b in range(B):
                pos = m[b].nonzero().flatten()
                n = len(pos)
                if n == 0 and parts[b].numel() == 0:
                    continue  # a row without real tokens stays all zeros
                if n != parts[b].shape[0 if layout == "seq" else -1]:
                    raise CheckpointError(f"example in row {b}: the batch has {n} real tokens but the teacher cache "
                                          f"stored {parts[b].shape[0 if layout == 'seq' else -1]}; the data changed")
                contiguous = int(pos[-1]) - int(pos[0]) == n - 1
                s = slice(int(pos[0]), int(pos[0]) + n) if contiguous else pos
                if layout == "seq":
                    t[b, s] = parts[b]
                elif contiguous:
                    t[b, :, s, s] = parts[b]
                else:
                    t[b][:, pos[:, None], pos[None, :]] = parts[b]
            out.append(t.to(dtype))
        return out



class MemoryTeacherStore(TeacherStore):
    """Rows in this process's memory (per process under DDP), gone when training ends."""

    mode = "memory"

    def __init__(self, fingerprint: str, dtype: str = "float32", rank: int = 0):
        super().__init__(fingerprint, dtype, rank)
        self._rows: dict[int, tuple[int, list[torch.Tensor]]] = {}  # example index -> (token hash, row)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, k: int) -> bool:
        return k in self._rows

    def _hash_of(self, k: int) -> int:
        return self._rows[k][0]

    def _row(self, k: int) -> list[torch.Tensor]:
        return self._rows[k][1]

    def _add(self, k: int, h: int, n: int, row: list[torch.Tensor]) -> None:
        self._rows[k] = (h, row)


class DiskTeacherStore(TeacherStore):
    """Rows memory-mapped from ``directory``, reused by a later run with the same fingerprint (see the module
    docstring for the files)."""

    mode = "disk"

    def __init__(self, fingerprint: str, dtype: str = "float32", directory: str | None = None, rank: int = 0):
        super().__init__(fingerprint, dtype, rank)
        if not directory:
            raise ConfigError("a disk cache needs a directory", "teacher_cache_dir")
        self.directory = directory
        self._entries: dict[int, tuple[int, int, int, int]] = {}  # example index -> (segment, offset, length, hash)
        self._segments: dict[int, np.memmap | None] = {}
        self._sizes: dict[int, int] = {}
        self._writer = None
        self._own: list[tuple[int, int, int, int]] = []
        self._open_directory()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, k: int) -> bool:
        return k in self._entries

    def _hash_of(self, k: int) -> int:
        return self._entries[k][3]

    def _row(self, k: int) -> list[torch.Tensor]:
        return self._read(self._entries[k])

    def _add(self, k: int, h: int, n: int, row: list[torch.Tensor]) -> None:
        self._append(k, h, n, row)

    def _layout_set(self, meta: dict) -> None:
        known = self._meta.get("layout")
        if known is not None and known != json.loads(json.dumps(meta)):
            raise CheckpointError(f"the teacher cache in {self.directory} has another layout than this run's "
                                  "teacher results; delete it or use another teacher_cache_dir")
        self._meta["layout"] = meta
        _write_json(os.path.join(self.directory, "meta.json"), self._meta)

    def _open_directory(self) -> None:
        d = self.directory
        os.makedirs(d, exist_ok=True)
        meta_path = os.path.join(d, "meta.json")
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint or \
                    meta.get("dtype") != str(self.dtype).replace("torch.", ""):
                raise CheckpointError(
                    f"the teacher cache in {d} was written for another teacher, data layout or setting (fingerprint "
                    f"{str(meta.get('fingerprint'))[:12]}, dtype {meta.get('dtype')}; this run: "
                    f"{self.fingerprint[:12]}, {str(self.dtype).replace('torch.', '')}); delete the directory or "
                    "set teacher_cache_dir to another one")
            self._meta = meta
            if meta.get("layout"):
                self._load_layout(meta["layout"])
        else:
            self._meta = {"format": FORMAT, "fingerprint": self.fingerprint,
                          "dtype": str(self.dtype).replace("torch.", "")}
            _write_json(meta_path, self._meta)  # under DDP every rank may write it: the same content
        self.refresh()

    def refresh(self) -> None:
        """Read every rank's flushed index; this rank's data file is cut back to its index."""
        for path in sorted(glob.glob(os.path.join(self.directory, "index-rank*.safetensors"))):
            seg = int(os.path.basename(path)[len("index-rank"):-len(".safetensors")])
            if seg == self.rank and self._writer is not None:
                continue  # this rank's entries are already known
            index = load_file(path)
            for k, off, n, h in zip(index["idx"].tolist(), index["offset"].tolist(), index["length"].tolist(),
                                    index["hash"].tolist()):
                self._entries.setdefault(k, (seg, off, n, h))
            self._sizes[seg] = int(index["end"].item())
            self._segments[seg] = None  # (re)mapped on the next read
        meta_path = os.path.join(self.directory, "meta.json")
        if self.template is None and self._meta.get("layout") is None and os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                layout = json.load(f).get("layout")
            if layout:
                self._meta["layout"] = layout
                self._load_layout(layout)

    def _data_path(self, seg: int) -> str:
        return os.path.join(self.directory, f"data-rank{seg}.bin")

    def _open_writer(self) -> None:
        """Open this rank's data file for appending, cut back to its last flushed index first."""
        if self._writer is not None:
            return
        path = self._data_path(self.rank)
        end = self._sizes.get(self.rank, 0)
        with open(path, "ab"):
            pass
        os.truncate(path, end * self.itemsize)  # drop what a killed run wrote after its last flushed index
        self._writer = open(path, "ab")  # noqa: SIM115 -- appended to until close()
        self._own = [(kk, *e[1:]) for kk, e in self._entries.items() if e[0] == self.rank]

    def _append_bytes(self, k: int, h: int, n: int, data: bytes, items: int) -> None:
        """Append one example's ``data`` (``items`` units of ``itemsize`` bytes) and index it."""
        self._open_writer()
        offset = self._sizes.get(self.rank, 0)
        self._writer.write(data)
        self._sizes[self.rank] = offset + items
        self._entries[k] = (self.rank, offset, n, h)
        self._own.append((k, offset, n, h))
        self._segments[self.rank] = None

    def _append(self, k: int, h: int, n: int, row: list[torch.Tensor]) -> None:
        data = b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in row)
        self._append_bytes(k, h, n, data, sum(t.numel() for t in row))

    def flush(self) -> None:
        """Make everything written so far durable and visible: data fsynced, index replaced atomically."""
        if self._writer is None:
            return
        self._writer.flush()
        os.fsync(self._writer.fileno())
        own = self._own
        index = {"idx": torch.tensor([e[0] for e in own], dtype=torch.long),
                 "offset": torch.tensor([e[1] for e in own], dtype=torch.long),
                 "length": torch.tensor([e[2] for e in own], dtype=torch.long),
                 "hash": torch.tensor([e[3] for e in own], dtype=torch.long),
                 "end": torch.tensor([self._sizes.get(self.rank, 0)], dtype=torch.long)}
        path = os.path.join(self.directory, f"index-rank{self.rank}.safetensors")
        tmp = path + ".tmp"
        save_file(index, tmp)
        os.replace(tmp, path)

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _read(self, entry: tuple) -> list[torch.Tensor]:
        seg, offset, n, _ = entry
        mm = self._segments.get(seg)
        if mm is None:
            if self._writer is not None and seg == self.rank:
                self._writer.flush()
            # only the flushed (or, for this rank, written) items: a killed writer may have left a partial tail
            mm = np.memmap(self._data_path(seg), dtype={4: np.int32, 2: np.int16}[self.itemsize], mode="r",
                           shape=(self._sizes[seg],))
            self._segments[seg] = mm
        row, pos = [], offset
        for layout, shape, _ in self.leaf_info:
            if layout == "row":
                full = shape
            elif layout == "seq":
                full = (n,) + shape[1:]
            else:
                full = (shape[0], n, n)
            size = int(np.prod(full)) if full else 1
            row.append(torch.from_numpy(np.array(mm[pos:pos + size])).view(self.dtype).reshape(full))
            pos += size
        return row


class CapturedTeacherStore(DiskTeacherStore):
    """A store captured before training (``brewkit capture``, :mod:`brewkit.offline_store`) and read by a run with
    no teacher model: the same directory layout, index files, flush and truncation rules as
    :class:`DiskTeacherStore`, with a fixed-size *record* per stored position in place of the dense template.

    ``manifest.json`` says what a record is (``kind``):

    * ``topk`` (token-level tasks): one record per counted position, ``ids`` (``k`` token ids, uint16 when the
      vocabulary has at most 65,536 ids, else int32), ``logp`` (their log-probabilities at the capture
      temperature, in the store ``dtype``) and ``log_tail`` (log of the probability outside those ids); with
      ``selection: sampled`` the ids drawn from the teacher and ``log(count / draws)``, tail ``-inf``;
      ``length`` in the index is the example's number of counted positions ``M``.
    * ``logits`` (sequence classification): one record per example, its full ``(C,)`` logits.

    ``get`` rebuilds a batch's teacher results from the records in the batch's row order: ``{"logits":
    [TopKTeacher]}`` (the counted positions of every row, concatenated as ``logits[mask]`` orders them) or
    ``{"logits": [(B, C) tensor]}``. Every example must be in the store (a missing one is a CheckpointError), and
    its token hash must match. With ``positions`` set (the task's ``(B, L)`` mask function), each row's number of
    counted positions is checked against the store's too. ``put`` is refused: records are written by
    :meth:`add` during a capture (``writable=True``).
    """

    mode = "captured"

    def __init__(self, directory: str, manifest: dict | None = None, rank: int = 0, writable: bool = False):
        path = os.path.join(directory, MANIFEST)
        if manifest is None:
            manifest = read_manifest(directory)
        elif os.path.exists(path):
            manifest = read_manifest(directory)  # resuming a capture: the caller compared the fingerprints
        self.manifest = manifest
        self.kind = manifest["kind"]
        self.writable = writable
        self.positions: Any = None
        self.record = record_dtype(manifest)
        super().__init__(manifest["digest"], "float32", directory, rank)
        self.itemsize = self.record.itemsize  # sizes and offsets count records

    def _open_directory(self) -> None:
        d = self.directory
        path = os.path.join(d, MANIFEST)
        if self.writable:
            os.makedirs(d, exist_ok=True)
            if not os.path.exists(path):
                _write_json(path, self.manifest)  # under DDP every rank may write it: the same content
        elif not os.path.exists(path):
            raise ConfigError(f"{d} holds no captured teacher store ({MANIFEST}); write one with brewkit capture",
                              "teacher.store")
        self._meta = self.manifest
        self.refresh()

    # -- writing (capture) --------------------------------------------------------------------------------
    def add(self, k: int, h: int, records: np.ndarray) -> None:
        """Store example ``k`` (token hash ``h``): ``records`` is a 1-D array of :attr:`record` (one per counted
        position, or one for a classification example)."""
        if not self.writable:
            raise CheckpointError(f"the teacher store in {self.directory} is read-only here")
        if k in self:
            return
        records = np.ascontiguousarray(records, dtype=self.record)
        self._append_bytes(k, h, len(records), records.tobytes(), len(records))

    def put(self, idx: torch.Tensor, batch_T: Any, results: Mapping) -> None:
        raise CheckpointError(f"the captured teacher store in {self.directory} is read-only during training; "
                              "write it with brewkit capture")

    def mark_complete(self, examples: int) -> None:
        """Record in the manifest that all ``examples`` training examples are stored (rank 0, after a barrier)."""
        self.manifest = {**self.manifest, "complete": True, "examples": examples,
                         "positions": int(sum(e[2] for e in self.entries()))}
        self._meta = self.manifest
        _write_json(os.path.join(self.directory, MANIFEST), self.manifest)

    # -- reading ------------------------------------------------------------------------------------------
    def _read(self, entry: tuple) -> np.ndarray:
        seg, offset, n, _ = entry
        mm = self._segments.get(seg)
        if mm is None:
            if self._writer is not None and seg == self.rank:
                self._writer.flush()
            mm = np.memmap(self._data_path(seg), dtype=self.record, mode="r", shape=(self._sizes[seg],)) \
                if self._sizes[seg] else np.zeros(0, dtype=self.record)
            self._segments[seg] = mm
        return mm[offset:offset + n]

    def _row(self, k: int) -> np.ndarray:
        return self._read(self._entries[k])

    def get(self, idx: torch.Tensor, batch_T: Any) -> dict:
        keys = _index_list(idx)
        missing = [k for k in keys if k not in self]
        if missing:
            raise CheckpointError(f"example idx={missing[0]} is not in the teacher store {self.directory} (it holds "
                                  f"{len(self)} examples); the store was captured for other data, or the capture "
                                  "did not finish: run brewkit capture again")
        mask, ids = _mask_and_ids(batch_T)
        hashes = token_hashes(ids, mask) if ids is not None else [None] * len(keys)
        for k, h in zip(keys, hashes):
            if h is not None and self._hash_of(k) != h:
                raise CheckpointError(f"example idx={k}: its tokens differ from the ones the teacher store "
                                      f"{self.directory} was captured from; the data changed since: capture again")
        rows = [self._row(k) for k in keys]
        self.hits += 1
        if self.kind == "logits":
            logits = np.concatenate(rows)["logits"]
            return {"logits": [field_tensor(logits, self.manifest["dtype"]).float()]}
        counts = torch.tensor([len(r) for r in rows], dtype=torch.long)
        if self.positions is not None and isinstance(batch_T, Mapping):
            expected = self.positions(batch_T).sum(-1).cpu()
            bad = (expected != counts).nonzero().flatten().tolist()
            if bad:
                b = bad[0]
                raise CheckpointError(f"example idx={keys[b]}: this run counts {int(expected[b])} positions but the "
                                      f"teacher store holds {int(counts[b])}; the positions counted changed since the "
                                      "capture (task or data settings): capture again")
        records = np.concatenate(rows) if rows else np.zeros(0, dtype=self.record)
        return {"logits": [TopKTeacher(
            ids=torch.from_numpy(records["ids"].astype(np.int64)).reshape(-1, self.manifest["k"]),
            logp=field_tensor(records["logp"], self.manifest["dtype"]).float().reshape(-1, self.manifest["k"]),
            log_tail=field_tensor(records["log_tail"], self.manifest["dtype"]).float().reshape(-1),
            temperature=float(self.manifest["temperature"]), vocab=int(self.manifest["vocab"]), counts=counts,
            sampled=self.manifest.get("selection") == "sampled")]}

    def entries(self) -> list[tuple[int, int, int, int]]:
        """``(segment, offset, length, token hash)`` of every stored example (length: its records)."""
        return list(self._entries.values())

    def top_k_mass(self) -> float | None:
        """The mean over stored positions of the teacher's probability on its top-k ids, ``1 - P_tail`` (None for
        a logits store or an empty one). It says how much of the teacher a top-k loss sees: near 1 the buckets
        are nearly the full distribution; far below, the tail bucket carries much of it and says nothing about
        which tail token comes next (then a larger k, a sampled store, or hard labels beside the sparse KD,
        helps). None for a sampled store too: its ids carry all of its estimate's mass by construction."""
        if self.kind != "topk" or self.manifest.get("selection") == "sampled":
            return None
        total, n = 0.0, 0
        for entry in self.entries():
            tail = field_tensor(self._read(entry)["log_tail"], self.manifest["dtype"]).double()
            total += float((1 - tail.exp()).sum())
            n += tail.numel()
        return total / n if n else None

    def stored_bytes(self) -> int:
        """Bytes on disk: the data files, the index files and the manifest."""
        return sum(os.path.getsize(p) for p in glob.glob(os.path.join(self.directory, "*"))
                   if os.path.isfile(p))


MANIFEST = "manifest.json"
#: ``manifest.json``'s ``format``.
CAPTURED_FORMAT = "brewkit-captured-teacher-store/1"
#: numpy field type of a stored value per ``dtype`` (bfloat16 as its bits: numpy has no bfloat16).
_VALUE_FIELDS = {"float16": "<f2", "float32": "<f4", "bfloat16": "<u2"}


def ids_dtype(vocab: int) -> str:
    """The id type of a top-k store over ``vocab`` ids: uint16 for at most 65,536 ids, else int32."""
    return "uint16" if vocab <= 65536 else "int32"


def record_dtype(manifest: Mapping) -> np.dtype:
    """The numpy record of a captured store (see :class:`CapturedTeacherStore`)."""
    value = _VALUE_FIELDS[manifest["dtype"]]
    if manifest["kind"] == "logits":
        return np.dtype([("logits", value, (int(manifest["classes"]),))])
    k = int(manifest["k"])
    return np.dtype([("ids", "<u2" if manifest["ids_dtype"] == "uint16" else "<i4", (k,)),
                     ("logp", value, (k,)), ("log_tail", value)])


def field_tensor(values: np.ndarray, dtype: str) -> torch.Tensor:
    """A stored value field as a torch tensor of its ``dtype`` (a copy: memory maps are read-only)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.array(values).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(values))


def value_array(t: torch.Tensor, dtype: str) -> np.ndarray:
    """A float tensor in the store ``dtype``, as the numpy array a record field takes."""
    t = t.detach().to("cpu", getattr(torch, dtype)).contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()


def read_manifest(directory: str) -> dict:
    """``manifest.json`` of a captured store; a missing, unreadable or foreign one is a ConfigError at
    ``teacher.store``."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise ConfigError(f"{directory} holds no captured teacher store (no {MANIFEST}); write one with brewkit "
                          "capture RUN.yaml --out DIR", "teacher.store")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {e}); capture the store again",
                          "teacher.store") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CAPTURED_FORMAT:
        raise ConfigError(f"{path} is not a brewkit teacher store manifest (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected "
                          f"{CAPTURED_FORMAT!r})", "teacher.store")
    return manifest


def open_store(mode: str, fingerprint: str, dtype: str = "float32", directory: str | None = None,
               rank: int = 0) -> TeacherStore:
    """The store for ``teacher_cache=mode`` ('memory' or 'disk')."""
    check_choice(mode, "teacher_cache", ["memory", "disk"])
    if mode == "memory":
        return MemoryTeacherStore(fingerprint, dtype, rank)
    return DiskTeacherStore(fingerprint, dtype, directory, rank)


def _leaf_keys(template: list) -> list[tuple]:
    return [(key,) for key, kind, n, present in template for _ in (present if kind != "tensor" else [0])]


def _take(t: torch.Tensor, layout: str, pos: torch.Tensor) -> torch.Tensor:
    """One example's tensor (batch dim removed) cut to its real positions ``pos``."""
    if layout == "row":
        return t
    n = len(pos)
    contiguous = n == 0 or int(pos[-1]) - int(pos[0]) == n - 1
    s = slice(int(pos[0]), int(pos[0]) + n) if contiguous and n else pos.to(t.device)
    if layout == "seq":
        return t[s]
    return t[:, s, s] if contiguous and n else t[:, pos[:, None].to(t.device), pos[None, :].to(t.device)]


def _index_list(idx: Any) -> list[int]:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ConfigError("teacher_cache needs each batch to carry 'idx': a [B] integer tensor of example indices "
                          "(brewkit's data loaders add it; with your own loader, add it in the collate function)",
                          "teacher_cache")
    return idx.tolist()


def _mask_and_ids(batch_T: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = batch_T.get("input_ids") if isinstance(batch_T, Mapping) else None
    mask = find_mask(batch_T)
    if mask is None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ConfigError("teacher_cache needs the teacher's batch to have an attention_mask or [B, L] "
                              "input_ids (it stores each example's real positions)", "teacher_cache")
        mask = torch.ones_like(ids)
    return mask.cpu(), ids.cpu() if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
