"""The error catalogue (docs/errors.md): one test per row.

Rows E01-E35 are the situations of TextBrewer 0.2.1's error catalogue in order; S1-S4 are silent failures of
TextBrewer's adaptor handling that its catalogue does not list (docs/errors.md has both, docs/textbrewer.md what
TextBrewer did). Each test asserts the exception class (a ``BrewkitError`` subclass), the words of its
message that name the field / key / layer and what is allowed, and, for errors found while training, that
no optimizer step happened (student weights and optimizer state unchanged, no checkpoint written). Rows
where TextBrewer crashed on valid input test that brewkit now does the right thing.
"""
import collections
import copy
import json
import multiprocessing
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import Toy, toy_adaptor, toy_batches

from brewkit import (
    BasicDistiller,
    BasicTrainer,
    DistillationConfig,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
    TrainingConfig,
)
from brewkit.errors import AdaptorError, BrewkitError, ConfigError, NonFiniteLossError


def tcfg(tmp_path, **kw):
    kw.setdefault("output_dir", str(tmp_path / "out"))
    kw.setdefault("device", "cpu")
    kw.setdefault("progress_bar", False)
    kw.setdefault("logging_steps", 1)
    return TrainingConfig(**kw)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def checkpoints(out):
    return sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) if os.path.isdir(out) else []


def soft_ce(zs, zt, tau):
    return -(F.softmax(zt / tau, -1) * F.log_softmax(zs / tau, -1)).sum(-1).mean()


def match(**kw):
    return {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0, **kw}


def raises_before_first_step(tmp_path, distiller, exc, words, batches=None, **train_kw):
    """Train with lr=1 and expect ``exc`` before any optimizer step; return the error."""
    student = distiller.model_S
    before = copy.deepcopy(student.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=1.0, momentum=0.9)  # a step would fill opt.state
    train_kw.setdefault("num_epochs", 1)
    with pytest.raises(exc) as e:
        distiller.train(opt, batches if batches is not None else toy_batches(2), **train_kw)
    err = e.value
    assert isinstance(err, BrewkitError)
    for w in words:
        assert w in str(err), (w, str(err))
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "an optimizer step happened"
    assert not opt.state
    assert checkpoints(distiller.t_config.output_dir) == []
    return err


def config_error(fn, path, words):
    with pytest.raises(ConfigError) as e:
        fn()
    assert isinstance(e.value, BrewkitError) and isinstance(e.value, ValueError)
    assert e.value.path == path, str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return e.value


# =============================================================================================================
# TextBrewer's error catalogue (docs/errors.md rows E01-E35), in its order
# =============================================================================================================
def test_E01_none_scheduler_strings_from_json(tmp_path):
    """TextBrewer: AssertionError (``is not 'none'`` identity bug). brewkit: works."""
    path = tmp_path / "d.json"
    path.write_text('{"temperature_scheduler": "none", "kd_loss_weight_scheduler": "none", '
                    '"hard_label_weight_scheduler": "none"}')
    dc = DistillationConfig.from_json_file(str(path))
    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    d = BasicDistiller(tcfg(tmp_path), dc, teacher, student, toy_adaptor, toy_adaptor)
    batch = toy_batches(1)[0]
    d.train(torch.optim.SGD(student.parameters(), lr=0.0), [batch], num_steps=1)
    with torch.no_grad():
        expected = soft_ce(student(**batch)["logits"], teacher(**batch)["logits"], 4.0)
    assert metrics(tmp_path / "out")[0]["unweighted_kd_loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("field", ["temperature_scheduler", "kd_loss_weight_scheduler",
                                   "hard_label_weight_scheduler"])
def test_E02_unknown_scheduler_name(field):
    known = ["'flsw'", "'cwsm'", "'constant'"] if field == "temperature_scheduler" else \
        ["'linear_decay'", "'linear_growth'"]
    config_error(lambda: DistillationConfig(**{field: "linear_decai"}), field,
                 ["unknown", "'linear_decai'", "known:"] + known)


@pytest.mark.parametrize("name", ["flsw", "cwsm"])
def test_E03_bare_flsw_string(name):
    """TextBrewer: accepted, then TypeError (Tensor / function) at the first step."""
    config_error(lambda: DistillationConfig(temperature_scheduler=name), "temperature_scheduler",
                 [f"{name!r} needs parameters", f"[{name!r}, 1, 2]"])


def test_E04_flsw_missing_gamma():
    config_error(lambda: DistillationConfig(temperature_scheduler=["flsw", 1]), "temperature_scheduler",
                 ["'flsw'", "gamma"])


