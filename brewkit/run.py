"""The commands behind ``brewkit validate``, ``brewkit train`` and ``brewkit eval``; ``train_run`` is the visible
recipe of a YAML run.

A run file is read by :func:`brewkit.runfile.load_run` and built by :func:`brewkit.build.build`; this module
runs it: one batch and a printed plan (:func:`validate_run`), training with evaluation and the files a run
leaves behind (:func:`train_run`), or the evaluation of a saved student (:func:`eval_run`).
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Any

import torch

from .build import build, check_sizes, in_data_section
from .checkpoint import latest_checkpoint
from .data import build_dataloaders
from .describe import count_parameters, describe_model
from .engine.batches import split_example_index
from .engine.rng import forked_rng, seed_everything
from .errors import AdaptorError, CheckpointError, ConfigError
from .fsdp import unshard_architectures
from .models import build_model, load_pretrained, load_tokenizer, read_model_config
from .run_directory import DIGESTS, RunDirectory, file_digest
from .runfile import RunConfig, in_section
from .tasks import get_task


def drop_example_index(batch: Any) -> Any:
    """Batches carry ``idx`` (the example index, for caches); models must not receive it."""
    return split_example_index(batch)[0]


# -- the resolved training arguments ----------------------------------------------------------------------------
def training_arguments(run: RunConfig, plan: Any, scheduler_args: dict) -> list[tuple[str, Any, str]]:
    """``(TrainingArguments name, resolved value, brewkit's setting)`` of each setting the run trains with, over
    ``plan`` (:class:`~brewkit.engine.plan.TrainPlan`) and the LR schedule's ``scheduler_args``: what
    ``brewkit validate`` prints, whichever spelling the run file used."""
    from .hf_names import ADAM_BETAS
    from .runfile import ADAM_TYPE

    o, tc, data, ev = run.optim, run.training, run.data, run.evaluation
    opt, sch = o.optimizer, o.lr_scheduler
    rows: list[tuple[str, Any, str]] = [
        ("optim", "adamw_torch" if opt["name"] == "adamw" else opt["name"], "training.optimizer.name"),
        ("learning_rate", opt["lr"], "training.optimizer.lr"),
        ("weight_decay", opt["weight_decay"], "training.optimizer.weight_decay")]
    if opt["name"] in ADAM_TYPE:
        betas = opt.get("betas") or ADAM_BETAS
        rows += [("adam_beta1", betas[0], "training.optimizer.betas[0]"),
                 ("adam_beta2", betas[1], "training.optimizer.betas[1]"),
                 ("adam_epsilon", opt.get("eps", 1e-8), "training.optimizer.eps")]
    schedule = sch["name"]
    if schedule == "constant" and scheduler_args.get("num_warmup_steps"):
        schedule = "constant_with_warmup"  # brewkit's constant warms up first
    ratio = "" if "warmup_steps" in sch else f" = int({sch['warmup_ratio']} x {plan.total_steps})"
    rows += [("lr_scheduler_type", schedule, "training.lr_scheduler.name"),
             ("lr_scheduler_kwargs", sch.get("kwargs") or {}, "training.lr_scheduler.kwargs"),
             ("warmup_steps", scheduler_args.get("num_warmup_steps", 0),
              f"training.lr_scheduler.warmup_steps / warmup_ratio{ratio}"),
             ("num_train_epochs", plan.num_epochs, "training.num_epochs"),
             ("max_steps", plan.total_steps, "training.num_steps" if not plan.epoch_mode else
              f"num_epochs x {plan.steps_per_epoch} steps per epoch"),
             ("per_device_train_batch_size", data.batch_size, "data.batch_size"),
             ("per_device_eval_batch_size", data.eval_batch_size or data.batch_size, "data.eval_batch_size"),
             ("gradient_accumulation_steps", tc.gradient_accumulation_steps, "training.gradient_accumulation_steps"),
             ("max_grad_norm", o.max_grad_norm, "training.max_grad_norm"),
             ("logging_steps", tc.logging_steps, "training.logging_steps"),
             ("save_steps", plan.ckpt_steps, "training.ckpt_steps" + ("" if plan.ckpt_steps else
                                                                     f" (null: {tc.ckpt_frequency} per epoch)")),
             ("eval_steps", ev.steps, "evaluation.steps" + ("" if ev.steps else " (null: at each checkpoint)")),
             ("save_total_limit", tc.save_total_limit, "training.save_total_limit"),
             ("seed", tc.seed, "training.seed"),
             ("bf16", tc.bf16, "training.bf16"), ("fp16", tc.fp16, "training.fp16"),
             ("report_to", ["tensorboard"] if tc.log_dir else ["none"], "tensorboard when training.log_dir is set"),
             ("logging_dir", tc.log_dir, "training.log_dir"),
             ("resume_from_checkpoint", tc.resume_from_checkpoint, "training.resume_from_checkpoint"),
             ("dataloader_num_workers", data.num_workers, "data.num_workers"),
             ("metric_for_best_model", ev.best_metric_key, "evaluation.metric_for_best_model"),
             ("greater_is_better", ev.higher_is_better if ev.best_metric_key else None, "evaluation.greater_is_better"),
             ("early_stopping_patience", ev.early_stopping_patience, "evaluation.early_stopping_patience")]
    return rows


def format_training_arguments(rows: list[tuple[str, Any, str]]) -> list[str]:
    """``  name: value  # brewkit's setting`` lines (values in JSON, which YAML reads)."""
    import json

    width = max(len(f"{n}: {json.dumps(v)}") for n, v, _ in rows)
    return [f"  {f'{n}: {json.dumps(v)}':<{width}}  # {where}" for n, v, where in rows]


def run_callbacks(run: RunConfig, eval_loader: Any) -> Any:
    """The ``TrainerCallback`` objects the run file asks for, as an
    :class:`~brewkit.engine.hf_callbacks.HFCallbacks` (None when it asks for none): ``EarlyStoppingCallback``
    from ``evaluation.early_stopping_patience`` (and ``_threshold``), with ``metric_for_best_model`` and
    ``greater_is_better`` (which also make each checkpoint's ``trainer_state.json`` track ``best_metric``)."""
    from .engine.hf_callbacks import HFCallbacks

    ev = run.evaluation
    key = ev.best_metric_key
    if key is None:
        return None
    if eval_loader is None:
        field = "early_stopping_patience" if ev.early_stopping_patience is not None else "metric_for_best_model"
        raise ConfigError("needs an eval split to evaluate on (data.eval_file or data.split)", f"evaluation.{field}")
    callbacks = []
    if ev.early_stopping_patience is not None:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(ev.early_stopping_patience, ev.early_stopping_threshold or 0.0))
    return HFCallbacks(callbacks, metric_for_best_model=key, greater_is_better=ev.higher_is_better)


