"""Causal-LM distillation from YAML (``task: causal_lm``), checked against hand-written references.

The references here never use brewkit's masks: which positions count is worked out from the tokenizer's own
pair encoding (``token_type_ids`` 1 marks the completion) and the batch's attention mask, the logits come from
calling the models directly, and KL / cross-entropy are written from their formulas in float64.
"""
import contextlib
import io
import json
import math
import os

import pytest
import torch
from helpers import free_port, spawn_and_wait
from safetensors.torch import load_file
from task_helpers import GPT2, VOCAB, lm_assets, lm_rows, lm_run, write_rows

from brewkit.build import build
from brewkit.cli import main
from brewkit.engine.batches import DENOMINATORS, denominator_counts
from brewkit.errors import ConfigError
from brewkit.run import drop_example_index
from brewkit.runfile import load_run


def cli(*argv) -> tuple[int, str, str]:
    """``brewkit.cli.main`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def parse_summary(stdout: str) -> dict:
    return dict(line.split(": ", 1) for line in stdout.strip().splitlines() if ": " in line)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return lm_assets(tmp_path_factory.mktemp("lm"))


# -- the hand-written reference --------------------------------------------------------------------------------
def expected_targets(a, tokenizer, idx: torch.Tensor, mask: torch.Tensor, source: str,
                     train_on_prompt: bool = False) -> torch.Tensor:
    """``(B, L)`` bool, position t counts: token t+1 is real, token t is real, and t+1 is a completion token
    (from the tokenizer's pair encoding: token_type_ids == 1, with the final [SEP]) unless train_on_prompt."""
    out = torch.zeros_like(mask, dtype=torch.bool)
    for b, i in enumerate(idx.tolist()):
        row = a.train_rows[i]
        if source == "pairs":
            enc = tokenizer(row["prompt"], row["completion"], truncation=True, max_length=24)
            target = [j > 0 and (train_on_prompt or t == 1) for j, t in enumerate(enc["token_type_ids"])]
        else:
            enc = tokenizer(row["text"], truncation=True, max_length=24)
            target = [j > 0 for j in range(len(enc["input_ids"]))]
        real = mask[b].nonzero().flatten().tolist()
        assert len(real) == len(target)
        for j in range(1, len(real)):
            if target[j]:
                out[b, real[j - 1]] = True
    return out


def hand_terms(teacher, student, batch: dict, counted: torch.Tensor, tau: float) -> tuple[float, float]:
    """``(tau^2 * mean KL(p_T || p_S), mean next-token CE)`` over the counted positions, float64; the models get
    input_ids, attention_mask and the positions of the real tokens (0, 1, ... from each row's first real token)."""
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions}
    with torch.no_grad():
        z_t = teacher(**inputs).logits.double()[counted]
        z_s = student(**inputs).logits.double()
    log_p_t, log_p_s = torch.log_softmax(z_t / tau, -1), torch.log_softmax(z_s[counted] / tau, -1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * tau ** 2
    following = torch.roll(batch["input_ids"], -1, dims=1)[counted]  # token t+1
    ce = -torch.log_softmax(z_s[counted], -1).gather(-1, following[:, None]).mean()
    return float(kl), float(ce)


def first_batch(run: dict):
    """``(built run, idx, the batch, its student part)``: the teacher's part has no labels (a causal LM's own
    loss would be computed for nothing), so causal-LM batches come in two parts."""
    b = build(load_run(run), with_optimizer=False)
    raw = next(iter(b.train_loader))
    assert set(raw) == {"teacher", "student"} and "labels" not in raw["teacher"]
    assert raw["teacher"]["input_ids"] is raw["student"]["input_ids"]
    return b, raw["student"]["idx"], drop_example_index(raw), drop_example_index(raw)["student"]


# -- the numeric check -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["text", "pairs"])
def test_kd_and_hard_labels_equal_the_hand_written_masked_next_token_terms(lm, tmp_path, source):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm.tokenizer)
    data = {"prompt_column": "prompt", "completion_column": "completion"} if source == "pairs" else {}
    values = {}
    for side in ("right", "left"):
        run = lm_run(lm, tmp_path / side, padding_side=side, **data)
        if source == "pairs":
            del run["data"]["text_column"]
        b, idx, full, batch = first_batch(run)
        mask = batch["attention_mask"]
        if side == "left":
            assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # padded on the left indeed
        else:
            assert (mask[:, 0] == 1).all() and (mask[:, -1] == 0).any()
        counted = expected_targets(lm, tokenizer, idx, mask, source)
        if source == "pairs":  # prompt tokens are excluded: fewer positions than real next tokens
            assert counted.sum() < (mask[:, 1:] * mask[:, :-1]).sum()
        _, terms = b.distiller.dry_run(full)
        kl, ce = hand_terms(b.teacher, b.student, batch, counted, tau=2.0)
        values[side] = (float(terms["unweighted_kd_loss"]), kl)
        assert float(terms["unweighted_kd_loss"]) == pytest.approx(kl, rel=1e-5, abs=1e-7)
        assert float(terms["unweighted_hard_label_loss"]) == pytest.approx(ce, rel=1e-5)
    # the same eight examples, padded on either side, give the same objective
    assert values["left"][0] == pytest.approx(values["right"][0], rel=1e-5)
    print(f"\n{source}: brewkit vs hand-written KD, right padding {values['right'][0]:.8f} vs "
          f"{values['right'][1]:.8f}, left padding {values['left'][0]:.8f} vs {values['left'][1]:.8f}")