@pytest.mark.parametrize("source", ["from_dict", "json", "yaml"])
def test_E05_unknown_config_key(tmp_path, source):
    data = {"device": "cpu", "gradient_acumulation_steps": 2}
    if source == "from_dict":
        fn = lambda: TrainingConfig.from_dict(data)  # noqa: E731
    elif source == "json":
        (tmp_path / "t.json").write_text(json.dumps(data))
        fn = lambda: TrainingConfig.from_json_file(str(tmp_path / "t.json"))  # noqa: E731
    else:
        fn = lambda: TrainingConfig.from_yaml("device: cpu\ngradient_acumulation_steps: 2\n")  # noqa: E731
    config_error(fn, "gradient_acumulation_steps",
                 ["unknown key", "did you mean 'gradient_accumulation_steps'", "allowed:"])


def test_E06_feature_not_in_features():
    config_error(lambda: DistillationConfig(intermediate_matches=[match(feature="hiddens")]),
                 "intermediate_matches[0].feature", ["unknown feature 'hiddens'", "'hidden'", "'attention'",
                                                      "FEATURES"])


@pytest.mark.parametrize("proj, path, words", [
    (["lin", 6, 8], "proj[0]", ["unknown projection 'lin'", "'linear'"]),
    (["linear", 6.0, 8], "proj[1]", ["integer >= 1", "6.0"]),
    (["linear", 6, "8"], "proj[2]", ["integer >= 1"]),
    (["linear", 6, 8, ["lr", 0.1]], "proj[3]", ["mapping"]),
    (["linear", 6], "proj", ["[name, dim_S, dim_T]"]),
])
def test_E07_bad_proj(proj, path, words):
    config_error(lambda: DistillationConfig(intermediate_matches=[match(proj=proj)]),
                 f"intermediate_matches[0].{path}", words)


@pytest.mark.parametrize("key", ["weight", "loss", "layer_T", "layer_S", "feature"])
def test_E08_missing_match_key(key):
    m = {k: v for k, v in match().items() if k != key}
    config_error(lambda: DistillationConfig(intermediate_matches=[match(), m]), "intermediate_matches[1]",
                 ["missing required key", key])


def test_E09_unknown_match_loss_at_config_time():
    """TextBrewer: KeyError at the first training step."""
    config_error(lambda: DistillationConfig(intermediate_matches=[match(), match(loss="hiden_mse")]),
                 "intermediate_matches[1].loss", ["unknown match loss 'hiden_mse'", "'hidden_mse'"])


def test_E10_unknown_kd_loss_type_at_config_time():
    """TextBrewer: KeyError when the distiller is built."""
    err = config_error(lambda: DistillationConfig(kd_loss_type="kld"), "kd_loss_type",
                       ["unknown kd loss 'kld'", "'kl'", "'ce'", "'mse'"])
    assert str(err).index("'kl'") < str(err).index("'mse'")  # closest first


_DDP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_E11_local_rank_without_a_process_group(tmp_path, monkeypatch):
    """TextBrewer: ValueError from torch.distributed when TrainingConfig was built. brewkit: the config is plain
    data; train() says how to start DDP (torchrun, or init_process_group first)."""
    for var in _DDP_ENV:
        monkeypatch.delenv(var, raising=False)
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    torch.manual_seed(0)
    d = BasicDistiller(tcfg(tmp_path, local_rank=0), DistillationConfig(), Toy(), Toy(), toy_adaptor, toy_adaptor)
    err = raises_before_first_step(tmp_path, d, ConfigError, ["local_rank", "DDP needs torchrun",
                                                                "a process group initialised before train()"])
    assert err.path == "local_rank"


def _params_after_run(tmp_path, out, **tc_kw):
    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    d = BasicDistiller(tcfg(tmp_path, output_dir=str(tmp_path / out), **tc_kw), DistillationConfig(hard_label_weight=1),
                       teacher, student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.5), toy_batches(3), num_epochs=1)
    return [p.detach().clone() for p in student.parameters()]


def test_E12_ddp_with_cpu_models(tmp_path):
    """TextBrewer: ValueError (device_ids hard-coded). brewkit: a gloo group on CPU trains like a single process."""
    import torch.distributed as dist

    plain = _params_after_run(tmp_path, "plain")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = _params_after_run(tmp_path, "ddp", local_rank=0)
    finally:
        dist.destroy_process_group()
    for a, b in zip(plain, ddp):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert checkpoints(tmp_path / "ddp") == ["checkpoint-3"]


