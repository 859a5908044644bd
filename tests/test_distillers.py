"""Distillers and the engine: losses equal hand-assembled ones, schedules, accumulation, clipping, errors."""
import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import Toy, ToyDataset, bert_batches, tiny_bert, toy_adaptor, toy_batches

from brewkit import (
    BasicDistiller,
    BasicTrainer,
    DistillationConfig,
    Distillers,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
    TrainingConfig,
)
from brewkit.errors import AdaptorError, ConfigError


def tcfg(tmp_path, **kw):
    kw.setdefault("output_dir", str(tmp_path / "out"))
    kw.setdefault("device", "cpu")
    kw.setdefault("logging_steps", 1)
    kw.setdefault("progress_bar", False)
    return TrainingConfig(**kw)


def metrics(tmp_path, sub="out"):
    with open(tmp_path / sub / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def soft_ce(zs, zt, tau):
    return -(F.softmax(zt / tau, -1) * F.log_softmax(zs / tau, -1)).sum(-1).mean()


def masked_mse(hs, ht, m):
    m = m.float().unsqueeze(-1)
    return ((hs - ht) ** 2 * m).sum() / (m.sum() * hs.shape[-1])


def test_general_distiller_one_step_equals_hand_assembled_loss(tmp_path):
    torch.manual_seed(0)
    teacher, student = Toy(d_h=8, n_layers=3), Toy(d_h=6, n_layers=2)
    matches = [{"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 0.7,
                "proj": ["linear", 6, 8]},
               {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "cos", "weight": 0.3,
                "proj": ["tanh", 6, 8, {"lr": 0.01}]}]
    dc = DistillationConfig(temperature=2, hard_label_weight=0.5, kd_loss_weight=1.5, intermediate_matches=matches)
    d = GeneralDistiller(tcfg(tmp_path), dc, teacher, student, toy_adaptor, toy_adaptor)
    batch = toy_batches(1)[0]
    with torch.no_grad():
        ot, os_ = teacher(**batch), student(**batch)
        p0, p1 = d.projs[0](os_["hidden_states"][2]), d.projs[1](os_["hidden_states"][1])
        m = batch["mask"].bool()
        kd = soft_ce(os_["logits"], ot["logits"], 2.0)
        hl = F.cross_entropy(os_["logits"], batch["labels"])
        mse = masked_mse(p0, ot["hidden_states"][3], batch["mask"])
        cos = (1 - F.cosine_similarity(p1[m], ot["hidden_states"][1][m], dim=-1)).mean()
        expected = 1.5 * kd + 0.5 * hl + 0.7 * mse + 0.3 * cos
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    d.train(opt, [batch], num_steps=1)
    rec = metrics(tmp_path)[0]
    assert rec["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert rec["unweighted_kd_loss"] == pytest.approx(float(kd), rel=1e-5)
    assert rec["unweighted_hard_label_loss"] == pytest.approx(float(hl), rel=1e-5)
    assert rec["unweighted_hidden_hidden_mse_2_3"] == pytest.approx(float(mse), rel=1e-5)
    assert rec["unweighted_hidden_cos_1_1"] == pytest.approx(float(cos), rel=1e-5)
    # projections joined the optimizer with their own options, once
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["lr"] == 0.01
    d.train(opt, [batch], num_steps=1)
    assert len(opt.param_groups) == 3
    assert dc.kd_loss_weight == 1.5  # never mutated


def test_basic_distiller_temperature_squared_and_weight_schedules(tmp_path):
    torch.manual_seed(1)
    teacher, student = Toy(), Toy()
    batches = toy_batches(4)
    with torch.no_grad():
        zt, zs = teacher(**batches[0])["logits"], student(**batches[0])["logits"]
    dc = DistillationConfig(temperature=3, kd_temperature_squared=True, kd_loss_weight=2.0,
                            kd_loss_weight_scheduler="linear_decay", hard_label_weight=1.0,
                            hard_label_weight_scheduler="scaled_linear_growth")
    d = BasicDistiller(tcfg(tmp_path), dc, teacher, student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.0), batches, num_epochs=1)
    recs = metrics(tmp_path)
    assert recs[0]["unweighted_kd_loss"] == pytest.approx(9 * float(soft_ce(zs, zt, 3.0)), rel=1e-5)
    # logged weights are those after each step g (of T=4): TextBrewer's overwrite vs scaled base
    assert [r["kd_loss_weight"] for r in recs] == pytest.approx([1 - g / 4 for g in (1, 2, 3, 4)])
    assert [r["hard_label_weight"] for r in recs] == pytest.approx([g / 4 for g in (1, 2, 3, 4)])
    # the first step used the configured weight 2.0
    assert recs[0]["loss"] == pytest.approx(2.0 * recs[0]["unweighted_kd_loss"]
                                            + recs[0]["unweighted_hard_label_loss"], rel=1e-5)
    assert dc.kd_loss_weight == 2.0 and dc.hard_label_weight == 1.0


def test_gradient_accumulation_steps_on_the_epoch_tail_and_scales(tmp_path):
    torch.manual_seed(2)
    model = Toy()
    ref = copy.deepcopy(model)
    batches = toy_batches(5)
    trainer = BasicTrainer(tcfg(tmp_path, gradient_accumulation_steps=2), model, toy_adaptor)
    trainer.train(torch.optim.SGD(model.parameters(), lr=0.5), batches, num_epochs=1)
    assert trainer.global_step == 3
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for group in ([0, 1], [2, 3], [4]):
        opt.zero_grad()
        for i in group:
            (ref(**batches[i])["loss"] / len(group)).backward()
        opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("clip_projections", [False, True])
def test_clipping_covers_the_student_and_optionally_the_projections(tmp_path, clip_projections):
    """TextBrewer clips the student's parameters only; clip_projections=True clips the projections with them.
    With SGD at lr 1 the update of the clipped set has norm max_grad_norm exactly."""
    torch.manual_seed(3)
    teacher, student = Toy(d_h=8), Toy(d_h=6)
    dc = DistillationConfig(intermediate_matches=[{"layer_T": 2, "layer_S": 2, "feature": "hidden",
                                                   "loss": "hidden_mse", "weight": 100.0,
                                                   "proj": ["linear", 6, 8]}])
    d = GeneralDistiller(tcfg(tmp_path, clip_projections=clip_projections), dc, teacher, student, toy_adaptor,
                         toy_adaptor)
    before = [p.detach().clone() for p in d.trainable_parameters()]
    d.train(torch.optim.SGD(student.parameters(), lr=1.0), toy_batches(1), num_steps=1, max_grad_norm=0.01)
    after = d.trainable_parameters()
    n_student = len(list(student.parameters()))
    assert len(after) == n_student + 2
    moved = [(a.detach() - b) for a, b in zip(after, before)]
    student_step = torch.sqrt(sum((m ** 2).sum() for m in moved[:n_student]))
    all_step = torch.sqrt(sum((m ** 2).sum() for m in moved))
    if clip_projections:
        assert float(all_step) == pytest.approx(0.01, rel=1e-4)
    else:
        assert float(student_step) == pytest.approx(0.01, rel=1e-4)
        assert float(all_step) > 1.0  # the projection (weight 100 on its loss) took an unclipped step


def test_multi_teacher_aggregation(tmp_path):
    torch.manual_seed(4)
    t1, t2, student = Toy(), Toy(), Toy()
    batch = toy_batches(1)[0]
    with torch.no_grad():
        z1, z2, zs = t1(**batch)["logits"], t2(**batch)["logits"], student(**batch)["logits"]
    cases = {
        "mean": (DistillationConfig(temperature=2), soft_ce(zs, (z1 + z2) / 2, 2.0)),
        "weighted": (DistillationConfig(temperature=2, teacher_weights=[3, 1]),
                     soft_ce(zs, 0.75 * z1 + 0.25 * z2, 2.0)),
        "probs": (DistillationConfig(temperature=2, teacher_aggregation="probs_mean"),
                  -((F.softmax(z1 / 2, -1) + F.softmax(z2 / 2, -1)) / 2 * F.log_softmax(zs / 2, -1)).sum(-1).mean()),
    }
    for name, (dc, expected) in cases.items():
        d = MultiTeacherDistiller(tcfg(tmp_path, output_dir=str(tmp_path / name)), dc, [t1, t2], student,
                                  toy_adaptor, toy_adaptor)
        d.train(torch.optim.SGD(student.parameters(), lr=0.0), [batch], num_steps=1)
        assert metrics(tmp_path, name)[0]["unweighted_kd_loss"] == pytest.approx(float(expected), rel=1e-5), name
    with pytest.raises(ConfigError, match="intermediate"):
        MultiTeacherDistiller(tcfg(tmp_path), DistillationConfig(intermediate_matches=[
            {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}]),
            [t1, t2], student, toy_adaptor, toy_adaptor)


class TaskToy(Toy):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def forward(self, x, mask=None, labels=None, task=None):
        self.seen.append(task)
        return super().forward(x, mask, labels)


def test_multi_task_sampling_weights_and_task_name(tmp_path):
    torch.manual_seed(5)
    student = TaskToy()
    teachers = {"a": Toy(), "b": Toy()}
    loaders = {"a": toy_batches(9, seed=1), "b": toy_batches(1, seed=2)}
    dc = DistillationConfig(temperature=1)
    d = MultiTaskDistiller(tcfg(tmp_path, ckpt_steps=1000), dc, teachers, student,
                           {"a": toy_adaptor, "b": toy_adaptor}, {"a": toy_adaptor, "b": toy_adaptor})
    d.train(torch.optim.SGD(student.parameters(), lr=0.0), loaders, num_steps=400, tau=1)
    share_b = student.seen.count("b") / len(student.seen)
    assert set(student.seen) == {"a", "b"}
    assert share_b == pytest.approx(0.1, abs=0.04)  # p_b = 1 / (9 + 1)
    student.seen.clear()
    d2 = MultiTaskDistiller(tcfg(tmp_path, output_dir=str(tmp_path / "w"), ckpt_steps=1000), dc, teachers, student,
                            {"a": toy_adaptor, "b": toy_adaptor}, {"a": toy_adaptor, "b": toy_adaptor})
    d2.train(torch.optim.SGD(student.parameters(), lr=0.0), {"a": loaders["a"][:1], "b": loaders["b"]},
             num_steps=20, task_weights={"a": 0.0, "b": 1.0})
    recs = metrics(tmp_path, "w")
    tasks = student.seen
    assert len(recs) == len(tasks) == 20 and set(tasks) == {"a", "b"}  # one batch each: both tasks drawn
    for r, task in zip(recs, tasks, strict=True):
        if task == "a":
            assert r["loss"] == 0.0
        else:
            assert r["loss"] > 0


def test_resume_is_exact_mid_epoch_with_shuffling_loader(tmp_path):
    def run(out, stop_at=None, resume=False):
        torch.manual_seed(7)
        teacher, student = Toy(d_h=8, n_layers=3), Toy(d_h=6, dropout=0.2)
        dc = DistillationConfig(hard_label_weight=1.0, intermediate_matches=[
            {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
             "proj": ["linear", 6, 8]}])
        tc = tcfg(tmp_path, output_dir=str(tmp_path / out), gradient_accumulation_steps=2, ckpt_frequency=3,
                  resume_from_checkpoint=resume or None)
        d = GeneralDistiller(tc, dc, teacher, student, toy_adaptor, toy_adaptor)
        loader = torch.utils.data.DataLoader(ToyDataset(22), batch_size=4, shuffle=True)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-2)

        def cb(model, step):
            if step == stop_at:
                raise KeyboardInterrupt

        try:
            d.train(opt, loader, num_epochs=2, scheduler_class=torch.optim.lr_scheduler.LambdaLR,
                    scheduler_args={"lr_lambda": lambda s: 1 - s / 10}, callback=cb)
        except KeyboardInterrupt:
            pass
        return d

    full = run("full")
    run("part", stop_at=4)  # 6 batches / epoch, 3 steps / epoch: step 4 is mid-epoch 2
    assert sorted(os.listdir(tmp_path / "part")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3",
                                                     "checkpoint-4", "metrics.jsonl"]
    resumed = run("part", resume=True)
    assert resumed.global_step == full.global_step == 6
    for a, b in zip(full.trainable_parameters(), resumed.trainable_parameters()):
        assert (a - b).abs().max() <= 1e-6