# -- validate -------------------------------------------------------------------------------------------------
def validate_run(run: RunConfig) -> str:
    """Everything short of training: build, run one batch through both models and adaptors, print the plan."""
    b = build(run, with_optimizer=False)
    d = b.distiller
    raw_batch = next(iter(b.train_loader))
    batch = drop_example_index(raw_batch)
    if run.training.seed is not None:
        torch.manual_seed(run.training.seed)  # dropout is active: a seed makes the printed losses repeatable
    try:
        loss, terms = d.dry_run(raw_batch if run.teacher_store is not None else batch)  # a store reads by idx
    except AdaptorError as e:  # the models and the run file disagree: a mistake in the run file
        raise ConfigError(e.message, "distillation." + e.path if e.path else None) from None
    values = {"loss": loss, **terms}
    bad = [f"{k}={float(v)}" for k, v in values.items() if not math.isfinite(float(v))]
    if bad:  # training would stop at its first step (NonFiniteLossError)
        raise ConfigError(f"the first batch's loss is not finite: {', '.join(bad)}; training would stop at its first "
                          "step. Look for NaN or inf in the models' weights or inputs, or scores masked with -inf "
                          "(docs/errors.md E30); training.skip_nonfinite_steps: true skips such steps")
    lines = [f"run: {run.distiller} distiller, output_dir {run.output_dir}"]
    if b.teacher is not None:
        lines.append(f"teacher: {describe_model(b.teacher)}")
    if run.teacher_store is not None:
        from .offline_store import describe_store

        lines.append(describe_store(run.teacher_store.directory))
    lines.append(f"student: {describe_model(b.student)}")
    if b.teacher is not None:
        ratio = count_parameters(b.student) / max(count_parameters(b.teacher), 1)
        lines.append(f"compression: {ratio:.1%} of the teacher's parameters")
    lines += [f"  {n}" for n in b.notes]
    lines.append(f"data: {len(b.train_loader.dataset)} train / "
                 f"{len(b.eval_loader.dataset) if b.eval_loader is not None else 0} eval examples, "
                 f"{len(b.train_loader)} batches per epoch")
    lines.append(b.task.describe())
    aug = run.data.augment
    if aug is not None:
        lines.append(f"augmentation: {aug.copies} altered cop{'y' if aug.copies == 1 else 'ies'} of each training "
                     f"row (word replacement p={aug.replace_prob:g} from {aug.neighbours} embedding neighbours)")
    lines.append(f"loss terms ({b.task.positions(run.data)}):")
    dc = b.distill_config
    if dc is None:
        lines.append("  the model's own loss (supervised training)")
    else:
        if b.teacher is not None or run.teacher_store is not None:
            t2 = " x tau^2" if dc.kd_temperature_squared else ""
            lines.append(f"  kd: {dc.kd_loss_type} at temperature {dc.temperature}"
                         f"{'' if dc.temperature_scheduler == 'none' else f' ({dc.temperature_scheduler})'}"
                         f"{t2}, weight {dc.kd_loss_weight}"
                         f"{'' if dc.kd_loss_weight_scheduler == 'none' else f' ({dc.kd_loss_weight_scheduler})'}")
        lines.append(f"  hard labels: weight {dc.hard_label_weight}")
        for i, (m, proj) in enumerate(zip(dc.intermediate_matches or [], getattr(d, "projs", []))):
            p = "" if proj is None else \
                f", proj {m.proj[0]} {m.proj[1]}->{m.proj[2]} ({count_parameters(proj)} params)"
            lines.append(f"  match[{i}]: {m.feature} S{m.layer_S} <- T{m.layer_T} {m.loss} weight {m.weight}{p}")
    if b.eval_loader is not None:
        lines.append(run.evaluation.describe())
    run_callbacks(run, b.eval_loader)  # early stopping without an eval split is a mistake in the run file
    lines.append("training arguments (resolved; transformers.TrainingArguments names, brewkit's after #):")
    lines += format_training_arguments(training_arguments(run, b.plan, b.scheduler_args))
    lines.append(f"positions counted in the first batch: {b.task.counted(batch)}")
    lines.append("first batch: " + ", ".join([f"loss={float(loss):.4f}"] +
                                             [f"{k}={float(v):.4f}" for k, v in terms.items()]))
    lines.append("ok: the run file is valid")
    return "\n".join(lines)