class _IdxData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(5, 4, generator=g), "mask": torch.ones(5, dtype=torch.long),
                "labels": torch.tensor(i % 3), "idx": torch.tensor(i)}


class _IdxToy(Toy):
    def forward(self, x, mask=None, labels=None, idx=None):
        return super().forward(x, mask, labels)


def _ddp_worker(rank, tmp):
    import torch.distributed as dist

    result = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=2)
        seen = []

        def adaptor_S(batch, out):
            seen.extend(batch["idx"].tolist())
            return toy_adaptor(batch, out)

        torch.manual_seed(0)
        student = _IdxToy()
        before = copy.deepcopy(student.state_dict())
        tc = TrainingConfig(output_dir=f"{tmp}/out{rank}", device="cpu", local_rank=rank, progress_bar=False)
        d = BasicDistiller(tc, DistillationConfig(), _IdxToy(), student, toy_adaptor, adaptor_S)
        loader = torch.utils.data.DataLoader(_IdxData(), batch_size=2, shuffle=True)  # a plain RandomSampler
        try:
            d.train(torch.optim.SGD(student.parameters(), lr=1.0), loader, num_epochs=1)
            result = {"seen": seen}
        except BrewkitError as e:
            after = student.state_dict()
            result = {"error": str(e), "stepped": not all(torch.equal(before[k], after[k]) for k in before)}
    except Exception as e:  # noqa: BLE001 - reported to the parent
        result = {"crash": f"{type(e).__name__}: {e}"}
    finally:
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork")
def test_E13_ddp_with_a_non_distributed_sampler(tmp_path):
    """TextBrewer: AttributeError (no set_epoch) at epoch start. Required: no silent duplication: either the
    ranks see disjoint shards covering the data, or a BrewkitError naming the sampler before any step."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # lazy imports happen here, before forking
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ddp_worker, args=(r, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert not any("crash" in r for r in results), results
    if any("error" in r for r in results):
        for r in results:
            assert "error" in r and "sampler" in r["error"].lower() and not r["stepped"], results
    else:
        a, b = (set(r["seen"]) for r in results)
        assert not a & b and a | b == set(range(8)), results


def test_E14_fp16_without_apex():
    """TextBrewer: ImportError without apex (after changing the optimizer). brewkit uses torch.amp: fp16 needs
    CUDA, said at config time; bf16 is the CPU option."""
    config_error(lambda: TrainingConfig(fp16=True, device="cpu"), "fp16", ["CUDA", "bf16"])
    tc = TrainingConfig(fp16=True, device="cuda")
    assert tc.amp_dtype == torch.float16
    assert "apex" not in sys.modules


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training needs CUDA")
def test_E14_fp16_trains_on_cuda_without_apex(tmp_path):
    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    d = BasicDistiller(tcfg(tmp_path, device="cuda", fp16=True), DistillationConfig(hard_label_weight=1),
                       teacher, student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(2), num_epochs=1)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path / "out"))


def test_E15_mixed_precision_with_a_model_wrapped_in_data_parallel(tmp_path):
    """TextBrewer: apex RuntimeError (issue #55). brewkit's native autocast does not care about the wrapper,
    and the checkpoint holds the unwrapped student's keys."""
    from safetensors.torch import load_file

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    wrapped = torch.nn.DataParallel(student.cuda() if cuda else student)
    tc = tcfg(tmp_path, device="cuda" if cuda else "cpu", fp16=cuda, bf16=not cuda)
    d = BasicDistiller(tc, DistillationConfig(hard_label_weight=1), teacher, wrapped, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(wrapped.parameters(), lr=0.1), toy_batches(2), num_epochs=1)
    assert len(metrics(tmp_path / "out")) == 2
    saved = load_file(str(tmp_path / "out" / "checkpoint-2" / "model.safetensors"))
    assert set(saved) == set(student.state_dict())  # no "module." prefix
    assert all(torch.equal(saved[k], v.cpu()) for k, v in student.state_dict().items())  # the trained weights


def test_E16_neither_num_epochs_nor_num_steps(tmp_path):
    """TextBrewer: empty AssertionError after adding projections to the optimizer."""
    torch.manual_seed(0)
    student = Toy(d_h=6)
    d = GeneralDistiller(tcfg(tmp_path), DistillationConfig(intermediate_matches=[match(proj=["linear", 6, 8])]),
                         Toy(d_h=8), student, toy_adaptor, toy_adaptor)
    opt = torch.optim.SGD(student.parameters(), lr=1.0)
    with pytest.raises(ConfigError) as e:
        d.train(opt, toy_batches(2))
    assert e.value.path == "train" and "num_epochs or num_steps" in str(e.value)
    assert len(opt.param_groups) == 1  # no side effect on the user's optimizer


def test_E17_num_steps_without_ckpt_steps(tmp_path):
    """TextBrewer: TypeError from int(None). brewkit: one checkpoint at the end."""
    torch.manual_seed(0)
    student = Toy()
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), Toy(), student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(2), num_steps=5)
    assert checkpoints(tmp_path / "out") == ["checkpoint-5"]


