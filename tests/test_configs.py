"""DistillationConfig / TrainingConfig: TextBrewer's fields and defaults, validation of every field (the error
names the field path and what is allowed), numpy numbers, round trips, and configs that training never changes."""
import copy
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import yaml
from helpers import Toy, toy_adaptor, toy_batches

from brewkit import BasicDistiller, DistillationConfig, GeneralDistiller, MultiTeacherDistiller, TrainingConfig
from brewkit.configs import IntermediateMatch
from brewkit.errors import BrewkitError, ConfigError


def tcfg(tmp_path, **kw):
    kw.setdefault("output_dir", str(tmp_path / "out"))
    kw.setdefault("device", "cpu")
    kw.setdefault("progress_bar", False)
    return TrainingConfig(**kw)


def match(**kw):
    return {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0, **kw}


# -- defaults ---------------------------------------------------------------------------------------------
def test_textbrewer_defaults():
    d = DistillationConfig()
    assert (d.temperature, d.temperature_scheduler, d.hard_label_weight, d.hard_label_weight_scheduler,
            d.kd_loss_type, d.kd_loss_weight, d.kd_loss_weight_scheduler, d.probability_shift,
            d.intermediate_matches, d.is_caching_logits) == (4, "none", 0, "none", "ce", 1, "none", False, None,
                                                            False)
    assert d.kd_temperature_squared is False  # TextBrewer had no tau^2 factor: off by default
    t = TrainingConfig()
    assert (t.gradient_accumulation_steps, t.ckpt_frequency, t.ckpt_epoch_frequency, t.ckpt_steps, t.log_dir,
            t.output_dir, t.fp16, t.fp16_opt_level, t.data_parallel, t.local_rank) == (
        1, 1, 1, None, None, "./saved_models", False, "O1", False, -1)
    assert t.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert t.bf16 is False and t.save_total_limit is None and t.resume_from_checkpoint is None


def test_training_config_creates_no_directory(tmp_path):
    TrainingConfig(output_dir=str(tmp_path / "never_made"), log_dir=str(tmp_path / "logs"))
    assert os.listdir(tmp_path) == []  # TextBrewer's constructor called os.makedirs(output_dir)


