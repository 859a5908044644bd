"""Layer-map presets and their expansion to TextBrewer-format intermediate_matches."""
import math

import pytest

from brewkit.errors import ConfigError
from brewkit.layer_maps import LAYER_MAPS, expand_layer_map, layer_pairs


def hidden_pairs(matches):
    return [(m["layer_S"], m["layer_T"]) for m in matches]


# -- the presets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_t, n_s, proportional, uniform, last", [
    (12, 4, [3, 6, 9, 12], [3, 6, 9, 12], [9, 10, 11, 12]),
    (12, 5, [3, 5, 8, 10, 12], [2, 5, 7, 10, 12], [8, 9, 10, 11, 12]),
    (12, 6, [2, 4, 6, 8, 10, 12], [2, 4, 6, 8, 10, 12], [7, 8, 9, 10, 11, 12]),
    (12, 12, list(range(1, 13)), list(range(1, 13)), list(range(1, 13))),
    (6, 1, [6], [6], [6]),
    (24, 7, [4, 7, 11, 14, 18, 21, 24], [3, 7, 10, 14, 17, 21, 24], list(range(18, 25))),
])
def test_preset_tables(n_t, n_s, proportional, uniform, last):
    assert LAYER_MAPS["proportional"](n_t, n_s) == proportional
    assert LAYER_MAPS["uniform"](n_t, n_s) == uniform
    assert LAYER_MAPS["last"](n_t, n_s) == last


def test_presets_against_their_formulas_for_all_depths():
    for n_t in range(1, 25):
        for n_s in range(1, n_t + 1):
            ls = range(1, n_s + 1)
            assert LAYER_MAPS["proportional"](n_t, n_s) == [math.ceil(k * n_t / n_s) for k in ls]
            assert LAYER_MAPS["uniform"](n_t, n_s) == [math.floor(k * n_t / n_s + 0.5) for k in ls]
            assert LAYER_MAPS["last"](n_t, n_s) == [n_t - n_s + k for k in ls]
            for name in ("proportional", "uniform", "last"):
                m = LAYER_MAPS[name](n_t, n_s)
                assert m[-1] == n_t and all(1 <= a < b for a, b in zip(m, m[1:]))   # strictly increasing


# -- expansion and the index convention -----------------------------------------------------------------------
def test_hidden_indices_include_embeddings_by_default():
    matches = expand_layer_map("proportional", 12, 4)
    assert hidden_pairs(matches) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert matches[1] == {"layer_T": 3, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0}
    assert hidden_pairs(expand_layer_map("proportional", 12, 4, include_embeddings=False)) == \
        [(1, 3), (2, 6), (3, 9), (4, 12)]


def test_attention_indices_are_shifted_by_one_and_have_no_embeddings():
    matches = expand_layer_map("proportional", 12, 4, feature="attention", loss="attention_mse", weight=0.5)
    # attention list index 0 = layer 1, so layer l sits at index l - 1
    assert hidden_pairs(matches) == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert all(m["feature"] == "attention" and m["loss"] == "attention_mse" and m["weight"] == 0.5 for m in matches)
    with pytest.raises(ConfigError) as e:
        expand_layer_map("last", 12, 4, feature="attention", loss="attention_mse", include_embeddings=True)
    assert e.value.path == "include_embeddings"


def test_custom_feature_conventions():
    # a custom per-layer feature (no embeddings entry) by default; has_embeddings=True treats it like hidden
    assert hidden_pairs(expand_layer_map("last", 6, 2, feature="value_layer", loss="my_loss")) == [(0, 4), (1, 5)]
    assert hidden_pairs(expand_layer_map("last", 6, 2, feature="value_layer", loss="my_loss",
                                         has_embeddings=True)) == [(0, 0), (1, 5), (2, 6)]


def test_proj_is_copied_into_every_match():
    proj = ["linear", 128, 768, {"lr": 1e-3}]
    matches = expand_layer_map("uniform", 12, 3, proj=proj)
    assert all(m["proj"] == proj for m in matches)
    matches[0]["proj"][3]["lr"] = 5.0
    assert matches[1]["proj"][3]["lr"] == 1e-3 and proj[3]["lr"] == 1e-3


def test_explicit_list_and_registered_custom_map():
    assert hidden_pairs(expand_layer_map([2, 7, 12], 12, 3, include_embeddings=False)) == [(1, 2), (2, 7), (3, 12)]

    @LAYER_MAPS.register("every_other_test_only")
    def every_other(n_t, n_s):
        return [2 * k for k in range(1, n_s + 1)]

    try:
        assert layer_pairs("every_other_test_only", 8, 3) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    finally:
        del LAYER_MAPS["every_other_test_only"]


# -- errors ---------------------------------------------------------------------------------------------------
def test_unknown_preset_names_the_registry_and_known_names():
    with pytest.raises(ConfigError) as e:
        expand_layer_map("proportionl", 12, 4)
    assert isinstance(e.value, KeyError)
    msg = str(e.value)
    assert "LAYER_MAPS" in msg and "'proportional'" in msg and "'uniform'" in msg and "'last'" in msg
    assert msg.index("'proportional'") < msg.index("'uniform'")   # closest match first


def test_student_deeper_than_teacher_is_an_error():
    with pytest.raises(ConfigError, match="deeper than the teacher") as e:
        expand_layer_map("uniform", 4, 6)
    assert e.value.path == "num_layers_S"


@pytest.mark.parametrize("args, kwargs, path", [
    (("proportional", 0, 1), {}, "num_layers_T"),
    (("proportional", 12, 2.0), {}, "num_layers_S"),
    (([3, 6], 12, 3), {}, "preset"),            # wrong length
    (([3, 13, 6], 12, 3), {}, "preset"),        # out of range
    ((7, 12, 3), {}, "preset"),
    (("last", 12, 3), {"weight": "1"}, "weight"),
    (("last", 12, 3), {"proj": "linear"}, "proj"),
    (("last", 12, 3), {"feature": ""}, "feature"),
])
def test_bad_arguments(args, kwargs, path):
    with pytest.raises(ConfigError) as e:
        expand_layer_map(*args, **kwargs)
    assert e.value.path == path


def test_broken_custom_map_is_reported():
    LAYER_MAPS.register("broken_test_only")(lambda n_t, n_s: [0] * n_s)
    try:
        with pytest.raises(ConfigError, match="layer map 'broken_test_only' must give 2 teacher layer numbers"):
            layer_pairs("broken_test_only", 4, 2)
    finally:
        del LAYER_MAPS["broken_test_only"]


def test_expanded_matches_are_valid_intermediate_matches():
    from brewkit.configs import DistillationConfig

    matches = expand_layer_map("proportional", 12, 4, proj=["linear", 128, 768])
    matches += expand_layer_map("last", 12, 4, feature="attention", loss="attention_mse", weight=0.5)
    cfg = DistillationConfig(intermediate_matches=matches)
    assert [(m.layer_S, m.layer_T, m.feature) for m in cfg.intermediate_matches][:2] == [(0, 0, "hidden"),
                                                                                       (1, 3, "hidden")]
    assert len(cfg.intermediate_matches) == 9
