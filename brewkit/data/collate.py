"""Collators: pad token id lists per batch and return tensors.

``PadCollator`` pads to the batch's longest row (``padding='longest'``, the default) or to ``max_length``,
then rounds up to ``pad_to_multiple_of`` (tensor cores like multiples of 8). ``attention_mask`` is 1
exactly on the real tokens; pad positions hold ``pad_token_id`` (``token_type_ids``: the tokenizer's pad
type id; per-token ``labels``: -100). ``PairCollator`` pads teacher and student rows separately when their
tokenizers differ. ``SelectCollator`` gives each model only the batch keys it takes (a ``{'teacher',
'student'}`` batch when those differ).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError

_PASSTHROUGH = ("labels", "idx")  # one integer per row (labels: or one per token, padded with -100)
IGNORE_INDEX = -100


class PadCollator:
    """``rows`` (dicts with ``input_ids`` [, ``token_type_ids``] [, ``labels``] [, ``idx``]) -> a batch.

    Token sequences may be lists or 1-D numpy arrays.
    Returns ``input_ids`` / ``attention_mask`` [/ ``token_type_ids``] as ``[B, L]`` long tensors and
    ``labels`` / ``idx`` as ``[B]`` long tensors (``labels`` ``[B, L]``, -100 on padding, when each row has one
    per token). Other row keys (``length``, ``attention_mask``) are not needed: the mask is rebuilt from the
    lengths. ``position_ids=True`` adds ``position_ids`` ``[B, L]``: each real token's index among its row's
    real tokens (0 on padding), so that a left-padded row gets the positions it has right-padded.
    """

    def __init__(self, pad_token_id: int, *, padding: str = "longest", max_length: int | None = None,
                 pad_to_multiple_of: int | None = None, padding_side: str = "right", pad_token_type_id: int = 0,
                 position_ids: bool = False):
        if padding not in ("longest", "max_length"):
            raise ConfigError(f"must be 'longest' or 'max_length', got {padding!r}", "padding")
        if padding == "max_length" and not (isinstance(max_length, int) and max_length > 0):
            raise ConfigError(f"padding='max_length' needs a positive max_length, got {max_length!r}", "max_length")
        if pad_to_multiple_of is not None and not (isinstance(pad_to_multiple_of, int) and pad_to_multiple_of > 0):
            raise ConfigError(f"must be a positive integer or None, got {pad_to_multiple_of!r}", "pad_to_multiple_of")
        if padding_side not in ("right", "left"):
            raise ConfigError(f"must be 'right' or 'left', got {padding_side!r}", "padding_side")
        self.pad_token_id = int(pad_token_id)
        self.pad_token_type_id = int(pad_token_type_id)
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side
        self.position_ids = bool(position_ids)

    @classmethod
    def for_tokenizer(cls, tokenizer, *, padding: str = "longest", max_length: int | None = None,
                      pad_to_multiple_of: int | None = None, padding_side: str | None = None,
                      position_ids: bool = False) -> "PadCollator":
        """Pad ids, pad type id and padding side from ``tokenizer`` (eos stands in for a missing pad token);
        ``padding_side`` overrides the tokenizer's."""
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ConfigError(f"{type(tokenizer).__name__} has neither a pad nor an eos token; set "
                              "tokenizer.pad_token before building the data loaders", "tokenizer")
        return cls(pad_id, padding=padding, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
                   padding_side=padding_side or getattr(tokenizer, "padding_side", "right"),
                   pad_token_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0, position_ids=position_ids)

    def padded_length(self, longest: int) -> int:
        length = max(longest, self.max_length) if self.padding == "max_length" else longest
        m = self.pad_to_multiple_of
        return -(-length // m) * m if m else length

    def _pad(self, seqs: list[Sequence[int]], length: int, value: int) -> torch.Tensor:
        # Filling a numpy array row by row is ~10x faster than torch.tensor on nested lists.
        out = np.full((len(seqs), length), value, dtype=np.int64)
        for i, s in enumerate(seqs):
            if self.padding_side == "right":
                out[i, :len(s)] = s
            else:
                out[i, length - len(s):] = s
        return torch.from_numpy(out)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        ids = [r["input_ids"] for r in rows]
        lengths = torch.tensor([len(s) for s in ids])
        length = self.padded_length(int(lengths.max()))
        positions = torch.arange(length)
        if self.padding_side == "right":
            mask = positions[None, :] < lengths[:, None]
        else:
            mask = positions[None, :] >= (length - lengths)[:, None]
        batch = {"input_ids": self._pad(ids, length, self.pad_token_id), "attention_mask": mask.long()}
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = self._pad([r["token_type_ids"] for r in rows], length, self.pad_token_type_id)
        if self.position_ids:
            batch["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
        for key in _PASSTHROUGH:
            if key not in rows[0]:
                continue
            if key == "labels" and isinstance(rows[0][key], (list, tuple, np.ndarray)):
                batch[key] = self._pad([r[key] for r in rows], length, IGNORE_INDEX)
            else:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch


class PairCollator:
    """Rows ``{'teacher': row, 'student': row}`` -> ``{'teacher': batch, 'student': batch}``, padded apart."""

    def __init__(self, teacher: PadCollator, student: PadCollator):
        self.teacher = teacher
        self.student = student

    def __call__(self, rows: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, torch.Tensor]]:
        return {"teacher": self.teacher([r["teacher"] for r in rows]),
                "student": self.student([r["student"] for r in rows])}


class SelectCollator:
    """Only the keys each model takes: ``collate(rows)`` with each part cut to ``teacher_keys`` /
    ``student_keys`` (``idx`` is always kept: the engine takes it out before a model is called). When the two
    sets differ, a single batch becomes ``{'teacher': ..., 'student': ...}`` (the parts share their tensors).
    A key set of None keeps everything."""

    def __init__(self, collate, teacher_keys: frozenset[str] | None, student_keys: frozenset[str] | None):
        self.collate = collate
        self.teacher_keys, self.student_keys = teacher_keys, student_keys

    @staticmethod
    def _keep(batch: dict, keys: frozenset[str] | None) -> dict:
        return dict(batch) if keys is None else {k: v for k, v in batch.items() if k in keys or k == "idx"}

    def __call__(self, rows: list) -> dict:
        batch = self.collate(rows)
        if "teacher" in batch and "student" in batch:
            return {"teacher": self._keep(batch["teacher"], self.teacher_keys),
                    "student": self._keep(batch["student"], self.student_keys)}
        teacher, student = self._keep(batch, self.teacher_keys), self._keep(batch, self.student_keys)
        if teacher.keys() == student.keys():
            return student
        return {"teacher": teacher, "student": student}