# -- validation of every field ------------------------------------------------------------------------------
T, D = "training", "distillation"
BAD = [
    # (config, kwargs, error path, words the message must contain)
    (T, {"gradient_accumulation_steps": 0}, "gradient_accumulation_steps", ["integer >= 1", "0"]),
    (T, {"gradient_accumulation_steps": 2.0}, "gradient_accumulation_steps", ["integer"]),
    (T, {"ckpt_frequency": 0}, "ckpt_frequency", ["integer >= 1"]),
    (T, {"ckpt_frequency": True}, "ckpt_frequency", ["integer"]),
    (T, {"ckpt_epoch_frequency": -1}, "ckpt_epoch_frequency", ["integer >= 1"]),
    (T, {"ckpt_steps": 0}, "ckpt_steps", ["integer >= 1 or null"]),
    (T, {"ckpt_steps": "10"}, "ckpt_steps", ["integer"]),
    (T, {"callback_steps": 0}, "callback_steps", ["integer >= 1 or null"]),
    (T, {"log_dir": 3}, "log_dir", ["directory path or null"]),
    (T, {"output_dir": ""}, "output_dir", ["directory path"]),
    (T, {"output_dir": None}, "output_dir", ["directory path"]),
    (T, {"device": "gpu"}, "device", ["'cpu'", "'cuda'", "'gpu'"]),
    (T, {"fp16": "yes"}, "fp16", ["true or false"]),
    (T, {"fp16": True, "device": "cpu"}, "fp16", ["CUDA", "bf16"]),
    (T, {"fp16_opt_level": "O4"}, "fp16_opt_level", ["'O0'", "'O3'", "'O4'"]),
    (T, {"bf16": 1}, "bf16", ["true or false"]),
    (T, {"bf16": True, "fp16": True, "device": "cuda"}, "bf16", ["mutually exclusive"]),
    (T, {"data_parallel": "no"}, "data_parallel", ["true or false"]),
    (T, {"data_parallel": True, "local_rank": 0}, "data_parallel", ["mutually exclusive"]),
    (T, {"local_rank": -2}, "local_rank", ["integer >= -1"]),
    (T, {"seed": -1}, "seed", ["integer >= 0 or null"]),
    (T, {"logging_steps": 0}, "logging_steps", ["integer >= 1"]),
    (T, {"save_total_limit": 0}, "save_total_limit", ["integer >= 1 or null"]),
    (T, {"resume_from_checkpoint": 3}, "resume_from_checkpoint", ["true", "checkpoint path"]),
    (T, {"progress_bar": "auto"}, "progress_bar", ["true or false"]),
    (T, {"skip_nonfinite_steps": None}, "skip_nonfinite_steps", ["true or false"]),
    (T, {"force_resume": "yes"}, "force_resume", ["true or false"]),
    (T, {"clip_projections": 1}, "clip_projections", ["true or false"]),
    (T, {"checkpoint_format": "pkl"}, "checkpoint_format", ["'brewkit'", "'textbrewer'", "'pkl'"]),
    (T, {"parallel": "zero3"}, "parallel", ["'ddp'", "'fsdp'", "'zero3'"]),
    (T, {"fsdp_teachers": "offload"}, "fsdp_teachers", ["'shard'", "'replicate'"]),
    (T, {"parallel": "fsdp", "fp16": True}, "fp16", ["bf16"]),
    (T, {"parallel": "fsdp", "compile": True}, "compile", ["fsdp"]),
    (T, {"teacher_dtype": "fp16"}, "teacher_dtype", ["'float32'", "'bfloat16'", "'float16'"]),
    (T, {"compile": "yes"}, "compile", ["true or false"]),
    (T, {"ddp_find_unused_parameters": 0}, "ddp_find_unused_parameters", ["true or false"]),
    (T, {"loss_normalization": "mean"}, "loss_normalization", ["'effective_batch'", "'micro_batch'", "'mean'"]),
    (D, {"temperature": 0}, "temperature", ["positive number"]),
    (D, {"temperature": "4"}, "temperature", ["positive number"]),
    (D, {"temperature": float("inf")}, "temperature", ["finite"]),
    (D, {"temperature_scheduler": "flws"}, "temperature_scheduler", ["unknown temperature scheduler 'flws'",
                                                                      "'flsw'", "'cwsm'", "'constant'"]),
    (D, {"temperature_scheduler": "flsw"}, "temperature_scheduler", ["needs parameters", "['flsw', 1, 2]"]),
    (D, {"temperature_scheduler": "cwsm"}, "temperature_scheduler", ["needs parameters"]),
    (D, {"temperature_scheduler": ["flsw", 1]}, "temperature_scheduler", ["'flsw'", "gamma"]),
    (D, {"temperature_scheduler": ["flsw", {"beta": 1, "gama": 2}]}, "temperature_scheduler", ["gama"]),
    (D, {"temperature_scheduler": ["flsw", "a", 1]}, "temperature_scheduler", ["flsw.beta", "finite number"]),
    (D, {"temperature_scheduler": ["flx", 1]}, "temperature_scheduler[0]", ["unknown temperature scheduler"]),
    (D, {"temperature_scheduler": []}, "temperature_scheduler", ["starts with its name"]),
    (D, {"temperature_scheduler": 3}, "temperature_scheduler", ["'none'", "list spec"]),
    (D, {"hard_label_weight": "0.5"}, "hard_label_weight", ["number"]),
    (D, {"hard_label_weight": float("nan")}, "hard_label_weight", ["finite"]),
    (D, {"hard_label_weight_scheduler": "linear"}, "hard_label_weight_scheduler",
     ["unknown weight scheduler 'linear'", "'linear_decay'", "'linear_growth'"]),
    (D, {"kd_loss_type": "kl_div"}, "kd_loss_type", ["unknown kd loss 'kl_div'", "'kl'", "'ce'", "'mse'"]),
    (D, {"kd_loss_type": None}, "kd_loss_type", ["name"]),
    (D, {"kd_loss_weight": None}, "kd_loss_weight", ["number"]),
    (D, {"kd_loss_weight_scheduler": "linear_decy"}, "kd_loss_weight_scheduler", ["'linear_decay'"]),
    (D, {"probability_shift": 1}, "probability_shift", ["true or false"]),
    (D, {"is_caching_logits": "true"}, "is_caching_logits", ["true or false"]),
    (D, {"kd_temperature_squared": 1}, "kd_temperature_squared", ["true or false"]),
    (D, {"teacher_aggregation": "mean"}, "teacher_aggregation", ["'logits_mean'", "'probs_mean'"]),
    (D, {"teacher_aggregation": "probs_mean", "temperature_scheduler": ["cwsm", 1]}, "teacher_aggregation",
     ["temperature_scheduler"]),
    (D, {"teacher_weights": [0, 0]}, "teacher_weights", ["non-negative", "positive sum"]),
    (D, {"teacher_weights": [1, float("inf")]}, "teacher_weights", ["non-negative"]),
    (D, {"teacher_weights": 1.0}, "teacher_weights", ["list"]),
    (D, {"teacher_cache": "ram"}, "teacher_cache", ["'memory'", "'disk'", "'ram'"]),
    (D, {"teacher_cache": "memory", "is_caching_logits": True}, "teacher_cache", ["is_caching_logits"]),
    (D, {"teacher_cache_dir": 3}, "teacher_cache_dir", ["directory"]),
    (D, {"teacher_cache_dtype": "int8"}, "teacher_cache_dtype", ["'float16'", "'int8'"]),
    (D, {"textbrewer_numerics": "0.2"}, "textbrewer_numerics", ["'master'", "'0.2.1'", "'0.2'"]),
    (D, {"kd_loss_type": "jsd", "kd_loss_args": {"alpha": 0.1}}, "kd_loss_args.alpha", ["'jsd'", "beta"]),
    (D, {"kd_loss_type": "jsd", "kd_loss_args": {"beta": 1.5}}, "kd_loss_args.beta", ["[0, 1]", "1.5"]),
    (D, {"kd_loss_type": "skew_kl", "kd_loss_args": {"alpha": "0.1"}}, "kd_loss_args.alpha", ["number", "'0.1'"]),
    (D, {"kd_loss_type": "kl", "kd_loss_args": {"beta": 0.5}}, "kd_loss_args.beta", ["no parameters"]),
    (D, {"kd_loss_args": [0.5]}, "kd_loss_args", ["mapping"]),
    (D, {"kd_implementation": "fast"}, "kd_implementation", ["'plain'", "'chunked'", "'fused'", "'fast'"]),
    (D, {"kd_loss_type": "mse", "kd_implementation": "chunked"}, "kd_implementation", ["'mse'", "only a plain"]),
    (D, {"intermediate_matches": {"layer_T": 1}}, "intermediate_matches", ["list of match dicts"]),
    (D, {"intermediate_matches": [3]}, "intermediate_matches[0]", ["mapping"]),
    (D, {"intermediate_matches": [match(), match(), match(loss="hidden_mes")]}, "intermediate_matches[2].loss",
     ["unknown match loss 'hidden_mes'", "'hidden_mse'"]),
    (D, {"intermediate_matches": [match(feature="hiden")]}, "intermediate_matches[0].feature",
     ["unknown feature 'hiden'", "'hidden'", "'attention'", "FEATURES"]),
    (D, {"intermediate_matches": [{k: v for k, v in match().items() if k != "weight"}]}, "intermediate_matches[0]",
     ["missing required key", "weight"]),
    (D, {"intermediate_matches": [{"feature": "hidden", "loss": "cos", "weight": 1}]}, "intermediate_matches[0]",
     ["missing required key", "layer_T", "layer_S"]),
    (D, {"intermediate_matches": [match(wieght=1)]}, "intermediate_matches[0].wieght",
     ["unknown key", "did you mean 'weight'"]),
    (D, {"intermediate_matches": [match(weight="1")]}, "intermediate_matches[0].weight", ["number"]),
    (D, {"intermediate_matches": [match(layer_T=-1)]}, "intermediate_matches[0].layer_T", ["non-negative"]),
    (D, {"intermediate_matches": [match(layer_S=1.0)]}, "intermediate_matches[0].layer_S", ["integer"]),
    (D, {"intermediate_matches": [match(layer_S=[1, 2])]}, "intermediate_matches[0].layer_S", ["integer"]),
    (D, {"intermediate_matches": [match(loss="fsp")]}, "intermediate_matches[0].layer_T",
     ["'fsp' compares two layers", "list of two"]),
    (D, {"intermediate_matches": [match(loss="mmd", layer_T=[0, 1], layer_S=[0, 1, 2])]},
     "intermediate_matches[0].layer_S", ["list of two"]),
    (D, {"intermediate_matches": [match(proj=["lin", 6, 8])]}, "intermediate_matches[0].proj[0]",
     ["unknown projection 'lin'", "'linear'", "'relu'", "'tanh'"]),
    (D, {"intermediate_matches": [match(proj=["linear", 6.0, 8])]}, "intermediate_matches[0].proj[1]",
     ["integer >= 1"]),
    (D, {"intermediate_matches": [match(proj=["linear", 6, 0])]}, "intermediate_matches[0].proj[2]",
     ["integer >= 1"]),
    (D, {"intermediate_matches": [match(proj=["linear", 6, 8, "lr=0.1"])]}, "intermediate_matches[0].proj[3]",
     ["mapping"]),
    (D, {"intermediate_matches": [match(proj=["linear", 6])]}, "intermediate_matches[0].proj",
     ["[name, dim_S, dim_T]"]),
]