def test_train_on_prompt_counts_the_prompt_tokens_too(lm, tmp_path):
    from transformers import AutoTokenizer

    run = lm_run(lm, tmp_path / "o", prompt_column="prompt", completion_column="completion", train_on_prompt=True)
    del run["data"]["text_column"]
    b, idx, full, batch = first_batch(run)
    counted = expected_targets(lm, AutoTokenizer.from_pretrained(lm.tokenizer), idx, batch["attention_mask"], "pairs",
                               train_on_prompt=True)
    real = batch["attention_mask"].bool()
    assert torch.equal(counted[:, :-1], real[:, 1:] & real[:, :-1])  # every real next token
    _, terms = b.distiller.dry_run(full)
    kl, ce = hand_terms(b.teacher, b.student, batch, counted, tau=2.0)
    assert float(terms["unweighted_kd_loss"]) == pytest.approx(kl, rel=1e-5)
    assert float(terms["unweighted_hard_label_loss"]) == pytest.approx(ce, rel=1e-5)


def test_no_token_type_ids_reach_gpt2_and_positions_follow_the_mask(lm, tmp_path):
    run = lm_run(lm, tmp_path / "o", padding_side="left")
    b, _, full, batch = first_batch(run)
    assert "token_type_ids" not in batch  # the BERT tokenizer makes them; a causal LM never gets them
    assert torch.equal(batch["position_ids"], (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0))
    seen = []
    for model in (b.teacher, b.student):
        model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    b.distiller.dry_run(full)
    assert len(seen) == 2 and all("token_type_ids" not in keys and "position_ids" in keys for keys in seen)
    assert "labels" not in seen[0] and "labels" in seen[1]  # the teacher computes no loss of its own


def test_vocabularies_that_differ_by_padding_rows_distill_over_the_shared_ids(lm, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm.tokenizer)
    n = len(tokenizer)
    for v_t, v_s in ((n + 5, n), (n, n + 7)):
        run = lm_run(lm, tmp_path / f"{v_t}_{v_s}")
        run["teacher"]["config"]["vocab_size"], run["student"]["config"]["vocab_size"] = v_t, v_s
        b, idx, full, batch = first_batch(run)
        counted = expected_targets(lm, tokenizer, idx, batch["attention_mask"], "text")
        _, terms = b.distiller.dry_run(full)
        shared = min(v_t, v_s)

        class Cut(torch.nn.Module):  # the model's logits over the first `shared` ids
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, **kw):
                out = self.m(**kw)
                out.logits = out.logits[..., :shared]
                return out

        kl, _ = hand_terms(Cut(b.teacher), Cut(b.student), batch, counted, tau=2.0)
        assert float(terms["unweighted_kd_loss"]) == pytest.approx(kl, rel=1e-5)


