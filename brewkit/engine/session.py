"""``TrainingSession``: everything ``train()`` sets up once before its first step, and takes down after its last.

:func:`open_session` joins the process group, moves the models, opens the teacher store, builds the plan, the
optimizer stepper, the data cursor, the checkpointer and the step logger, and resumes from a checkpoint when asked.
The loop itself stays in :meth:`brewkit.distillers.base.AbstractDistiller.train`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .. import __version__, fsdp
from ..checkpoint import Checkpointer
from ..distributed import DistributedContext, Trainables
from ..errors import ConfigError, NonFiniteLossError
from ..logging_utils import logger
from .batches import move_to_device, split_batch, split_example_index
from .cursor import LoaderCursor
from .micro_batch import MicroBatch, normalisation_factors
from .plan import TrainPlan, integral
from .rng import seed_everything
from .step_logger import MetricsWriter, StepLogger
from .stepper import OptimizerStepper


@dataclass
class TrainingSession:
    plan: TrainPlan
    ctx: DistributedContext
    stepper: OptimizerStepper
    cursor: LoaderCursor
    checkpointer: Checkpointer
    logger: StepLogger
    autocast: Any
    ddp: Any  # the DDP wrapper of the trainables, or None
    sharded: list  # parallel='fsdp' with several processes: the sharded student and projections
    normalise: bool  # effective-batch normalisation of the loss terms (while ``masks_agree()``)
    masks_agree: Callable[[], bool]  # the adaptor's inputs_mask is the batch's mask (found on the first batch)
    accumulation: int  # micro-batches per optimizer step
    split_task: Callable[[Any], tuple[str | None, Any]]
    store: Any = None  # the per-example teacher store, or None
    skip_nonfinite: bool = False
    resumed_from: str | None = None

    def next_group(self) -> list:
        """The micro-batches of one optimizer step. Epoch mode: a group never crosses an epoch boundary, so an
        epoch's last group may be shorter (it still steps, scaled by its own size)."""
        group: list = []
        while len(group) < self.accumulation:
            if not self.plan.epoch_mode:
                group.append(self.cursor.next_cycling())
                continue
            try:
                group.append(self.cursor.next())
            except StopIteration:
                if group:
                    break
                self.cursor.start_pass(self.cursor.pass_index + 1)
                self.new_pass()
        return group

    def new_pass(self) -> None:
        """At a pass boundary: publish what this rank stored in the teacher store, read what the others did."""
        if self.store is not None:
            self.store.flush()
            self.ctx.barrier()
            self.store.refresh()

    def micro_batches(self, group: list) -> Iterator[tuple[int, MicroBatch]]:
        """Each item of ``group`` as a :class:`MicroBatch` on the device, with its normalisation factors."""
        tasks_and_batches = [self.split_task(item) for item in group]
        factors = None
        if self.normalise and (len(group) > 1 or self.ctx.world_size > 1) and self.masks_agree():
            factors = normalisation_factors([b for _, b in tasks_and_batches], self.ctx.device,
                                            self.ctx.world_size, self.ctx.all_reduce)
        for j, (task, batch) in enumerate(tasks_and_batches):
            index = keys = None
            if self.store is not None:
                batch, index = split_example_index(batch)
                keys = split_batch(batch)[0]  # lengths and token hashes come from the CPU copy: no device sync
            yield j, MicroBatch(move_to_device(batch, self.ctx.device, non_blocking=True), index, keys,
                                None if factors is None else factors[j], task)

    def gradient_sync(self, j: int, n: int) -> Any:
        """DDP all-reduces (FSDP reduce-scatters) gradients once per optimizer step, on its last micro-batch."""
        if self.sharded:
            fsdp.set_gradient_sync(self.sharded, j == n - 1)
        return contextlib.nullcontext() if self.ddp is None or j == n - 1 else self.ddp.no_sync()

    def check_finite(self, step: int, loss: torch.Tensor, terms: dict, check: bool,
                     finite: torch.Tensor) -> torch.Tensor:
        """On check steps raise on a non-finite loss; with ``skip_nonfinite`` collect the verdict (no sync)."""
        if check and not torch.isfinite(loss):
            bad = [k for k, v in terms.items() if not torch.isfinite(v).all()] or ["total"]
            raise NonFiniteLossError(f"non-finite loss at step {step}: term(s) {', '.join(bad)}; the last "
                                     "checkpoint is intact (set skip_nonfinite_steps=True to skip such steps)")
        if self.skip_nonfinite:
            finite = finite & torch.isfinite(loss.detach())
        return finite


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler_class: Callable | None, scheduler_args: dict | None,
                    scheduler: Any) -> Any:
    """``scheduler_class(optimizer=optimizer, **scheduler_args)`` (TextBrewer), or the given ``scheduler``."""
    if scheduler_class is None:
        return scheduler
    try:
        return scheduler_class(optimizer=optimizer, **(scheduler_args or {}))
    except TypeError as e:
        raise ConfigError(f"cannot build {getattr(scheduler_class, '__name__', scheduler_class)} with "
                          f"optimizer and {sorted(scheduler_args or {})}: {e}", "scheduler_args") from None