@pytest.mark.parametrize("which, kwargs, path, words", BAD,
                         ids=[f"{w}-{p}-{i}" for i, (w, _, p, _) in enumerate(BAD)])
def test_every_bad_value_is_a_config_error_naming_the_field(which, kwargs, path, words):
    cls = TrainingConfig if which == T else DistillationConfig
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    err = e.value
    assert isinstance(err, BrewkitError) and isinstance(err, ValueError)
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    for w in words:
        assert w in str(err), (w, str(err))


def test_the_table_above_covers_every_field():
    covered = {(w, p.split("[")[0].split(".")[0]) for w, _, p, _ in BAD}
    for which, cls in ((T, TrainingConfig), (D, DistillationConfig)):
        for f in dataclasses.fields(cls):
            assert (which, f.name) in covered, f"no validation case for {cls.__name__}.{f.name}"


def test_replace_validates_too():
    with pytest.raises(ConfigError) as e:
        TrainingConfig(device="cpu").replace(ckpt_steps=0)
    assert e.value.path == "ckpt_steps"


# -- accepted spellings ---------------------------------------------------------------------------------------
def test_numpy_integers_are_accepted_and_stored_as_python_numbers():
    """TextBrewer asserted ``type(dim) is int``; brewkit takes any integral type for layers, proj dims and
    integer fields, and stores plain Python numbers (so the config still serialises)."""
    dc = DistillationConfig(
        temperature=np.int64(3), kd_loss_weight=np.float32(0.5), hard_label_weight=np.int32(1),
        intermediate_matches=[match(layer_T=np.int64(2), layer_S=np.int32(1), weight=np.float64(0.25),
                                    proj=["linear", np.int64(6), np.int16(8)]),
                              match(loss="fsp", layer_T=(np.int64(0), 2), layer_S=[0, np.int8(1)])])
    m0, m1 = dc.intermediate_matches
    assert m0.layer_T == 2 and type(m0.layer_T) is int and type(m0.layer_S) is int
    assert m0.proj == ["linear", 6, 8, {}] and all(type(x) is int for x in m0.proj[1:3])
    assert m1.layer_T == [0, 2] and m1.layer_S == [0, 1] and all(type(x) is int for x in m1.layer_T + m1.layer_S)
    assert type(dc.temperature) is int and type(dc.kd_loss_weight) is float and type(dc.hard_label_weight) is int
    assert dc.kd_loss_weight == 0.5
    json.dumps(dc.to_dict())  # numpy scalars would make this raise
    tc = TrainingConfig(gradient_accumulation_steps=np.int64(2), ckpt_steps=np.int32(5), device="cpu")
    assert tc.gradient_accumulation_steps == 2 and type(tc.ckpt_steps) is int
    with pytest.raises(ConfigError):  # integral values only: 2.0 is not a layer index
        DistillationConfig(intermediate_matches=[match(layer_T=np.float64(2.0))])


