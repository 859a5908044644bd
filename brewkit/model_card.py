"""``final/README.md``: the model card of a finished run, in the Hugging Face model-card format.

YAML metadata between ``---`` lines (``base_model``: the teacher when it is given by a path, or the pretrained
model a supervised run started from; ``library_name: brewkit``; ``tags`` with ``distillation`` for a distilled
student; ``pipeline_tag``; ``metrics``; ``model-index`` with the final evaluation), then Markdown: the teacher
and the student, the recipe (loss terms, weights, temperature, layer map), the data, the training (steps,
optimizer, schedule) and the final evaluation, and how to load the model. :func:`model_card` builds the text
from a run's configs and built objects; ``brewkit train`` writes it inside the atomic write of ``final/``.
"""
from __future__ import annotations

import os
from typing import Any

import yaml

from .describe import count_parameters

#: ``ModelSpec.task`` -> the Hugging Face ``pipeline_tag``.
PIPELINE_TAGS = {"sequence_classification": "text-classification",
                 "token_classification": "token-classification", "causal_lm": "text-generation"}
#: ``ModelSpec.task`` -> the ``transformers`` class that loads the saved model.
AUTO_CLASSES = {"sequence_classification": "AutoModelForSequenceClassification",
                "token_classification": "AutoModelForTokenClassification", "causal_lm": "AutoModelForCausalLM"}
DISTILLERS = {"general": "brewkit's general distiller (soft labels, hard labels and intermediate matches)",
              "basic": "brewkit's basic distiller (soft and hard labels)",
              "train": "supervised training on the labels (no teacher)"}


def millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def model_source(spec: Any) -> str | None:
    """How the run file gave a model: its path, its builder, or a config of sizes (None without a spec)."""
    if spec is None:
        return None
    if spec.path is not None:
        return spec.path
    if spec.builder is not None:
        return f"builder {spec.builder}"
    if spec.init_from_teacher is not None:
        return f"the teacher's config with layers {spec.init_from_teacher.get('layers')} copied from it"
    return "a config of sizes"


def model_row(role: str, model: Any, spec: Any) -> str:
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", "")
    hidden = getattr(config, "hidden_size", "")
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    return (f"| {role} | `{model_source(spec)}` | {type(model).__name__} | {layers} | {hidden} | {millions(total)} "
            f"| {millions(trainable)} |")


def front_matter(run: Any, metrics: dict[str, float] | None) -> dict[str, Any]:
    teacher_path = run.teacher.path if run.teacher is not None and run.distiller != "train" else None
    base = teacher_path if teacher_path is not None else run.student.path  # a supervised run: its start
    task = PIPELINE_TAGS.get(getattr(run.student, "task", "sequence_classification"), "text-classification")
    tags = (["distillation", "knowledge-distillation"] if run.distiller != "train" else ["fine-tuned"]) + \
        ["brewkit", task]
    meta: dict[str, Any] = {}
    if base is not None:
        meta["base_model"] = base
    meta.update({"library_name": "brewkit", "tags": tags, "pipeline_tag": task})
    if metrics:
        meta["metrics"] = [k.removeprefix("eval_") for k in metrics]
        data = run.data
        meta["model-index"] = [{"name": os.path.basename(os.path.normpath(run.output_dir)), "results": [{
            "task": {"type": task},
            "dataset": {"name": os.path.basename(data.eval_file or data.train_file),
                        "type": data.format or os.path.splitext(data.train_file)[1].lstrip(".") or "file",
                        "split": "eval" if data.eval_file else "held-out split of the train file"},
            "metrics": [{"type": k.removeprefix("eval_"), "value": float(v), "name": k} for k, v in metrics.items()],
        }]}]
    return meta


def recipe_lines(run: Any, dc: Any) -> list[str]:
    lines = [f"Distiller: {DISTILLERS.get(run.distiller, run.distiller)}.", ""]
    if dc is None:
        return lines + ["Loss: the model's own cross-entropy on the labels."]
    sched = "" if dc.temperature_scheduler == "none" else f", temperature schedule {dc.temperature_scheduler}"
    lines.append(f"- **soft labels (KD)**: `{dc.kd_loss_type}` at temperature {dc.temperature}"
                 f"{' x tau^2' if dc.kd_temperature_squared else ''}{sched}, weight {dc.kd_loss_weight}"
                 + ("" if dc.kd_loss_weight_scheduler == "none" else f" ({dc.kd_loss_weight_scheduler})")
                 + ("" if not dc.kd_loss_args else f", options {dc.kd_loss_args}"))
    lines.append(f"- **hard labels**: cross-entropy, weight {dc.hard_label_weight}"
                 + ("" if dc.hard_label_weight_scheduler == "none" else f" ({dc.hard_label_weight_scheduler})"))
    matches = dc.intermediate_matches or []
    if matches:
        lines += ["- **intermediate matches** (the layer map):", "",
                  "| feature | student layer | teacher layer | loss | weight | projection |",
                  "|---|---|---|---|---|---|"]
        for m in matches:
            proj = "" if m.proj is None else f"{m.proj[0]} {m.proj[1]} -> {m.proj[2]}"
            lines.append(f"| {m.feature} | {m.layer_S} | {m.layer_T} | {m.loss} | {m.weight} | {proj} |")
    return lines