# -- train ----------------------------------------------------------------------------------------------------
def resolved_run_file(run: RunConfig, b: Any) -> dict:
    """The run file as it ran: ``--set`` applied, the layer-map preset expanded, every training default written."""
    resolved = copy.deepcopy(run.source)
    if b.distill_config is not None:
        resolved["distillation"] = b.distill_config.to_dict()
    resolved["training"] = {**run.training.to_dict(), **run.optim.to_dict()}
    del resolved["training"]["output_dir"]  # the top-level output_dir says it (and --set output_dir=... works)
    return resolved


def data_digests(run: RunConfig) -> dict:
    """sha256 of the data files, so that resuming on changed data is refused."""
    out = {}
    for key in ("train_file", "eval_file"):
        path = getattr(run.data, key, None)  # already resolved (pkg://, relative to the run file)
        if path and os.path.isfile(path):
            out[key] = file_digest(path)
    return out


def train_run(run: RunConfig) -> dict:
    """Train as the run file says; leave the resolved config, metrics, checkpoints and ``final/`` behind.

    The output directory is claimed first (a lock; a finished or unfinished run in it is refused unless the run
    resumes or overwrites: :mod:`brewkit.run_directory`), and nothing in it is replaced before the first batch
    has gone through the models. Under ``torchrun`` every process trains and evaluates its shard; only rank 0
    writes files and returns the full summary (the others return ``{"rank", "steps"}``).
    """
    t0 = time.perf_counter()
    tc = run.training
    resume = tc.resume_from_checkpoint
    resuming = bool(resume) and (resume is not True or latest_checkpoint(run.output_dir) is not None)
    overwrite = run.optim.overwrite_output_dir
    directory = RunDirectory(run.output_dir, is_main=int(os.environ.get("RANK", "0")) == 0)
    directory.claim(resuming=resuming, overwrite=overwrite)
    try:
        return _train(run, directory, resuming, overwrite, t0)
    finally:
        directory.release()