def test_none_strings_from_json_work(tmp_path):
    """TextBrewer compared with ``is not 'none'``, so "none" read from JSON (a different str object) failed."""
    text = json.dumps({"temperature_scheduler": "none", "kd_loss_weight_scheduler": "none",
                       "hard_label_weight_scheduler": "none", "temperature": 2})
    path = tmp_path / "d.json"
    path.write_text(text)
    dc = DistillationConfig.from_json_file(str(path))
    none = "".join(["no", "ne"])  # a str that is equal to, but not the same object as, the constant
    assert dc.temperature_scheduler == none and dc.temperature_scheduler_fn() is None
    assert dc.kd_loss_weight_scheduler == "none" and dc.hard_label_weight_scheduler == "none"
    assert DistillationConfig(temperature_scheduler=None).temperature_scheduler == "none"
    assert DistillationConfig(kd_loss_weight_scheduler=None).kd_loss_weight_scheduler == "none"


def test_scheduler_specs_list_tuple_and_keyword_forms():
    import torch.nn.functional as F

    zs, zt = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.randn(5, 3)
    a = DistillationConfig(temperature_scheduler=("flsw", 1, 2))
    b = DistillationConfig(temperature_scheduler=["flsw", {"beta": 1, "gamma": 2}])
    assert a.temperature_scheduler == ["flsw", 1, 2]  # tuples are stored as lists (YAML/JSON friendly)
    ta, tb = a.temperature_scheduler_fn()(zs, zt, 4.0), b.temperature_scheduler_fn()(zs, zt, 4.0)
    # flsw by hand: w = (1 - cos)^gamma, tau = 4 + beta * (mean w - w)
    v = zs / (zs.norm(dim=-1, keepdim=True) + 1e-4)
    t = zt / (zt.norm(dim=-1, keepdim=True) + 1e-4)
    w = (1 - (v * t).sum(-1)) ** 2
    torch.testing.assert_close(ta, 4 + (w.mean() - w))
    torch.testing.assert_close(tb, ta)
    c = DistillationConfig(temperature_scheduler=["cwsm", 0.5])
    q = F.softmax(zs, -1).max(-1).values
    wc = 1 / (q + 1e-3)
    torch.testing.assert_close(c.temperature_scheduler_fn()(zs, zt, 4.0), 4 + 0.5 * (wc.mean() - wc))
    assert DistillationConfig(temperature_scheduler="constant").temperature_scheduler_fn()(zs, zt, 3.0) == 3.0