def test_caching_gives_the_same_losses(tmp_path):
    def run(out, cache):
        torch.manual_seed(8)
        teacher, student = Toy(d_h=8, n_layers=3), Toy()
        dc = DistillationConfig(is_caching_logits=cache, hard_label_weight=0.5, intermediate_matches=[
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
             "proj": ["linear", 6, 8]}])
        d = GeneralDistiller(tcfg(tmp_path, output_dir=str(tmp_path / out)), dc, teacher, student, toy_adaptor,
                             toy_adaptor)
        loader = torch.utils.data.DataLoader(ToyDataset(12), batch_size=4, shuffle=False)
        d.train(torch.optim.SGD(student.parameters(), lr=0.1), loader, num_epochs=3)
        return [r["loss"] for r in metrics(tmp_path, out)], d

    plain, _ = run("plain", False)
    cached, d = run("cached", True)
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    item = d.recorded[0]["teacher_cache"]
    assert item["logits"][0].device.type == "cpu"
    assert item["hidden"][2] is not None and item["hidden"][0] is None  # only the matched layer is kept


def test_bf16_autocast_runs_on_cpu(tmp_path):
    torch.manual_seed(9)
    teacher, student = tiny_bert(num_layers=2), tiny_bert(num_layers=1, seed=1)
    dc = DistillationConfig(hard_label_weight=1.0, intermediate_matches=[
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0},
        {"layer_T": 1, "layer_S": 0, "feature": "attention", "loss": "attention_probs_kl", "weight": 1.0}])
    teacher_32, student_32 = copy.deepcopy(teacher), copy.deepcopy(student)
    d = GeneralDistiller(tcfg(tmp_path, bf16=True), dc, teacher, student)
    d.train(torch.optim.AdamW(student.parameters(), lr=1e-3), bert_batches(3), num_epochs=1)
    recs = metrics(tmp_path)
    assert len(recs) == 3 and all(math.isfinite(r["loss"]) for r in recs)
    # the same run in float32: close (the tiny BERT's logits are small, so are bf16's errors), not bit-identical
    # (autocast really ran in bfloat16)
    d32 = GeneralDistiller(tcfg(tmp_path, output_dir=str(tmp_path / "fp32")), dc, teacher_32, student_32)
    d32.train(torch.optim.AdamW(student_32.parameters(), lr=1e-3), bert_batches(3), num_epochs=1)
    losses, losses_32 = [r["loss"] for r in recs], [r["loss"] for r in metrics(tmp_path, "fp32")]
    assert losses == pytest.approx(losses_32, rel=1e-3) and losses != losses_32
    assert set(recs[0]) >= {"unweighted_kd_loss", "unweighted_hard_label_loss",
                            "unweighted_attention_attention_probs_kl_0_1", "lr", "grad_norm", "samples_per_s"}