def _train(run: RunConfig, directory: RunDirectory, resuming: bool, overwrite: bool, t0: float) -> dict:
    b = build(run)
    callbacks = run_callbacks(run, b.eval_loader)  # before anything is written: early stopping needs an eval split
    main = b.rank == 0
    resolved, digests = resolved_run_file(run, b), data_digests(run)
    if resuming:
        directory.check_resumable({**resolved, "data_digests": digests}, run.training.force_resume)
    with forked_rng():  # the first batch through the models before anything in output_dir is replaced
        try:
            first = next(iter(b.train_loader))
            b.distiller.dry_run(first if run.teacher_store is not None else drop_example_index(first))
        except AdaptorError as e:
            raise ConfigError(e.message, "distillation." + e.path if e.path else None) from None
    directory.prepare(resuming=resuming, overwrite=overwrite)
    if main:
        directory.write_directory("tokenizer", b.tokenizer.save_pretrained)  # for `brewkit eval` on checkpoints
        directory.write_yaml("run.yaml", resolved)
        directory.write_json(DIGESTS, digests)
    history: list[dict] = []

    teacher = b.teacher if run.distiller != "train" else None  # causal LMs: agreement with the teacher

    def run_eval(model: torch.nn.Module) -> dict[str, float]:
        return {f"eval_{k}": v for k, v in b.task.evaluate(model, b.eval_loader, run.training.device,
                                                           run.evaluation.metric, teacher=teacher,
                                                           data=run.data).items()}

    def callback(model: torch.nn.Module, step: int) -> None:  # on every rank: each evaluates its shard
        if b.eval_loader is None:
            return
        result = run_eval(model)
        history.append({"step": step, **result})
        b.distiller.log_metrics(result, step)  # metrics.jsonl and TensorBoard, from rank 0; TrainerCallbacks
        if getattr(b.scheduler_class, "follows_metric", False) and b.scheduler_class.built is not None:
            b.scheduler_class.built.step(result[run.evaluation.best_metric_key or f"eval_{run.evaluation.metric}"])

    o = run.optim
    keep_index = b.distill_config is not None and (b.distill_config.teacher_cache != "none"
                                                   or run.teacher_store is not None)  # the engine takes it
    b.distiller.train(b.optimizer, b.train_loader, num_epochs=o.num_epochs, num_steps=o.num_steps,
                      scheduler_class=b.scheduler_class, scheduler_args=b.scheduler_args,
                      max_grad_norm=o.max_grad_norm, callback=callback, callbacks=callbacks,
                      batch_postprocessor=None if keep_index else drop_example_index)
    steps = b.distiller.global_step
    from .engine.hf_callbacks import TRAINING_STOP

    early_stopped = (b.distiller.stop_reason or "").startswith(TRAINING_STOP)  # a finished run
    if b.distiller.interrupted and not early_stopped:  # a signal: a final/ now would pass for a finished run
        if not main:
            return {"rank": b.rank, "steps": steps}
        summary = {"output_dir": run.output_dir, "interrupted": True, "signal": b.distiller.stop_reason,
                   "steps": steps, "checkpoint": latest_checkpoint(run.output_dir),
                   "resume": "run again with --set training.resume_from_checkpoint=true",
                   "train_seconds": round(time.perf_counter() - t0, 1)}
        directory.write_json("summary.json", summary)
        return summary
    final_eval = None
    if b.eval_loader is not None:
        if history and history[-1]["step"] == steps:  # evaluated at the last step
            final_eval = {k: v for k, v in history[-1].items() if k != "step"}
        else:
            with forked_rng():
                final_eval = run_eval(b.student)
    full_state = b.distiller.consolidated_student_state()  # every rank: a collective when the student is sharded
    if not main:
        return {"rank": b.rank, "steps": steps}

    def save_final(path: str) -> None:
        from .model_card import write_model_card

        b.student.save_pretrained(path, safe_serialization=True, state_dict=full_state)
        if full_state is not None:
            unshard_architectures(path)
        b.tokenizer.save_pretrained(path)
        write_model_card(path, run, b, steps=steps, final_eval=final_eval, history=history,
                         train_seconds=time.perf_counter() - t0)

    final = directory.write_directory("final", save_final)
    summary = {"output_dir": run.output_dir, "final_model": final, "steps": steps,
               "student_parameters": count_parameters(b.student),
               "teacher_parameters": count_parameters(b.teacher),
               "train_seconds": round(time.perf_counter() - t0, 1)}
    if early_stopped:
        summary["early_stopped"] = b.distiller.stop_reason
    if final_eval is not None:
        summary.update(final_eval)
        summary["eval_history"] = history
    directory.write_json("summary.json", summary)
    return summary