def data_lines(run: Any, built: Any) -> list[str]:
    data = run.data
    n_train = len(built.train_loader.dataset)
    n_eval = len(built.eval_loader.dataset) if built.eval_loader is not None else 0
    if data.eval_file:
        eval_src = f"`{data.eval_file}`"
    elif data.split is not None:
        group = f", no `{data.split.group_by}` in both splits" if data.split.group_by else ""
        eval_src = f"{data.split.eval_fraction:.0%} of the train file held out (seed {data.split.seed}{group})"
    else:
        eval_src = "none"
    columns = [f"{name.removesuffix('_column').replace('_', ' ')} column `{getattr(data, name)}`"
               for name in ("text_column", "text_pair_column", "label_column", "prompt_column", "completion_column",
                            "messages_column") if getattr(data, name, None)]
    if getattr(run.student, "task", None) == "causal_lm":  # no labels; prompts or chat messages replace the text
        chat = getattr(data, "messages_column", None) or getattr(data, "prompt_column", None)
        columns = [c for c in columns if not c.startswith(("label column",) + (("text column",) if chat else ()))]
    labels = f", labels {data.labels}" if data.labels else ""
    return [f"- train: `{data.train_file}` ({n_train} examples; {', '.join(columns)}{labels})",
            f"- eval: {eval_src} ({n_eval} examples)",
            f"- at most {data.max_length} tokens per example, {data.batch_size} examples per batch and process"]


def training_lines(run: Any, built: Any, steps: int, train_seconds: float | None) -> list[str]:
    o, tc, plan = run.optim, run.training, built.plan
    opt, sch = o.optimizer, o.lr_scheduler
    length = f"{plan.num_epochs} epoch(s) of {plan.steps_per_epoch} steps" if plan.epoch_mode else "step mode"
    warmup = built.scheduler_args.get("num_warmup_steps", 0)
    precision = "bf16" if tc.bf16 else "fp16" if tc.fp16 else "fp32"
    lines = [f"- {steps} optimizer steps of {plan.total_steps} planned ({length}), gradient accumulation "
             f"{tc.gradient_accumulation_steps}",
             f"- optimizer `{'adamw_torch' if opt['name'] == 'adamw' else opt['name']}`, learning rate {opt['lr']}, "
             f"weight decay {opt['weight_decay']}; schedule `{sch['name']}` with {warmup} warm-up steps; "
             f"max_grad_norm {o.max_grad_norm}",
             f"- seed {tc.seed}, {precision}"]
    if train_seconds is not None:
        lines[-1] += f", {train_seconds:.0f} s"
    return lines


def model_card(run: Any, built: Any, *, steps: int, final_eval: dict[str, float] | None,
               history: list[dict] | None = None, train_seconds: float | None = None) -> str:
    """The model card (``README.md`` text) of run ``run`` built as ``built`` (:class:`brewkit.build.Built`),
    trained for ``steps`` optimizer steps, with its final evaluation (``{"eval_accuracy": ...}``) and the
    evaluations along the way (``[{"step": ..., "eval_accuracy": ...}]``)."""
    name = os.path.basename(os.path.normpath(run.output_dir))
    distilled = run.distiller != "train" and built.teacher is not None
    body = ["---", yaml.safe_dump(front_matter(run, final_eval), sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    student_desc = f"a {getattr(getattr(built.student, 'config', None), 'num_hidden_layers', '?')}-layer " \
                   f"{type(built.student).__name__} ({millions(count_parameters(built.student))} parameters)"
    if distilled:
        body.append(f"{student_desc[0].upper()}{student_desc[1:]} distilled from `{model_source(run.teacher)}` "
                    f"({millions(count_parameters(built.teacher))} parameters) with brewkit.")
    else:
        body.append(f"{student_desc[0].upper()}{student_desc[1:]} trained with brewkit on the labels alone"
                    + (f", starting from `{run.student.path}`." if run.student.path else "."))
    body += ["", "## Models", "", "| | source | class | layers | hidden | parameters | trainable |",
             "|---|---|---|---|---|---|---|"]
    if distilled:
        body.append(model_row("teacher", built.teacher, run.teacher))
    body.append(model_row("student", built.student, run.student))
    for note in built.notes:
        body.append(f"\n{note[0].upper()}{note[1:]}.")
    body += ["", "## Recipe", ""] + recipe_lines(run, built.distill_config)
    body += ["", "## Data", ""] + data_lines(run, built)
    body += ["", "## Training", ""] + training_lines(run, built, steps, train_seconds)
    body += ["", "## Evaluation", ""]
    if final_eval:
        body += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in final_eval.items()]
        body.append(f"\nOn the eval split after the last step ({steps}).")
        if history and len(history) > 1:
            keys = [k for k in history[-1] if k != "step"]
            body += ["", "Along the way:", "", "| step | " + " | ".join(keys) + " |",
                     "|---" * (len(keys) + 1) + "|"]
            body += [f"| {h['step']} | " + " | ".join(f"{h.get(k, float('nan')):.4f}" for k in keys) + " |"
                     for h in history]
    else:
        body.append("No eval split: the run was not evaluated.")
    auto = AUTO_CLASSES.get(getattr(run.student, "task", "sequence_classification"),
                            "AutoModelForSequenceClassification")
    body += ["", "## Use", "", "```python", f"from transformers import {auto}, AutoTokenizer", "",
             f'model = {auto}.from_pretrained("PATH/TO/final")',
             'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/final")', "```", ""]
    return "\n".join(body)


def write_model_card(directory: str, run: Any, built: Any, **kwargs: Any) -> str:
    """Write :func:`model_card` as ``directory/README.md``; returns its path."""
    path = os.path.join(directory, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(model_card(run, built, **kwargs))
    return path