class _CountingToy(Toy):
    calls = 0

    def forward(self, *a, **kw):
        self.calls += 1
        return super().forward(*a, **kw)


@pytest.mark.parametrize("distiller", ["basic", "multi_teacher"])
def test_E18_caching_in_step_mode(tmp_path, distiller):
    """TextBrewer: AssertionError. brewkit: the cache is cycled (same losses: test_checkpoint_schedule.py)."""
    torch.manual_seed(0)
    teachers = [_CountingToy()] if distiller == "basic" else [_CountingToy(), _CountingToy()]
    student = Toy()
    dc = DistillationConfig(is_caching_logits=True)
    if distiller == "basic":
        d = BasicDistiller(tcfg(tmp_path), dc, teachers[0], student, toy_adaptor, toy_adaptor)
    else:
        d = MultiTeacherDistiller(tcfg(tmp_path), dc, teachers, student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(3), num_steps=7)
    assert [t.calls for t in teachers] == [3] * len(teachers)  # once per batch, not once per step
    assert len(metrics(tmp_path / "out")) == 7


def test_E19_scheduler_class_without_scheduler_args(tmp_path):
    """TextBrewer: TypeError from **None. brewkit: no arguments means none (ConstantLR's defaults here)."""
    torch.manual_seed(0)
    student = Toy()
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), Toy(), student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.3), toy_batches(2), num_epochs=3,
            scheduler_class=torch.optim.lr_scheduler.ConstantLR)
    lrs = [r["lr"] for r in metrics(tmp_path / "out")]
    # ConstantLR: factor 1/3 for total_iters=5 scheduler steps; logged after each step
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.3, 0.3])


def test_E19_scheduler_class_needing_arguments(tmp_path):
    torch.manual_seed(0)
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), Toy(), Toy(), toy_adaptor, toy_adaptor)
    err = raises_before_first_step(tmp_path, d, ConfigError, ["LambdaLR", "lr_lambda"],
                                   scheduler_class=torch.optim.lr_scheduler.LambdaLR)
    assert err.path == "scheduler_args"


@pytest.mark.parametrize("distiller", ["general", "multi_task"])
def test_E20_same_optimizer_for_a_second_train(tmp_path, distiller):
    """TextBrewer: ValueError (parameters in more than one group). brewkit adds each projection once."""
    torch.manual_seed(0)
    student = Toy(d_h=6)
    dc = DistillationConfig(intermediate_matches=[match(proj=["linear", 6, 8, {"lr": 0.01}])])
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    if distiller == "general":
        d = GeneralDistiller(tcfg(tmp_path, ckpt_steps=2), dc, Toy(d_h=8), student, toy_adaptor, toy_adaptor)
        train = lambda: d.train(opt, toy_batches(2), num_steps=2)  # noqa: E731
    else:
        d = MultiTaskDistiller(tcfg(tmp_path, ckpt_steps=2), dc, {"a": Toy(d_h=8)}, student, {"a": toy_adaptor},
                               {"a": toy_adaptor})
        train = lambda: d.train(opt, {"a": toy_batches(2)}, num_steps=2)  # noqa: E731
    train()
    proj_before = [p.detach().clone() for p in d.projs[0].parameters()]
    train()
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.01
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in d.projs[0].parameters()}
    assert any(not torch.equal(a, b) for a, b in zip(proj_before, d.projs[0].parameters()))  # still trained


def test_E21_multi_task_num_steps_below_ckpt_steps(tmp_path):
    """TextBrewer: IndexError (empty checkpoint list). brewkit: saves at the last step."""
    torch.manual_seed(0)
    student, steps = Toy(), []
    d = MultiTaskDistiller(tcfg(tmp_path, ckpt_steps=100), DistillationConfig(), {"a": Toy()}, student,
                           {"a": toy_adaptor}, {"a": toy_adaptor})
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), {"a": toy_batches(2)}, num_steps=3,
            callback=lambda model, step: steps.append(step))
    assert checkpoints(tmp_path / "out") == ["checkpoint-3"] and steps == [3]


