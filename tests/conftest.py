"""Test environment set-up (offline, one thread) and shared fixtures; shared helpers live in helpers.py."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_cli_assets  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _registries_as_found():
    """Every registry is global: whatever a test registers is gone before the next test runs."""
    from brewkit import presets
    from brewkit.layer_maps import LAYER_MAPS
    from brewkit.models import MODEL_BUILDERS
    from brewkit.tasks import TASKS

    registries = [*presets.registries().values(), LAYER_MAPS, MODEL_BUILDERS, TASKS]
    saved = [r.snapshot() for r in registries]
    yield
    for registry, snapshot in zip(registries, saved):
        registry.restore(snapshot)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A word-level tokenizer directory, a train csv (32 rows, 8 groups of 4) and an eval csv (12 rows)."""
    return make_cli_assets(tmp_path_factory.mktemp("cli_assets"))