def test_unknown_keys_in_files_are_config_errors(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"ckpt_step": 100, "device": "cpu"}))
    with pytest.raises(ConfigError) as e:
        TrainingConfig.from_json_file(str(path))
    assert e.value.path == "ckpt_step" and "did you mean 'ckpt_steps'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        DistillationConfig.from_yaml("temprature: 2\n")
    assert e.value.path == "temprature" and "did you mean 'temperature'" in str(e.value)
    with pytest.raises(ConfigError, match="mapping"):
        DistillationConfig.from_yaml("- 1\n- 2\n")
    # the Python constructor keeps Python's own error for a misspelled keyword argument
    with pytest.raises(TypeError, match="temprature"):
        DistillationConfig(temprature=2)


# -- round trips ---------------------------------------------------------------------------------------------
def full_distillation_config():
    return DistillationConfig(
        temperature=2.5, temperature_scheduler=["flsw", {"beta": 1, "gamma": 2}], hard_label_weight=0.5,
        hard_label_weight_scheduler="linear_growth", kd_loss_type="kl", kd_loss_weight=2,
        kd_loss_weight_scheduler="scaled_linear_decay", probability_shift=True, is_caching_logits=True,
        kd_temperature_squared=True,
        intermediate_matches=[match(proj=["relu", 6, 8, {"lr": 0.01, "weight_decay": 0.0}]),
                              match(loss="gram", layer_T=[0, 2], layer_S=[0, 1], weight=0.5)])


def full_training_config():
    return TrainingConfig(gradient_accumulation_steps=2, ckpt_frequency=3, ckpt_epoch_frequency=2, ckpt_steps=7,
                          log_dir="runs/x", output_dir="out/x", device="cpu", bf16=True, seed=3, logging_steps=5,
                          save_total_limit=2, resume_from_checkpoint=True, progress_bar=False,
                          skip_nonfinite_steps=True, teacher_dtype="bfloat16")


@pytest.mark.parametrize("make", [full_distillation_config, full_training_config, DistillationConfig,
                                  lambda: TrainingConfig(device="cpu")])
def test_round_trips(tmp_path, make):
    cfg = make()
    cls = type(cfg)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain data only
    assert cls.from_dict(d) == cfg
    assert cls.from_dict(copy.deepcopy(d)).to_dict() == d
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json_string())
    assert cls.from_json_file(str(path)) == cfg
    text = cfg.to_yaml()
    assert yaml.safe_load(text) == d
    assert cls.from_yaml(text) == cfg
    assert cls.from_yaml(cls.from_yaml(text).to_yaml()) == cfg