def _without(key, adaptor=toy_adaptor):
    def f(batch, out):
        return {k: v for k, v in adaptor(batch, out).items() if k != key}

    return f


@pytest.mark.parametrize("distiller, side", [("basic", "S"), ("basic", "T"), ("multi_teacher", "S"),
                                             ("multi_teacher", "T")])
def test_E22_adaptor_without_logits(tmp_path, distiller, side):
    """TextBrewer: KeyError: 'logits' at the first step."""
    torch.manual_seed(0)
    a_T, a_S = (toy_adaptor, _without("logits")) if side == "S" else (_without("logits"), toy_adaptor)
    cls, teacher = (BasicDistiller, Toy()) if distiller == "basic" else (MultiTeacherDistiller, [Toy(), Toy()])
    d = cls(tcfg(tmp_path), DistillationConfig(), teacher, Toy(), a_T, a_S)
    raises_before_first_step(tmp_path, d, AdaptorError, [f"adaptor_{side} returned no 'logits'"])


def test_E23_general_adaptors_returning_nothing_usable(tmp_path):
    """TextBrewer: AttributeError: 'int' object has no attribute 'cpu'."""
    torch.manual_seed(0)

    def only_mask(batch, out):
        return {"inputs_mask": batch["mask"]}

    d = GeneralDistiller(tcfg(tmp_path), DistillationConfig(), Toy(), Toy(), only_mask, only_mask)
    raises_before_first_step(tmp_path, d, AdaptorError, ["nothing to train on", "logits", "'losses'"])


@pytest.mark.parametrize("case, words", [
    ("layer_S", ["intermediate_matches[1].layer_S: layer 5 is out of range", "adaptor_S returned 3 'hidden'",
                 "0..2"]),
    ("layer_T", ["intermediate_matches[1].layer_T: layer 4 is out of range", "adaptor_T returned 4 'hidden'",
                 "0..3"]),
    ("two_layer", ["intermediate_matches[1].layer_T: layer 9 is out of range"]),
    ("feature", ["intermediate_matches[1]", "adaptor_S returned no 'attention'", "keys:"]),
])
def test_E24_layer_out_of_range_or_feature_missing(tmp_path, case, words):
    """TextBrewer: IndexError at the first step."""
    torch.manual_seed(0)
    bad = {"layer_S": match(layer_S=5, layer_T=3), "layer_T": match(layer_T=4),
           "two_layer": match(loss="mmd", layer_T=[0, 9], layer_S=[0, 1]),
           "feature": match(feature="attention", loss="attention_mse")}[case]
    dc = DistillationConfig(intermediate_matches=[match(), bad])
    d = GeneralDistiller(tcfg(tmp_path), dc, Toy(n_layers=3), Toy(n_layers=2), toy_adaptor, toy_adaptor)
    raises_before_first_step(tmp_path, d, AdaptorError, words)


@pytest.mark.parametrize("proj, words", [
    (None, ["intermediate_matches[0]", "student hidden[2] has shape (3, 5, 6)",
            "teacher hidden[2] has shape (3, 5, 8)", "add proj: ['linear', 6, 8]"]),
    (["linear", 4, 8], ["intermediate_matches[0].proj[1]", "width 6", "proj says 4"]),
    (["linear", 6, 7], ["intermediate_matches[0]", "(3, 5, 7) after proj", "(3, 5, 8)"]),
])
def test_E25_feature_width_mismatch(tmp_path, proj, words):
    """TextBrewer: a broadcasting RuntimeError (or a silent broadcast) at the first step."""
    torch.manual_seed(0)
    dc = DistillationConfig(intermediate_matches=[match(proj=proj)])
    d = GeneralDistiller(tcfg(tmp_path), dc, Toy(d_h=8), Toy(d_h=6), toy_adaptor, toy_adaptor)
    raises_before_first_step(tmp_path, d, AdaptorError, words)


def test_E26_basic_trainer_without_losses(tmp_path):
    torch.manual_seed(0)
    d = BasicTrainer(tcfg(tmp_path), Toy(), _without("losses"))
    raises_before_first_step(tmp_path, d, AdaptorError, ["BasicTrainer needs 'losses'", "labels"])


class _UserDictBatch(collections.UserDict):
    pass


