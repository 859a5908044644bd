"""brewkit.validation: the public validators and the config base every section uses."""
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from brewkit.errors import ConfigError
from brewkit.presets import KD_LOSS_MAP
from brewkit.validation import (
    NONE,
    ConfigBase,
    check_bool,
    check_choice,
    check_int,
    check_keys,
    check_number,
    check_registered,
    is_int,
    is_number,
    safe_load,
)


def test_type_tests_reject_bool_and_accept_numpy():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_number(2.5) and is_number(np.float32(1)) and is_number(7) and not is_number(False)
    assert not is_number("1")


def test_check_int():
    assert check_int(np.int32(4), "n", minimum=1) == 4 and type(check_int(np.int32(4), "n")) is int
    assert check_int(None, "n", allow_none=True) is None
    with pytest.raises(ConfigError) as e:
        check_int(0, "training.seed", minimum=1)
    assert e.value.path == "training.seed" and e.value.message == "must be an integer >= 1, got 0"
    with pytest.raises(ConfigError, match=r"must be an integer or null, got True"):
        check_int(True, "n", allow_none=True)
    with pytest.raises(ConfigError, match="must be an integer, got None"):
        check_int(None, "n")


def test_check_number():
    assert check_number(1, "w") == 1 and type(check_number(1, "w")) is int
    assert type(check_number(np.float64(0.5), "w")) is float
    for bad, msg in [(0, "must be a positive number, got 0"), (float("inf"), "must be a finite number, got inf"),
                     ("2", "must be a positive number, got '2'")]:
        with pytest.raises(ConfigError) as e:
            check_number(bad, "temperature", positive=True)
        assert e.value.message == msg and e.value.path == "temperature"
    with pytest.raises(ConfigError, match="must be a finite number, got nan"):
        check_number(float("nan"), "w")
    assert check_number(-2.0, "w") == -2.0


def test_check_bool_choice_registered():
    assert check_bool(False, "fp16") is False
    with pytest.raises(ConfigError, match="fp16: must be true or false, got 1"):
        check_bool(1, "fp16")
    assert check_choice("disk", "mode", ["memory", "disk"]) == "disk"
    with pytest.raises(ConfigError, match="mode: must be one of 'memory', 'disk'; got 'ram'"):
        check_choice("ram", "mode", ["memory", "disk"])
    assert check_registered(KD_LOSS_MAP, "ce", "kd_loss_type") == "ce"
    assert check_registered(KD_LOSS_MAP, None, "x", none_ok=True) == NONE
    with pytest.raises(ConfigError) as e:
        check_registered(KD_LOSS_MAP, "cee", "kd_loss_type")
    assert e.value.path == "kd_loss_type" and "'ce'" in e.value.message
    with pytest.raises(ConfigError, match="must be a .* name \\(a string\\), got 3"):
        check_registered(KD_LOSS_MAP, 3, "kd_loss_type")


def test_check_keys():
    check_keys({"a": 1}, ["a", "b"], "sec")
    with pytest.raises(ConfigError) as e:
        check_keys({"temprature": 1}, ["temperature", "hard_label_weight"], "distillation")
    assert e.value.path == "distillation.temprature"
    assert e.value.message == "unknown key (did you mean 'temperature'?); allowed: temperature, hard_label_weight"
    with pytest.raises(ConfigError) as e:
        check_keys([1], ["a"], "data")
    assert (e.value.path, e.value.message) == ("data", "must be a mapping, got list")
    with pytest.raises(ConfigError) as e:
        check_keys("x", ["a"])
    assert e.value.path is None


@dataclass
class Point(ConfigBase):
    x: int = 1
    tags: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.x = check_int(self.x, "x", minimum=0)


def test_config_base_round_trips(tmp_path):
    p = Point(x=3, tags=[(1, 2)])
    assert p.to_dict() == {"x": 3, "tags": [[1, 2]]}
    assert Point.from_yaml(p.to_yaml()) == Point(x=3, tags=[[1, 2]])
    f = tmp_path / "p.json"
    f.write_text(p.to_json_string())
    assert Point.from_json_file(str(f)).x == 3
    assert p.replace(x=5).x == 5 and p.x == 3
    assert str(Point()) == "x : 1\ntags : []"
    with pytest.raises(ConfigError) as e:
        Point.from_dict({"y": 1})
    assert e.value.path == "y"
    with pytest.raises(ConfigError, match="x: must be an integer >= 0, got -1"):
        p.replace(x=-1)


def test_safe_load_reads_yaml_1_2_floats_and_builds_no_objects():
    assert safe_load("lr: 2e-4\nb: 1E5\nc: 1.5\nd: '3e2'") == {"lr": 2e-4, "b": 1e5, "c": 1.5, "d": "3e2"}
    import yaml

    with pytest.raises(yaml.YAMLError):
        safe_load("!!python/object/apply:os.system ['true']")