def test_train_sets_modes_and_freezes_teacher_then_restores(tmp_path):
    teacher, student = Toy(dropout=0.5), Toy()
    teacher.train()
    student.eval()
    seen = {}

    def adaptor_T(batch, out):
        seen["teacher_training"] = teacher.training
        seen["teacher_grad"] = any(p.requires_grad for p in teacher.parameters())
        seen["grad_enabled"] = torch.is_grad_enabled()
        return toy_adaptor(batch, out)

    def adaptor_S(batch, out):
        seen["student_training"] = student.training
        return toy_adaptor(batch, out)

    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), teacher, student, adaptor_T, adaptor_S)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(1), num_steps=1)
    assert seen == {"teacher_training": False, "teacher_grad": False, "grad_enabled": False,
                    "student_training": True}
    assert all(p.requires_grad for p in teacher.parameters())
    assert Distillers["General"] is GeneralDistiller and Distillers["Train"] is BasicTrainer


def test_batch_formats_mapping_tuple_and_teacher_student_split(tmp_path):
    from transformers import BatchEncoding

    class TupleToy(Toy):
        def forward(self, x, mask, labels):
            return super().forward(x, mask, labels)

    def tuple_adaptor(batch, out):
        return {"logits": out["logits"], "losses": out["loss"]}

    batch = toy_batches(1)[0]
    torch.manual_seed(10)
    t, s = TupleToy(), TupleToy()
    with torch.no_grad():
        kd = float(soft_ce(s(**batch)["logits"], t(**batch)["logits"], 4.0))
        hard = float(F.cross_entropy(s(**batch)["logits"], batch["labels"]))
    for name, b in (("mapping", BatchEncoding(batch)), ("tuple", (batch["x"], batch["mask"], batch["labels"]))):
        d = BasicDistiller(tcfg(tmp_path, output_dir=str(tmp_path / name)), DistillationConfig(), t, s,
                           tuple_adaptor, tuple_adaptor)
        d.train(torch.optim.SGD(s.parameters(), lr=0.0), [b], num_steps=1)
        rec = metrics(tmp_path, name)[0]  # both formats reach the models as (x, mask, labels)
        assert rec["unweighted_kd_loss"] == pytest.approx(kd, rel=1e-5), name
        assert rec["unweighted_hard_label_loss"] == pytest.approx(hard, rel=1e-5), name
    # a precomputed teacher output replaces the teacher forward pass
    with torch.no_grad():
        cache = t(**batch)
    calls = []
    t.register_forward_hook(lambda *a: calls.append(1))
    d = BasicDistiller(tcfg(tmp_path, output_dir=str(tmp_path / "tc")), DistillationConfig(), t, s,
                       tuple_adaptor, tuple_adaptor)
    d.train(torch.optim.SGD(s.parameters(), lr=0.0),
            [{"teacher": batch, "student": batch, "teacher_cache": cache}], num_steps=1)
    assert calls == []
    assert metrics(tmp_path, "tc")[0]["unweighted_kd_loss"] == pytest.approx(
        float(soft_ce(s(**batch)["logits"].detach(), cache["logits"], 4.0)), rel=1e-5)


