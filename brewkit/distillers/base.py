"""``AbstractDistiller``: the objective every distiller shares.

The objective is the teacher side (teachers under ``inference_mode``, their adaptors, the teacher stores), the
student side (the student and its adaptor) and the loss terms built from both (:meth:`compute_loss`).
Subclasses define the teacher side and the loss; users override :meth:`compute_loss` or :meth:`train_on_batch`.
The loop, ``train()``, is :class:`brewkit.engine.loop.TrainingLoop`; ``docs/architecture.md`` has the map.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..adaptors import AttentionProbs, hf_adaptor, normalize_output, validate_output
from ..checkpoint import unwrap
from ..configs import DistillationConfig, TrainingConfig
from ..engine import session as sessions
from ..engine.batches import call_model, find_mask, move_to_device, split_batch, split_example_index
from ..engine.cursor import LoaderCursor, MappedLoader, RecordedCursor, loader_shuffles
from ..engine.loop import TrainingLoop
from ..engine.micro_batch import MicroBatch, scale_of
from ..engine.stop import StopSignal
from ..errors import AdaptorError, ConfigError
from ..logging_utils import ensure_default_handler, logger
from ..losses.divergences import kd_loss_implementation
from ..losses.sparse import TopKTeacher, fused_linear_sparse_kd_loss, sparse_form, sparse_kd_loss
from ..presets import ADAPTOR_KEYS, FEATURES, KD_LOSS_MAP
from ..teacher_store import CapturedTeacherStore, TeacherStore, open_store
from ..teacher_store import fingerprint as store_fingerprint
from .logits import probability_shift_, select_logits_with_mask


class CachedTeacherResults(dict):
    """Teacher adaptor results computed earlier (recorded or stored); used as they are."""


def check_model(model: Any, name: str) -> None:
    """Raise a :class:`ConfigError` naming ``name`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        hint = " (it looks like a state_dict: build the model and load_state_dict() into it)" \
            if isinstance(model, Mapping) and model and all(isinstance(v, torch.Tensor) for v in model.values()) \
            else ""
        raise ConfigError(f"must be a torch.nn.Module, got {type(model).__name__}{hint}", name)


def clone_if_inference(x: Any) -> Any:
    """Teacher outputs made under inference_mode cannot be saved for backward; clone the ones we use."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_inference() else x
    if isinstance(x, AttentionProbs):
        return AttentionProbs(clone_if_inference(v) for v in x)
    if isinstance(x, list):
        return type(x)(clone_if_inference(v) for v in x)
    if isinstance(x, tuple):
        return tuple(clone_if_inference(v) for v in x)
    return x


def accepts(method: Callable, name: str) -> bool:
    """Whether ``method`` takes a parameter called ``name`` (or ``**kwargs``)."""
    params = inspect.signature(method).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class AbstractDistiller(TrainingLoop):
    """The objective (the loop is inherited from :class:`~brewkit.engine.loop.TrainingLoop`). Attributes
    TextBrewer users rely on keep their names: ``t_config``, ``d_config``, ``model_T``, ``model_S``,
    ``adaptor_T``, ``adaptor_S``, ``kd_loss``, ``projs``, ``projs_group``."""

    has_teacher = True
    #: What the KD term of masked token-level logits and the hard-label term average over (names from
    #: brewkit.engine.batches.DENOMINATORS), for effective-batch normalisation. A task sets them
    #: (brewkit.tasks: ``next_tokens`` for both in a causal LM).
    kd_denominator = "tokens"
    hard_label_denominator = "rows"

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig | None,
                 model_T: Any, model_S: nn.Module, adaptor_T: Any, adaptor_S: Any):
        if not isinstance(train_config, TrainingConfig):
            raise ConfigError(f"must be a TrainingConfig, got {type(train_config).__name__}", "train_config")
        if distill_config is not None and not isinstance(distill_config, DistillationConfig):
            raise ConfigError(f"must be a DistillationConfig, got {type(distill_config).__name__}",
                              "distill_config")
        check_model(model_S, "model_S")
        if train_config.data_parallel:
            raise ConfigError("DataParallel is not supported; run data-parallel with torchrun (DDP), which is "
                              "faster on one machine too", "data_parallel")
        self.t_config, self.d_config = train_config, distill_config
        self.model_T, self.model_S = model_T, model_S
        self.adaptor_T, self.adaptor_S = adaptor_T, adaptor_S
        self.device = torch.device(train_config.device)
        self.kd_loss = KD_LOSS_MAP[distill_config.kd_loss_type] if distill_config else None
        self.kd_implementation = distill_config.kd_implementation if distill_config else "plain"
        if self.kd_implementation != "plain":  # chunked: same call; fused: student hidden states + output layer
            self.kd_loss = kd_loss_implementation(distill_config.kd_loss_type, self.kd_implementation)
        self.kd_loss_args = dict(getattr(distill_config, "kd_loss_args", None) or {})
        self._kd_takes_t2 = self.kd_loss is not None and accepts(self.kd_loss, "temperature_squared")
        self.temperature_scheduler = distill_config.temperature_scheduler_fn() if distill_config else None
        self.projs: list[nn.Module | None] = []
        self.projs_group: list[dict] = []
        self.global_step = 0
        self.weights = self.initial_weights()
        self.rank, self.world_size = 0, 1
        self.stop = StopSignal()
        self.interrupted = False  # the last train() stopped early (signal or request_stop()), after a checkpoint
        self.stop_reason: str | None = None  # then why: 'SIGINT', 'SIGTERM', 'request_stop()', 'another process'
        self.student_forward: Callable = model_S  # the student, or its torch.compile / DDP wrapper
        #: whether the student's forward gets the batch's ``labels`` (and computes its own loss); a task turns it
        #: off when that loss is only an unused hard-label term (``Task.labels_only_for_hard_labels``)
        self.labels_to_student = True
        self.recorded: Any = None  # is_caching_logits: the batches with their teacher results, made once
        self.teacher_store: TeacherStore | None = None  # teacher_cache: the per-example store of the last train()
        self._validated = False  # the first batch's adaptor / match checks have run
        self._mask_matches_batch = True  # the student's inputs_mask is the batch's mask (see student_results)
        self._keeps_no_logits: dict[int, bool] = {}  # per student adaptor: reads_no_student_logits
        self._teacher_grad_flags: list[tuple[nn.Parameter, bool]] = []
        self._session: sessions.TrainingSession | None = None
        # decided once: do (possibly user-overridden) step and loss methods take the micro-batch?
        self._step_takes_micro = accepts(self.train_on_batch, "micro")
        self._loss_takes_micro = accepts(self.compute_loss, "micro")
        ensure_default_handler()

    # -- models and modes -------------------------------------------------------------------------------
    def teachers(self) -> list[nn.Module]:
        """Every teacher module (a single model, a list or a dict of them)."""
        t = self.model_T
        if t is None or isinstance(t, TeacherStore):  # a captured store stands in for the teacher: no model
            return []
        if isinstance(t, nn.Module):
            return [t]
        return list(t.values()) if isinstance(t, Mapping) else list(t)

    def __enter__(self):
        self._modes = [(m, m.training) for m in self.teachers() + [self.model_S]]
        for t in self.teachers():
            t.eval()
        self.model_S.train()
        return self

    def __exit__(self, exc_type, exc, tb):
        for m, mode in self._modes:
            m.train(mode)

    def prepare_models(self) -> None:
        """Models on the device, teachers in eval mode and frozen, the student training (done by ``train()``)."""
        tc = self.t_config
        self.model_S.to(self.device)
        student_params = {id(p) for p in self.model_S.parameters()}
        dtype = getattr(torch, tc.teacher_dtype) if tc.teacher_dtype else None
        self._teacher_grad_flags = []
        for t in self.teachers():
            t.to(self.device, dtype=dtype) if dtype is not None else t.to(self.device)
            t.eval()
            for p in t.parameters():
                if id(p) not in student_params:  # a parameter shared with the student keeps training
                    self._teacher_grad_flags.append((p, p.requires_grad))
                    p.requires_grad_(False)
        for p in self.projs:
            if p is not None:
                p.to(self.device)
                p.train()
        self.model_S.train()
        if tc.compile and self.student_forward is self.model_S:
            self.student_forward = torch.compile(self.model_S)

    def restore_teacher_flags(self) -> None:
        """Give the teachers' parameters back the ``requires_grad`` flags they had before ``train()``."""
        for p, flag in self._teacher_grad_flags:
            p.requires_grad_(flag)
        self._teacher_grad_flags = []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and projection parameters that require gradients (what is optimised)."""
        params = [p for p in self.model_S.parameters() if p.requires_grad]
        for m in self.projs:
            if m is not None:
                params += [p for p in m.parameters() if p.requires_grad]
        return params

    def clipped_parameters(self) -> list[nn.Parameter]:
        """What ``max_grad_norm`` clips: the student's trainable parameters (TextBrewer), and the projections'
        too with ``TrainingConfig.clip_projections``."""
        if self.t_config.clip_projections:
            return self.trainable_parameters()
        return [p for p in self.model_S.parameters() if p.requires_grad]

    def projection_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({str(i): m for i, m in enumerate(self.projs) if m is not None})

    def add_projections_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Add each projection as a param group, once per optimizer (a second train() adds nothing)."""
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for proj, group in zip(self.projs, self.projs_group):
            if proj is None:
                continue
            params = [p for p in proj.parameters() if id(p) not in in_optimizer]
            if params:
                optimizer.add_param_group({**group, "params": params})

    # -- public hooks -----------------------------------------------------------------------------------
    def needed_features(self) -> set[str]:
        """Features (``hidden``, ``attention``, ...) the loss reads; Hugging Face models are asked for them."""
        return {"hidden"} if self.kd_implementation == "fused" else set()

    def store_fingerprint_parts(self) -> dict:
        """Besides the teachers' weights, what decides the stored teacher results (see the teacher store)."""
        return {"teacher_dtype": self.t_config.teacher_dtype, "distiller": type(self).__name__,
                "adaptors_T": [getattr(self.adaptor_T, "__qualname__", type(self.adaptor_T).__name__)]}

    def fingerprint(self) -> dict:
        """What a checkpoint must match to be resumed: models (class, size) and the distillation config."""
        def describe(m: nn.Module) -> list:
            return [type(unwrap(m)).__name__, sum(p.numel() for p in m.parameters())]

        dc = self.d_config.to_dict() if self.d_config else None
        teachers = [describe(t) for t in self.teachers()]
        if isinstance(self.model_T, TeacherStore):
            teachers = [["teacher store", self.model_T.fingerprint]]
        return {"distiller": type(self).__name__, "student": describe(self.model_S), "teachers": teachers,
                "distillation_config": {k: v for k, v in dc.items() if not k.startswith("teacher_cache")}
                if dc is not None else None}  # how the teacher is cached does not change what a run trains

    def split_task(self, item: Any) -> tuple[str | None, Any]:
        """``(task, batch)`` of an item the data cursor yields (no task here; see MultiTaskDistiller)."""
        return None, item

    def normalises_effective_batch(self) -> bool:
        """Whether loss terms are averaged over the effective batch (``loss_normalization='effective_batch'``):
        needs the step and loss methods to take the micro-batch, and (:meth:`masks_agree`) the adaptor's mask
        to be the batch's."""
        if self.t_config.loss_normalization != "effective_batch":
            return False
        if not (self._step_takes_micro and self._loss_takes_micro):
            logger.info("%s.train_on_batch / compute_loss take no 'micro' argument: loss terms are averaged per "
                        "micro-batch", type(self).__name__)
            return False
        return True

    def masks_agree(self) -> bool:
        """Whether the student adaptor's ``inputs_mask`` is the batch's own mask (so the batch tells how the
        losses count tokens); checked on the first batch."""
        return self._mask_matches_batch

    # -- forward passes and adaptors --------------------------------------------------------------------
    def model_kwargs(self, adaptor: Any) -> dict:
        """Ask Hugging Face models for hidden states / attentions when the built-in adaptor is in use, or one built
        on it that says so (``reads_hf_outputs = True``, as the tasks' :class:`~brewkit.tasks.TokenAdaptor`)."""
        if adaptor is not None and adaptor is not hf_adaptor and not getattr(adaptor, "reads_hf_outputs", False):
            return {}
        need = self.needed_features()
        kw = {}
        if "hidden" in need:
            kw["output_hidden_states"] = True
        if "attention" in need:
            kw["output_attentions"] = True
        return kw

    def reads_no_student_logits(self, adaptor: Any) -> bool:
        """Whether the training step reads none of the student's logits, so that a Hugging Face model is asked
        for its last position's only (``logits_to_keep=1``): the fused KD form, brewkit's own distiller and
        adaptor code (a subclass or adaptor from elsewhere may read them), no ``labels`` to the student (its own
        loss needs every logit), no temperature scheduler (it reads them), and a forward that takes
        ``logits_to_keep``. Decided once per adaptor."""
        key = id(adaptor)
        if key not in self._keeps_no_logits:
            model = unwrap(self.model_S)
            forward = getattr(model, "forward", None)
            self._keeps_no_logits[key] = (
                self.kd_implementation == "fused" and not self.labels_to_student
                and self.temperature_scheduler is None and self.model_kwargs(adaptor) != {}
                and str(getattr(adaptor or hf_adaptor, "__module__", "")).startswith("brewkit.")
                and all(c.__module__.startswith("brewkit.") for c in type(self).__mro__
                        if issubclass(c, AbstractDistiller))
                and forward is not None and accepts(forward, "logits_to_keep"))
        return self._keeps_no_logits[key]

    def run_adaptor(self, adaptor: Any, batch: Any, outputs: Any, who: str) -> dict:
        results = normalize_output((adaptor or hf_adaptor)(batch, outputs), who)
        if not self._validated:
            validate_output(results, who, FEATURES, ADAPTOR_KEYS)
        return results

    def teacher_results(self, model_T: nn.Module, adaptor_T: Any, batch_T: Any, args: dict, who: str) -> dict:
        """Run one teacher under ``inference_mode`` and adapt its outputs."""
        with torch.inference_mode():
            outputs = call_model(model_T, batch_T, {**args, **self.model_kwargs(adaptor_T)})
            results = self.run_adaptor(adaptor_T, batch_T, outputs, who)
        return {k: clone_if_inference(v) for k, v in results.items()}

    def student_results(self, batch_S: Any, args: dict, adaptor_S: Any = None, who: str = "adaptor_S") -> dict:
        adaptor_S = adaptor_S if adaptor_S is not None else self.adaptor_S
        model_batch = batch_S
        if not self.labels_to_student and isinstance(batch_S, Mapping) and "labels" in batch_S:
            model_batch = {k: v for k, v in batch_S.items() if k != "labels"}  # the adaptor still reads them
        kwargs = {**args, **self.model_kwargs(adaptor_S)}
        if self.reads_no_student_logits(adaptor_S):
            kwargs["logits_to_keep"] = 1  # the fused form's point: the (B, L, V) logits are never made
        outputs = call_model(self.student_forward, model_batch, kwargs)
        results = self.run_adaptor(adaptor_S, batch_S, outputs, who)
        if not self._validated:
            mask, found = results.get("inputs_mask"), find_mask(batch_S)
            if mask is not None and (found is None or found.shape != mask.shape or
                                     not torch.equal(found.bool(), mask.to(found.device).bool())):
                self._mask_matches_batch = False  # the batch's mask does not tell how the losses count tokens
                logger.warning("%s's inputs_mask is not the batch's mask: loss terms are averaged per micro-batch "
                               "(loss_normalization='micro_batch')", who)
        return results

    def teacher_side(self, batch_T: Any, precomputed: Any, args: dict, task: str | None = None) -> dict:
        """The teacher results of a batch: ``precomputed`` ones (recorded, stored, or the batch's own
        ``teacher_cache`` entry), or a forward pass."""
        raise ConfigError(f"{type(self).__name__} has no teacher", "model_T")

    def slim_teacher(self, results_T: dict) -> dict:
        """The part of the teacher results the loss uses (what the recorded batches and the store keep)."""
        return results_T

    def teacher_outputs(self, batch_T: Any, precomputed: Any, args: dict, micro: MicroBatch | None) -> dict:
        """:meth:`teacher_side`, served from the per-example teacher store when every example of the batch is in
        it (else the teacher runs and the batch's new examples are stored)."""
        store = self._session.store if self._session is not None else None
        task = micro.task if micro is not None else None
        if isinstance(self.model_T, TeacherStore) and precomputed is None:  # a captured store: no teacher model
            if micro is None or micro.example_index is None:
                raise ConfigError("the teacher is a captured store, which serves examples by index: batches need "
                                  "'idx' and train_on_batch needs the micro-batch (brewkit's loaders and loop pass "
                                  "both)", "model_T")
            store = self.model_T
        if store is None or precomputed is not None or micro is None:
            return self.teacher_side(batch_T, precomputed, args, task)
        keys = micro.teacher_keys if micro.teacher_keys is not None else batch_T
        hit = store.get(micro.example_index, keys)
        if hit is not None:
            return CachedTeacherResults(move_to_device(hit, self.device, non_blocking=True))
        results = self.teacher_side(batch_T, None, args, task)
        store.put(micro.example_index, keys, self.slim_teacher(results))
        return results

    def train_on_batch(self, batch: Any, args: dict, micro: MicroBatch | None = None) -> tuple[torch.Tensor, dict]:
        """One micro-batch: forward passes and :meth:`compute_loss`. Returns ``(loss, {term: value})``.
        ``micro`` carries the normalisation factors and store keys (None outside the loop: plain means)."""
        raise NotImplementedError

    def compute_loss(self, results_S: dict, results_T: Any, micro: MicroBatch | None = None):
        """The objective from the adapted outputs. Returns ``(total_loss, {term name: unweighted value})``."""
        raise NotImplementedError

    def loss_of(self, results_S: dict, results_T: Any, micro: MicroBatch | None) -> tuple[torch.Tensor, dict]:
        """:meth:`compute_loss`, passing ``micro`` only to an override that takes it."""
        if self._loss_takes_micro:
            return self.compute_loss(results_S, results_T, micro=micro)
        return self.compute_loss(results_S, results_T)

    def dry_run(self, batch: Any, model_kwargs: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Prepare the models and compute the loss of one batch without gradients (``brewkit validate``); the
        first-batch checks run and raise as they would in ``train()``."""
        self.prepare_models()
        batch, index = split_example_index(batch)
        try:
            with torch.no_grad():
                if isinstance(self.model_T, TeacherStore):  # served by example index: give it the micro-batch
                    on_device = move_to_device(batch, self.device)
                    micro = MicroBatch(on_device, index, split_batch(batch)[0])
                    return self.train_on_batch(on_device, dict(model_kwargs or {}), micro)
                return self.train_on_batch(move_to_device(batch, self.device), dict(model_kwargs or {}))
        finally:
            self.restore_teacher_flags()

    # -- loss pieces shared by the distillers -----------------------------------------------------------
    def initial_weights(self) -> dict[str, float]:
        d = self.d_config
        if d is None:
            return {}
        return {"kd_loss_weight": d.kd_loss_weight, "hard_label_weight": d.hard_label_weight}

    def update_weights(self, total_steps: int) -> None:
        """After optimizer step g: the scheduled weights at progress g / total_steps (config untouched)."""
        d = self.d_config
        if d is None:
            return
        x = self.global_step / max(total_steps, 1)
        for key in ("kd_loss_weight", "hard_label_weight"):
            schedule = d.weight_scheduler_fn(f"{key}_scheduler")
            if schedule is not None:
                self.weights[key] = schedule(x)

    def kd_term(self, logits_S: list[torch.Tensor], logits_T: list[torch.Tensor], results_S: dict,
                mask_T: list | None, mask_S: list | None, micro: MicroBatch | None = None) -> tuple[torch.Tensor, Any]:
        """Sum over logits slots of KD(z_S, z_T; tau). Returns ``(loss, temperature used)``."""
        d = self.d_config
        if len(logits_S) != len(logits_T):
            raise AdaptorError(f"adaptor_S returned {len(logits_S)} logits tensors but adaptor_T returned "
                               f"{len(logits_T)}; they are paired by position")
        denominators = ["rows" if z.dim() == 2 else self.kd_denominator if mask_S else "positions" for z in logits_S]
        labels = results_S.get("labels")
        total, tau = 0.0, d.temperature
        if mask_S and len(mask_S) not in (1, len(logits_S)):
            raise AdaptorError(f"got {len(logits_S)} logits tensors but {len(mask_S)} logits_mask tensors; give "
                               "one mask per logits tensor or a single mask for all")
        masks_S = [mask_S[k if len(mask_S) > k else 0] if mask_S else None for k in range(len(logits_S))]
        if mask_T:
            logits_T = select_logits_with_mask(logits_T, mask_T)
        pairs = list(enumerate(zip(logits_S, logits_T)))
        if d.textbrewer_numerics == "0.2.1":
            pairs = pairs[-1:]  # TextBrewer 0.2.1 overwrote the sum in its loop: only the last pair counted
        for k, (zs, zt) in pairs:
            if isinstance(zt, TopKTeacher):  # from a captured top-k store: the sparse form of the loss
                total = total + self.sparse_kd(zs, zt, results_S, masks_S[k]) * scale_of(micro, denominators[k])
                tau = d.temperature
                continue
            fused = self.kd_implementation == "fused"
            if masks_S[k] is not None and (not fused or self.temperature_scheduler):
                zs = select_logits_with_mask([zs], [masks_S[k]])[0]  # the fused form reads no student logits
            if d.probability_shift:
                if not labels:
                    raise AdaptorError("probability_shift needs 'labels' from adaptor_S")
                zt = probability_shift_(zt.clone(), labels[k] if len(labels) > k else labels[0])
            tau = self.temperature_scheduler(zs, zt, d.temperature) if self.temperature_scheduler else d.temperature
            if fused:
                loss = self.fused_kd(results_S, zt, tau, masks_S[k])
            elif d.kd_temperature_squared and self._kd_takes_t2:
                loss = self.kd_loss(zs, zt, tau, temperature_squared=True, **self.kd_loss_args)
            elif d.kd_temperature_squared:
                if isinstance(tau, torch.Tensor) and tau.dim() > 0:
                    raise ConfigError(f"kd_loss_type {d.kd_loss_type!r} has no temperature_squared parameter, so "
                                      "it cannot be combined with a per-row temperature scheduler",
                                      "kd_temperature_squared")
                loss = self.kd_loss(zs, zt, tau, **self.kd_loss_args) * (tau ** 2)
            else:
                loss = self.kd_loss(zs, zt, tau, **self.kd_loss_args)
            total = total + loss * scale_of(micro, denominators[k])
        return total, tau

    def sparse_kd(self, logits_S: torch.Tensor, teacher: TopKTeacher, results_S: dict,
                  mask_S: torch.Tensor | None) -> torch.Tensor:
        """KD of the student's counted positions (``logits_S`` ``(B, L, V)`` with ``mask_S``, or ``(M, V)``)
        against a top-k store's: :func:`brewkit.losses.sparse.sparse_kd_loss` of ``kd_loss_type``'s divergence
        at ``temperature``, or with ``kd_implementation='fused'``
        :func:`~brewkit.losses.sparse.fused_linear_sparse_kd_loss` from the last hidden states and the output
        layer (the student's logits are not read)."""
        d = self.d_config
        kind = sparse_form(KD_LOSS_MAP.meta(d.kd_loss_type).get("kind"), d.kd_loss_type)
        options = dict(temperature_squared=bool(d.kd_temperature_squared), **self.kd_loss_args)
        mask = mask_S if logits_S.dim() > 2 else None
        if self.kd_implementation != "fused":
            return sparse_kd_loss(kind, logits_S, teacher, d.temperature, mask=mask, **options)
        head = self.student_output_layer()
        return fused_linear_sparse_kd_loss(kind, self.last_hidden(results_S), head.weight, teacher, head.bias,
                                           d.temperature, mask=mask, **options)

    def fused_kd(self, results_S: dict, logits_T: torch.Tensor, tau: Any, mask_S: torch.Tensor | None
                 ) -> torch.Tensor:
        """``kd_implementation='fused'``: the KD term from the student's last hidden states and its output layer
        (``get_output_embeddings()``), so that its ``(N, V)`` logits never exist; the teacher's (selected) logits
        as they are. The rows are the student's ``logits_mask`` positions, as in the plain form."""
        d = self.d_config
        h = self.last_hidden(results_S)
        if mask_S is not None and h.dim() == 3:
            h = h[mask_S.to(h.device).bool()]
        head = self.student_output_layer()
        return self.kd_loss(h, head.weight, logits_T, bias_S=head.bias, temperature=tau,
                            temperature_squared=d.kd_temperature_squared, **self.kd_loss_args)

    @staticmethod
    def last_hidden(results_S: dict) -> torch.Tensor:
        """The student's last hidden states (what the fused forms multiply by the output layer)."""
        hidden = results_S.get("hidden")
        if not hidden:
            raise AdaptorError("kd_implementation='fused' needs the student's hidden states ('hidden'); leave "
                               "adaptor_S out for Hugging Face models or return them")
        return hidden[-1]

    def student_output_layer(self) -> nn.Module:
        """The student's output layer (Hugging Face ``get_output_embeddings()``) for the fused KD form."""
        get = getattr(unwrap(self.model_S), "get_output_embeddings", None)
        head = get() if get is not None else None
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"kd_implementation='fused' needs a student whose get_output_embeddings() is an "
                              f"nn.Linear (a Hugging Face LM head); {type(unwrap(self.model_S)).__name__} has "
                              f"{type(head).__name__ if head is not None else 'none'}; use 'chunked'",
                              "kd_implementation")
        cap = getattr(getattr(unwrap(self.model_S), "config", None), "final_logit_softcapping", None)
        if cap:
            raise ConfigError(f"the student soft-caps its logits (final_logit_softcapping={cap}); the fused form "
                              "would have to cap the student's logits but not the teacher's (already capped by its "
                              "forward): use kd_implementation 'chunked' or 'plain'", "kd_implementation")
        return head

    @staticmethod
    def hard_label_term(results_S: dict) -> torch.Tensor | None:
        """sum_j mean(losses_j) of the student adaptor's ``losses`` (None when it returned none)."""
        losses = results_S.get("losses")
        if not losses:
            return None
        return sum(loss.mean() for loss in losses)

    # -- teacher stores ---------------------------------------------------------------------------------
    def open_teacher_store(self) -> TeacherStore | None:
        """The per-example teacher store of ``DistillationConfig.teacher_cache`` (None when it is off)."""
        d = self.d_config
        if isinstance(self.model_T, TeacherStore):  # the teacher is a captured store (brewkit.offline_store)
            from ..offline_store import check_distillation

            if not isinstance(self.model_T, CapturedTeacherStore):
                raise ConfigError("a teacher store in place of the teacher must be a CapturedTeacherStore "
                                  "(brewkit capture writes one)", "model_T")
            check_distillation(d, self.model_T.manifest, prefix="")
            return self.model_T
        if d is None or d.teacher_cache == "none":
            return None
        if not self.has_teacher:
            raise ConfigError(f"{type(self).__name__} has no teacher to cache", "teacher_cache")
        if not self._step_takes_micro:
            raise ConfigError(f"{type(self).__name__}.train_on_batch takes no 'micro' argument, so the per-example "
                              "store cannot see the example indices; add micro=None and pass it on",
                              "teacher_cache")
        directory = d.teacher_cache_dir or os.path.join(self.t_config.output_dir, "teacher_cache")
        store = open_store(d.teacher_cache, store_fingerprint(self.teachers(), self.store_fingerprint_parts()),
                             d.teacher_cache_dtype, directory if d.teacher_cache == "disk" else None, rank=self.rank)
        logger.info("teacher cache (%s): %d examples cached already", d.teacher_cache, len(store))
        return store

    def record_teacher_outputs(self, cursor: LoaderCursor, args: dict, task: str | None = None) -> list:
        """``is_caching_logits``: one pass over the data through the teacher(s); keeps each batch and the teacher
        results the loss needs, on the CPU."""
        raise ConfigError(f"{type(self).__name__} has no teacher to cache", "is_caching_logits")

    def make_cursor(self, dataloader: Iterable, batch_postprocessor: Callable | None, args: dict) -> LoaderCursor:
        """The data cursor ``train()`` iterates: over the loader, or over the recorded batches."""
        source = dataloader if batch_postprocessor is None else MappedLoader(dataloader, batch_postprocessor)
        cursor = LoaderCursor(source)
        if self.d_config is not None and self.d_config.is_caching_logits:
            if self.recorded is None:  # computed once per distiller, not once per train() call
                self.recorded = self.record_teacher_outputs(cursor, args)
            cursor = RecordedCursor(self.recorded, seed=self.t_config.seed or 0, shuffle=loader_shuffles(dataloader))
        return cursor
