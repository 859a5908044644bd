"""The task registry: ``task:`` in run files (both spellings), which inputs reach which model, a task registered
by a plugin (as docs/tasks.md shows), and a broken run file for each new key."""
import contextlib
import io
import sys
import textwrap

import pytest
import torch
from task_helpers import BERT, GPT2, lm_assets, lm_run, ner_assets, ner_run

from brewkit.build import build
from brewkit.cli import main
from brewkit.errors import ConfigError
from brewkit.run import drop_example_index
from brewkit.runfile import load_run
from brewkit.tasks import TASKS, Task, get_task


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return lm_assets(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    return ner_assets(tmp_path_factory.mktemp("ner"))


def test_presets_lists_the_tasks():
    code, out, _ = cli("presets")
    assert code == 0
    section = out.split("TASKS:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in section][:3] == ["sequence_classification", "token_classification",
                                                        "causal_lm"]
    assert all(len(line.split(maxsplit=1)) == 2 for line in section)  # each with its description
    assert isinstance(get_task("causal_lm"), Task) and get_task("causal_lm").name == "causal_lm"
    with pytest.raises(ConfigError, match="unknown task 'causal_llm'; known: 'causal_lm'"):
        get_task("causal_llm")


# -- task: at the top level or on the models ---------------------------------------------------------------------
def test_both_spellings_pick_the_task_for_teacher_and_student(lm, tmp_path):
    top = load_run(lm_run(lm, tmp_path / "a"))
    run = lm_run(lm, tmp_path / "b")
    del run["task"]
    run["teacher"]["task"] = run["student"]["task"] = "causal_lm"
    sections = load_run(run)
    for cfg in (top, sections):
        assert cfg.task == "causal_lm" and cfg.teacher.task == cfg.student.task == "causal_lm"
        assert cfg.evaluation.metric == "perplexity"  # the task's default metric
    only_student = lm_run(lm, tmp_path / "c")
    del only_student["task"]
    only_student["student"]["task"] = "causal_lm"
    assert load_run(only_student).teacher.task == "causal_lm"


def test_sequence_classification_stays_the_default(assets, tmp_path):
    from helpers import run_dict

    cfg = load_run(run_dict(assets, tmp_path / "o"))
    assert cfg.task == "sequence_classification" and cfg.evaluation.metric == "accuracy"
    b = build(cfg, with_optimizer=False)
    batch = drop_example_index(next(iter(b.train_loader)))
    # BERT takes every key the tokenizer makes: one batch, as before
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert b.distiller.kd_denominator == "tokens" and b.distiller.hard_label_denominator == "rows"
    assert b.distiller.adaptor_S is None  # the plain Hugging Face adaptor


# -- which inputs reach a model ---------------------------------------------------------------------------------
def test_model_inputs_follow_forward_and_segment_embeddings():
    from transformers import (
        AutoConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2LMHeadModel,
    )

    task = get_task("sequence_classification")
    bert = BertForSequenceClassification(AutoConfig.for_model(**BERT))
    assert task.model_inputs(bert) == {"input_ids", "attention_mask", "token_type_ids", "position_ids", "labels"}
    gpt2 = GPT2LMHeadModel(AutoConfig.for_model(**GPT2))  # takes token_type_ids, but through its word embeddings
    assert task.model_inputs(gpt2) == {"input_ids", "attention_mask", "position_ids", "labels"}
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                  hidden_dim=32))
    assert "token_type_ids" not in task.model_inputs(distil)

    class Anything(torch.nn.Module):
        def forward(self, **inputs):
            return inputs

    assert task.model_inputs(Anything()) == {"input_ids", "attention_mask", "token_type_ids", "position_ids",
                                             "labels"}


def test_a_student_without_segment_inputs_gets_its_own_batch_part(assets, tmp_path):
    """A BERT teacher and a DistilBERT student with one tokenizer: the teacher's part keeps token_type_ids, the
    student's has none (the two share the other tensors)."""
    from helpers import run_dict

    run = run_dict(assets, tmp_path / "o")
    run["student"] = {"config": {"model_type": "distilbert", "vocab_size": 64, "dim": 16, "n_layers": 2,
                                 "n_heads": 2, "hidden_dim": 32, "max_position_embeddings": 32},
                      "tokenizer": assets.tokenizer}
    run["distillation"].pop("intermediate_matches")
    b = build(load_run(run), with_optimizer=False)
    batch = drop_example_index(next(iter(b.train_loader)))
    assert set(batch) == {"teacher", "student"}
    assert "token_type_ids" in batch["teacher"] and "token_type_ids" not in batch["student"]
    assert batch["teacher"]["input_ids"] is batch["student"]["input_ids"]
    loss, _ = b.distiller.dry_run(batch)
    assert torch.isfinite(loss)


