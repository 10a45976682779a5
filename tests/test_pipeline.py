"""The stage runner and the DVC pipeline: declared params only; the data stages, then the whole study on a tiny world, from a
fresh copy, rerunning only what a change reaches."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dt2it_mrm.core import run_stage, stage_params

BIN = Path(sys.executable).parent


def test_generate_declares_exactly_its_notebook_parameters(root):
    import papermill as pm
    declared = stage_params("generate", root / "dvc.yaml", root / "params.yaml")
    assert set(declared) == set(pm.inspect_notebook(str(root / "nbs/stages/generate.ipynb")))
    assert declared["out_dir"] == "data/world" and "seed" in declared


def test_every_stage_notebook_matches_its_declared_params(root):
    import papermill as pm
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name in stages:
        nb = root / f"nbs/stages/{name}.ipynb"
        assert nb.exists(), f"stage {name} has no notebook {nb}"
        cmd = stages[name].get("do", stages[name])["cmd"]
        # a foreach item's values reach the notebook as `-p NAME VALUE` extras on the command line
        extra = set(re.findall(r"-p\s+(\w+)", cmd))
        assert set(stage_params(name, root / "dvc.yaml", root / "params.yaml")) | extra == set(pm.inspect_notebook(str(nb))), name


def test_runner_refuses_undeclared_parameters(tmp_path):
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n")
    (tmp_path / "params.yaml").write_text("base: {seed: 1}\ns: {a: 2}\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    params:\n    - base.seed\n")
    nb = tmp_path / "nbs/stages/s.ipynb"; nb.parent.mkdir(parents=True)
    cell = {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": "seed = 0\na = 1\n", "outputs": [], "execution_count": None}
    nb.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(ValueError, match=r"in the cell but not declared: \['a'\]"):
        run_stage("s", root=tmp_path)


def _fresh_copy(root: Path, dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (root / f).is_file() and not f.startswith(("data/", "reports/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(root / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def _tiny_copy(root: Path, tmp_path: Path, timeout: int, judge_probe: int, **world):
    "A fresh copy on a tiny world: its folder, its params, `run(*dvc_args)` and `ran(result)` (the stages a run ran)."
    bench = root.parent / "shared" / "benchmarks"
    if not (bench / "vl_rewardbench.jsonl").exists(): pytest.skip(f"no benchmark text at {bench}")
    d = _fresh_copy(root, tmp_path / "repo")
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["generate"]["world"].update(world)
    params["bias_audit"].update(folds=2, judge_probe=judge_probe,
                                benchmarks={k: str(bench / Path(v).name) for k, v in params["bias_audit"]["benchmarks"].items()})
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    run = lambda *a: subprocess.run([str(BIN / "dvc"), *a], cwd=d, env=env, capture_output=True, text=True, timeout=timeout)
    ran = lambda r: {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage '")}
    return d, params, run, ran


def _write(d: Path, params: dict):
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_pipeline_in_a_fresh_copy_reruns_only_what_changed(root, tmp_path):
    d, params, run, ran = _tiny_copy(root, tmp_path, 600, 100, n_train=300, n_test=40, n_expert=4, n_pretrain=10)
    _write(d, params)
    r = run("repro", "construct")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ran(r) == {"generate", "bias_audit", "construct"}
    stats = json.loads((d / "reports/world/stats.json").read_text())
    assert stats["all_ok"] and stats["counts"]["train_raw"] == 300
    assert (d / "reports/stages/generate.ipynb").exists() and (d / "data/construct/train.jsonl").exists()
    again = run("repro", "construct")
    assert again.returncode == 0 and ran(again) == set()  # nothing changed: nothing runs
    params["construct"]["ds_confidence"] = 0.9
    _write(d, params)
    changed = run("repro", "construct")
    assert changed.returncode == 0 and ran(changed) == {"construct"}  # only the stage whose params changed


STUDY = ("generate", "bias_audit", "construct", "pretrain_base", "train", "curate", "evaluate", "report")


def test_the_whole_study_runs_on_a_tiny_world_and_a_loop_param_reruns_only_what_follows(root, tmp_path):
    d, params, run, ran = _tiny_copy(root, tmp_path, 900, 60, n_train=120, n_test=24, n_expert=4, n_pretrain=40)
    params["pretrain_base"]["arch"].update(hidden=32, heads=2, vision_hidden=32, vision_layers=1)
    params["pretrain_base"]["pretrain"].update(epochs=1, val_images=4, eval_every=1000)
    params["pretrain_base"]["min_seeing_gap"] = -1.0  # one epoch on 40 scenes cannot learn to see
    params["train"]["rm"].update(lora_r=4, epochs=1, batch_size=8)
    arms = params["train"]["arms"]
    params["train"]["arms"] = {"oracle": arms["oracle"], "baseline": arms["baseline"] | {"ensemble": 2},
                               "debiased": arms["debiased"], "iter1": arms["iter1"]}
    params["curate"]["iterations"] = {"iter1": params["curate"]["iterations"]["iter1"]}
    _write(d, params)
    r = run("repro")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    assert {s.split("@")[0] for s in ran(r)} == set(STUDY)
    study = json.loads((d / "reports/metrics/study.json").read_text())
    assert {"oracle", "baseline", "debiased", "iter1", "baseline@seed0", "baseline@seed1"} <= set(study["arms"])
    assert study["curation"]["iter1"]["n_in"] > 0 and "## The brief's claims" in (d / "reports/results.md").read_text()
    assert ran(run("repro")) == set()
    curated = (d / "data/curate/iter1/train.jsonl").read_bytes()
    params["curate"]["loop"]["flip_share"] = 1.0  # flip every pair the ensemble rejects
    _write(d, params)
    changed = run("repro")
    assert changed.returncode == 0, changed.stdout[-5000:] + changed.stderr[-5000:]
    assert (d / "data/curate/iter1/train.jsonl").read_bytes() != curated
    assert ran(changed) == {"curate@iter1", "train@iter1", "evaluate@iter1", "report"}  # nothing upstream, nothing beside