# -- errors that TextBrewer let pass silently or reported obscurely --------------------------------------
def _unchanged(model, before):
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("case, error, text", [
    ("hidden_tensor", AdaptorError, "list of per-layer tensors"),
    ("misspelled", AdaptorError, "Did you mean 'inputs_mask'"),
    ("layer_range", AdaptorError, "intermediate_matches[0].layer_S: layer 5 is out of range"),
    ("width", AdaptorError, "add proj: ['linear', 6, 8]"),
    ("no_logits", AdaptorError, "returned no 'logits'"),
])
def test_adaptor_errors_before_any_step(tmp_path, case, error, text):
    torch.manual_seed(11)
    teacher, student = Toy(d_h=8), Toy(d_h=6)
    adaptor_S = toy_adaptor
    layer_S = 2
    if case == "hidden_tensor":
        def adaptor_S(b, o):
            return {**toy_adaptor(b, o), "hidden": o["hidden_states"][-1]}
    elif case == "misspelled":
        def adaptor_S(b, o):
            d = toy_adaptor(b, o)
            d["input_mask"] = d.pop("inputs_mask")
            return d
    elif case == "layer_range":
        layer_S = 5
    elif case == "no_logits":
        def adaptor_S(b, o):
            return {k: v for k, v in toy_adaptor(b, o).items() if k != "logits"}
    dc = DistillationConfig(intermediate_matches=[{"layer_T": 2, "layer_S": layer_S, "feature": "hidden",
                                                   "loss": "hidden_mse", "weight": 1.0}])
    d = GeneralDistiller(tcfg(tmp_path), dc, teacher, student, toy_adaptor, adaptor_S)
    before = [p.detach().clone() for p in student.parameters()]
    with pytest.raises(error) as e:
        d.train(torch.optim.SGD(student.parameters(), lr=1.0), toy_batches(2), num_epochs=1)
    assert text in str(e.value)
    assert _unchanged(student, before)


