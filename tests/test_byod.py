"""Bring your own data: the example (examples/byod) — a user's LLaMA-Factory files with real JPEG/PNG images of several sizes,
two-image records and system prompts, no annotator votes, a tiny checkpoint in the hub layout — through the whole pipeline with an
HTTP judge on loopback, from a fresh copy; the user's files are read, never written."""
import json
import sys

import yaml

from rm_fixtures import fresh_copy


def test_the_study_runs_on_a_users_own_files_and_never_writes_them(root, tmp_path):
    d = fresh_copy(root, tmp_path / "repo")
    sys.path.insert(0, str(d / "examples/byod"))
    try: from run_example import run_example
    finally: sys.path.pop(0)
    res = run_example(d, timeout=1200)
    assert res["returncode"] == 0, res["stdout"][-6000:] + res["stderr"][-4000:]
    assert res["made"] == {"train": 48, "dev": 16, "test": 24}
    train = res["rows"]["train"]
    assert sum(len(r["images"]) == 2 for r in train) == 8 and any("system" in r for r in train)
    ran = set(res["ran"])
    assert not {"generate", "pretrain_base"} & ran and {"bias_audit", "construct", "train@debiased", "curate@iter1", "report"} <= ran, ran
    assert res["untouched"]  # nothing written, changed or added in the user's folder
    outs = [o["path"] for st in yaml.safe_load((d / "dvc.lock").read_text())["stages"].values() for o in st.get("outs", [])]
    assert not [o for o in outs if o == "userdata" or o.startswith("userdata/")], outs

    con = json.loads((d / "reports/construct/w0/construct.json").read_text())
    assert con["counts"]["n"] == 48 and con["counts"]["asked_judge"] == 48, con["counts"]  # no votes: the judge labels every pair
    assert con["counts"]["n"] == con["counts"]["kept"] + con["counts"]["dropped"]
    log = json.loads((d / "reports/curate/iter1/w0/curate.json").read_text())
    cf = con["debias"]["counterfactual"]  # the training set: the kept labels plus their counterfactual twins, none repeated
    assert cf["added"] + cf["duplicates_dropped"] == cf["other_image"]["added"] and cf["duplicates_dropped"] > 0
    assert log["judge_requests_sent"] > 0 and log["n_in"] == con["counts"]["kept"] + cf["added"]
    m = json.loads((d / "reports/metrics/arms/baseline/w0.json").read_text())
    assert list(m["sets"]) == ["test"] and m["expert"] is None and m["best_of_n"] is None
    study = json.loads((d / "reports/metrics/study.json").read_text())
    assert set(study["summary"]) == {"baseline", "debiased", "iter1"} and study["claims"]["expert"]["verdict"] == "not measured"
    assert study["claims"]["accuracy"]["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert "## The brief's claims" in (d / "reports/results.md").read_text()
    again = res["run"]("repro", "report")
    assert again.returncode == 0 and "Running stage" not in again.stdout
