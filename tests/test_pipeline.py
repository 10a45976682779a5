"""The stage runner and the DVC pipeline: declared params only; the data stages, then the whole study on a tiny world, from a
fresh copy, rerunning only what a change reaches."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dt2it_mrm.core import run_stage, stage_params, world_name, world_runs
from rm_fixtures import fresh_copy

BIN = Path(sys.executable).parent


def test_generate_declares_exactly_its_notebook_parameters(root):
    import papermill as pm
    declared = stage_params("generate", root / "dvc.yaml", root / "params.yaml")
    runs = world_runs({k: v for k, v in declared.items() if k != "repro"})
    assert [w for w, _ in runs] == [world_name(s) for s in declared["worlds"]] and len(runs) >= 3
    assert set(runs[0][1]) == set(pm.inspect_notebook(str(root / "nbs/stages/generate.ipynb")))
    assert runs[1][1]["out_dir"] == f"data/world/{runs[1][0]}" and runs[1][1]["seed"] == declared["worlds"][1]


def _notebook(stage: dict, name: str) -> str:
    m = re.search(r"--nb\s+(\S+)", stage.get("do", stage)["cmd"])
    return m.group(1) if m else f"nbs/stages/{name}.ipynb"


def test_every_stage_notebook_matches_its_declared_params(root):
    import papermill as pm
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name in stages:
        nb = root / _notebook(stages[name], name)
        assert nb.exists(), f"stage {name} has no notebook {nb}"
        cmd = stages[name].get("do", stages[name])["cmd"]
        # a foreach item's values reach the notebook as `-p NAME VALUE` extras; the runner consumes n_worlds and base.repro,
        # and fills `seed` (and `world_id`) of a stage fanned out over base.worlds
        extra = set(re.findall(r"-p\s+(\w+)", cmd)) - {"n_worlds"}
        declared = set(stage_params(name, root / "dvc.yaml", root / "params.yaml")) - {"repro"}
        filled = {"seed", "world_id"} if "worlds" in declared else set()
        got = (declared - {"worlds"}) | extra
        cell = set(pm.inspect_notebook(str(nb)))
        assert got == cell - filled, (name, got ^ (cell - filled))
        assert "seed" in cell or "worlds" not in declared, name


NAMES_ONLY = {("report", "arms")}  # the report reads only the arms' names, to leave out older results of arms no longer trained


def test_every_world_path_in_params_lies_in_a_declared_dependency_or_output(root):
    "A `{world}` path cannot be interpolated into dvc.yaml, so its folder must be declared there by hand."
    from dt2it_mrm.core import get_param
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    def strings(v):
        if isinstance(v, str): yield v
        elif isinstance(v, dict): yield from (s for x in v.values() for s in strings(x))
        elif isinstance(v, list): yield from (s for x in v for s in strings(x))
    def resolve(text, key, item):
        text = text.replace("${key}", str(key))
        text = re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), text)
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(get_param(params, m.group(1))), text)
    checked = 0
    for name, st in stages.items():
        d = st.get("do", st)
        items = get_param(params, st["foreach"][2:-1]).items() if "foreach" in st else [(None, {})]
        declared = stage_params(name, root / "dvc.yaml", root / "params.yaml")
        declared = {k: v for k, v in declared.items() if (name, k) not in NAMES_ONLY}
        for key, item in items:
            folders = [resolve(str(x if isinstance(x, str) else next(iter(x))), key, item) for x in (d.get("deps") or []) + (d.get("outs") or [])]
            used = {k: v for k, v in item.items() if f"${{item.{k}}}" in d["cmd"]}  # the item fields the stage reads
            for p in [p for p in [*strings(declared), *strings(used)] if "{world}" in p]:
                head = p.split("{world}")[0].rstrip("/")
                assert any(head == f or head.startswith(f + "/") for f in folders), (name, key, p, folders)
                checked += 1
    assert checked > 20

def test_a_stage_fans_out_over_worlds_in_parallel_with_pinned_kernels(tmp_path):
    "Two worlds, two processes: each run gets its world's seed and paths, and the pinned thread count (solo_threads alone)."
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n")
    (tmp_path / "params.yaml").write_text("base: {worlds: [3, 5], repro: {isa: null, threads: 1, solo_threads: 2}}\ns: {out: 'o/{world}.txt'}\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    params:\n    - base.worlds\n    - base.repro\n    - s\n")
    nb = tmp_path / "nbs/stages/s.ipynb"; nb.parent.mkdir(parents=True)
    par = {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": "seed = 0\nworld_id = 'w0'\nout = ''\n", "outputs": [], "execution_count": None}
    body = {"cell_type": "code", "id": "b", "metadata": {}, "outputs": [], "execution_count": None,
            "source": "import os, pathlib\np = pathlib.Path(out); p.parent.mkdir(exist_ok=True)\np.write_text(f'{seed} {world_id} {os.environ[\"OMP_NUM_THREADS\"]}')\n"}
    nb.write_text(json.dumps({"cells": [par, body], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    done = run_stage("s", root=tmp_path, kernel="python3", workers=2)
    assert sorted(p.name for p in done) == ["w3.ipynb", "w5.ipynb"] and all(p.parent.name == "s" for p in done)
    assert (tmp_path / "o/w3.txt").read_text() == "3 w3 1" and (tmp_path / "o/w5.txt").read_text() == "5 w5 1"
    run_stage("s", root=tmp_path, kernel="python3", extra={"n_worlds": 1})  # one process: solo_threads, the other core not left idle
    assert (tmp_path / "o/w3.txt").read_text() == "3 w3 2"


def test_runner_refuses_undeclared_parameters(tmp_path):
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n")
    (tmp_path / "params.yaml").write_text("base: {seed: 1}\ns: {a: 2}\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    params:\n    - base.seed\n")
    nb = tmp_path / "nbs/stages/s.ipynb"; nb.parent.mkdir(parents=True)
    cell = {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": "seed = 0\na = 1\n", "outputs": [], "execution_count": None}
    nb.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(ValueError, match=r"in the cell but not declared: \['a'\]"):
        run_stage("s", root=tmp_path)


def test_a_kernel_that_dies_at_start_is_started_again_and_other_errors_are_not_retried(tmp_path, monkeypatch):
    "Kernels started at once can race for a port; the one that loses dies before any cell runs, so the runner starts it again."
    import papermill
    from dt2it_mrm import core
    monkeypatch.setattr(core.random, "uniform", lambda a, b: 0.0)
    calls, out = [], tmp_path / "o.ipynb"
    def flaky(nb, o, **kw):
        calls.append(o)
        if len(calls) < 3: raise RuntimeError("Kernel died before replying to kernel_info")
        Path(o).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    assert core._execute("in.ipynb", str(out), {}, "k", str(tmp_path), {}, False) == str(out) and len(calls) == 3
    calls.clear()
    with pytest.raises(RuntimeError, match="kernel_info"):  # every start dies: the error reaches the caller
        core._execute("in.ipynb", str(out), {}, "k", str(tmp_path), {}, False, tries=2)
    assert len(calls) == 2
    def broken(nb, o, **kw): calls.append(o); raise RuntimeError("a cell failed")
    monkeypatch.setattr(papermill, "execute_notebook", broken); calls.clear()
    with pytest.raises(RuntimeError, match="a cell failed"):  # a notebook that started and failed is never run twice
        core._execute("in.ipynb", str(out), {}, "k", str(tmp_path), {}, False)
    assert len(calls) == 1


def _tiny_copy(root: Path, tmp_path: Path, timeout: int, judge_probe: int, **world):
    "A fresh copy on a tiny world: its folder, its params, `run(*dvc_args)` and `ran(result)` (the stages a run ran)."
    d = fresh_copy(root, tmp_path / "repo")
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["base"]["worlds"] = [0, 1]
    params["generate"]["world"].update(world)
    params["bias_audit"].update(folds=2, judge_probe=judge_probe)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    run = lambda *a: subprocess.run([str(BIN / "dvc"), *a], cwd=d, env=env, capture_output=True, text=True, timeout=timeout)
    ran = lambda r: {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage '")}
    return d, params, run, ran


def _write(d: Path, params: dict):
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_pipeline_in_a_fresh_copy_reruns_only_what_changed(root, tmp_path):
    d, params, run, ran = _tiny_copy(root, tmp_path, 600, 100, **TINY_WORLD, n_train=300, n_test=40)
    _write(d, params)
    r = run("repro", "construct")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ran(r) == {"generate", "bias_audit", "construct"}
    for w in ("w0", "w1"):  # both replicate worlds, each with its own executed notebook
        stats = json.loads((d / f"reports/world/{w}/stats.json").read_text())
        assert stats["all_ok"] and stats["counts"]["train_raw"] == 300
        assert (d / f"reports/stages/generate/{w}.ipynb").exists() and (d / f"data/construct/{w}/train.jsonl").exists()
    assert (d / "data/world/w0/train_raw.jsonl").read_text() != (d / "data/world/w1/train_raw.jsonl").read_text()
    again = run("repro", "construct")
    assert again.returncode == 0 and ran(again) == set()  # nothing changed: nothing runs
    params["construct"]["ds_confidence"] = 0.9
    _write(d, params)
    changed = run("repro", "construct")
    assert changed.returncode == 0 and ran(changed) == {"construct"}  # only the stage whose params changed


STUDY = ("generate", "bias_audit", "construct", "pretrain_base", "score_reference", "train", "curate", "evaluate", "evaluate_rule", "report")
TINY_WORLD = dict(n_expert=4, n_pretrain=10, n_neutral=40, n_dev=20, n_bon=4)


def test_the_whole_study_runs_on_a_tiny_world_and_a_loop_param_reruns_only_what_follows(root, tmp_path):
    d, params, run, ran = _tiny_copy(root, tmp_path, 1500, 60, **{**TINY_WORLD, "n_pretrain": 40}, n_train=120, n_test=24)
    params["pretrain_base"]["arch"].update(hidden=32, heads=2, vision_hidden=32, vision_layers=1)
    params["pretrain_base"]["pretrain"].update(epochs=1, val_images=4, eval_every=1000)
    params["pretrain_base"]["min_seeing_gap"] = -1.0  # one epoch on 40 scenes cannot learn to see
    params["train"]["rm"].update(lora_r=4, epochs=1, batch_size=8)
    arms = params["train"]["arms"]
    params["train"]["arms"] = {"oracle": arms["oracle"], "baseline": arms["baseline"] | {"ensemble": 2},
                               "debiased": arms["debiased"], "iter1": arms["iter1"], "labels_only": arms["labels_only"]}
    params["report"]["n_boot"] = 200
    params["curate"]["iterations"] = {"iter1": params["curate"]["iterations"]["iter1"]}
    _write(d, params)
    r = run("repro")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    assert {s.split("@")[0] for s in ran(r)} == set(STUDY)
    study = json.loads((d / "reports/metrics/study.json").read_text())
    assert set(study["summary"]) == {"oracle", "baseline", "debiased", "iter1", "labels_only"} and set(study["rules"]) == {"shortcut_rule", "longer"}
    assert study["summary"]["iter1"]["worlds"] == 2 and study["summary"]["labels_only"]["worlds"] == 1  # an ablation arm runs on one world
    assert study["claims"]["worlds"] == 2 and study["claims"]["accuracy"]["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert all(study["curation"]["iter1"][w]["n_in"] > 0 for w in ("w0", "w1")) and "## The brief's claims" in (d / "reports/results.md").read_text()
    loop = study["loop"]["iterations"]["iter1"]  # label accuracy measured from the text in both worlds, and every ablation ran
    assert len(loop["before"]) == len(loop["after"]) == 2 and all(0.5 < x <= 1 for x in loop["before"] + loop["after"])
    assert set(study["loop"]["ablations"]) == {"full", *params["curate"]["ablations"]}
    fd = study["loop"]["final_vs_debiased"]
    assert fd["low"] <= fd["estimate"] <= fd["high"] and "against `debiased`" in (d / "reports/results.md").read_text()
    cg = study["construction_gain"]  # the constructed set against the raw labels (2 worlds) and against its own labels alone (1 world)
    assert (cg["baseline"]["n_worlds"], cg["labels_only"]["n_worlds"]) == (2, 1) and "`debiased` (the constructed set, no curation) against `baseline`" in (d / "reports/results.md").read_text()
    assert all(study["curation"]["iter1"][w]["score"]["in_sample"] == 0 for w in ("w0", "w1"))  # cross-fitted: every pair scored out of fold
    arm_metrics = lambda a, w: json.loads((d / f"reports/metrics/arms/{a}/{w}.json").read_text())
    assert all(arm_metrics(a, w)["reference_from"] == f"data/reference/{w}.json" for a in ("oracle", "baseline", "iter1") for w in ("w0", "w1"))  # the table, not a pass per arm
    assert ran(run("repro")) == set()
    curated = (d / "data/curate/iter1/w0/train.jsonl").read_bytes()
    params["curate"]["loop"]["flip_above"] = 0.0  # flip every pair: any posterior P(wrong) exceeds 0
    _write(d, params)
    changed = run("repro")
    assert changed.returncode == 0, changed.stdout[-5000:] + changed.stderr[-5000:]
    assert (d / "data/curate/iter1/w0/train.jsonl").read_bytes() != curated
    assert ran(changed) == {"curate@iter1", "train@iter1", "evaluate@iter1", "report"}  # nothing upstream, nothing beside
