import os
from pathlib import Path

import pytest

from dt2it_mrm.core import OFFLINE_ENV
from rm_fixtures import base, pairs, qwen_base, tokenizer, world  # noqa: F401  (registered once: session fixtures built once)

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    return ROOT
