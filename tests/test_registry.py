"""Registries: dict behaviour, decorator registration, register_new, helpful unknown-name errors."""
import os
import warnings

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from brewkit import presets  # noqa: E402
from brewkit.errors import ConfigError, UnknownNameError  # noqa: E402
from brewkit.presets import KD_LOSS_MAP, MATCH_LOSS_MAP, PROJ_MAP, TEMPERATURE_SCHEDULER, WEIGHT_SCHEDULER, register_new  # noqa: E402
from brewkit.registry import Registry  # noqa: E402

ALL_MAPS = [KD_LOSS_MAP, MATCH_LOSS_MAP, PROJ_MAP, WEIGHT_SCHEDULER, TEMPERATURE_SCHEDULER]


@pytest.fixture(autouse=True)
def no_leaks():
    """Delete whatever a test registers, so tests do not leak into each other."""
    before = {r.name: {k: r[k] for k in r} for r in ALL_MAPS}
    yield
    for r in ALL_MAPS:
        for k in [k for k in r if k not in before[r.name]]:
            del r[k]
        assert {k: r[k] for k in r} == before[r.name], f"{r.name} changed a built-in entry"


def f_one(*args, **kwargs):
    """First test function."""
    return 1


def f_two(*args, **kwargs):
    """Second test function."""
    return 2


# -- dict behaviour --------------------------------------------------------------------------------------------
def test_assignment_lookup_contains_iteration_and_delete():
    MATCH_LOSS_MAP["test_l1"] = f_one
    assert MATCH_LOSS_MAP["test_l1"] is f_one
    assert "test_l1" in MATCH_LOSS_MAP
    assert "test_l1" in list(MATCH_LOSS_MAP)
    assert ("test_l1", "First test function.") in MATCH_LOSS_MAP.describe()
    n = len(MATCH_LOSS_MAP)
    del MATCH_LOSS_MAP["test_l1"]
    assert "test_l1" not in MATCH_LOSS_MAP and len(MATCH_LOSS_MAP) == n - 1
    with pytest.raises(ConfigError):
        del MATCH_LOSS_MAP["test_l1"]


def test_overwriting_by_assignment_warns():
    KD_LOSS_MAP["test_kd"] = f_one
    with pytest.warns(UserWarning, match=r"KD_LOSS_MAP\['test_kd'\] replaced"):
        KD_LOSS_MAP["test_kd"] = f_two
    assert KD_LOSS_MAP["test_kd"] is f_two
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KD_LOSS_MAP["test_kd"] = f_two  # the same function again: nothing to warn about


def test_decorator_registration():
    @MATCH_LOSS_MAP.register("test_deco", description="my loss", two_layer=True)
    def my_loss(feature_S, feature_T, mask=None):
        return 0

    assert my_loss(1, 2) == 0  # the decorator returns the function itself
    assert MATCH_LOSS_MAP["test_deco"] is my_loss
    assert MATCH_LOSS_MAP.meta("test_deco") == {"description": "my loss", "two_layer": True}


def test_register_twice_needs_overwrite():
    MATCH_LOSS_MAP.register("test_twice")(f_one)
    with pytest.raises(ConfigError, match="already registered.*overwrite=True") as e:
        MATCH_LOSS_MAP.register("test_twice")(f_two)
    assert e.value.path == "MATCH_LOSS_MAP"
    assert MATCH_LOSS_MAP["test_twice"] is f_one
    MATCH_LOSS_MAP.register("test_twice", overwrite=True)(f_two)
    assert MATCH_LOSS_MAP["test_twice"] is f_two


@pytest.mark.parametrize("name,fn,fragment", [("", f_one, "non-empty"), (3, f_one, "non-empty"),
                                              ("test_bad", 42, "callable")])
def test_bad_registration(name, fn, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PROJ_MAP[name] = fn
    assert "test_bad" not in PROJ_MAP


# -- register_new ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("map_name,registry", [
    ("kd_loss", KD_LOSS_MAP), ("match_loss", MATCH_LOSS_MAP), ("match_Loss", MATCH_LOSS_MAP),
    ("projection", PROJ_MAP), ("weight_scheduler", WEIGHT_SCHEDULER),
    ("temperature_scheduler", TEMPERATURE_SCHEDULER),
])
def test_register_new_every_map(map_name, registry):
    name = f"test_new_{map_name.lower()}"
    register_new(map_name, name, f_one)
    assert registry[name] is f_one
    with pytest.raises(ConfigError, match="already registered"):
        register_new(map_name, name, f_two)
    register_new(map_name, name, f_two, overwrite=True)
    assert registry[name] is f_two


def test_register_new_bad_map_and_non_callable():
    with pytest.raises(ConfigError, match="'kd_loss'.*'match_loss'") as e:
        register_new("match_losses", "x", f_one)
    assert e.value.path == "register_new"
    with pytest.raises(ConfigError, match="callable"):
        register_new("kd_loss", "test_not_callable", "not a function")
    assert "test_not_callable" not in KD_LOSS_MAP


