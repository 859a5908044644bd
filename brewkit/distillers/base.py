"""The training engine shared by every distiller.

``AbstractDistiller.train`` is the whole loop, on one screen: for each optimizer step it takes one group of
micro-batches (``gradient_accumulation_steps`` of them, fewer at an epoch's tail), runs
:meth:`train_on_batch` on each (teachers under ``inference_mode``, the student, the adaptors,
:meth:`compute_loss`), back-propagates the loss divided by the group size, clips every trainable parameter,
steps, updates the loss-weight schedules, logs and checkpoints. Subclasses define the teacher side and the
loss; users override :meth:`compute_loss` or :meth:`train_on_batch` to change the objective.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn

from .. import __version__, distributed
from ..adaptors import AttentionProbs, hf_adaptor, normalize_output, validate_output
from ..checkpoint import latest_checkpoint, load_state, load_student, save_checkpoint, unwrap
from ..configs import NONE, DistillationConfig, TrainingConfig
from ..errors import AdaptorError, BrewkitError, CheckpointError, ConfigError, NonFiniteLossError
from ..logging_utils import MetricsWriter, ensure_default_handler, logger
from ..teacher_cache import TeacherCache, fingerprint as cache_fingerprint
from ..presets import ADAPTOR_KEYS, FEATURES, KD_LOSS_MAP, MATCH_LOSS_MAP, PROJ_MAP, WEIGHT_SCHEDULER
from .utils import (CachedCursor, LoaderCursor, batch_size_of, call_model, detach_to_cpu, get_rng_state,
                    UNITS, find_mask, move_to_device, probability_shift_, seed_everything,
                    select_logits_with_mask, set_rng_state, split_batch, split_example_index, unit_counts)


class CachedTeacherResults(dict):
    """Teacher adaptor results computed earlier (``is_caching_logits``); used as they are."""


def _check_model(model: Any, name: str) -> None:
    if not isinstance(model, nn.Module):
        hint = " (it looks like a state_dict: build the model and load_state_dict() into it)" \
            if isinstance(model, Mapping) and model and all(isinstance(v, torch.Tensor) for v in model.values()) \
            else ""
        raise ConfigError(f"must be a torch.nn.Module, got {type(model).__name__}{hint}", name)


def _clone_if_inference(x: Any) -> Any:
    """Teacher outputs made under inference_mode cannot be saved for backward; clone the ones we use."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_inference() else x
    if isinstance(x, AttentionProbs):
        return AttentionProbs(_clone_if_inference(v) for v in x)
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_if_inference(v) for v in x) if isinstance(x, list) else \
            tuple(_clone_if_inference(v) for v in x)
    return x