def test_E27_mapping_batches_that_are_not_dicts(tmp_path):
    """TextBrewer 0.2.1: a BatchEncoding / UserDict was unpacked as positional args (model TypeError)."""
    from transformers import BatchEncoding

    batch = toy_batches(1)[0]
    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    with torch.no_grad():
        expected = soft_ce(student(**batch)["logits"], teacher(**batch)["logits"], 4.0)
    for name, b in (("userdict", _UserDictBatch(batch)), ("batchencoding", BatchEncoding(batch))):
        d = BasicDistiller(tcfg(tmp_path, output_dir=str(tmp_path / name)), DistillationConfig(), teacher, student,
                           toy_adaptor, toy_adaptor)
        d.train(torch.optim.SGD(student.parameters(), lr=0.0), [b], num_steps=1)
        assert metrics(tmp_path / name)[0]["unweighted_kd_loss"] == pytest.approx(float(expected), rel=1e-5)


class _SeqToy(Toy):
    """Token-level logits (B, L, C) from the last hidden layer."""

    def forward(self, x, mask=None, labels=None):
        out = super().forward(x, mask, None)
        out["tokens"] = self.head(out["hidden_states"][-1])
        return out


def test_E28_one_logits_mask_for_two_token_logits(tmp_path):
    """TextBrewer: RuntimeError in expand on the 2nd tensor (the mask variable was overwritten)."""
    def adaptor(batch, out):
        return {"logits": [out["tokens"], 2 * out["tokens"]], "logits_mask": batch["mask"]}

    torch.manual_seed(0)
    teacher, student = _SeqToy(), _SeqToy()
    batch = toy_batches(1)[0]
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(temperature=2), teacher, student, adaptor, adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.0), [batch], num_steps=1)
    keep = batch["mask"].bool()
    with torch.no_grad():
        zs, zt = student(**batch)["tokens"][keep], teacher(**batch)["tokens"][keep]  # (M, C) valid tokens only
        expected = soft_ce(zs, zt, 2.0) + soft_ce(2 * zs, 2 * zt, 2.0)
    assert keep.sum() < keep.numel()  # the mask really drops positions
    assert metrics(tmp_path / "out")[0]["unweighted_kd_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_E29_probability_shift_with_logits_mask(tmp_path):
    """TextBrewer: IndexError (shape mismatch): labels stay (B, L) while logits are reduced to (M, C)."""
    def adaptor(batch, out):
        return {"logits": out["tokens"], "logits_mask": batch["mask"], "labels": torch.zeros_like(batch["mask"])}

    torch.manual_seed(0)
    batch = toy_batches(1)[0]
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(probability_shift=True), _SeqToy(), _SeqToy(), adaptor,
                       adaptor)
    n_valid = int(batch["mask"].sum())
    raises_before_first_step(tmp_path, d, AdaptorError,
                             ["probability_shift", f"{batch['mask'].numel()} labels for {n_valid} logits rows",
                              "logits_mask"], batches=[batch])


def test_E29_probability_shift_with_ignored_labels(tmp_path):
    """TextBrewer: IndexError for -100 in 2-D labels. brewkit: such rows are left as they are."""
    batch = toy_batches(1, batch_size=4)[0]
    labels = torch.tensor([2, -100, 0, 1])

    def adaptor_S(b, out):
        return {**toy_adaptor(b, out), "labels": labels}

    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(probability_shift=True, temperature=2), teacher, student,
                       toy_adaptor, adaptor_S)
    d.train(torch.optim.SGD(student.parameters(), lr=0.0), [batch], num_steps=1)
    with torch.no_grad():
        zt, zs = teacher(**batch)["logits"].clone(), student(**batch)["logits"]
    for r, y in enumerate(labels.tolist()):  # swap the arg-max with the gold label's logit, by hand
        if y >= 0:
            top = int(zt[r].argmax())
            zt[r, top], zt[r, y] = zt[r, y].item(), zt[r, top].item()
    assert metrics(tmp_path / "out")[0]["unweighted_kd_loss"] == pytest.approx(float(soft_ce(zs, zt, 2.0)),
                                                                              rel=1e-5)


class _AttToy(Toy):
    """Adds one layer of attention scores (B, 1, L, L) with padded keys set to -inf."""

    def forward(self, x, mask=None, labels=None):
        out = super().forward(x, mask, labels)
        h = out["hidden_states"][-1]
        scores = (h @ h.transpose(1, 2)).masked_fill(mask[:, None, :] == 0, float("-inf"))
        out["scores"] = scores[:, None]
        return out