def open_session(distiller: Any, optimizer: torch.optim.Optimizer, dataloader: Iterable, *, num_epochs: Any,
                 num_steps: Any, scheduler: tuple, max_grad_norm: float, batch_postprocessor: Callable | None,
                 model_kwargs: dict) -> TrainingSession:
    """Set up a ``train()`` call of ``distiller`` (see the module docstring). ``scheduler`` is
    ``(scheduler_class, scheduler_args, scheduler)`` as ``train()`` received them: the LR scheduler is built
    once the projections have joined the optimizer."""
    tc = distiller.t_config
    if num_epochs is None and num_steps is None:
        raise ConfigError("give num_epochs or num_steps", "train")
    if num_steps is not None:
        integral(num_steps, "num_steps")
    else:
        integral(num_epochs, "num_epochs")
    if num_steps is None and not hasattr(dataloader, "__len__"):
        raise ConfigError("epoch mode needs a dataloader with __len__; pass num_steps instead", "train")
    if tc.seed is not None:
        seed_everything(tc.seed)
    ctx = DistributedContext.create(tc.local_rank, distiller.device)
    distiller.device = ctx.device
    distiller.rank, distiller.world_size = ctx.rank, ctx.world_size
    distiller.prepare_models()
    store = distiller.teacher_store = distiller.open_teacher_store()
    distiller.add_projections_to(optimizer)
    fingerprint = distiller.fingerprint()  # before sharding renames the model classes
    ddp, trainables, sharded = None, None, []
    projections = [p for p in distiller.projs if p is not None]
    if tc.parallel == "fsdp":  # sharded under torchrun; checkpoints in the sharded format at any world size
        if ctx.world_size > 1:
            trainables = fsdp.shard_trainables(distiller.model_S, projections, optimizer, tc.amp_dtype)
            if tc.fsdp_teachers == "shard":
                fsdp.shard_teachers(distiller.teachers(), tc.amp_dtype)
            sharded = [distiller.model_S, *projections]
        else:
            trainables = Trainables(distiller.model_S, projections)
    elif ctx.world_size > 1:
        ddp = ctx.wrap(distiller.model_S, projections, tc.ddp_find_unused_parameters)
        distiller.student_forward = ddp
    stepper = OptimizerStepper(optimizer, build_scheduler(optimizer, *scheduler), distiller.clipped_parameters(),
                               max_grad_norm=max_grad_norm,
                               fp16=tc.fp16, skip_nonfinite=tc.skip_nonfinite_steps)
    cursor = distiller.make_cursor(ctx.shard(dataloader, tc.seed or 0), batch_postprocessor, model_kwargs)
    plan = TrainPlan.build(tc, len(cursor) if num_steps is None else None, num_epochs, num_steps)
    configs = {"training_config": tc.to_dict()}
    if distiller.d_config is not None:
        configs["distillation_config"] = distiller.d_config.to_dict()
    checkpointer = Checkpointer(tc.output_dir, ctx, fingerprint=fingerprint, configs=configs,
                                save_total_limit=tc.save_total_limit, force_resume=tc.force_resume,
                                student_state_dicts=tc.checkpoint_format == "textbrewer", trainables=trainables)
    distiller.global_step = 0
    distiller.interrupted, distiller.stop_reason = False, None
    distiller.weights = distiller.initial_weights()
    resumed = checkpointer.find(tc.resume_from_checkpoint)
    if tc.resume_from_checkpoint is True and resumed is None:
        logger.info("resume_from_checkpoint=True but %s has no checkpoint: starting fresh", tc.output_dir)
    if resumed is None:
        cursor.start_pass(0)
    else:
        state = checkpointer.load(resumed, student=distiller.model_S, projections=distiller.projection_modules(),
                                  stepper=stepper, cursor=cursor, plan=plan.state_dict(),
                                  accumulation=tc.gradient_accumulation_steps)
        distiller.global_step = state["global_step"]
        distiller.weights = dict(state["weights"])
    writer = MetricsWriter(tc.output_dir, tc.log_dir, enabled=ctx.is_main)
    if resumed is not None:
        writer.drop_after(distiller.global_step)
    step_logger = StepLogger(writer, total_steps=plan.total_steps, start_step=distiller.global_step,
                             is_main=ctx.is_main, mean_over_ranks=ctx.mean, world_size=ctx.world_size,
                             progress_bar=tc.progress_bar)
    session = TrainingSession(
        plan=plan, ctx=ctx, stepper=stepper, cursor=cursor, checkpointer=checkpointer, logger=step_logger,
        autocast=torch.autocast(ctx.device.type, dtype=tc.amp_dtype, enabled=tc.amp_dtype is not None),
        ddp=ddp, sharded=sharded, normalise=distiller.normalises_effective_batch(), masks_agree=distiller.masks_agree,
        split_task=distiller.split_task, store=store,
        accumulation=tc.gradient_accumulation_steps, skip_nonfinite=tc.skip_nonfinite_steps, resumed_from=resumed)
    distiller.stop.control_group = ctx.control_group
    logger.info("training %s for %s", type(distiller).__name__, plan.describe())
    return session


def close_session(distiller: Any, session: TrainingSession) -> None:
    """Close the logger and the teacher store, give the teachers back their ``requires_grad`` flags, and release
    the DDP reducer while the process group is alive."""
    session.logger.close()
    distiller.restore_teacher_flags()
    if session.store is not None:
        session.store.close()
    if session.ddp is not None:  # a compiled student stays compiled for the next train()
        distiller.student_forward = distiller.model_S
        session.ddp = None


def save_checkpoint(distiller: Any, session: TrainingSession) -> str | None:
    """``checkpoint-{global_step}`` of the current state (the teacher store is flushed first)."""
    if session.store is not None:
        session.store.flush()
    path = session.checkpointer.save(distiller.global_step, student=distiller.model_S,
                                     projections=distiller.projection_modules(), stepper=session.stepper,
                                     cursor=session.cursor, weights=distiller.weights,
                                     plan=session.plan.state_dict(), version=__version__)
    if path is not None:
        logger.info("saved %s", path)
    return path