# -- eval -----------------------------------------------------------------------------------------------------
def eval_run(run: RunConfig, checkpoint: str) -> dict:
    """Evaluate a saved student (``final/`` or a ``checkpoint-N`` directory) on the run's eval split, loaded with
    the run's task's auto class and evaluated by its metrics (a causal LM: perplexity, and top-1 agreement with
    the run's teacher when it has one)."""
    import transformers

    check_sizes(run)
    task = get_task(run.task)
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ConfigError(f"{checkpoint} holds no saved model (config.json)", "--checkpoint")

    def damaged(message: str) -> CheckpointError:  # a checkpoint brewkit wrote, damaged since (disk, copy)
        return CheckpointError(f"--checkpoint: {message}")

    config = read_model_config(checkpoint, damaged, "evaluate another checkpoint (or final/) of the run")
    tokenizer = run_tokenizer(run, checkpoint)
    model = load_pretrained(getattr(transformers, task.auto_class), checkpoint, damaged, attn_implementation="eager")
    teacher = None
    if task.name == "causal_lm" and run.teacher is not None and run.distiller != "train":
        if run.training.seed is not None:  # a randomly initialised teacher comes out as it did in training
            seed_everything(run.training.seed)
        teacher = in_section("teacher", build_model, run.teacher)[0].to(run.training.device)
    inputs = task.model_inputs(model)
    _, eval_loader = in_data_section(lambda: build_dataloaders(
        run.data, tokenizer, None, seed=run.training.seed or 0, device=run.training.device, task=task,
        model_inputs=(task.teacher_inputs(teacher) if teacher is not None else inputs, inputs)))
    if eval_loader is None:
        raise ConfigError("the run has no eval split", "data")
    run_labels = len(run.data.labels) if run.data.labels else getattr(eval_loader.dataset, "num_labels", None)
    if not task.labelled:
        run_labels = None
    if run_labels is not None and config.num_labels != run_labels:  # argmax over another label set: no error
        raise ConfigError(f"{checkpoint} has a classifier head of {config.num_labels} labels but the run has "
                          f"{run_labels} ({'data.labels' if run.data.labels else 'data.label_column'}); it was "
                          "trained for another label set: evaluate it with the run file it was trained with",
                          "--checkpoint")
    model.to(run.training.device)
    return {"checkpoint": checkpoint,
            **{f"eval_{k}": v for k, v in task.evaluate(model, eval_loader, run.training.device, run.evaluation.metric,
                                                        teacher=teacher, data=run.data).items()}}