@pytest.mark.parametrize("loss", ["attention_mse", "attention_ce", "attention_ce_mean", "attention_mse_sum"])
def test_E30_minus_inf_attention_masking(tmp_path, loss):
    """TextBrewer: a silent NaN loss that ruins the weights. brewkit: NonFiniteLossError naming the term,
    before the update (on CPU; see docs/errors.md for CUDA)."""
    def adaptor(batch, out):
        return {**toy_adaptor(batch, out), "attention": [out["scores"]]}

    torch.manual_seed(0)
    dc = DistillationConfig(intermediate_matches=[match(feature="attention", loss=loss, layer_T=0, layer_S=0)])
    d = GeneralDistiller(tcfg(tmp_path), dc, _AttToy(), _AttToy(), adaptor, adaptor)
    raises_before_first_step(tmp_path, d, NonFiniteLossError,
                             ["non-finite loss at step 1", f"unweighted_attention_{loss}_0_0"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_E30_minus_inf_attention_masking_on_cuda(tmp_path):
    """Off the CPU the loss is checked on logging and checkpoint steps (logging_steps=1 here), before the update."""
    def adaptor(batch, out):
        return {**toy_adaptor(batch, out), "attention": [out["scores"]]}

    torch.manual_seed(0)
    dc = DistillationConfig(intermediate_matches=[match(feature="attention", loss="attention_ce", layer_T=0,
                                                        layer_S=0)])
    d = GeneralDistiller(tcfg(tmp_path, device="cuda"), dc, _AttToy(), _AttToy().cuda(), adaptor, adaptor)
    raises_before_first_step(tmp_path, d, NonFiniteLossError, ["unweighted_attention_attention_ce_0_0"])


@pytest.mark.parametrize("loss", ["attention_probs_mse", "attention_probs_ce", "attention_probs_kl"])
def test_E30_probability_losses_are_finite_with_minus_inf_masks(tmp_path, loss):
    from brewkit.adaptors import AttentionProbs

    def adaptor(batch, out):
        return {**toy_adaptor(batch, out), "attention": AttentionProbs([out["scores"].softmax(-1)])}

    torch.manual_seed(0)
    dc = DistillationConfig(intermediate_matches=[match(feature="attention", loss=loss, layer_T=0, layer_S=0)])
    d = GeneralDistiller(tcfg(tmp_path), dc, _AttToy(), _AttToy(), adaptor, adaptor)
    d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), toy_batches(2), num_epochs=1)
    assert all(torch.isfinite(torch.tensor(r[f"unweighted_attention_{loss}_0_0"]))
               for r in metrics(tmp_path / "out"))


@pytest.mark.parametrize("which", ["model_T", "model_S", "model_T[1]", "model_T['b']", "trainer"])
def test_E31_state_dict_passed_as_a_model(tmp_path, which):
    """TextBrewer: AttributeError: 'Tensor' object has no attribute 'training' on ``with`` (issue #58)."""
    t, s = Toy(), Toy()
    build = {
        "model_T": lambda: BasicDistiller(tcfg(tmp_path), DistillationConfig(), t.state_dict(), s),
        "model_S": lambda: GeneralDistiller(tcfg(tmp_path), DistillationConfig(), t, s.state_dict()),
        "model_T[1]": lambda: MultiTeacherDistiller(tcfg(tmp_path), DistillationConfig(), [t, t.state_dict()], s),
        "model_T['b']": lambda: MultiTaskDistiller(tcfg(tmp_path), DistillationConfig(),
                                                   {"a": t, "b": t.state_dict()}, s),
        "trainer": lambda: BasicTrainer(tcfg(tmp_path), s.state_dict()),
    }[which]
    config_error(build, "model_S" if which == "trainer" else which,
                 ["must be a torch.nn.Module", "state_dict", "load_state_dict()"])


def test_E32_hidden_returned_as_one_tensor(tmp_path):
    """TextBrewer: silent: hidden[2] picked the 3rd example of the batch."""
    def adaptor_S(batch, out):
        return {**toy_adaptor(batch, out), "hidden": out["hidden_states"][-1]}

    torch.manual_seed(0)
    d = GeneralDistiller(tcfg(tmp_path), DistillationConfig(intermediate_matches=[match()]), Toy(), Toy(),
                         toy_adaptor, adaptor_S)
    raises_before_first_step(tmp_path, d, AdaptorError, ["adaptor_S['hidden'] must be a list of per-layer tensors",
                                                          "single tensor of shape (3, 5, 6)", "[tensor]"])