def test_register_new_entry_is_usable_in_configs():
    from brewkit import DistillationConfig

    register_new("match_loss", "test_for_config", f_one)
    cfg = DistillationConfig(intermediate_matches=[
        {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "test_for_config", "weight": 1}])
    assert cfg.intermediate_matches[0].loss == "test_for_config"


# -- unknown names ---------------------------------------------------------------------------------------------
def test_unknown_name_error_is_config_and_key_error_and_lists_closest_first():
    with pytest.raises(ConfigError) as e:
        MATCH_LOSS_MAP["hiden_mse"]
    err = e.value
    assert isinstance(err, KeyError) and isinstance(err, UnknownNameError)
    assert err.path == "MATCH_LOSS_MAP"
    msg = str(err)
    assert msg.startswith("MATCH_LOSS_MAP: unknown match loss 'hiden_mse'")
    listed = msg.split("known: ")[1].split(", ")
    assert listed[0] == "'hidden_mse'"
    assert sorted(listed) == sorted(repr(k) for k in MATCH_LOSS_MAP)  # every known name is listed


@pytest.mark.parametrize("registry,typo,closest", [
    (KD_LOSS_MAP, "kll", "kl"), (PROJ_MAP, "lineer", "linear"), (WEIGHT_SCHEDULER, "linear_decy", "linear_decay"),
    (TEMPERATURE_SCHEDULER, "constnt", "constant"),
])
def test_unknown_names_in_every_registry(registry, typo, closest):
    with pytest.raises(KeyError) as e:
        registry[typo]
    assert registry.name in str(e.value)
    assert str(e.value).split("known: ")[1].startswith(repr(closest))
    with pytest.raises(ConfigError):
        registry.meta(typo)


def test_unhashable_key_is_a_helpful_error_not_type_error():
    with pytest.raises(ConfigError, match="unknown"):
        MATCH_LOSS_MAP[["hidden_mse"]]
    assert ["hidden_mse"] not in MATCH_LOSS_MAP


def test_empty_registry_error():
    r = Registry("EMPTY_MAP", "thing")
    with pytest.raises(ConfigError, match=r"EMPTY_MAP: unknown thing 'x'; known: \(none\)"):
        r["x"]


# -- the built-in presets --------------------------------------------------------------------------------------
def test_required_presets_exist():
    assert {"ce", "mse", "kl"} <= set(KD_LOSS_MAP)
    assert {"attention_mse_sum", "attention_mse", "attention_ce_mean", "attention_ce", "hidden_mse", "cos",
            "pkd", "fsp", "gram", "nst", "mmd"} <= set(MATCH_LOSS_MAP)
    assert {"attention_probs_mse", "attention_probs_ce", "attention_probs_kl"} <= set(MATCH_LOSS_MAP)
    assert {"linear", "relu", "tanh"} <= set(PROJ_MAP)
    assert {"linear_decay", "linear_growth"} <= set(WEIGHT_SCHEDULER)
    assert {"constant", "flsw", "cwsm"} <= set(TEMPERATURE_SCHEDULER)
    assert MATCH_LOSS_MAP["gram"] is MATCH_LOSS_MAP["fsp"]
    assert MATCH_LOSS_MAP["nst"] is MATCH_LOSS_MAP["mmd"]
    for name in ("fsp", "gram", "nst", "mmd"):
        assert MATCH_LOSS_MAP.meta(name)["two_layer"] is True


def test_every_builtin_entry_has_a_description():
    registries = presets.registries()
    assert set(registries) == {r.name for r in ALL_MAPS}
    for name, registry in registries.items():
        described = registry.describe()
        assert [n for n, _ in described] == list(registry)
        for entry, description in described:
            assert description.strip(), f"{name}[{entry!r}] has no description"


def test_register_new_map_names():
    assert set(presets.MAPS) == {"kd_loss", "match_loss", "match_Loss", "projection", "weight_scheduler",
                                 "temperature_scheduler"}


def test_a_snapshot_restores_exactly_the_entries_it_saw():
    saved = MATCH_LOSS_MAP.snapshot()
    before = MATCH_LOSS_MAP.describe()
    MATCH_LOSS_MAP.register("test_snapshot_new", description="temporary")(lambda s, t, mask=None: s.sum())
    del MATCH_LOSS_MAP["hidden_mse"]
    assert "test_snapshot_new" in MATCH_LOSS_MAP and "hidden_mse" not in MATCH_LOSS_MAP
    MATCH_LOSS_MAP.restore(saved)
    assert MATCH_LOSS_MAP.describe() == before
    assert MATCH_LOSS_MAP.meta("hidden_mse") == saved[1]["hidden_mse"]
