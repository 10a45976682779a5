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


LONGEST_FIRST = ("test_the_whole_study_runs_on_a_tiny_world", "test_the_study_runs_on_a_users_own_files",
                 "test_pipeline_in_a_fresh_copy")  # minutes each; everything else takes seconds


def pytest_collection_modifyitems(config, items):
    "The few tests that take minutes go first, so xdist's workers start on them and end together, not one waiting on a long test dealt out last."
    rank = lambda it: next((i for i, n in enumerate(LONGEST_FIRST) if it.name.startswith(n)), len(LONGEST_FIRST))
    items.sort(key=rank)