def test_different_tokenizers_are_a_config_error_naming_both(lm, tmp_path):
    from task_helpers import make_tokenizer

    other = tmp_path / "other_tok"
    tok = make_tokenizer(other)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(str(other))
    run = lm_run(lm, tmp_path / "o")
    run["student"]["tokenizer"] = str(other)
    run["student"]["config"]["vocab_size"] = 50  # room for the added token: only the tokenizers differ
    with pytest.raises(ConfigError) as e:
        build(load_run(run), with_optimizer=False)
    assert e.value.path == "student.tokenizer"
    assert lm.tokenizer in str(e.value) and str(other) in str(e.value)


# -- the teacher store -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_teacher_store_gives_the_uncached_training(lm, tmp_path, side):
    """Two epochs with the teacher's logits stored per example (memory and disk) end in the same student, to
    float32 rounding, as two epochs with the teacher run every step."""
    weights, kd = {}, {}
    for cache in ("none", "memory", "disk"):
        run = lm_run(lm, tmp_path / cache, padding_side=side, prompt_column="prompt", completion_column="completion")
        del run["data"]["text_column"]
        run["data"]["shuffle"] = True  # later epochs batch the examples differently: padded differently too
        # SGD: AdamW would turn the float32 noise in gradients that are exactly 0 in theory (GPT-2's key biases:
        # a softmax ignores a constant) into lr-sized steps, in either run
        run["training"] = {**run["training"], "num_steps": None, "num_epochs": 2,
                           "optimizer": {"name": "sgd", "lr": 0.5}}
        run["distillation"]["teacher_cache"] = cache
        run["data"]["eval_file"] = None
        code, _, err = cli("train", _write(tmp_path / f"{cache}.yaml", run))
        assert code == 0, err
        weights[cache] = load_file(str(tmp_path / cache / "final" / "model.safetensors"))
        kd[cache] = [r["unweighted_kd_loss"] for r in _metrics(tmp_path / cache)]
    assert os.path.getsize(tmp_path / "disk" / "teacher_cache" / "data-rank0.bin") > 0
    for cache in ("memory", "disk"):
        assert kd[cache] == pytest.approx(kd["none"], rel=1e-5)
        for name, w in weights["none"].items():
            torch.testing.assert_close(weights[cache][name], w, rtol=0, atol=1e-5)


def _write(path, run):
    import yaml

    path.write_text(yaml.safe_dump(run, sort_keys=False), encoding="utf-8")
    return str(path)


def _metrics(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "unweighted_kd_loss" in r]


