"""The construction comparison on world settings other than the default: does the default construction (the one chosen
on dev in `benchmarks/construction_ablation.py`) still beat `labels_only` and the raw-label `baseline` on the primary
neutral set when the world's biases change?

Each setting (`benchmarks/robustness.py` SETTINGS) runs in a fresh copy of the project with its params changed and its
own replicate worlds (seeds the default study never uses): `dvc repro construct` there generates the worlds, audits
them and builds the training sets with the default settings. Then three reward models per world, with the study's
`train.rm` settings and this checkout's pre-trained base: `baseline` (raw labels), `labels_only` (the constructed
labels, nothing else) and `debiased` (the default construction). Per setting: accuracy on `test_neutral` with 95%
intervals (bootstrap over worlds, then pairs), the paired differences, and the reward–length correlation.

    .venv/bin/python benchmarks/construction_robustness.py [--settings strong_length length_annotators] [--worlds 100 101]

Writes reports/bench/construction_robustness.json and .md.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT / "tests"))
from construction_ablation import job  # noqa: E402
from robustness import SETTINGS, setting_params  # noqa: E402
from rm_fixtures import fresh_copy  # noqa: E402
from dt2it_mrm.core import atomic_write, for_world, world_name, write_json  # noqa: E402
from dt2it_mrm.stats import diff_of_means, interval_str, mean_of, paired_bootstrap  # noqa: E402

ARMS = {"baseline": ("data", "train"), "labels_only": ("ablation", "labels_only"), "debiased": ("construct", "out")}


def train_path(p: dict, arm: str, world: str) -> str:
    "The training file of `arm` in world `world` under params `p`."
    kind, key = ARMS[arm]
    if kind == "data": return for_world(p["data"][key], world)
    if kind == "construct": return for_world(p["construct"][key], world)
    return str(Path(for_world(p["construct"]["ablation_dir"], world)) / f"{key}.jsonl")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["strong_length", "length_annotators"], choices=list(SETTINGS))
    ap.add_argument("--worlds", nargs="+", type=int, default=[100, 101])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--out", default="reports/bench/construction_robustness")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="construction_robustness_"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    results, worlds = [], [world_name(w) for w in a.worlds]
    for name in a.settings:
        t0 = time.perf_counter()
        d = fresh_copy(ROOT, work / name)
        p = setting_params(name, a.worlds)
        (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        r = subprocess.run([sys.executable, "-m", "dvc", "repro", "construct"], cwd=d, capture_output=True, text=True, env=env)
        if r.returncode: raise RuntimeError(f"{name}: dvc repro construct failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        sets = {"test_neutral": p["data"]["test_sets"]["test_neutral"]}
        with ProcessPoolExecutor(a.workers) as ex:
            futs = {(arm, w): ex.submit(job, arm, w, p["base"]["seed"], p["train"]["rm"], train_path(p, arm, w), sets, p["base"]["model"], str(d))
                    for arm in ARMS for w in worlds}
            runs = {k: f.result() for k, f in futs.items()}
        correct = lambda m: (np.asarray(m) > 0).astype(float)
        per = [{arm: correct(runs[arm, w]["margins"]["test_neutral"]) for arm in ARMS} for w in worlds]
        cons = [json.loads((d / for_world(p["construct"]["report_dir"], w) / "construct.json").read_text()) for w in worlds]
        results.append({"setting": name, "what": SETTINGS[name][0], "worlds": worlds, "seconds": round(time.perf_counter() - t0),
                        "accuracy": {arm: paired_bootstrap(per, mean_of(arm), seed=0) for arm in ARMS},
                        "debiased_vs_labels_only": paired_bootstrap(per, diff_of_means("debiased", "labels_only"), seed=0),
                        "debiased_vs_baseline": paired_bootstrap(per, diff_of_means("debiased", "baseline"), seed=0),
                        "length_spearman": {arm: float(np.mean([runs[arm, w]["length_spearman"] for w in worlds])) for arm in ARMS},
                        "labels_right": {"raw": float(np.mean([c["label_accuracy"]["raw_majority"] for c in cons])),
                                         "constructed": float(np.mean([c["label_accuracy"]["constructed"] for c in cons]))},
                        "train_s": {arm: float(np.mean([runs[arm, w]["train_s"] for w in worlds])) for arm in ARMS}})
        write_json(ROOT / f"{a.out}.json", {"settings": results})
        print(f"{name}: done in {results[-1]['seconds']} s", flush=True)
    head = ["setting", "what changes", "baseline", "labels_only", "debiased", "debiased − labels_only, points", "debiased − baseline, points",
            "length ρ (baseline / labels_only / debiased)", "labels right (raw → constructed)", "worlds"]
    md = ["# Construction on other world settings", "", "`test_neutral` accuracy, one reward model per arm and world (`train.rm` settings), 95% intervals "
          "from a bootstrap over worlds, then pairs; `debiased` is the default construction (chosen on dev on the default world).", "",
          "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        acc, ls = r["accuracy"], r["length_spearman"]
        md.append("| " + " | ".join([r["setting"], r["what"], *(interval_str(acc[k]) for k in ARMS), interval_str(r["debiased_vs_labels_only"], 100, 1),
                                     interval_str(r["debiased_vs_baseline"], 100, 1), " / ".join(f"{ls[k]:+.3f}" for k in ARMS),
                                     f"{r['labels_right']['raw']:.3f} → {r['labels_right']['constructed']:.3f}", ", ".join(r["worlds"])]) + " |")
    md += ["", "    .venv/bin/python benchmarks/construction_robustness.py " + " ".join(sys.argv[1:])]
    atomic_write(ROOT / f"{a.out}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    if not a.keep: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