def test_to_dict_shapes():
    d = full_distillation_config().to_dict()
    assert d["intermediate_matches"][0] == {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                                            "weight": 1.0, "proj": ["relu", 6, 8, {"lr": 0.01, "weight_decay": 0.0}]}
    assert d["intermediate_matches"][1]["layer_T"] == [0, 2] and d["intermediate_matches"][1]["proj"] is None
    assert d["temperature_scheduler"] == ["flsw", {"beta": 1, "gamma": 2}]
    assert isinstance(full_distillation_config().intermediate_matches[0], IntermediateMatch)
    assert "kd_loss_type : kl" in str(full_distillation_config())  # TextBrewer's "key : value" lines


# -- the user's objects are never changed ----------------------------------------------------------------------
def test_user_proj_lists_and_match_dicts_are_not_mutated():
    proj = ["linear", 6, 8]
    matches = [match(proj=proj), match(layer_T=2)]
    before = copy.deepcopy(matches)
    dc = DistillationConfig(intermediate_matches=matches)
    assert proj == ["linear", 6, 8]  # TextBrewer appended {} to it in place
    assert matches == before
    assert dc.intermediate_matches[0].proj == ["linear", 6, 8, {}]
    dc.intermediate_matches[0].proj[3]["lr"] = 1.0  # the config holds its own copy
    assert proj == ["linear", 6, 8]


@pytest.mark.parametrize("distiller", ["general", "multi_teacher"])
def test_training_never_changes_the_configs(tmp_path, distiller):
    """TextBrewer overwrote kd_loss_weight / hard_label_weight after every step and forced
    is_caching_logits=False in General/MultiTask; brewkit keeps both configs as they were built."""
    torch.manual_seed(0)
    matches = [match(layer_T=2, layer_S=2, proj=["linear", 6, 8])]
    dc = DistillationConfig(temperature=3, temperature_scheduler=["cwsm", 0.5], hard_label_weight=0.7,
                            hard_label_weight_scheduler="linear_growth", kd_loss_weight=2.0,
                            kd_loss_weight_scheduler="linear_decay", is_caching_logits=True,
                            intermediate_matches=matches if distiller == "general" else None)
    tc = tcfg(tmp_path, logging_steps=1, ckpt_frequency=2)
    dc_before, tc_before = copy.deepcopy(dc.to_dict()), copy.deepcopy(tc.to_dict())
    dc_copy = copy.deepcopy(dc)
    student = Toy(d_h=6)
    if distiller == "general":
        d = GeneralDistiller(tc, dc, Toy(d_h=8), student, toy_adaptor, toy_adaptor)
    else:
        d = MultiTeacherDistiller(tc, dc, [Toy(), Toy()], student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(4), num_epochs=2)
    assert d.weights["kd_loss_weight"] == pytest.approx(0.0)  # the schedule ran (linear_decay ends at 0) ...
    assert d.weights["hard_label_weight"] == pytest.approx(1.0)
    assert dc.to_dict() == dc_before and dc == dc_copy  # ... but the config kept its values
    assert dc.kd_loss_weight == 2.0 and dc.hard_label_weight == 0.7 and dc.is_caching_logits is True
    assert tc.to_dict() == tc_before
    assert matches[0]["proj"] == ["linear", 6, 8]
    # the checkpoint stores the configs as built
    with open(tmp_path / "out" / "checkpoint-8" / "distillation_config.json") as f:
        assert json.load(f) == dc_before


def test_one_config_reused_for_two_runs_gives_the_same_result(tmp_path):
    dc = DistillationConfig(kd_loss_weight=2.0, kd_loss_weight_scheduler="linear_decay", hard_label_weight=1.0)

    def run(out):
        torch.manual_seed(1)
        teacher, student = Toy(), Toy()
        d = BasicDistiller(tcfg(tmp_path, output_dir=str(tmp_path / out)), dc, teacher, student, toy_adaptor,
                           toy_adaptor)
        d.train(torch.optim.SGD(student.parameters(), lr=0.5), toy_batches(3), num_epochs=2)
        return [p.detach().clone() for p in student.parameters()]

    for a, b in zip(run("a"), run("b")):
        assert torch.equal(a, b)