# -- a task from a plugin ----------------------------------------------------------------------------------------
PLUGIN = '''
import torch
from brewkit.tasks import TASKS, CausalLM, TokenAdaptor, next_token_labels, next_token_mask, shared_vocabulary


def last_position(batch):
    """(B, L) bool: only the last counted next-token position of each row."""
    mask = next_token_mask(batch)
    last = torch.zeros_like(mask)
    rows = mask.any(-1)
    idx = mask.shape[1] - 1 - mask.flip(-1).int().argmax(-1)
    last[rows.nonzero().flatten(), idx[rows]] = True
    return last


@TASKS.register("last_token_lm", description="causal LM, KD on each row's last next-token position only")
class LastTokenLM(CausalLM):
    kd_denominator = "rows"  # one position per row

    def adaptor(self, teacher, student, tokenizer, data):
        return TokenAdaptor(self.name, last_position, next_token_labels, shared_vocabulary(teacher, student))
'''


def test_a_task_registered_by_a_plugin_runs_from_yaml(lm, tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = lm_run(lm, tmp_path / "o")
    run["task"], run["plugins"] = "last_token_lm", ["my_tasks"]
    try:
        b = build(load_run(run), with_optimizer=False)
        assert type(b.task).__name__ == "LastTokenLM" and b.distiller.kd_denominator == "rows"
        full = drop_example_index(next(iter(b.train_loader)))
        _, terms = b.distiller.dry_run(full)
        batch = full["student"]
        mask = batch["attention_mask"]
        last = mask.sum(-1) - 2  # right padding: the position before each row's last token
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
        with torch.no_grad():
            rows = torch.arange(mask.shape[0])
            z_t = b.teacher(**inputs).logits.double()[rows, last] / 2
            z_s = b.student(**inputs).logits.double()[rows, last] / 2
        log_t, log_s = torch.log_softmax(z_t, -1), torch.log_softmax(z_s, -1)
        expected = 4 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()  # tau^2 = 4
        assert float(terms["unweighted_kd_loss"]) == pytest.approx(float(expected), rel=1e-5)
        code, out, err = cli("presets")
        assert "last_token_lm" in out
    finally:
        del TASKS["last_token_lm"]
        sys.modules.pop("my_tasks", None)


# -- broken run files ------------------------------------------------------------------------------------------
def _data(**kw):
    return lambda r: r["data"].update(kw)


def _drop_text(r):
    r["data"].pop("text_column")


BROKEN = [
    ("unknown task", lambda r: r.update(task="translation"), "task", "must be one of the tasks"),
    ("a head, not a task", lambda r: r.update(task="masked_lm"), "task", "no training task for it"),
    ("not a string", lambda r: r.update(task=3), "task", "must be one of the tasks"),
    ("teacher disagrees with the top level", lambda r: r["teacher"].update(task="sequence_classification"),
     "teacher.task", "the run's task is 'causal_lm'"),
    ("sections disagree", lambda r: (r.pop("task"), r["teacher"].update(task="token_classification"),
                                     r["student"].update(task="causal_lm")), "student.task",
     "teacher.task is 'token_classification'"),
    ("label column in a causal LM", _data(label_column="label"), "data.label_column", "has no labels"),
    ("labels in a causal LM", _data(labels=["a", "b"]), "data.labels", "has no labels"),
    ("text pairs in a causal LM", _data(text_pair_column="prompt"), "data.text_pair_column",
     "use prompt_column and completion_column"),
    ("prompt without completion", _data(prompt_column="prompt"), "data.completion_column",
     "prompt_column is set but completion_column is not"),
    ("completion without prompt", _data(completion_column="completion"), "data.prompt_column",
     "completion_column is set but prompt_column is not"),
    ("prompt is the completion", _data(prompt_column="prompt", completion_column="prompt"),
     "data.completion_column", "must differ from prompt_column"),
    ("chat and pairs", _data(messages_column="m", prompt_column="prompt", completion_column="completion"),
     "data.messages_column", "not both"),
    ("text column with a prompt", _data(prompt_column="prompt", completion_column="completion"),
     "data.text_column", "is not read when prompt_column is set"),
    ("train_on_prompt not a bool", _data(train_on_prompt="yes"), "data.train_on_prompt", "must be true or false"),
    ("train_on_prompt on plain text", _data(train_on_prompt=True), "data.train_on_prompt", "plain text has no prompt"),
    ("padding side", _data(padding_side="middle"), "data.padding_side", "must be one of 'left', 'right'"),
    ("a metric of another task", lambda r: r.update(evaluation={"metric": "accuracy"}), "evaluation.metric",
     "task causal_lm is evaluated by perplexity, teacher_agreement"),
    ("agreement without a teacher", lambda r: (r.update(evaluation={"metric": "teacher_agreement"}, distiller="train"),
                                               r.pop("teacher"), r.pop("distillation")),
     "evaluation.metric", "distiller 'train' has none"),
    ("num_labels on a causal LM", lambda r: r["teacher"].update(num_labels=2), "teacher.num_labels",
     "only used with task"),
    ("word replacement on chats", lambda r: (_drop_text(r), r["data"].update(
        messages_column="messages", augment={"copies": 1})), "data.augment", "alter the chat's structure"),
]


@pytest.mark.parametrize("name, edit, path, fragment", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_causal_lm_run_files(lm, tmp_path, name, edit, path, fragment):
    run = lm_run(lm, tmp_path / "o")
    edit(run)
    with pytest.raises(ConfigError) as e:
        load_run(run)
    assert e.value.path == path, str(e.value)
    assert fragment in str(e.value)


OTHER_TASKS = [
    ("prompt column in classification", lambda r: r["data"].update(prompt_column="text", completion_column="x"),
     "data.prompt_column", "is for causal_lm runs"),
    ("train_on_prompt in classification", lambda r: r["data"].update(train_on_prompt=True),
     "data.train_on_prompt", "is for causal_lm runs"),
    ("token classification without tag names", lambda r: (r.update(task="token_classification"),
                                                          r["data"].update(labels=None)),
     "data.labels", "needs the tag names in id order"),
    ("token classification with text pairs", lambda r: (r.update(task="token_classification"),
                                                       r["data"].update(text_pair_column="group")),
     "data.text_pair_column", "one list of words per row"),
    ("token classification metric", lambda r: (r.update(task="token_classification"),
                                              r["evaluation"].update(metric="accuracy")),
     "evaluation.metric", "evaluated by entity_f1, token_accuracy"),
]


@pytest.mark.parametrize("name, edit, path, fragment", OTHER_TASKS, ids=[b[0] for b in OTHER_TASKS])
def test_broken_run_files_of_the_other_tasks(assets, tmp_path, name, edit, path, fragment):
    from helpers import run_dict

    run = run_dict(assets, tmp_path / "o")
    edit(run)
    with pytest.raises(ConfigError) as e:
        load_run(run)
    assert e.value.path == path, str(e.value)
    assert fragment in str(e.value)


@pytest.mark.parametrize("edit, path, fragment", [
    (lambda r: (_drop_text(r), r["data"].update(prompt_column="question", completion_column="completion")),
     "data.prompt_column", "column 'question' is not in"),
    (lambda r: (_drop_text(r), r["data"].update(messages_column="messages")), "data.messages_column",
     "column 'messages' is not in"),
    (lambda r: r["student"].update(config={"model_type": "distilbert", "vocab_size": 64, "dim": 16, "n_heads": 2}),
     "student.task", "no causal_lm head"),
])
def test_broken_causal_lm_runs_found_when_built(lm, tmp_path, edit, path, fragment):
    run = lm_run(lm, tmp_path / "o")
    edit(run)
    with pytest.raises(ConfigError) as e:
        build(load_run(run), with_optimizer=False)
    assert e.value.path == path, str(e.value)
    assert fragment in str(e.value)


def test_validate_prints_the_task_positions_and_metric(lm, ner, tmp_path):
    import yaml

    for name, run in (("lm", lm_run(lm, tmp_path / "lm", prompt_column="prompt", completion_column="completion")),
                      ("ner", ner_run(ner, tmp_path / "ner"))):
        if name == "lm":
            del run["data"]["text_column"]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(run), encoding="utf-8")
        code, out, err = cli("validate", path)
        assert code == 0, err
        lines = out.splitlines()
        if name == "lm":
            assert "task: causal_lm (AutoModelForCausalLM)" in lines
            assert any("next-token positions: t counts when token t+1 is a completion token (prompt tokens "
                       "excluded" in line for line in lines)
            assert "evaluation: perplexity on the eval split at each checkpoint and at the end" in lines
            counted = next(line for line in lines if line.startswith("positions counted in the first batch"))
            assert counted.endswith("next-token positions counted")
        else:
            assert "task: token_classification (AutoModelForTokenClassification)" in lines
        assert lines[-1] == "ok: the run file is valid"