# -- train a teacher, distill, evaluate, generate ---------------------------------------------------------------
def reference_perplexity(model, tokenizer, texts: list[str]) -> float:
    """exp(mean NLL of every token after the first of each text, one text at a time: no padding at all)."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tokenizer(t, truncation=True, max_length=24)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits.double()[0, :-1], -1)
            nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
    return float(torch.tensor(nll / n).exp())


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory):
    """``distiller: train`` trains a causal-LM teacher; then a student is distilled from it."""
    import yaml

    base = tmp_path_factory.mktemp("lm_runs")
    teacher_run = lm_run(lm, base / "teacher")
    del teacher_run["teacher"], teacher_run["distillation"]
    teacher_run["distiller"] = "train"
    teacher_run["student"]["config"]["n_layer"] = 3
    teacher_run["training"]["num_steps"] = 6
    code, out, err = cli("train", _write(base / "teacher.yaml", teacher_run))
    assert code == 0, err
    distill_run = lm_run(lm, base / "student")
    distill_run["teacher"] = {"path": str(base / "teacher" / "final")}
    code, out2, err = cli("train", _write(base / "student.yaml", distill_run))
    assert code == 0, err
    return {"teacher": parse_summary(out), "student": parse_summary(out2), "base": base,
            "student_run": str(base / "student.yaml"), "teacher_run": str(base / "teacher.yaml"),
            "resolved": yaml.safe_load((base / "student" / "run.yaml").read_text())}


def test_distiller_train_trains_a_causal_lm_teacher_and_reports_perplexity(lm, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = trained["base"] / "teacher" / "final"
    model = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    eval_texts = [r["text"] for r in lm_rows(8, seed=1)]
    assert float(trained["teacher"]["eval_perplexity"]) == pytest.approx(reference_perplexity(model, tok, eval_texts),
                                                                         rel=1e-4)
    losses = [r["loss"] for r in map(json.loads, (trained["base"] / "teacher" / "metrics.jsonl").read_text()
                                     .splitlines()) if "loss" in r and "step" in r and "eval_loss" not in r]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the next-token loss trains
    assert "eval_teacher_agreement" not in trained["teacher"]  # no teacher to agree with


def test_eval_command_gives_perplexity_and_teacher_agreement(lm, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = trained["base"] / "student" / "final"
    code, out, err = cli("eval", trained["student_run"], "--checkpoint", final)
    assert code == 0, err
    got = parse_summary(out)
    student = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    teacher = AutoModelForCausalLM.from_pretrained(str(trained["base"] / "teacher" / "final")).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    texts = [r["text"] for r in lm_rows(8, seed=1)]
    assert float(got["eval_perplexity"]) == pytest.approx(reference_perplexity(student, tok, texts), rel=1e-4)
    agree, n = 0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t, truncation=True, max_length=24)["input_ids"]])
            a, b = student(input_ids=ids).logits[0, :-1].argmax(-1), teacher(input_ids=ids).logits[0, :-1].argmax(-1)
            agree += int((a == b).sum())
            n += ids.shape[1] - 1
    assert float(got["eval_teacher_agreement"]) == pytest.approx(agree / n, abs=1e-9)
    assert float(got["eval_perplexity"]) == pytest.approx(float(trained["student"]["eval_perplexity"]), rel=1e-6)


def test_generate_continues_the_prompt_greedily(lm, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = trained["base"] / "student" / "final"
    code, out, err = cli("generate", trained["student_run"], "--checkpoint", final, "--prompt", "the film was",
                         "--max-new-tokens", "6")
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    ids = tok("the film was")["input_ids"][:-1]  # [CLS] the film was (the closing [SEP] ends a text)
    new = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.sep_token_id:
                break
    expected = tok.decode(new, skip_special_tokens=True)
    assert out.strip() == ("the film was " + expected).strip()


def test_generate_refuses_other_tasks_and_bad_options(lm, trained, assets, tmp_path):
    from helpers import run_dict, write_run

    code, _, err = cli("generate", write_run(tmp_path / "cls.yaml", run_dict(assets, tmp_path / "o")),
                       "--checkpoint", tmp_path, "--prompt", "x")
    assert code == 2 and "task: brewkit generate continues text with a causal LM" in err
    final = trained["base"] / "student" / "final"
    code, _, err = cli("generate", trained["student_run"], "--checkpoint", final, "--prompt", "x",
                       "--max-new-tokens", "0")
    assert code == 2 and "--max-new-tokens: must be a positive integer" in err


# -- chat data ---------------------------------------------------------------------------------------------------
def test_chat_rows_count_the_assistant_tokens_only(lm, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm.chat_tokenizer)
    run = lm_run(lm, tmp_path / "o", messages_column="messages", train_file=lm.chats, eval_file=None, max_length=40)
    del run["data"]["text_column"]
    run["teacher"]["tokenizer"] = run["student"]["tokenizer"] = lm.chat_tokenizer
    b, idx, full, batch = first_batch(run)
    chats = [json.loads(line)["messages"] for line in open(lm.chats)]
    # "[ assistant ] <content> [SEP] ": the content's tokens and the [SEP] after it are the targets
    expected = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 1
                   for i in idx.tolist() for m in chats[i] if m["role"] == "assistant")
    labels = batch["labels"]
    assert batch["attention_mask"].sum(-1).max() < 40  # nothing truncated
    assert int((labels != -100).sum()) == expected
    ids = batch["input_ids"]
    user = tok.convert_tokens_to_ids("user")
    assert not (labels == user).any() and (ids == user).any()  # user turns are in the inputs, never targets
    _, terms = b.distiller.dry_run(full)
    counted = torch.zeros_like(labels, dtype=torch.bool)
    counted[:, :-1] = labels[:, 1:] != -100
    kl, ce = hand_terms(b.teacher, b.student, batch, counted, tau=2.0)
    assert float(terms["unweighted_kd_loss"]) == pytest.approx(kl, rel=1e-5)


def test_chat_rows_without_a_chat_template_are_a_config_error(lm, tmp_path):
    run = lm_run(lm, tmp_path / "o", messages_column="messages", train_file=lm.chats, eval_file=None)
    del run["data"]["text_column"]
    with pytest.raises(ConfigError) as e:
        build(load_run(run), with_optimizer=False)
    assert e.value.path == "data.messages_column" and "has no chat template" in str(e.value)


# -- effective-batch normalisation over micro-batches and processes ---------------------------------------------
MASKED_ROWS = (5, 13)  # rows whose labels are all -100: none of their positions counts
KD_FORMS = [("kl", {}, "plain"), ("jsd", {"beta": 0.3}, "chunked"), ("skew_reverse_kl", {"alpha": 0.2}, "fused"),
            ("tvd", {}, "plain")]
ALL_LAYOUTS = ((1, 4, 2), (2, 4, 1), (2, 2, 2), (1, 2, 4), (2, 1, 4))  # (world, batch, accum), 8 rows a step
HARDEST = ((1, 2, 4), (2, 1, 4))  # accumulation 4; with batch 1, rows 5 and 13 are micro-batches of their own


def _lm_distiller(out: str, batch: int, accum: int, normalization: str, kd: tuple, tokenizer_dir: str):
    """``(distiller, student, loader, items)`` for causal-LM KD + hard labels on 80 prompt/completion rows, the
    Python way, with what a YAML run uses: the task's encoding, the two-part batches (the teacher's without
    labels), the task's adaptors and configure(). Rows MASKED_ROWS have every label -100."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig
    from brewkit.data import DataConfig, PadCollator, SelectCollator
    from brewkit.tasks import get_task

    task = get_task("causal_lm")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = DataConfig(train_file="unused.csv", prompt_column="prompt", completion_column="completion",
                      label_column=None, max_length=24)
    rows = lm_rows(80, seed=3)
    enc = task.encode({"text": [r["prompt"] for r in rows], "text_pair": [r["completion"] for r in rows]}, tok, data)
    items = [{k: enc[k][i] for k in ("input_ids", "labels")} for i in range(len(rows))]
    for i in MASKED_ROWS:
        items[i]["labels"] = [-100] * len(items[i]["labels"])
    cfg = {**GPT2, "n_layer": 2}
    del cfg["model_type"]
    torch.manual_seed(0)
    teacher, student = GPT2LMHeadModel(GPT2Config(**{**cfg, "n_layer": 3})), GPT2LMHeadModel(GPT2Config(**cfg))
    collate = SelectCollator(PadCollator(0, position_ids=True, padding_side="left"), task.teacher_inputs(teacher),
                             task.model_inputs(student))
    loader = torch.utils.data.DataLoader(items, batch_size=batch, shuffle=False, collate_fn=collate)
    tc = TrainingConfig(output_dir=out, device="cpu", gradient_accumulation_steps=accum, ckpt_frequency=100,
                        logging_steps=1, progress_bar=False, loss_normalization=normalization)
    kd_type, kd_args, implementation = kd
    dc = DistillationConfig(temperature=2, kd_loss_type=kd_type, kd_loss_args=kd_args,
                            kd_implementation=implementation, kd_temperature_squared=True, hard_label_weight=1.0)
    d = GeneralDistiller(tc, dc, teacher, student, task.teacher_adaptor(teacher, student, tok, data),
                         task.adaptor(teacher, student, tok, data))
    task.configure(d)  # the next-token denominators
    return d, student, loader, items


