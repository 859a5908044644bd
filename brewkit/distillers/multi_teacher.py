"""``MultiTeacherDistiller``: several same-task teachers, one student."""
from __future__ import annotations

from typing import Any

import torch

from ..configs import DistillationConfig, TrainingConfig
from ..errors import ConfigError
from .base import CachedTeacherResults, check_model
from .basic import BasicDistiller


class MultiTeacherDistiller(BasicDistiller):
    """Distill the combined teachers into one student (KD on logits + hard labels; no matches).

    Teacher combination per logits slot (``DistillationConfig.teacher_aggregation``):

    - ``'logits_mean'`` (default, TextBrewer): ``z_T = sum_n w_n z_n`` with ``w_n = 1/N`` unless
      ``teacher_weights`` is given (normalised to sum 1);
    - ``'probs_mean'``: ``p_T = sum_n w_n softmax(z_n / tau)``, passed to the KD loss as the logits
      ``tau * log p_T`` so that ``softmax(z_T / tau) = p_T`` exactly.

    ``logits_mask`` comes from the first teacher, as in TextBrewer.
    """

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig, model_T: list, model_S,
                 adaptor_T: Any = None, adaptor_S: Any = None):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        n = len(self.model_T)
        if callable(adaptor_T) or adaptor_T is None:
            self.adaptors_T = [adaptor_T] * n
        elif hasattr(adaptor_T, "__iter__"):
            self.adaptors_T = list(adaptor_T)
            if len(self.adaptors_T) != n:
                raise ConfigError(f"got {len(self.adaptors_T)} adaptors for {n} teachers", "adaptor_T")
        else:
            raise ConfigError("must be a callable or a list of callables, one per teacher", "adaptor_T")
        w = distill_config.teacher_weights
        if w is not None and len(w) != n:
            raise ConfigError(f"got {len(w)} weights for {n} teachers", "teacher_weights")
        self.teacher_weights = None if w is None else [x / sum(w) for x in w]

    def _check_teachers(self) -> None:
        if isinstance(self.model_T, torch.nn.Module) or not isinstance(self.model_T, (list, tuple)) \
                or not self.model_T:
            raise ConfigError("must be a non-empty list of teacher models", "model_T")
        for i, t in enumerate(self.model_T):
            check_model(t, f"model_T[{i}]")

    def store_fingerprint_parts(self) -> dict:
        d = self.d_config
        return {**super().store_fingerprint_parts(),
                "adaptors_T": [getattr(a, "__qualname__", type(a).__name__) for a in self.adaptors_T],
                "aggregation": [d.teacher_aggregation, d.teacher_weights, d.temperature]}

    def teacher_side(self, batch_T: Any, precomputed: Any, args: dict, task: str | None = None) -> dict:
        if isinstance(precomputed, CachedTeacherResults):
            return precomputed
        if precomputed is not None:
            per_teacher = [self.run_adaptor(a, batch_T, c, f"adaptor_T[{i}]")
                           for i, (a, c) in enumerate(zip(self.adaptors_T, precomputed))]
        else:
            per_teacher = [self.teacher_results(m, a, batch_T, args, f"adaptor_T[{i}]")
                           for i, (m, a) in enumerate(zip(self.model_T, self.adaptors_T))]
        return self.combine(per_teacher)

    def combine(self, per_teacher: list[dict]) -> dict:
        """One teacher result from several: combined logits, the first teacher's logits_mask."""
        slots = [r.get("logits") or [] for r in per_teacher]
        if len({len(s) for s in slots}) != 1:
            raise ConfigError(f"the teachers returned different numbers of logits tensors: "
                              f"{[len(s) for s in slots]}", "adaptor_T")
        d, w = self.d_config, self.teacher_weights
        combined = []
        for k in range(len(slots[0])):
            zs = [s[k] for s in slots]
            if d.teacher_aggregation == "probs_mean":
                weights = w or [1.0 / len(zs)] * len(zs)
                p = sum(wi * torch.softmax(z.float() / d.temperature, dim=-1) for wi, z in zip(weights, zs))
                combined.append(d.temperature * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)))
            elif w is None:
                combined.append(sum(zs) / len(zs))
            else:
                combined.append(sum(wi * z for wi, z in zip(w, zs)))
        out = {"logits": combined}
        if per_teacher[0].get("logits_mask") is not None:
            out["logits_mask"] = per_teacher[0]["logits_mask"]
        return out