class AbstractDistiller:
    """Common machinery. Attributes TextBrewer users rely on keep their names: ``t_config``, ``d_config``,
    ``model_T``, ``model_S``, ``adaptor_T``, ``adaptor_S``, ``kd_loss``, ``projs``, ``projs_group``."""

    has_teacher = True

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig | None,
                 model_T: Any, model_S: nn.Module, adaptor_T: Any, adaptor_S: Any):
        if not isinstance(train_config, TrainingConfig):
            raise ConfigError(f"must be a TrainingConfig, got {type(train_config).__name__}", "train_config")
        if distill_config is not None and not isinstance(distill_config, DistillationConfig):
            raise ConfigError(f"must be a DistillationConfig, got {type(distill_config).__name__}",
                              "distill_config")
        _check_model(model_S, "model_S")
        if train_config.data_parallel:
            raise ConfigError("DataParallel is not supported; run data-parallel with torchrun (DDP), which is "
                              "faster on one machine too", "data_parallel")
        self.t_config, self.d_config = train_config, distill_config
        self.model_T, self.model_S = model_T, model_S
        self.adaptor_T, self.adaptor_S = adaptor_T, adaptor_S
        self.device = torch.device(train_config.device)
        self.kd_loss = KD_LOSS_MAP[distill_config.kd_loss_type] if distill_config else None
        self._kd_takes_t2 = self.kd_loss is not None and \
            "temperature_squared" in inspect.signature(self.kd_loss).parameters
        self.temperature_scheduler = distill_config.temperature_scheduler_fn() if distill_config else None
        self.projs: list[nn.Module | None] = []
        self.projs_group: list[dict] = []
        self.global_step = 0
        self.weights = self._initial_weights()
        self._validated = False
        self._stop_requested = False
        self.interrupted = False  # the last train() stopped early on Ctrl-C or request_stop(), after a checkpoint
        self._cache: list | None = None
        self._tcache: TeacherCache | None = None  # d_config.teacher_cache: per-example teacher results
        self._example_index: torch.Tensor | None = None  # the current micro-batch's idx (with _tcache)
        self._cpu_batch_T: Any = None  # and its teacher part before the move to the device (cache keys)
        self.rank, self.world_size = 0, 1
        self._student_forward: Callable = model_S  # the student, or its torch.compile / DDP wrapper
        self._unit_scale: torch.Tensor | None = None
        self._unit_norm_ok = True
        ensure_default_handler()

    # ---------------------------------------------------------------------------------------------------
    # models and modes
    # ---------------------------------------------------------------------------------------------------
    def teachers(self) -> list[nn.Module]:
        """Every teacher module (a single model, a list or a dict of them)."""
        t = self.model_T
        if t is None:
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

    def _prepare_models(self) -> None:
        """Inside train(): models on the device, teachers in eval mode and frozen, the student training."""
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
        if tc.compile and self._student_forward is self.model_S:
            self._student_forward = torch.compile(self.model_S)

    def _restore_teacher_flags(self) -> None:
        for p, flag in getattr(self, "_teacher_grad_flags", []):
            p.requires_grad_(flag)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and projection parameters that require gradients (what is clipped and optimised)."""
        params = [p for p in self.model_S.parameters() if p.requires_grad]
        for m in self.projs:
            if m is not None:
                params += [p for p in m.parameters() if p.requires_grad]
        return params

    def projection_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({str(i): m for i, m in enumerate(self.projs) if m is not None})

    def _add_projections_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Add each projection as a param group, once per optimizer (a second train() adds nothing)."""
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for proj, group in zip(self.projs, self.projs_group):
            if proj is None:
                continue
            params = [p for p in proj.parameters() if id(p) not in in_optimizer]
            if params:
                optimizer.add_param_group({**group, "params": params})

    # ---------------------------------------------------------------------------------------------------
    # forward passes and adaptors
    # ---------------------------------------------------------------------------------------------------
    def _needed_features(self) -> set[str]:
        return set()

    def _model_kwargs(self, adaptor: Any) -> dict:
        """Ask Hugging Face models for hidden states / attentions when the built-in adaptor is in use."""
        if adaptor is not None and adaptor is not hf_adaptor:
            return {}
        need = self._needed_features()
        kw = {}
        if "hidden" in need:
            kw["output_hidden_states"] = True
        if "attention" in need:
            kw["output_attentions"] = True
        return kw

    def _run_adaptor(self, adaptor: Any, batch: Any, outputs: Any, who: str) -> dict:
        results = normalize_output((adaptor or hf_adaptor)(batch, outputs), who)
        if not self._validated:
            validate_output(results, who, FEATURES, ADAPTOR_KEYS)
        return results

    def teacher_results(self, model_T: nn.Module, adaptor_T: Any, batch_T: Any, args: dict, who: str) -> dict:
        """Run one teacher under ``inference_mode`` and adapt its outputs."""
        with torch.inference_mode():
            outputs = call_model(model_T, batch_T, {**args, **self._model_kwargs(adaptor_T)})
            results = self._run_adaptor(adaptor_T, batch_T, outputs, who)
        return {k: _clone_if_inference(v) for k, v in results.items()}

    def student_results(self, batch_S: Any, args: dict, adaptor_S: Any = None, who: str = "adaptor_S") -> dict:
        adaptor_S = adaptor_S if adaptor_S is not None else self.adaptor_S
        outputs = call_model(self._student_forward, batch_S, {**args, **self._model_kwargs(adaptor_S)})
        results = self._run_adaptor(adaptor_S, batch_S, outputs, who)
        if not self._validated:
            mask, found = results.get("inputs_mask"), find_mask(batch_S)
            if mask is not None and (found is None or found.shape != mask.shape or
                                     not torch.equal(found.bool(), mask.to(found.device).bool())):
                self._unit_norm_ok = False  # the batch's mask does not tell how the losses count tokens
                logger.warning("%s's inputs_mask is not the batch's mask: loss terms are averaged per micro-batch "
                               "(loss_normalization='micro_batch')", who)
        return results

    def train_on_batch(self, batch: Any, args: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch: forward passes and :meth:`compute_loss`. Returns ``(loss, {term: value})``."""
        raise NotImplementedError

    def compute_loss(self, results_S: dict, results_T: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective from the adapted outputs. Returns ``(total_loss, {term name: unweighted value})``."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------------
    # loss pieces shared by the distillers
    # ---------------------------------------------------------------------------------------------------
    def _initial_weights(self) -> dict[str, float]:
        d = self.d_config
        if d is None:
            return {}
        return {"kd_loss_weight": d.kd_loss_weight, "hard_label_weight": d.hard_label_weight}

    def _update_weights(self, total_steps: int) -> None:
        """After optimizer step g: the scheduled weights at progress g / total_steps (config untouched)."""
        d = self.d_config
        if d is None:
            return
        x = self.global_step / max(total_steps, 1)
        for key, sched in (("kd_loss_weight", d.kd_loss_weight_scheduler),
                           ("hard_label_weight", d.hard_label_weight_scheduler)):
            if sched == NONE:
                continue
            f = WEIGHT_SCHEDULER[sched]
            scale = getattr(d, key) if WEIGHT_SCHEDULER.meta(sched).get("scales_base") else 1.0
            self.weights[key] = scale * f(x)

    def kd_term(self, logits_S: list[torch.Tensor], logits_T: list[torch.Tensor], results_S: dict,
                mask_T: list | None, mask_S: list | None) -> tuple[torch.Tensor, Any]:
        """Sum over logits slots of KD(z_S, z_T; tau). Returns ``(loss, temperature used)``."""
        d = self.d_config
        if len(logits_S) != len(logits_T):
            raise AdaptorError(f"adaptor_S returned {len(logits_S)} logits tensors but adaptor_T returned "
                               f"{len(logits_T)}; they are paired by position")
        units = ["rows" if z.dim() == 2 else "tokens" if mask_S else "positions" for z in logits_S]
        labels = results_S.get("labels")
        total, tau = 0.0, d.temperature
        if mask_S:
            logits_S = select_logits_with_mask(logits_S, mask_S)
        if mask_T:
            logits_T = select_logits_with_mask(logits_T, mask_T)
        for k, (zs, zt) in enumerate(zip(logits_S, logits_T)):
            if d.probability_shift:
                if not labels:
                    raise AdaptorError("probability_shift needs 'labels' from adaptor_S")
                zt = probability_shift_(zt.clone(), labels[k] if len(labels) > k else labels[0])
            tau = self.temperature_scheduler(zs, zt, d.temperature) if self.temperature_scheduler else d.temperature
            if d.kd_temperature_squared and self._kd_takes_t2:
                loss = self.kd_loss(zs, zt, tau, temperature_squared=True)
            elif d.kd_temperature_squared:
                if isinstance(tau, torch.Tensor) and tau.dim() > 0:
                    raise ConfigError(f"kd_loss_type {d.kd_loss_type!r} has no temperature_squared parameter, so "
                                      "it cannot be combined with a per-row temperature scheduler",
                                      "kd_temperature_squared")
                loss = self.kd_loss(zs, zt, tau) * (tau ** 2)
            else:
                loss = self.kd_loss(zs, zt, tau)
            total = total + loss * self.term_scale(units[k])
        return total, tau

    @staticmethod
    def hard_label_term(results_S: dict) -> torch.Tensor | None:
        """sum_j mean(losses_j) of the student adaptor's ``losses`` (None when it returned none)."""
        losses = results_S.get("losses")
        if not losses:
            return None
        return sum(l.mean() for l in losses)

    # ---------------------------------------------------------------------------------------------------
    # the per-example teacher cache (d_config.teacher_cache)
    # ---------------------------------------------------------------------------------------------------
    def cached_teacher_side(self, batch_T: Any, cache: Any, args: dict) -> dict:
        """:meth:`teacher_side`, served from the per-example cache when every example of the batch is in it
        (else the teacher runs and the batch's new examples are stored)."""
        tcache = self._tcache
        if tcache is None or cache is not None:
            return self.teacher_side(batch_T, cache, args)
        keys_T = self._cpu_batch_T if self._cpu_batch_T is not None else batch_T
        hit = tcache.get(self._example_index, keys_T)
        if hit is not None:
            return CachedTeacherResults(move_to_device(hit, self.device, non_blocking=True))
        results = self.teacher_side(batch_T, cache, args)
        tcache.put(self._example_index, keys_T, self.slim_teacher(results))
        return results

    def slim_teacher(self, results_T: dict) -> dict:
        """The part of the teacher results the loss uses (what the caches keep)."""
        return results_T

    def _open_teacher_cache(self) -> None:
        d = self.d_config
        if d is None or d.teacher_cache == "none" or self._tcache is not None:
            return
        if not self.has_teacher or not hasattr(self, "teacher_side"):
            raise ConfigError(f"{type(self).__name__} has no teacher to cache", "teacher_cache")
        adaptors = getattr(self, "adaptors_T", None) or [self.adaptor_T]
        parts = {"teacher_dtype": self.t_config.teacher_dtype, "distiller": type(self).__name__,
                 "adaptors_T": [getattr(a, "__qualname__", type(a).__name__) for a in adaptors],
                 "matches": [[m.feature, m.layer_T] for m in getattr(self, "matches", [])],
                 "aggregation": [d.teacher_aggregation, d.teacher_weights, d.temperature]
                 if len(self.teachers()) > 1 else None}
        directory = d.teacher_cache_dir or os.path.join(self.t_config.output_dir, "teacher_cache")
        self._tcache = TeacherCache(d.teacher_cache, cache_fingerprint(self.teachers(), parts),
                                    d.teacher_cache_dtype, directory if d.teacher_cache == "disk" else None,
                                    rank=self.rank)
        logger.info("teacher cache (%s): %d examples cached already", d.teacher_cache, len(self._tcache))

    # ---------------------------------------------------------------------------------------------------
    # batches
    # ---------------------------------------------------------------------------------------------------
    def _cache_teacher(self, cursor: LoaderCursor, args: dict) -> list:
        """One pass over the data through the teacher(s); keeps batches and needed teacher results on CPU."""
        raise ConfigError(f"{type(self).__name__} has no teacher to cache", "is_caching_logits")

    def _make_cursor(self, dataloader: Iterable, batch_postprocessor: Callable | None, args: dict) -> LoaderCursor:
        source = dataloader if batch_postprocessor is None else _Mapped(dataloader, batch_postprocessor)
        cursor = LoaderCursor(source)
        if self.d_config is not None and self.d_config.is_caching_logits:
            if self._cache is None:  # computed once per distiller, not once per train() call
                self._cache = self._cache_teacher(cursor, args)
            cursor = CachedCursor(self._cache, seed=self.t_config.seed or 0, shuffle=_shuffles(dataloader))
        return cursor

    # ---------------------------------------------------------------------------------------------------
    # the loop
    # ---------------------------------------------------------------------------------------------------
    def train(self, optimizer: torch.optim.Optimizer, dataloader: Iterable, num_epochs: int | None = None,
              scheduler_class: Callable | None = None, scheduler_args: dict | None = None, scheduler: Any = None,
              max_grad_norm: float = -1.0, num_steps: int | None = None, callback: Callable | None = None,
              batch_postprocessor: Callable | None = None, **kwargs) -> None:
        """Train for ``num_epochs`` epochs, or for ``num_steps`` optimizer steps (which takes precedence).

        ``kwargs`` are passed to every model call. ``callback(model=student, step=global_step)`` runs after
        each checkpoint, or every ``train_config.callback_steps`` optimizer steps and after the last; a callback
        may call :meth:`request_stop` (early stopping): the run then keeps a checkpoint of that step and ends,
        with ``interrupted`` set (under DDP the callback runs on every rank, and every rank must ask).
        ``scheduler_class(optimizer=optimizer, **scheduler_args)`` builds the LR scheduler after the projections
        joined the optimizer.
        """
        tc = self.t_config
        if num_epochs is None and num_steps is None:
            raise ConfigError("give num_epochs or num_steps", "train")
        if num_steps is not None:
            _int_arg(num_steps, "num_steps")
        else:
            _int_arg(num_epochs, "num_epochs")
            if not hasattr(dataloader, "__len__"):
                raise ConfigError("epoch mode needs a dataloader with __len__; pass num_steps instead", "train")
        if tc.seed is not None:
            seed_everything(tc.seed)
        if distributed.wanted(tc.local_rank):
            self.rank, self.world_size, self.device = distributed.setup(tc.local_rank, self.device)
        self._prepare_models()
        self._open_teacher_cache()
        self._add_projections_to(optimizer)
        ddp = None
        if self.world_size > 1:
            ddp = distributed.wrap(self.model_S, [p for p in self.projs if p is not None], self.device,
                                   tc.ddp_find_unused_parameters)
            self._student_forward = ddp
        if scheduler_class is not None:
            try:
                scheduler = scheduler_class(optimizer=optimizer, **(scheduler_args or {}))
            except TypeError as e:
                raise ConfigError(f"cannot build {getattr(scheduler_class, '__name__', scheduler_class)} with "
                                  f"optimizer and {sorted(scheduler_args or {})}: {e}", "scheduler_args") from None
        scaler = torch.amp.GradScaler("cuda") if tc.fp16 else None
        accum = tc.gradient_accumulation_steps
        cursor = self._make_cursor(self._shard(dataloader), batch_postprocessor, kwargs)

        if num_steps is not None:
            total_steps, steps_per_epoch, ckpt_steps = num_steps, None, tc.ckpt_steps or num_steps
        else:
            if len(cursor) == 0:
                raise ConfigError("the dataloader is empty", "train")
            steps_per_epoch = math.ceil(len(cursor) / accum)
            total_steps = steps_per_epoch * num_epochs
            ckpt_points = {steps_per_epoch * c // tc.ckpt_frequency for c in range(tc.ckpt_frequency)}
        plan = dict(total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)

        def is_checkpoint_step(g: int) -> bool:
            if num_steps is not None:
                return g % ckpt_steps == 0 or g == num_steps
            epoch = (g - 1) // steps_per_epoch
            eligible = (epoch + 1) % tc.ckpt_epoch_frequency == 0 or epoch + 1 == num_epochs
            return eligible and (g % steps_per_epoch) in ckpt_points

        def is_callback_step(g: int) -> bool:  # after each checkpoint (TextBrewer), or every callback_steps
            if tc.callback_steps is None:
                return is_checkpoint_step(g)
            return g % tc.callback_steps == 0 or g == total_steps

        self.global_step = 0
        self.interrupted = False
        self.weights = self._initial_weights()
        start = self._resume(optimizer, scheduler, scaler, cursor, plan)
        if start is None:
            cursor.start_pass(0)
        metrics = MetricsWriter(tc.output_dir, tc.log_dir, enabled=self.rank == 0)
        if start is not None:
            metrics.drop_after(self.global_step)
        progress = self._progress_bar(total_steps)
        autocast = torch.autocast(self.device.type, dtype=tc.amp_dtype, enabled=tc.amp_dtype is not None)
        params = self.trainable_parameters()
        sums: dict[str, torch.Tensor] = {}
        micro, samples, skipped, t_log = 0, 0, 0, time.perf_counter()
        cache_pass = cursor.pass_index
        logger.info("training %s for %d optimizer steps (%s)", type(self).__name__, total_steps,
                    f"{num_epochs} epochs x {steps_per_epoch} steps" if num_steps is None else "step mode")
        with self._sigint_guard():
            try:
                optimizer.zero_grad(set_to_none=True)
                while self.global_step < total_steps:
                    group = self._next_group(cursor, accum, epoch_mode=num_steps is None)
                    upcoming = self.global_step + 1
                    # a finiteness check syncs with the device: every step on CPU (free), else only on
                    # logging and checkpoint steps, so that no checkpoint is written after a bad step
                    check = not tc.skip_nonfinite_steps and (
                        self.device.type == "cpu" or upcoming % tc.logging_steps == 0
                        or is_checkpoint_step(upcoming))
                    scales = self._group_scales(group)
                    finite = torch.ones((), dtype=torch.bool, device=self.device)
                    if self._tcache is not None and cursor.pass_index != cache_pass:
                        cache_pass = cursor.pass_index  # a new pass: publish what this rank cached, read the rest
                        self._tcache.flush()
                        distributed.barrier(self.world_size)
                        self._tcache.refresh()
                    for j, batch in enumerate(group):
                        self._unit_scale = scales[j] if scales is not None else None
                        if self._tcache is not None:
                            batch, self._example_index = split_example_index(batch)
                            self._cpu_batch_T = split_batch(batch)[0]  # lengths and token hashes: no device sync
                        batch = move_to_device(batch, self.device, non_blocking=True)
                        # DDP: gradients are all-reduced once per optimizer step, on its last micro-batch
                        sync = contextlib.nullcontext() if ddp is None or j == len(group) - 1 else ddp.no_sync()
                        with sync:
                            with autocast:
                                loss, terms = self.train_on_batch(batch, kwargs)
                            self._validated = True
                            if check:
                                self._check_finite(loss, terms)
                            elif tc.skip_nonfinite_steps:
                                finite &= torch.isfinite(loss.detach())  # decided at the step, no sync here
                            scaled = loss / len(group)
                            (scaler.scale(scaled) if scaler else scaled).backward()
                        for k, v in {"loss": loss, **terms}.items():
                            sums[k] = sums.get(k, 0) + v.detach().float()
                        samples += batch_size_of(batch)
                        micro += 1
                    grad_norm = self._optimizer_step(optimizer, scaler, params, max_grad_norm, finite,
                                                     want_norm=check or upcoming % tc.logging_steps == 0)
                    if grad_norm is _SKIPPED:
                        skipped += 1
                    elif scheduler is not None:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    self.global_step += 1
                    self._update_weights(total_steps)
                    if progress is not None:
                        progress.update(1)
                    if self.global_step % tc.logging_steps == 0 or self.global_step == total_steps:
                        record = self._log_record(sums, micro, optimizer, grad_norm, samples, t_log, cursor,
                                                  skipped)
                        metrics.write(record)
                        if progress is not None:
                            progress.set_postfix(loss=f"{record['loss']:.4f}")
                        logger.info("step %d/%d %s", self.global_step, total_steps,
                                    " ".join(f"{k}={v:.4g}" for k, v in record.items()
                                             if isinstance(v, float) and k != "epoch"))
                        sums, micro, samples, t_log = {}, 0, 0, time.perf_counter()
                    stop = self._stop_requested
                    saved = is_checkpoint_step(self.global_step) or stop
                    if saved:
                        self.save(optimizer, scheduler, scaler, cursor, plan, tc.save_total_limit)
                    if callback is not None and not stop and is_callback_step(self.global_step):
                        logger.info("running callback at step %d", self.global_step)
                        callback(model=self.model_S, step=self.global_step)
                        self.model_S.train()
                        stop = self._stop_requested  # the callback asked to stop (early stopping)
                        if stop and not saved:
                            self.save(optimizer, scheduler, scaler, cursor, plan, tc.save_total_limit)
                    if stop and self.global_step < total_steps:
                        logger.warning("interrupted: saved a checkpoint at step %d and stopped", self.global_step)
                        self.interrupted = True
                        break
            finally:
                if progress is not None:
                    progress.close()
                metrics.close()
                self._restore_teacher_flags()
                if self._tcache is not None:
                    self._tcache.close()
                if ddp is not None:  # release the DDP reducer now, while the process group is alive
                    self._student_forward = self.model_S
                    del ddp

    # -- loop helpers -----------------------------------------------------------------------------------
    def _group_scales(self, group: list) -> list[torch.Tensor] | None:
        """Per micro-batch, per unit: ``k * W * count_j / total`` (k micro-batches, W processes), so that after
        the loop's division by k and DDP's mean over W each term is averaged over the whole effective batch.
        None when there is nothing to rescale (one micro-batch, one process) or it is switched off."""
        if self.t_config.loss_normalization != "effective_batch" or not self._unit_norm_ok or \
                (len(group) == 1 and self.world_size == 1):
            return None
        counts = [unit_counts(_student_part(b)).to(self.device) for b in group]
        total = torch.stack(counts).sum(0)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        factor = len(group) * self.world_size
        return [(c * factor / total.clamp_min(1)).float() for c in counts]

    def term_scale(self, unit: str) -> torch.Tensor | float:
        """The factor for a term whose mean divides by ``unit`` (see :func:`_group_scales`); 1 if none."""
        s = self._unit_scale
        return 1.0 if s is None else s[UNITS.index(unit)]

    def _shard(self, dataloader: Any) -> Any:
        return distributed.shard(dataloader, self.rank, self.world_size, self.t_config.seed or 0)

    def _next_group(self, cursor: LoaderCursor, accum: int, epoch_mode: bool) -> list:
        """The micro-batches of one optimizer step. Epoch mode: a group never crosses an epoch boundary,
        so the last group of an epoch may be shorter (it still steps, scaled by its own size)."""
        group: list = []
        while len(group) < accum:
            if not epoch_mode:
                group.append(cursor.next_cycling())
                continue
            try:
                group.append(cursor.next())
            except StopIteration:
                if group:
                    break
                cursor.start_pass(cursor.pass_index + 1)
        return group

    def _check_finite(self, loss: torch.Tensor, terms: dict) -> None:
        if torch.isfinite(loss):
            return
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()] or ["total"]
        raise NonFiniteLossError(f"non-finite loss at step {self.global_step + 1}: term(s) {', '.join(bad)}; "
                                 "the last checkpoint is intact (set skip_nonfinite_steps=True to skip such steps)")

    def _optimizer_step(self, optimizer, scaler, params, max_grad_norm: float, loss_finite: torch.Tensor,
                        want_norm: bool):
        """Unscale, clip, check and step. Returns the gradient norm (when computed) or ``_SKIPPED``."""
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm = None
        if max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        elif want_norm or self.t_config.skip_nonfinite_steps:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if self.t_config.skip_nonfinite_steps and scaler is None:
            norm_ok = torch.isfinite(norm) if norm is not None else torch.ones((), dtype=torch.bool)
            bad = not bool(norm_ok.to(loss_finite.device) & loss_finite)
        else:
            bad = norm is not None and scaler is None and not torch.isfinite(norm)
        if bad:
            if not self.t_config.skip_nonfinite_steps:
                raise NonFiniteLossError(f"non-finite gradient norm at step {self.global_step + 1}; the last "
                                         "checkpoint is intact (set skip_nonfinite_steps=True to skip such steps)")
            optimizer.zero_grad(set_to_none=True)
            return _SKIPPED
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return norm

    def _log_record(self, sums, micro, optimizer, grad_norm, samples, t_log, cursor, skipped) -> dict:
        """Means over the micro-batches since the last log. The only host sync of the loop is here."""
        elapsed = max(time.perf_counter() - t_log, 1e-9)
        if self.world_size > 1:  # every rank takes part; only rank 0 writes
            sums = distributed.mean_over_ranks(sums, self.world_size)
            samples *= self.world_size
        record: dict[str, Any] = {"step": self.global_step, "epoch": cursor.pass_index}
        for k, v in sums.items():
            record[k] = float(v) / max(micro, 1)
        record["lr"] = float(optimizer.param_groups[0]["lr"])
        for k, w in self.weights.items():
            record[k] = float(w)
        if grad_norm is not None and grad_norm is not _SKIPPED:
            record["grad_norm"] = float(grad_norm)
        record["samples_per_s"] = samples / elapsed
        if skipped:
            record["skipped_steps"] = skipped
        return record

    def _progress_bar(self, total: int):
        show = self.t_config.progress_bar
        if show is None:
            show = hasattr(os.sys.stderr, "isatty") and os.sys.stderr.isatty()
        if not show or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.global_step, desc="distilling", dynamic_ncols=True)

    @contextlib.contextmanager
    def _sigint_guard(self):
        """First Ctrl-C: finish the current step, save a checkpoint, stop. Second Ctrl-C: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            logger.warning("Ctrl-C: saving a checkpoint after this step (press again to abort)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self._stop_requested = False

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and return after the current optimizer step."""
        self._stop_requested = True

    # -- checkpoints ------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        """What a checkpoint must match to be resumed: models (class, size) and the distillation config."""
        def describe(m: nn.Module) -> list:
            return [type(unwrap(m)).__name__, sum(p.numel() for p in m.parameters())]

        return {"distiller": type(self).__name__, "student": describe(self.model_S),
                "teachers": [describe(t) for t in self.teachers()],
                "distillation_config": _without_cache_keys(self.d_config.to_dict()) if self.d_config else None}

    def save(self, optimizer, scheduler, scaler, cursor: LoaderCursor, plan: dict,
             save_total_limit: int | None = None) -> str | None:
        """Write ``checkpoint-{global_step}`` from rank 0 (with every rank's RNG state), between barriers."""
        if self._tcache is not None:
            self._tcache.flush()
        cur = cursor.state_dict()
        rng = get_rng_state()
        rng["cursor"] = cur
        if self.world_size > 1:
            import torch.distributed as dist

            gathered = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object(rng, gathered, dst=0)
            if self.rank != 0:
                distributed.barrier(self.world_size)
                return None
            extra = {f"rng_state_rank{r}": g for r, g in enumerate(gathered)}
        else:
            extra = {}
        state = {"global_step": self.global_step, "epoch": cur.get("pass_index"), "batch_in_epoch": cur.get("index"),
                 "weights": self.weights, "plan": plan, "fingerprint": self._fingerprint(),
                 "brewkit_version": __version__}
        configs = {"training_config": self.t_config.to_dict()}
        if self.d_config is not None:
            configs["distillation_config"] = self.d_config.to_dict()
        path = save_checkpoint(self.t_config.output_dir, self.global_step, student=self.model_S,
                               projections=self.projection_modules(), optimizer=optimizer, scheduler=scheduler,
                               scaler=scaler, rng_state=rng, trainer_state=state, configs=configs,
                               save_total_limit=save_total_limit, extra=extra)
        logger.info("saved %s", path)
        distributed.barrier(self.world_size)
        return path

    def _resume(self, optimizer, scheduler, scaler, cursor: LoaderCursor, plan: dict) -> str | None:
        r = self.t_config.resume_from_checkpoint
        if not r:
            return None
        if r is True:
            path = latest_checkpoint(self.t_config.output_dir)
            if path is None:
                logger.info("resume_from_checkpoint=True but %s has no checkpoint: starting fresh",
                            self.t_config.output_dir)
                return None
        else:
            path = r
            if not os.path.isdir(path):
                raise CheckpointError(f"resume_from_checkpoint: no checkpoint directory at {path}")
        state = load_state(path)
        ts = state["trainer_state"]
        if ts.get("fingerprint") != self._fingerprint():
            if not self.t_config.force_resume:
                raise CheckpointError(f"{path} was written by a different run (models or distillation config "
                                      f"differ: {ts.get('fingerprint')} vs {self._fingerprint()}); set "
                                      "force_resume=True to load it anyway")
            logger.warning("force_resume: loading %s although it was written by a different run", path)
        if ts["plan"] != plan:
            raise CheckpointError(f"{path} was written for a different schedule ({ts['plan']}); this run has {plan}")
        load_student(self.model_S, path)
        if state["projections"] is not None:
            self.projection_modules().load_state_dict(state["projections"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        self.global_step = ts["global_step"]
        self.weights = dict(ts["weights"])
        rng = state["extra"].get(f"rng_state_rank{self.rank}", state["rng_state"])
        cursor.load_state_dict(rng.pop("cursor"))
        set_rng_state(rng)
        logger.info("resumed from %s at step %d", path, self.global_step)
        return path


_SKIPPED = object()


def _int_arg(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"must be a positive integer, got {value!r}", name)


def _shuffles(loader: Any) -> bool:
    """Whether a loader draws a new order each pass (then the teacher cache is reshuffled each pass too)."""
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    return isinstance(sampler, torch.utils.data.RandomSampler) or bool(getattr(sampler, "shuffle", False)) \
        or bool(getattr(batch_sampler, "shuffle", False))


def _student_part(batch: Any) -> Any:
    if hasattr(batch, "task") and hasattr(batch, "batch"):  # a MultiTask micro-batch
        batch = batch.batch
    return split_batch(batch)[1]


class _Mapped:
    """A dataloader whose batches go through ``fn`` (``batch_postprocessor``)."""

    def __init__(self, loader: Iterable, fn: Callable):
        self.loader, self.fn = loader, fn
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return (self.fn(b) for b in self.loader)


def _without_cache_keys(d: dict) -> dict:
    """How the teacher is cached does not change what a checkpoint trained: resuming may switch it."""
    return {k: v for k, v in d.items() if not k.startswith("teacher_cache")}