def _lm_process(rank: int, world: int, port: int, out: str, tokenizer_dir: str, runs: list[tuple]) -> None:
    """Per run ``(name, batch, accum, normalization, kd)`` in turn, in one process group: 10 SGD steps (effective
    batch 8) from the same initial student; ``out/name`` gets the metrics and (rank 0) ``weights.pt``, the
    student's parameters before and after."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if world == 1:
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(k, None)
    torch.set_num_threads(1)
    for name, batch, accum, normalization, kd in runs:
        d, student, loader, _ = _lm_distiller(os.path.join(out, name), batch, accum, normalization, kd,
                                              tokenizer_dir)
        initial = [p.detach().clone() for p in student.parameters()]
        d.train(torch.optim.SGD(student.parameters(), lr=0.5), loader, num_epochs=1)
        if rank == 0:
            torch.save({"initial": initial, "final": [p.detach().clone() for p in student.parameters()]},
                       os.path.join(out, name, "weights.pt"))


def _lm_launch(tmp_path, world: int, tokenizer_dir: str, runs: list[tuple]) -> dict[str, dict]:
    """``runs`` on ``world`` processes: per run name, its weights (``initial``, ``final``) and metric records."""
    out = tmp_path / f"world{world}"
    spawn_and_wait(_lm_process, (world, free_port(), str(out), tokenizer_dir, runs), world, timeout=400,
                   what=f"{world}-process runs")
    return {name: {**torch.load(out / name / "weights.pt", weights_only=True), "records": _metrics(out / name)}
            for name, *_ in runs}


@pytest.mark.slow
def test_same_effective_batch_same_update_for_causal_lm(lm, tmp_path):
    """Rows hold different numbers of completion tokens (two none at all), so per-micro-batch means would
    differ; averaged over the effective batch's next-token positions, 8 rows in one batch give the same 10 SGD
    updates as 2 x 4 and 4 x 2 (accumulation), 2 x 4 (two processes), 2 x 2 x 2 and 2 x 1 x 4, for kl (plain),
    jsd (chunked), skew_reverse_kl (fused) and tvd (the last three on the accumulation-4 layouts only). A
    micro-batch holding only a fully masked row has KD and hard-label terms of exactly 0 (not NaN), and every
    run's logged losses and weights stay finite. All runs of a world size share one launch (start-up is most of
    the time)."""
    runs: dict[int, list[tuple]] = {1: [], 2: []}
    compared = []  # (divergence, the layout's run)
    for kd in KD_FORMS:
        kd_type = kd[0]
        runs[1].append((f"{kd_type}-ref", 8, 1, "effective_batch", kd))
        for world, batch, accum in ALL_LAYOUTS if kd_type == "kl" else HARDEST:
            runs[world].append((f"{kd_type}-w{world}b{batch}a{accum}", batch, accum, "effective_batch", kd))
            compared.append((kd_type, runs[world][-1][0]))
    runs[1].append(("kl-micro", 4, 2, "micro_batch", KD_FORMS[0]))  # per-micro-batch means: a different update
    # a micro-batch of one fully masked row: nothing counts, and both terms are a defined 0
    for kd in KD_FORMS:
        d, _, loader, items = _lm_distiller(str(tmp_path / "alone"), 1, 1, "effective_batch", kd, lm.tokenizer)
        for i in MASKED_ROWS:
            alone = loader.collate_fn([items[i]])
            assert alone["student"]["attention_mask"].sum() == len(items[i]["input_ids"]) > 2
            assert float(denominator_counts(alone["student"])[DENOMINATORS.index("next_tokens")]) == 0
            _, terms = d.dry_run(alone)
            assert float(terms["unweighted_kd_loss"]) == 0, kd
            assert float(terms["unweighted_hard_label_loss"]) == 0, kd
    results = {**_lm_launch(tmp_path, 1, lm.tokenizer, runs[1]), **_lm_launch(tmp_path, 2, lm.tokenizer, runs[2])}
    for name, r in results.items():
        assert all(torch.isfinite(w).all() for w in r["final"]), name
        assert [rec["step"] for rec in r["records"]] == list(range(1, 11)), name
        for rec in r["records"]:
            assert all(math.isfinite(rec[k]) for k in ("loss", "unweighted_kd_loss", "unweighted_hard_label_loss"))
    for kd_type, _, _ in KD_FORMS:
        reference = results[f"{kd_type}-ref"]
        for before, after in zip(reference["initial"], reference["final"]):
            assert not torch.equal(before, after), kd_type  # every tensor was trained
    gaps = {}
    for kd_type, name in compared:
        for a, b in zip(results[f"{kd_type}-ref"]["final"], results[name]["final"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        gaps[name] = max(float((a - b).abs().max()) for a, b in zip(results[f"{kd_type}-ref"]["final"],
                                                                    results[name]["final"]))
    per_micro = results["kl-micro"]["final"]
    gaps["kl-micro"] = max(float((a - b).abs().max()) for a, b in zip(results["kl-ref"]["final"], per_micro))
    assert gaps["kl-micro"] > 1e-4
    print("\nlargest weight difference from the one-batch run:", ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()))


def test_rows_of_the_data_become_token_targets(lm, tmp_path):
    """The tokenised rows as stored: labels are the ids of the target tokens, -100 elsewhere (the first token
    and, for pairs, the prompt); a GPT-2-style tokenizer that adds no end token gets its eos appended."""
    from transformers import AutoTokenizer

    from brewkit.data import DataConfig
    from brewkit.tasks import get_task

    task, tok = get_task("causal_lm"), AutoTokenizer.from_pretrained(lm.tokenizer)
    data = DataConfig(train_file=lm.train, prompt_column="prompt", completion_column="completion", label_column=None)
    enc = task.encode({"text": ["the film"], "text_pair": ["was fun"]}, tok, data)
    v = {w: tok.convert_tokens_to_ids(w) for w in ("[CLS]", "the", "film", "[SEP]", "was", "fun")}
    assert enc["input_ids"] == [[v["[CLS]"], v["the"], v["film"], v["[SEP]"], v["was"], v["fun"], v["[SEP]"]]]
    assert enc["labels"] == [[-100, -100, -100, -100, v["was"], v["fun"], v["[SEP]"]]]
    plain = task.encode({"text": ["the films"]}, tok, data.replace(prompt_column=None, completion_column=None))
    assert plain["labels"] == [[-100, v["the"], v["film"], tok.convert_tokens_to_ids("##s"), v["[SEP]"]]]
    # a tokenizer that adds no closing token (as GPT-2's): its eos token is appended, and is a target
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]")
    assert bare("the film")["input_ids"] == [v["the"], v["film"]]
    appended = task.encode({"text": ["the film"]}, bare, data.replace(prompt_column=None, completion_column=None))
    assert appended["input_ids"] == [[v["the"], v["film"], v["[SEP]"]]]
    assert appended["labels"] == [[-100, v["film"], v["[SEP]"]]]


def test_a_csv_without_a_label_column_trains(lm, tmp_path):
    """A causal-LM file needs no label column (label_column defaults to 'label' for classification only)."""
    path = write_rows(tmp_path / "plain.csv", [{"text": r["text"]} for r in lm.train_rows])
    run = lm_run(lm, tmp_path / "o", train_file=path, eval_file=None)
    b, _, full, batch = first_batch(run)
    assert batch["labels"].shape == batch["input_ids"].shape


def test_output_layer_gives_the_fused_form_the_same_kd(lm, tmp_path):
    """CausalLM.output_layer is what a fused-linear KD form needs: with the final hidden states and the task's
    positions it gives the plain KD term's value (the (N, V) student logits never made)."""
    from brewkit.losses.vocab import fused_linear_kd_loss
    from brewkit.tasks import get_task, next_token_mask

    b, _, full, batch = first_batch(lm_run(lm, tmp_path / "o"))
    _, terms = b.distiller.dry_run(full)
    weight, bias = get_task("causal_lm").output_layer(b.student)
    assert weight is b.student.lm_head.weight and bias is None
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        hidden = b.student(**inputs, output_hidden_states=True).hidden_states[-1]
        logits_T = b.teacher(**inputs).logits
        fused = fused_linear_kd_loss(hidden, weight, logits_T, temperature=2.0, kind="kl",
                                     mask=next_token_mask(batch), temperature_squared=True)
    assert float(fused) == pytest.approx(float(terms["unweighted_kd_loss"]), rel=1e-5)
    with pytest.raises(ConfigError, match="has no output layer"):
        get_task("causal_lm").output_layer(torch.nn.Linear(2, 2))