def test_config_and_construction_errors(tmp_path):
    teacher, student = Toy(), Toy()
    with pytest.raises(ConfigError, match="state_dict"):
        BasicDistiller(tcfg(tmp_path), DistillationConfig(), teacher.state_dict(), student)
    with pytest.raises(ConfigError, match="GeneralDistiller"):
        BasicDistiller(tcfg(tmp_path), DistillationConfig(intermediate_matches=[
            {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}]), teacher, student)
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(), teacher, student, toy_adaptor, toy_adaptor)
    with pytest.raises(ConfigError, match="num_epochs or num_steps"):
        d.train(torch.optim.SGD(student.parameters(), lr=1.0), toy_batches(1))
    with pytest.raises(AdaptorError, match="'losses'"):
        BasicTrainer(tcfg(tmp_path), student, lambda b, o: {"logits": o["logits"]}).train(
            torch.optim.SGD(student.parameters(), lr=1.0), toy_batches(1), num_epochs=1)


def test_hf_probabilities_rejected_by_score_based_ce(tmp_path):
    teacher, student = tiny_bert(num_layers=2), tiny_bert(num_layers=1, seed=1)
    dc = DistillationConfig(intermediate_matches=[{"layer_T": 1, "layer_S": 0, "feature": "attention",
                                                   "loss": "attention_ce", "weight": 1.0}])
    d = GeneralDistiller(tcfg(tmp_path), dc, teacher, student)
    with pytest.raises(AdaptorError, match="attention_probs_ce"):
        d.train(torch.optim.SGD(student.parameters(), lr=1.0), bert_batches(1), num_steps=1)