@pytest.mark.parametrize("wrong, right", [("input_mask", "inputs_mask"), ("logit", "logits"),
                                          ("hidden_states", "hidden")])
def test_E33_misspelled_adaptor_key(tmp_path, wrong, right):
    """TextBrewer: silent: unknown keys were ignored (the MSRA-NER example's masking never applied)."""
    def adaptor_T(batch, out):
        d = toy_adaptor(batch, out)
        d[wrong] = d.pop(right)
        return d

    torch.manual_seed(0)
    d = GeneralDistiller(tcfg(tmp_path), DistillationConfig(intermediate_matches=[match()]), Toy(), Toy(),
                         adaptor_T, toy_adaptor)
    raises_before_first_step(tmp_path, d, AdaptorError,
                             [f"adaptor_T returned unknown key {wrong!r}", f"Did you mean {right!r}?",
                              "Allowed keys:", "FEATURES"])


@pytest.mark.parametrize("cls", [BasicDistiller, MultiTeacherDistiller])
def test_E34_intermediate_matches_given_to_a_distiller_without_matches(tmp_path, cls):
    """TextBrewer: silent: the matches were ignored."""
    teacher = Toy() if cls is BasicDistiller else [Toy(), Toy()]
    config_error(lambda: cls(tcfg(tmp_path), DistillationConfig(intermediate_matches=[match()]), teacher, Toy()),
                 "intermediate_matches", [f"{cls.__name__} does not use intermediate matches", "GeneralDistiller"])


def test_E35_forgot_with_distiller(tmp_path):
    """TextBrewer: silent: without ``with distiller:`` the teacher kept its dropout on. brewkit's train() puts
    the teacher in eval mode itself (and ``with`` still works)."""
    torch.manual_seed(0)
    teacher, student = Toy(dropout=0.5), Toy()
    teacher.train()
    batch = toy_batches(1)[0]
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), teacher, student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.0), [batch, batch, batch], num_epochs=1)
    teacher.eval()
    with torch.no_grad():
        expected = soft_ce(student(**batch)["logits"], teacher(**batch)["logits"], 4.0)
    kd = [r["unweighted_kd_loss"] for r in metrics(tmp_path / "out")]
    assert kd == pytest.approx([float(expected)] * 3, rel=1e-5)  # no dropout noise in the teacher
    teacher.train()
    student.eval()
    with d:
        assert not teacher.training and student.training
    assert teacher.training and not student.training  # modes restored on exit


# =============================================================================================================
# Silent failures of TextBrewer's adaptors that its catalogue does not list (docs/errors.md rows S1-S4)
# =============================================================================================================
def test_S1_logits_count_mismatch(tmp_path):
    """TextBrewer: silent: logits were paired with zip, extra heads dropped."""
    def two_heads(batch, out):
        return {**toy_adaptor(batch, out), "logits": [out["logits"], out["logits"]]}

    torch.manual_seed(0)
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), Toy(), Toy(), toy_adaptor, two_heads)
    raises_before_first_step(tmp_path, d, AdaptorError, ["adaptor_S returned 2 logits tensors",
                                                         "adaptor_T returned 1", "paired by position"])


def test_S2_probability_shift_without_student_labels(tmp_path):
    """TextBrewer: a KeyError / TypeError deep in the loss. Labels are read from the student's adaptor only."""
    torch.manual_seed(0)
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(probability_shift=True), Toy(), Toy(), toy_adaptor,
                       toy_adaptor)
    raises_before_first_step(tmp_path, d, AdaptorError, ["probability_shift needs 'labels' from adaptor_S"])


def test_S3_teacher_inputs_mask_ignored(tmp_path):
    def adaptor_T(batch, out):
        return {**toy_adaptor(batch, out), "inputs_mask": torch.ones_like(batch["mask"])}  # pads counted

    torch.manual_seed(0)
    d = GeneralDistiller(tcfg(tmp_path), DistillationConfig(intermediate_matches=[match()]), Toy(), Toy(),
                         adaptor_T, toy_adaptor)
    raises_before_first_step(tmp_path, d, AdaptorError, ["inputs_mask", "adaptor_T"])


@pytest.mark.parametrize("students", ["list", "dict"])
def test_S4_student_container(tmp_path, students):
    """TextBrewer: silent: ``__enter__`` put a list/dict of students in eval mode."""
    s = [Toy()] if students == "list" else {"a": Toy()}
    config_error(lambda: BasicDistiller(tcfg(tmp_path), DistillationConfig(), Toy(), s), "model_S",
                 ["must be a torch.nn.Module", type(s).__name__])
