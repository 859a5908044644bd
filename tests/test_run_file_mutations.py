"""Random mutations of a valid run file give a ConfigError naming the mutated section, or a valid run that
loads again to the same run; never another exception."""
import copy
import re

from helpers import run_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brewkit.errors import ConfigError
from brewkit.runfile import load_run

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.lists(st.integers(-2, 6), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(0, 3), max_size=2))


def _paths(node, prefix=()):
    """Every (path to a value) in the nested dict/list structure."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(d, path, action, value):
    if not path:
        return value if action == "replace" else d
    parent = d
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "replace":
        parent[key] = value
    elif action == "delete":
        del parent[key]
    elif action == "add" and isinstance(parent[key], dict):
        parent[key]["unexpected_key"] = value
    return d


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True, database=None)
@given(data=st.data())
def test_mutated_run_files_give_config_errors_or_valid_runs(assets, tmp_path, data):
    base = run_dict(assets, tmp_path / "out")
    paths = list(_paths(base))
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    value = data.draw(VALUES)
    mutated = _mutate(copy.deepcopy(base), path, action, value)
    try:
        run = load_run(mutated)
    except ConfigError as e:
        # the error names the section that was mutated (a root that is no mapping: the top level)
        section = str(path[0]) if path else "(top level)"
        assert e.path is not None and re.split(r"[.\[]", e.path)[0] == section, (path, action, value, str(e))
        return
    # a valid run keeps the file as given, and loading that again gives the same run
    assert run.source == mutated
    assert load_run(run.source) == run
