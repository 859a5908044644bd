"""``MultiTaskDistiller``: one teacher per task, one shared student, tasks sampled per micro-batch."""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ..checkpoint import unwrap
from ..configs import DistillationConfig, TrainingConfig
from ..engine.batches import split_batch
from ..engine.cursor import LoaderCursor, MappedLoader, RecordedCursor, loader_shuffles
from ..engine.micro_batch import MicroBatch
from ..errors import ConfigError
from .base import CachedTeacherResults, check_model
from .general import GeneralDistiller


class TaskBatch:
    """A micro-batch tagged with the task it was drawn from."""

    __slots__ = ("batch", "task")

    def __init__(self, task: str, batch: Any):
        self.task, self.batch = task, batch


class TaskCursor(LoaderCursor):
    """Draws a task for every micro-batch with probability ``p_t ∝ n_t^tau`` (``n_t`` = batches of task t;
    uniform when a loader has no length), from a seeded generator, and cycles each task's loader.
    Its state (generator and every task's position) is saved, so resume is exact."""

    def __init__(self, cursors: dict[str, LoaderCursor], tau: float, seed: int):
        super().__init__(None)
        self.cursors, self.tasks = cursors, list(cursors)
        try:
            sizes = torch.tensor([float(len(c)) for c in cursors.values()])
            self.probs = sizes ** tau / (sizes ** tau).sum()
        except TypeError:
            self.probs = torch.full((len(self.tasks),), 1.0 / len(self.tasks))
        self.generator = torch.Generator().manual_seed(seed)
        self.pass_index = 0

    def __len__(self) -> int:
        return sum(len(c) for c in self.cursors.values())

    def start_pass(self, pass_index: int, skip: int = 0, rng_state=None) -> None:
        for c in self.cursors.values():
            c.start_pass(0)

    def next_cycling(self) -> TaskBatch:
        task = self.tasks[int(torch.multinomial(self.probs, 1, generator=self.generator))]
        return TaskBatch(task, self.cursors[task].next_cycling())

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                "tasks": {t: c.state_dict() for t, c in self.cursors.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for t, c in self.cursors.items():
            c.load_state_dict(state["tasks"][t])


class MultiTaskDistiller(GeneralDistiller):
    """Train one student on several tasks, each with its own teacher and adaptors (dicts keyed by task).

    Runs by step count. The task of each micro-batch is sampled with ``p_t ∝ n_t^tau``; its loss
    (GeneralDistiller's objective, matches included) is multiplied by ``task_weights[task]`` when given. If the
    student's ``forward`` has a parameter named ``task_kwarg`` (default ``'task'``), it receives the task name.
    """

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig, model_T: dict, model_S,
                 adaptor_T: dict | None = None, adaptor_S: dict | None = None):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        if distill_config.teacher_cache != "none":
            raise ConfigError("is not supported by MultiTaskDistiller (the tasks' example indices overlap); use "
                              "is_caching_logits", "teacher_cache")
        tasks = list(self.model_T)
        for name, d in (("adaptor_T", adaptor_T), ("adaptor_S", adaptor_S)):
            if d is not None and (not isinstance(d, dict) or set(d) != set(tasks)):
                raise ConfigError(f"must be a dict with one adaptor per task {tasks}, got "
                                  f"{list(d) if isinstance(d, dict) else type(d).__name__}", name)
        self.adaptors_T = adaptor_T or {t: None for t in tasks}
        self.adaptors_S = adaptor_S or {t: None for t in tasks}
        self.task_weights: dict[str, float] | None = None
        self.task_kwarg: str | None = "task"
        self.tau, self.batch_postprocessors = 1.0, {}
        self._pass_task = False

    def _check_teachers(self) -> None:
        if not isinstance(self.model_T, dict) or not self.model_T:
            raise ConfigError("must be a dict {task name: teacher model}", "model_T")
        for t, m in self.model_T.items():
            check_model(m, f"model_T[{t!r}]")

    def train(self, optimizer, dataloaders: dict, num_steps: int, scheduler_class=None, scheduler_args=None,
              scheduler=None, max_grad_norm=-1.0, tau: float = 1, callback=None, batch_postprocessors=None,
              task_weights: dict | None = None, task_kwarg: str | None = "task", **kwargs):
        """TextBrewer's signature plus ``task_weights`` ({task: weight}) and ``task_kwarg``."""
        if not isinstance(dataloaders, dict) or set(dataloaders) != set(self.model_T):
            raise ConfigError(f"must be a dict with one dataloader per task {list(self.model_T)}", "dataloaders")
        if task_weights is not None and set(task_weights) - set(self.model_T):
            raise ConfigError(f"unknown task(s) {sorted(set(task_weights) - set(self.model_T))}", "task_weights")
        if batch_postprocessors is not None and set(batch_postprocessors) - set(self.model_T):
            raise ConfigError("keys must be task names", "batch_postprocessors")
        self.task_weights, self.task_kwarg = task_weights, task_kwarg
        # decided once per train(), not per micro-batch: does the student's forward take the task name?
        self._pass_task = bool(task_kwarg) and task_kwarg in inspect.signature(unwrap(self.model_S).forward).parameters
        self.tau, self.batch_postprocessors = tau, batch_postprocessors or {}
        super().train(optimizer, dataloaders, num_epochs=None, scheduler_class=scheduler_class,
                      scheduler_args=scheduler_args, scheduler=scheduler, max_grad_norm=max_grad_norm,
                      num_steps=num_steps, callback=callback, **kwargs)

    def make_cursor(self, dataloaders: dict, batch_postprocessor, args: dict) -> LoaderCursor:
        cursors = {}
        if self.d_config.is_caching_logits and self.recorded is None:
            self.recorded = {}
        for task, loader in dataloaders.items():
            fn = self.batch_postprocessors.get(task)
            cursor = LoaderCursor(loader if fn is None else MappedLoader(loader, fn))
            if self.d_config.is_caching_logits:
                if task not in self.recorded:
                    self.recorded[task] = self.record_teacher_outputs(cursor, args, task)
                cursor = RecordedCursor(self.recorded[task], seed=(self.t_config.seed or 0) + len(cursors),
                                        shuffle=loader_shuffles(loader))
            cursors[task] = cursor
        return TaskCursor(cursors, self.tau, self.t_config.seed or 0)

    def split_task(self, item: TaskBatch) -> tuple[str, Any]:
        return item.task, item.batch

    def teacher_side(self, batch_T: Any, precomputed: Any, args: dict, task: str | None = None) -> dict:
        if isinstance(precomputed, CachedTeacherResults):
            return precomputed
        if precomputed is not None:
            return self.run_adaptor(self.adaptors_T[task], batch_T, precomputed, f"adaptor_T[{task!r}]")
        return self.teacher_results(self.model_T[task], self.adaptors_T[task], batch_T, args,
                                    f"adaptor_T[{task!r}]")

    def train_on_batch(self, batch: Any, args: dict, micro: MicroBatch | None = None):
        """One micro-batch of ``micro.task`` (``batch`` may also be a :class:`TaskBatch` outside the loop)."""
        task = micro.task if micro is not None else None
        if isinstance(batch, TaskBatch):
            task, batch = batch.task, batch.batch
        batch_T, batch_S, precomputed = split_batch(batch)
        results_T = self.teacher_side(batch_T, precomputed, args, task)
        student_args = dict(args)
        if self._pass_task:
            student_args[self.task_kwarg] = task
        results_S = self.student_results(batch_S, student_args, self.adaptors_S[task], f"adaptor_S[{task!r}]")
        loss, terms = self.loss_of(results_S, results_T, micro)
        if self.task_weights is not None:
            loss = loss * self.task_weights.get(task, 1.0)
        return loss, terms