def run_tokenizer(run: RunConfig, checkpoint: str) -> Any:
    """The tokenizer a saved model of ``run`` reads: the checkpoint's own, the run's ``tokenizer/`` or ``final/``
    copy, else the run file's (the teacher's, as in training)."""
    candidates = [checkpoint, os.path.join(run.output_dir, "tokenizer"), os.path.join(run.output_dir, "final")]
    tok_dir = next((c for c in candidates if os.path.isfile(os.path.join(c, "tokenizer_config.json"))), None)
    if tok_dir is not None:
        return load_tokenizer(tok_dir, field_name="--checkpoint" if tok_dir == checkpoint else "output_dir")
    section = "teacher" if run.teacher is not None else "student"
    spec = run.teacher if run.teacher is not None else run.student
    return in_section(section, load_tokenizer, spec.tokenizer or spec.path)


# -- generate -------------------------------------------------------------------------------------------------
def generate_run(run: RunConfig, checkpoint: str, prompt: str, max_new_tokens: int = 40, sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, seed: int | None = None) -> dict:
    """Continue ``prompt`` with a saved causal LM of ``run`` (``final/`` or a checkpoint): the prompt is encoded as
    training encoded a prompt (:meth:`brewkit.tasks.CausalLM.generation_prompt`), then ``model.generate`` adds
    up to ``max_new_tokens`` tokens, greedily or (``sample``) sampling at ``temperature`` from the ``top_k`` most
    likely tokens (0: all), stopping at the tokenizer's end token. Returns the prompt, the completion and the
    number of new tokens."""
    import transformers

    task = get_task(run.task)
    if not hasattr(task, "generation_prompt"):
        raise ConfigError(f"brewkit generate continues text with a causal LM; this run's task is {run.task}", "task")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"must be a positive integer, got {max_new_tokens!r}", "--max-new-tokens")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ConfigError(f"must be a positive number, got {temperature!r}", "--temperature")
    if not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"must be an integer >= 0, got {top_k!r}", "--top-k")
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ConfigError(f"{checkpoint} holds no saved model (config.json)", "--checkpoint")

    def damaged(message: str) -> CheckpointError:
        return CheckpointError(f"--checkpoint: {message}")

    tokenizer = run_tokenizer(run, checkpoint)
    model = load_pretrained(transformers.AutoModelForCausalLM, checkpoint, damaged, attn_implementation="eager")
    model.to(run.training.device).eval()
    ids = task.generation_prompt(prompt, tokenizer, run.data)
    if not ids:
        raise ConfigError("the prompt encodes to no tokens", "--prompt")
    limit = getattr(model.config, "max_position_embeddings", None)  # learned positions end somewhere
    if isinstance(limit, int):
        if len(ids) >= limit:
            raise ConfigError(f"the prompt is {len(ids)} tokens but the model takes at most {limit}", "--prompt")
        max_new_tokens = min(max_new_tokens, limit - len(ids))
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    inputs = torch.tensor([ids], device=run.training.device)
    options = {"max_new_tokens": max_new_tokens, "do_sample": sample, "eos_token_id": end, "pad_token_id": pad}
    if sample:
        options.update(temperature=float(temperature), top_k=top_k)
    else:  # a checkpoint's generation_config may ask for sampling; greedy means greedy
        options.update(temperature=None, top_k=None, top_p=None)
    with forked_rng(), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **options)
    new = out[0, len(ids):].tolist()
    return {"checkpoint": checkpoint, "prompt": prompt, "completion": tokenizer.decode(new, skip_special_tokens=True),
            "new_tokens": len(new)}


