"""Test environment set-up (offline, one thread) and shared fixtures; shared helpers live in helpers.py."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_cli_assets  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A word-level tokenizer directory, a train csv (32 rows, 8 groups of 4) and an eval csv (12 rows)."""
    return make_cli_assets(tmp_path_factory.mktemp("cli_assets"))
