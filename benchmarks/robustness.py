"""The study's main comparison — baseline vs debiased vs the final iteration, on the primary (neutral) set — on world
settings other than the default, each with its own replicate worlds (seeds the default study never uses).

Each setting runs in a fresh copy of the project (the tracked files; `data/` and `reports/` left behind) with its
params changed, through the same `dvc repro` as the study, reusing this checkout's pre-trained base (its scenes are
drawn apart from every knob varied here). Only the arms the comparison needs are trained, and the no-image rules
are scored so that the primary set is seen to stay neutral. Results go to reports/bench/robustness.json and .md.

    .venv/bin/python benchmarks/robustness.py [--settings strong_length ...] [--worlds 100 101] [--keep DIR]
"""
import argparse, copy, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dt2it_mrm.core import atomic_write, load_params, write_json  # noqa: E402
from dt2it_mrm.report import fmt_ci  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))
from rm_fixtures import fresh_copy  # noqa: E402  (the copy the pipeline tests run in)


def _annotators(params: dict, replace: dict) -> list[dict]:
    "The default annotators with some replaced by id."
    return [replace.get(a["id"], a) for a in params["generate"]["world"]["annotators"]]


SETTINGS = {  # name -> (what it changes, function(world knobs dict, full params) -> None)
    "mild_length": ("length bias 0.65 (default 0.8)", lambda w, p: w.update(length_bias=0.65)),
    "strong_length": ("length bias 0.92", lambda w, p: w.update(length_bias=0.92)),
    "no_spammer": ("the spammer replaced by an accurate annotator (0.8)",
                   lambda w, p: w.update(annotators=_annotators(p, {"spammer": {"id": "crowd_3", "kind": "accurate", "accuracy": 0.8}}))),
    "length_annotators": ("three of five annotators length-biased (crowd_2 and the spammer become length fans, 0.85)",
                          lambda w, p: w.update(annotators=_annotators(p, {"crowd_2": {"id": "long_fan_2", "kind": "length", "length_pref": 0.85},
                                                                            "spammer": {"id": "long_fan_3", "kind": "length", "length_pref": 0.85}}))),
    "judge_position": ("judge position bias 0.4 (default 0.2)", lambda w, p: w["judge"].update(position_bias=0.4)),
    "tiny_group": ("group shares 0.62/0.25/0.10/0.03 (outline tiny)",
                   lambda w, p: w.update(train_group_shares={"plain": 0.62, "textured": 0.25, "dark": 0.10, "outline": 0.03})),
}
ARMS = ("baseline", "debiased", "iter1", "iter2", "iter3")


def setting_params(name: str, worlds: list[int]) -> dict:
    "The study's params with setting `name` applied, its own worlds, the pre-trained base of this checkout and the comparison's arms."
    p = copy.deepcopy(load_params(ROOT / "params.yaml"))
    SETTINGS[name][1](p["generate"]["world"], p)
    p["base"]["worlds"] = worlds
    p["base"]["model"] = str((ROOT / p["base"]["model"]).resolve())
    p["train"]["arms"] = {a: v for a, v in p["train"]["arms"].items() if a in ARMS}
    return p


def run_setting(name: str, worlds: list[int], work: Path, timeout: int) -> dict:
    "Run the comparison for one setting; its claims and arm summary from the copy's study.json."
    d = fresh_copy(ROOT, work / name)
    (d / "params.yaml").write_text(yaml.safe_dump(setting_params(name, worlds), sort_keys=False))
    t0 = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([sys.executable, "-m", "dvc", "repro", "report"], cwd=d, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode: raise RuntimeError(f"{name}: dvc repro failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    study = json.loads((d / "reports/metrics/study.json").read_text())
    return {"setting": name, "what": SETTINGS[name][0], "worlds": worlds, "seconds": round(time.perf_counter() - t0),
            "claims": study["claims"], "summary": {a: study["summary"][a] for a in ARMS if a in study["summary"]},
            "rules": study["rules"], "curation_label_accuracy": {it: {w: [log["truth"]["label_accuracy_before"], log["truth"]["label_accuracy_after"]]
                                                                      for w, log in ws.items()} for it, ws in study["curation"].items()}}


def markdown(rows: list[dict], primary: str) -> str:
    "The robustness table."
    head = ["setting", "what changes", f"baseline {primary}", f"debiased {primary}", f"iter3 {primary}", "debiased − baseline (points)",
            "iter3 − debiased (points)", f"shortcut rule {primary}", "worlds"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        s = r["summary"]
        out.append("| " + " | ".join([r["setting"], r["what"], fmt_ci(s["baseline"][primary]), fmt_ci(s["debiased"][primary]), fmt_ci(s["iter3"][primary]),
                                       fmt_ci(r["debiased_vs_baseline"], 1), fmt_ci(r["iter3_vs_debiased"], 1), fmt_ci(r["rules"]["shortcut_rule"][primary]),
                                       ", ".join(map(str, r["worlds"]))]) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--worlds", nargs="+", type=int, default=[100, 101])
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--out", default="reports/bench/robustness")
    a = ap.parse_args()
    if not (ROOT / load_params(ROOT / "params.yaml")["base"]["model"]).is_dir(): sys.exit("no pre-trained base: run `dvc repro pretrain_base` first")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="robustness_"))
    out_json = ROOT / f"{a.out}.json"
    done = {r["setting"]: r for r in (json.loads(out_json.read_text())["settings"] if out_json.exists() else [])}
    primary = load_params(ROOT / "params.yaml")["report"]["primary_set"]
    for name in a.settings:
        if name in done and done[name]["worlds"] == a.worlds: print(f"{name}: kept from {out_json}"); continue
        print(f"{name}: {SETTINGS[name][0]} ...", flush=True)
        r = run_setting(name, a.worlds, work, a.timeout)
        from dt2it_mrm.report import _ci, gain_ci  # the gains need the per-pair scores of the copy
        sc = {arm: {p.stem: json.loads(p.read_text()) for p in sorted((work / name / "data/eval" / arm).glob("*.json"))} for arm in ARMS}
        r["debiased_vs_baseline"] = _ci(gain_ci(sc, "debiased", "baseline", primary), 100)
        r["iter3_vs_debiased"] = _ci(gain_ci(sc, "iter3", "debiased", primary), 100)
        r["iter3_vs_baseline"] = _ci(gain_ci(sc, "iter3", "baseline", primary), 100)
        done[name] = r
        write_json(out_json, {"primary_set": primary, "settings": [done[k] for k in SETTINGS if k in done]})
        print(f"{name}: done in {r['seconds']} s; debiased − baseline {fmt_ci(r['debiased_vs_baseline'], 1)} points", flush=True)
    rows = [done[k] for k in SETTINGS if k in done]
    atomic_write(ROOT / f"{a.out}.md", "# Robustness of the main comparison\n\n`python benchmarks/robustness.py`; 95% intervals over worlds "
                 "and pairs (paired bootstrap).\n\n" + markdown(rows, primary))
    print(markdown(rows, primary))
    if not a.keep: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