# -- capture --------------------------------------------------------------------------------------------------
def capture_run(run: RunConfig, out: str | None = None, k: int | None = None, temperature: float | None = None,
                dtype: str | None = None, progress: bool | None = None, selection: str | None = None) -> dict:
    """``brewkit capture``: run the teacher once over the training data and write a captured store
    (:mod:`brewkit.offline_store`) to ``out`` (else ``teacher.capture.dir``). ``k`` / ``temperature`` / ``dtype``
    / ``selection`` override ``teacher.capture``; the temperature defaults to ``distillation.temperature``. A
    directory that holds a store with the same fingerprint is resumed; one with another is refused. Under
    ``torchrun`` each process captures its shard. Returns the summary (rank 0's counts, the store's bytes and
    bytes/position)."""
    from . import distributed, offline_store
    from .build import build_capture
    from .configs import DistillationConfig

    settings = run.capture or offline_store.CaptureConfig()
    given = {key: value for key, value in (("k", k), ("temperature", temperature), ("dtype", dtype),
                                           ("selection", selection)) if value is not None}
    settings = offline_store.capture_config({**settings.to_dict(), **given})  # the command line's values checked
    directory = out or settings.dir
    if not directory:
        raise ConfigError("where to write the store: give --out DIR or teacher.capture.dir", "--out")
    directory = os.path.expanduser(directory)
    if settings.temperature is None:
        dist = {k: v for k, v in run.distillation.items() if k != "intermediate_matches"}
        settings.temperature = in_section("distillation", DistillationConfig.from_dict, dist).temperature
    cb = build_capture(run)
    first = drop_example_index(next(iter(cb.loader)))
    with torch.inference_mode():  # the shape of the teacher's logits decides the store's kind
        from .adaptors import normalize_output
        from .engine.batches import call_model, move_to_device, split_batch

        part = move_to_device(split_batch(first)[0], next(cb.teacher.parameters()).device)
        inputs = {k: v for k, v in part.items() if cb.teacher_keys is None or k in cb.teacher_keys}
        logits = normalize_output(cb.adaptor(part, call_model(cb.teacher, inputs, {})), "adaptor_T").get("logits")
    if not logits:
        raise ConfigError("the teacher's adaptor returned no logits, so there is nothing to capture", "teacher")
    shape = tuple(logits[0].shape)
    kind = "topk" if len(shape) == 3 else "logits"
    if kind == "logits" and settings.selection == "sampled":
        raise ConfigError(f"a sequence classification store holds each example's full logits ({shape[-1]} classes): "
                          "there is nothing to sample; remove selection: sampled", "teacher.capture.selection")
    dtype_ = settings.dtype or ("float16" if kind == "topk" else "float32")
    items = offline_store.run_items(run.data, cb.task, run.task, cb.tokenizer)
    items.update(offline_store.teacher_items(cb.teacher, offline_store.model_source(run.teacher, run.training.seed)))
    items.update(kind=kind, dtype=dtype_)
    if kind == "topk":
        items.update(k=min(settings.k, shape[-1]), temperature=float(settings.temperature),
                     selection=settings.selection)
        if settings.selection == "sampled":
            items["sample_seed"] = settings.seed
    offline_store.existing_store_check(directory, items)
    manifest = offline_store.new_manifest(kind, items=items, k=settings.k, vocab=shape[-1], classes=shape[-1],
                                          temperature=settings.temperature, dtype=dtype_,
                                          selection=settings.selection, seed=settings.seed)
    if cb.rank == 0 and not os.path.isdir(os.path.join(directory, "tokenizer")):
        os.makedirs(directory, exist_ok=True)
        cb.tokenizer.save_pretrained(os.path.join(directory, "tokenizer"))
    if cb.rank == 0 and cb.rng_state is not None:
        os.makedirs(directory, exist_ok=True)
        offline_store.save_teacher_rng(directory, cb.rng_state, run.training.seed)
    summary = offline_store.capture(
        cb.teacher, cb.adaptor, cb.loader, directory, manifest, device=next(cb.teacher.parameters()).device,
        rank=cb.rank, world_size=cb.world_size, barrier=lambda: distributed.barrier(cb.world_size),
        flush_every=settings.flush_every, progress=run.training.progress_bar if progress is None else progress,
        expected=cb.expected, teacher_keys=cb.teacher_keys)
    return summary


def format_summary(summary: dict) -> str:
    """``key: value`` lines of a summary (without the evaluation history)."""
    return "\n".join(f"{k}: {v}" for k, v in summary.items() if k != "eval_history")
