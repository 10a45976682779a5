"""Bring your own data: the example (examples/byod) — a user's LLaMA-Factory files with real JPEG/PNG images of several sizes,
two-image records and system prompts, no annotator votes, a tiny checkpoint in the hub layout — through the whole pipeline with an
HTTP judge on loopback, from a fresh copy; the user's files are read, never written."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from rm_fixtures import fresh_copy

BIN = Path(sys.executable).parent


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_study_runs_on_a_users_own_files_and_never_writes_them(root, tmp_path, monkeypatch):
    d = fresh_copy(root, tmp_path / "repo")
    monkeypatch.syspath_prepend(str(d / "examples/byod"))
    from fake_judge import serve
    from make_example import make_example
    server = serve(0); url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.chdir(d)
    made = make_example("userdata", url)
    assert {s: len(r) for s, r in made.items()} == {"train": 48, "dev": 16, "test": 24}
    assert sum(len(r["images"]) == 2 for r in made["train"]) == 8 and any("system" in r for r in made["train"])
    (d / "params.yaml").write_text((d / "userdata/params.yaml").read_text())
    before = _digest(d / "userdata")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    run = lambda *a: subprocess.run([str(BIN / "dvc"), *a], cwd=d, env=env, capture_output=True, text=True, timeout=1200)
    r = run("repro", "report")
    server.shutdown()
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    ran = {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage '")}
    assert not {"generate", "pretrain_base"} & ran and {"bias_audit", "construct", "train@debiased", "curate@iter1", "report"} <= ran, ran
    assert _digest(d / "userdata") == before  # nothing written, changed or added in the user's folder
    outs = [o["path"] for st in yaml.safe_load((d / "dvc.lock").read_text())["stages"].values() for o in st.get("outs", [])]
    assert not [o for o in outs if o == "userdata" or o.startswith("userdata/")], outs

    con = json.loads((d / "reports/construct/w0/construct.json").read_text())
    assert con["counts"]["n"] == 48 and con["counts"]["asked_judge"] == 48, con["counts"]  # no votes: the judge labels every pair
    log = json.loads((d / "reports/curate/iter1/w0/curate.json").read_text())
    assert log["judge_requests_sent"] > 0 and log["n_in"] == con["counts"]["kept"]
    m = json.loads((d / "reports/metrics/arms/baseline/w0.json").read_text())
    assert list(m["sets"]) == ["test"] and m["expert"] is None and m["best_of_n"] is None
    study = json.loads((d / "reports/metrics/study.json").read_text())
    assert set(study["summary"]) == {"baseline", "debiased", "iter1"} and study["claims"]["expert"]["verdict"] == "not measured"
    assert study["claims"]["accuracy"]["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert "## The brief's claims" in (d / "reports/results.md").read_text()
    again = run("repro", "report")
    assert again.returncode == 0 and "Running stage" not in again.stdout