def test_a_fused_run_without_hard_labels_makes_no_student_logits_and_trains_the_plain_runs_student(lm, tmp_path):
    """kd_implementation fused with hard_label_weight 0: nothing reads the student's logits, so its forward gets
    logits_to_keep=1 ((B, 1, V) logits), and the run trains the plain form's student; a temperature scheduler
    (it reads them) or hard labels (the student's own loss needs them) keep every position's logits."""
    weights = {}
    for form in ("plain", "fused"):
        run = lm_run(lm, tmp_path / form, eval_file=None)
        run["distillation"].update(hard_label_weight=0, kd_implementation=form)
        run["training"].update(num_steps=3, optimizer={"name": "sgd", "lr": 0.5})
        code, _, err = cli("train", _write(tmp_path / f"{form}.yaml", run))
        assert code == 0, err
        weights[form] = load_file(os.path.join(tmp_path / form, "final", "model.safetensors"))
    for name, w in weights["plain"].items():
        torch.testing.assert_close(weights["fused"][name], w, rtol=0, atol=1e-5)
    for update, short in (({}, True), ({"hard_label_weight": 0.5}, False),
                          ({"temperature_scheduler": ["flsw", 1, 2]}, False)):
        run = lm_run(lm, tmp_path / "o", eval_file=None)
        run["distillation"].update({"hard_label_weight": 0, "kd_implementation": "fused", **update})
        b, _, full, batch = first_batch(run)
        results = b.distiller.student_results(batch, {})
        assert b.distiller.reads_no_student_logits(b.distiller.adaptor_S) == short, update
        assert results["logits"][0].shape[1] == (1 if short else batch["input_ids"].shape[1])


