"""``TrainingLoop.train``: the training loop, on one screen.

For each optimizer step: take a group of micro-batches (``gradient_accumulation_steps`` of them, fewer at an
epoch's tail), run each forward (teachers under ``inference_mode``, the student, the adaptors, the loss) and
backward, step the optimizer, update the loss-weight schedules, log; then callbacks, checkpoints and stop requests.
Everything else is set up once by :func:`brewkit.engine.session.open_session`. The objective (``train_on_batch``,
``compute_loss`` and the other hooks) comes from the distiller that inherits the loop
(:class:`brewkit.distillers.base.AbstractDistiller`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ..logging_utils import logger
from . import hf_callbacks
from . import session as sessions
from .batches import batch_size_of
from .micro_batch import MicroBatch
from .rng import forked_rng
from .step_logger import MetricsWriter


class TrainingLoop:
    def train(self, optimizer: torch.optim.Optimizer, dataloader: Iterable, num_epochs: int | None = None,
              scheduler_class: Callable | None = None, scheduler_args: dict | None = None, scheduler: Any = None,
              max_grad_norm: float = -1.0, num_steps: int | None = None, callback: Callable | None = None,
              batch_postprocessor: Callable | None = None, callbacks: Any = None, **kwargs) -> None:
        """Train for ``num_epochs`` epochs, or for ``num_steps`` optimizer steps (which takes precedence).

        ``kwargs`` are passed to every model call. ``callback(model=student, step=global_step)`` runs after
        each checkpoint, or every ``train_config.callback_steps`` optimizer steps and after the last, with the
        random generators restored after it: what an evaluation draws (every DataLoader iterator draws a seed)
        does not change what training draws next, so a resumed run continues exactly. A callback
        may call :meth:`request_stop` (early stopping): the run then keeps a checkpoint of that step and ends,
        with ``interrupted`` set. ``scheduler_class(optimizer=optimizer, **scheduler_args)`` builds the LR
        scheduler after the projections joined the optimizer. SIGINT / SIGTERM: see :mod:`brewkit.engine.stop`.

        ``callbacks``: ``transformers.TrainerCallback`` objects (or classes), or
        :class:`~brewkit.engine.hf_callbacks.HFCallbacks` (callbacks with the TrainingArguments values they read),
        called as ``transformers.Trainer`` calls them (see :mod:`brewkit.engine.hf_callbacks`); ``callback`` is
        the evaluation they see (through :meth:`log_metrics`).
        """
        callbacks = hf_callbacks.checked(callbacks)  # a wrong item is an error before anything is set up
        s = self._session = sessions.open_session(
            self, optimizer, dataloader, num_epochs=num_epochs, num_steps=num_steps,
            scheduler=(scheduler_class, scheduler_args, scheduler), max_grad_norm=max_grad_norm,
            batch_postprocessor=batch_postprocessor, model_kwargs=kwargs)
        with self.running(s), self.stop.installed():
            hf = self._callbacks = hf_callbacks.CallbackBridge(self, s, callbacks, dataloader,
                                                               evaluates=callback is not None,
                                                               max_grad_norm=max_grad_norm)
            s.checkpointer.trainer_state_fields = hf.trainer_state_fields
            hf.on_train_begin()
            while self.global_step < s.plan.total_steps:
                step = self.global_step + 1
                grad_norm, skipped = self.optimizer_step(s, step, kwargs)
                self.global_step = step
                self.update_weights(s.plan.total_steps)
                s.logger.step_done(skipped)
                hf.on_step_end(step)
                if s.plan.is_logging_step(step) or hf.should_log:
                    lr = s.stepper.optimizer.param_groups[0]["lr"]
                    hf.on_log(s.logger.log_step(step, s.cursor.pass_index, lr, self.weights, grad_norm))
                if self.after_step(s, step, callback):
                    break
            hf.on_train_end()

    @contextlib.contextmanager
    def running(self, s: sessions.TrainingSession) -> Iterator[None]:
        """The session while the loop runs; closed however the loop ends."""
        try:
            yield
        finally:
            sessions.close_session(self, s)
            self._session = self._callbacks = None

    def optimizer_step(self, s: sessions.TrainingSession, step: int, args: dict) -> tuple[Any, bool]:
        """Optimizer step ``step``: forward and backward over its group of micro-batches, then the stepper.
        Returns ``(gradient norm or None, skipped)``."""
        check = s.plan.checks_finite(step, self.device.type) and not s.skip_nonfinite
        group = s.next_group()
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for j, micro in s.micro_batches(group):
            with s.gradient_sync(j, len(group)):
                finite = self.forward_backward(s, micro, len(group), step, check, finite, args)
        return s.stepper.step(step, finite, check, check or s.plan.is_logging_step(step))

    def forward_backward(self, s: sessions.TrainingSession, micro: MicroBatch, n: int, step: int, check: bool,
                         finite: torch.Tensor, args: dict) -> torch.Tensor:
        """Loss of one micro-batch (under autocast), its checks, backward of ``loss / n``; returns the running
        finiteness verdict of the step."""
        with s.autocast:
            if self._step_takes_micro:
                loss, terms = self.train_on_batch(micro.batch, args, micro=micro)
            else:
                loss, terms = self.train_on_batch(micro.batch, args)
        self._validated = True
        finite = s.check_finite(step, loss, terms, check, finite)
        s.stepper.backward(loss / n)
        s.logger.add(loss, terms, batch_size_of(micro.batch))
        return finite

    def after_step(self, s: sessions.TrainingSession, step: int, callback: Callable | None) -> bool:
        """Checkpoint, callback and stop requests after optimizer step ``step``. Returns whether to stop.
        A ``TrainerCallback``'s ``should_save`` / ``should_evaluate`` add a checkpoint / an evaluation."""
        hf = getattr(self, "_callbacks", None)
        stop = self.stop.agreed(s.ctx.world_size)
        saved = s.plan.is_checkpoint_step(step) or stop or (hf is not None and hf.should_save)
        path = None
        if saved:
            path = sessions.save_checkpoint(self, s)
            if hf is not None:
                hf.on_save(path)
        evaluate = s.plan.is_callback_step(step) or (hf is not None and hf.should_evaluate)
        if callback is not None and evaluate:  # also when stopping: the checkpoint is saved, the resumed run
            # starts after this step, so this is the only time this step's evaluation can run
            logger.info("running callback at step %d%s", step, " before stopping" if stop else "")
            with forked_rng():  # what the callback draws (an eval loader's seed, ...) leaves training's RNG alone
                callback(model=self.model_S, step=step)
            self.model_S.train()
            if path is not None:  # the evaluation of this step joins its checkpoint (log_history, a metric schedule)
                s.checkpointer.refresh_trainer_state(path, step, scheduler=s.stepper.scheduler)
            stop = self.stop.agreed(s.ctx.world_size)  # the callback asked to stop (early stopping)
            if stop and not saved:
                path = sessions.save_checkpoint(self, s)
                if hf is not None:
                    hf.on_save(path)
        if stop and step < s.plan.total_steps:
            logger.warning("interrupted (%s): saved a checkpoint at step %d and stopped", self.stop.reason, step)
            self.interrupted, self.stop_reason = True, self.stop.reason
        return stop

    def consolidated_student_state(self) -> dict | None:
        """The student's whole state dict on rank 0 when ``train()`` sharded it (``parallel='fsdp'`` under
        torchrun; every process must call this: it is a collective), else None (the student is whole)."""
        if not any(hasattr(p, "full_tensor") for p in self.model_S.parameters()):
            return None
        from ..fsdp import full_state_dict

        return full_state_dict(self.model_S)

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and return after the current optimizer step."""
        self.stop.request()

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Write an evaluation record ``{"step": step, **metrics}`` through the run's step logger (metrics file
        and TensorBoard; rank 0 only), and give it to the ``TrainerCallback`` objects (``on_log``,
        ``on_evaluate``: call it on every rank under DDP). Outside ``train()`` it is appended to
        ``output_dir/metrics.jsonl``."""
        step = self.global_step if step is None else step
        if self._session is not None:
            record = self._session.logger.log_eval(step, metrics)
            hf = getattr(self, "_callbacks", None)
            if hf is not None:  # TrainerCallbacks see it as transformers' evaluate() reports: on_log, on_evaluate
                hf.on_log(record)
                hf.on_evaluate(metrics, step)
        elif self.rank == 0:
            writer = MetricsWriter(self.t_config.output_dir, self.t_config.log_dir)
            writer.write({"step": step, **metrics})
            writer.close()
