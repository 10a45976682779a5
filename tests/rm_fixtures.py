"""Shared tiny world and tiny base VLMs for the reward-model tests (imported by test_vlm, test_reward_model, test_score)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(p):
    return [json.loads(l) for l in Path(p).read_text().splitlines()]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    from dt2it_mrm.world import WorldConfig, generate_world
    d = tmp_path_factory.mktemp("rmworld") / "world"
    generate_world(WorldConfig(n_train=40, n_test=12, n_expert=2, n_pretrain=12, n_neutral=12, n_dev=8, n_bon=2), d, seed=0, progress=False)
    return d


@pytest.fixture(scope="session")
def tokenizer(world):
    from dt2it_mrm.vlm import train_tokenizer, world_texts
    return train_tokenizer(world_texts([world / "pretrain.jsonl", world / "train_raw.jsonl"]))


TINY = dict(hidden=32, layers=2, heads=2, vision_hidden=32, vision_layers=1)


def make_base(tokenizer, family, path, seed=0, **sizes):
    from dt2it_mrm.vlm import build_base, save_base
    m, p = build_base(family, tokenizer, seed=seed, **{**TINY, **sizes})
    return save_base(m, p, path)


@pytest.fixture(scope="session")
def base(tokenizer, tmp_path_factory):
    "A tiny random LLaVA checkpoint folder."
    return make_base(tokenizer, "llava", tmp_path_factory.mktemp("base") / "llava")


@pytest.fixture(scope="session")
def qwen_base(tokenizer, tmp_path_factory):
    "A tiny random Qwen2-VL checkpoint folder."
    return make_base(tokenizer, "qwen2_vl", tmp_path_factory.mktemp("base") / "qwen2_vl")


@pytest.fixture(scope="session")
def pairs(world):
    return read_jsonl(world / "train_oracle.jsonl")


def run_py(code: str, *args, timeout=300, **kw):
    "Run Python code in a fresh process (project root on the path); fail with its output if it fails."
    r = subprocess.run([PY, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=kw.pop("env", None) or _env(), **kw)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _env():
    import os
    from dt2it_mrm.core import OFFLINE_ENV
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT)}


def fresh_copy(root: Path, dest: Path) -> Path:
    "The project's tracked and unignored files (no data or reports) copied to `dest`, a new git repository."
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (root / f).is_file() and not f.startswith(("data/", "reports/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(root / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest
