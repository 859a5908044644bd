"""``BasicTrainer`` (no teacher) and ``BasicDistiller`` (one teacher, logits KD + hard labels)."""
from __future__ import annotations

from typing import Any

import torch

from ..configs import DistillationConfig, TrainingConfig
from ..engine.batches import detach_to_cpu, move_to_device, split_batch
from ..engine.cursor import LoaderCursor
from ..engine.micro_batch import MicroBatch, scale_of
from ..errors import AdaptorError, ConfigError
from ..teacher_store import TeacherStore
from .base import AbstractDistiller, CachedTeacherResults, check_model


def teacher_mask(results_T: dict, results_S: dict) -> list | None:
    """The teacher's ``logits_mask``; a teacher without one whose ``(B, L, C)`` logits have the student mask's
    ``(B, L)`` takes the student's (one tokenisation: the positions are the same, and the student's batch says
    which count; a causal-LM task gives its teacher no labels). Otherwise None."""
    mask_T, mask_S = results_T.get("logits_mask"), results_S.get("logits_mask")
    if mask_T or not mask_S:
        return mask_T
    shape = tuple(mask_S[0].shape)
    if all(isinstance(z, torch.Tensor) and z.dim() == 3 and tuple(z.shape[:2]) == shape  # not a TopKTeacher
           for z in results_T["logits"]):
        return mask_S
    return None


class BasicTrainer(AbstractDistiller):
    """Supervised training of one model: the objective is ``sum_j mean(losses_j)`` from its adaptor
    (for Hugging Face models with ``labels`` in the batch, the model's own loss)."""

    has_teacher = False

    def __init__(self, train_config: TrainingConfig, model: torch.nn.Module, adaptor: Any = None):
        super().__init__(train_config, None, None, model, None, adaptor)
        self.model, self.adaptor = model, adaptor

    def train(self, optimizer, dataloader, num_epochs=None, scheduler_class=None, scheduler_args=None,
              scheduler=None, max_grad_norm=-1.0, num_steps=None, callback=None, batch_postprocessor=None,
              **kwargs):
        super().train(optimizer, dataloader, num_epochs, scheduler_class, scheduler_args, scheduler,
                      max_grad_norm, num_steps, callback, batch_postprocessor, **kwargs)

    def train_on_batch(self, batch: Any, args: dict, micro: MicroBatch | None = None):
        results = self.student_results(batch, args, who="adaptor")
        return self.loss_of(results, None, micro)

    def compute_loss(self, results_S: dict, results_T: Any = None, micro: MicroBatch | None = None):
        loss = self.hard_label_term(results_S)
        if loss is None:
            raise AdaptorError("BasicTrainer needs 'losses' from its adaptor (for a Hugging Face model: put "
                               "'labels' in the batch so the model returns its loss)")
        return loss * scale_of(micro, self.hard_label_denominator), {}


class BasicDistiller(AbstractDistiller):
    """One teacher, one student: ``w_kd * KD(logits) + w_hl * sum_j mean(losses_j)``. No intermediate
    matches (use :class:`GeneralDistiller`)."""

    uses_matches = False

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig, model_T, model_S,
                 adaptor_T: Any = None, adaptor_S: Any = None):
        if not isinstance(distill_config, DistillationConfig):
            raise ConfigError(f"must be a DistillationConfig, got {type(distill_config).__name__}", "distill_config")
        if distill_config.intermediate_matches and not self.uses_matches:
            raise ConfigError(f"{type(self).__name__} does not use intermediate matches (TextBrewer silently "
                              "ignored them); use GeneralDistiller", "intermediate_matches")
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        self._check_teachers()

    def _check_teachers(self) -> None:
        if isinstance(self.model_T, TeacherStore):  # a captured store serves the teacher side (no model)
            return
        check_model(self.model_T, "model_T")

    # -- teacher side -----------------------------------------------------------------------------------
    def teacher_side(self, batch_T: Any, precomputed: Any, args: dict, task: str | None = None) -> dict:
        """Results of the teacher: recorded or stored, the batch's own ``teacher_cache`` entry (TextBrewer's
        protocol: it stands in for the model output), or a forward pass."""
        if isinstance(precomputed, CachedTeacherResults):
            return precomputed
        if precomputed is not None:
            return self.run_adaptor(self.adaptor_T, batch_T, precomputed, "adaptor_T")
        return self.teacher_results(self.model_T, self.adaptor_T, batch_T, args, "adaptor_T")

    def slim_teacher(self, results_T: dict) -> dict:
        """The part of the teacher results the loss uses (what caching keeps)."""
        return {k: results_T[k] for k in ("logits", "logits_mask") if k in results_T}

    def record_teacher_outputs(self, cursor: LoaderCursor, args: dict, task: str | None = None) -> list:
        items = []
        cursor.start_pass(0)
        while True:
            try:
                batch = cursor.next()
            except StopIteration:
                break
            batch_T, batch_S, precomputed = split_batch(batch)
            results = self.teacher_side(move_to_device(batch_T, self.device), precomputed, args, task)
            cached = CachedTeacherResults(detach_to_cpu(self.slim_teacher(results)))
            items.append({"teacher": batch_T, "student": batch_S, "teacher_cache": cached})
        self._validated = False  # the student side is checked on the first training batch
        return items

    # -- the step ---------------------------------------------------------------------------------------
    def train_on_batch(self, batch: Any, args: dict, micro: MicroBatch | None = None):
        batch_T, batch_S, precomputed = split_batch(batch)
        results_T = self.teacher_outputs(batch_T, precomputed, args, micro)
        results_S = self.student_results(batch_S, args)
        return self.loss_of(results_S, results_T, micro)

    def compute_loss(self, results_S: dict, results_T: dict, micro: MicroBatch | None = None):
        for who, r in (("adaptor_S", results_S), ("adaptor_T", results_T)):
            if not r.get("logits"):
                raise AdaptorError(f"{who} returned no 'logits'; {type(self).__name__} distills logits")
        return self.logits_terms(results_S, results_T, micro)

    def logits_terms(self, results_S: dict, results_T: dict, micro: MicroBatch | None = None
                     ) -> tuple[torch.Tensor, dict]:
        """KD on logits (when both sides have them) plus the hard-label term."""
        total, terms = 0.0, {}
        if results_S.get("logits") and results_T.get("logits"):
            kd, tau = self.kd_term(results_S["logits"], results_T["logits"], results_S,
                                   teacher_mask(results_T, results_S), results_S.get("logits_mask"), micro)
            total = total + self.weights["kd_loss_weight"] * kd
            terms["unweighted_kd_loss"] = kd
            if isinstance(tau, torch.Tensor):
                terms["temperature"] = tau.detach().float().mean()
        hl = self.hard_label_term(results_S)
        if hl is not None:
            total = total + self.weights["hard_label_weight"] * hl * scale_of(micro, self.hard_label_denominator)
            terms["unweighted_hard_label_loss"] = hl
        return total, terms