def test_hf_student_checkpoint_loads_with_from_pretrained(tmp_path):
    from transformers import BertForSequenceClassification

    teacher, student = tiny_bert(num_layers=2), tiny_bert(num_layers=1, seed=1)
    dc = DistillationConfig(hard_label_weight=1.0, intermediate_matches=[
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
         "proj": ["linear", 16, 16]}])
    d = GeneralDistiller(tcfg(tmp_path, save_total_limit=2), dc, teacher, student)
    d.train(torch.optim.AdamW(student.parameters(), lr=1e-3), bert_batches(3), num_steps=3,
            )
    names = sorted(n for n in os.listdir(tmp_path / "out") if n.startswith("checkpoint-"))
    assert names == ["checkpoint-3"]
    path = tmp_path / "out" / "checkpoint-3"
    assert {"model.safetensors", "config.json", "projections.safetensors", "optimizer.pt",
            "trainer_state.json", "rng_state.pt"} <= set(os.listdir(path))
    loaded = BertForSequenceClassification.from_pretrained(path)
    for (n, a), b in zip(student.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.mark.slow  # torch.compile's first compile takes half a minute on CPU
def test_compile_option_trains_the_same_student(tmp_path):
    torch.manual_seed(12)
    teacher, student = Toy(), Toy()
    plain_student = copy.deepcopy(student)
    d = BasicDistiller(tcfg(tmp_path, compile=True), DistillationConfig(hard_label_weight=1.0), teacher, student,
                       toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(2), num_epochs=1)
    assert d.student_forward is not student  # the compiled wrapper was used for the forward pass
    plain = BasicDistiller(tcfg(tmp_path, output_dir=str(tmp_path / "plain")),
                           DistillationConfig(hard_label_weight=1.0), teacher, plain_student, toy_adaptor, toy_adaptor)
    plain.train(torch.optim.SGD(plain_student.parameters(), lr=0.1), toy_batches(2), num_epochs=1)
    assert [r["loss"] for r in metrics(tmp_path)] == pytest.approx([r["loss"] for r in metrics(tmp_path, "plain")],
                                                                   rel=1e-5)
    for a, b in zip(student.parameters(), plain_student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_multi_task_resume_is_exact_with_shuffling_loaders(tmp_path):
    """The task sampler's state and every task's loader position are checkpointed: a run stopped at step 5 and
    resumed ends where the uninterrupted run ends, having drawn the same tasks."""
    def run(out, stop_at=None, resume=False):
        torch.manual_seed(11)
        student = TaskToy(dropout=0.1)
        teachers = {"a": Toy(d_h=8, n_layers=3), "b": Toy(d_h=8, n_layers=3)}
        loaders = {t: torch.utils.data.DataLoader(ToyDataset(n, seed=s), batch_size=3, shuffle=True)
                   for t, n, s in (("a", 12, 1), ("b", 6, 2))}
        dc = DistillationConfig(temperature=2, hard_label_weight=1.0)
        tc = tcfg(tmp_path, output_dir=str(tmp_path / out), ckpt_steps=1, seed=4,
                  resume_from_checkpoint=resume or None)
        d = MultiTaskDistiller(tc, dc, teachers, student, {t: toy_adaptor for t in teachers},
                               {t: toy_adaptor for t in teachers})

        def cb(model, step):
            if step == stop_at:
                raise KeyboardInterrupt

        try:
            d.train(torch.optim.AdamW(student.parameters(), lr=1e-2), loaders, num_steps=12, tau=1, callback=cb)
        except KeyboardInterrupt:
            pass
        return d, student.seen

    full, full_tasks = run("full")
    _, first_tasks = run("part", stop_at=5)
    resumed, resumed_tasks = run("part", resume=True)
    assert resumed.global_step == 12
    assert first_tasks[:5] + resumed_tasks == full_tasks  # the same task draws after the resume
    assert len(set(full_tasks)) == 2
    for a, b in zip(full.trainable_parameters(), resumed.trainable_parameters()):
        assert (a - b).abs().max() <= 1e-6


def test_request_stop_saves_a_checkpoint_and_marks_the_run_interrupted(tmp_path):
    """``request_stop()`` (what Ctrl-C calls) ends train() after the current step with a checkpoint of it;
    ``interrupted`` tells an early stop from a finished run, and the next train() clears it."""
    torch.manual_seed(0)
    teacher, student = Toy(d_h=8, n_layers=3), Toy(d_h=6, n_layers=2)
    d = BasicDistiller(tcfg(tmp_path, ckpt_steps=1), DistillationConfig(), teacher, student, toy_adaptor,
                       toy_adaptor)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    batches = toy_batches(6)

    def stop_at_3(model, step):  # the callback runs after each checkpoint: every step here
        if step == 3:
            d.request_stop()

    d.train(opt, batches, num_steps=10, callback=stop_at_3)
    assert d.interrupted and d.global_step == 3  # checkpoint-3 was written just before the callback asked
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "metrics.jsonl"]
    d.train(opt, batches, num_steps=2)
    assert not d.interrupted and d.global_step == 2

    d.train(opt, batches, num_steps=2, callback=lambda model, step: step == 2 and d.request_stop())
    assert not d.interrupted and d.global_step == 2  # a stop asked for on the last step: the run is complete


def test_effective_batch_normalisation_without_a_mask_counts_rows(tmp_path):
    """Batches without a padding mask: every denominator counts rows, so two micro-batches of 3 and 1 rows
    (accumulated) give the update of one batch of 4 rows."""
    torch.manual_seed(5)
    model, ref = Toy(), Toy()
    ref.load_state_dict(model.state_dict())
    batches = [{k: v for k, v in b.items() if k != "mask"} for b in toy_batches(1, batch_size=4)]
    split = [{k: v[:3] for k, v in batches[0].items()}, {k: v[3:] for k, v in batches[0].items()}]
    def adaptor(batch, out):
        return {"logits": out["logits"], "losses": out["loss"]}

    BasicTrainer(tcfg(tmp_path, gradient_accumulation_steps=2), model, adaptor).train(
        torch.optim.SGD(model.parameters(), lr=0.5), split, num_steps=1)
    BasicTrainer(tcfg(tmp_path, output_dir=str(tmp_path / "ref")), ref, adaptor).train(
        torch.optim.SGD(ref.parameters(), lr=0.5), batches, num_steps=1)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss", ["kl", "jsd", "tvd"])
def test_fused_kd_from_the_student_lm_head_equals_the_plain_form(tmp_path, loss):
    """kd_implementation='fused' (student hidden states x its LM head, no student logits in the loss) gives the
    plain form's KD term and the same gradients, on a tiny GPT-2 pair; a soft-capping student is refused."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2(layers, seed):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=layers, n_head=2,
                                          resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))

    teacher = gpt2(2, 0)
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    grads, values = {}, {}
    for impl in ("plain", "fused"):
        student = gpt2(1, 2)
        dc = DistillationConfig(temperature=2.0, kd_loss_type=loss, kd_implementation=impl,
                                kd_temperature_squared=True)
        d = BasicDistiller(tcfg(tmp_path), dc, teacher, student)
        d.prepare_models()
        total, terms = d.train_on_batch(batch, {})
        total.backward()
        d.restore_teacher_flags()
        values[impl] = float(terms["unweighted_kd_loss"].detach())
        grads[impl] = [p.grad.clone() for p in student.parameters()]
    assert values["fused"] == pytest.approx(values["plain"], rel=1e-5, abs=1e-7)
    for a, b in zip(grads["plain"], grads["fused"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    student = gpt2(1, 2)
    student.config.final_logit_softcapping = 30.0
    d = BasicDistiller(tcfg(tmp_path), DistillationConfig(kd_loss_type=loss, kd_implementation="fused"), teacher,
                       student)
    d.prepare_models()
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        d.train_on_batch(batch, {})


def test_a_match_loss_registered_without_a_denominator_counts_rows_and_says_so_once(caplog):
    """The documented default: a custom match loss that does not state what its mean divides by is normalised as a
    mean over rows (examples), and the log says so once per loss name."""
    import logging

    from brewkit.distillers.general import match_denominator
    from brewkit.presets import MATCH_LOSS_MAP

    MATCH_LOSS_MAP.register("test_l1_without_denominator", overwrite=True)(lambda s, t, mask=None: (s - t).abs().mean())
    try:
        with caplog.at_level(logging.INFO, logger="brewkit"):
            assert match_denominator("test_l1_without_denominator") == ("rows", "rows")
            assert match_denominator("test_l1_without_denominator") == ("rows", "rows")
    finally:
        del MATCH_LOSS_MAP["test_l1_without_denominator"]  # the registries are global: leave them as found
    said = [r.getMessage() for r in caplog.records if "test_l1_without_denominator" in r.getMessage()]
    assert len(said) == 1 and "declares no denominator" in said[0]
    assert match_denominator("hidden_mse") == ("tokens", "positions")  # a built-in states its own