def test_probability_shift_swaps_each_positions_next_token_into_the_teachers_top(lm, tmp_path):
    """TextBrewer's probability_shift on a causal LM: at every counted position the teacher's top logit and the
    logit of the true next token trade places before the KL (labels of the selected positions from the task)."""
    from transformers import AutoTokenizer

    run = lm_run(lm, tmp_path / "o")
    run["distillation"]["probability_shift"] = True
    b, idx, full, batch = first_batch(run)
    _, terms = b.distiller.dry_run(full)
    counted = expected_targets(lm, AutoTokenizer.from_pretrained(lm.tokenizer), idx, batch["attention_mask"], "text")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        z_t = b.teacher(**inputs).logits.double()[counted]
        z_s = b.student(**inputs).logits.double()[counted]
    gold = torch.roll(batch["input_ids"], -1, dims=1)[counted]
    rows = torch.arange(len(gold))
    top = z_t.argmax(-1)
    shifted = z_t.clone()
    shifted[rows, gold], shifted[rows, top] = z_t[rows, top], z_t[rows, gold]
    assert (shifted.argmax(-1) == gold).all()
    log_t, log_s = torch.log_softmax(shifted / 2, -1), torch.log_softmax(z_s / 2, -1)
    expected = 4 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    assert float(terms["unweighted_kd_loss"]) == pytest.approx(float(expected), rel=1e-5)
