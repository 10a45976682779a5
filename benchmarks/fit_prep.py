"""What a reward-model training spends before its first step, per 1,000 gold pairs: encoding (images to pixel tensors,
chat template and tokens), image features, position ids and the implicit reward's reference pass (the frozen base on a
blank image), each timed `--repeats` times in one process (medians), one torch thread as in the study.

A training of the study (2,000 pairs, 3 epochs, about 55 s) spends about a quarter of its time here, so this is part of what one
training costs (`reports/bench/oracle_dev.md`'s cost rule). To compare two versions of the library, run the same script
against each checkout under its own `--label`; the runs are kept side by side in one JSON:

    .venv/bin/python benchmarks/fit_prep.py --label after
    git worktree add ../before <commit> && cp benchmarks/fit_prep.py ../before/benchmarks/ && \
      ln -s $PWD/data/world $PWD/data/base ../before/data/ && \
      (cd ../before && $OLDPWD/.venv/bin/python benchmarks/fit_prep.py --label before --out $OLDPWD/reports/bench/fit_prep.json)

Timings on a shared machine move by 10-30% from one process to the next: run the two labels alternately, more than once.
Writes reports/bench/fit_prep.json (runs by label; each part's seconds per 1,000 pairs; the library commit it ran).
"""
import argparse, json, platform, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    import torch
    from dt2it_mrm.core import load_params, set_offline, write_json
    from dt2it_mrm.reward_model import BLANK, PairData, RMConfig, blank_tensors, build_reward_model, features_by_key, reference_logps, row_positions_of
    from dt2it_mrm.vlm import load_processor
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True); ap.add_argument("--pairs", type=int, default=1000); ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="data/world/w0/train_oracle.jsonl"); ap.add_argument("--out", default=str(ROOT / "reports/bench/fit_prep.json"))
    a = ap.parse_args(); set_offline(); torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml"); cfg = RMConfig.from_params(params["train"]["rm"])
    recs = [json.loads(l) for l in (ROOT / a.data).read_text().splitlines()][: a.pairs]
    proc = load_processor(ROOT / params["base"]["model"], cfg.min_pixels, cfg.max_pixels)
    rm = build_reward_model(ROOT / params["base"]["model"], cfg)
    times = {k: [] for k in ("encode", "image features", "position ids", "reference pass")}
    for _ in range(a.repeats):
        t = time.perf_counter(); data = PairData(proc, recs, blank_size=cfg.blank_size, max_length=cfg.max_length); times["encode"].append(time.perf_counter() - t)
        t = time.perf_counter(); feats = features_by_key(rm, data, {BLANK: blank_tensors(proc, cfg.blank_size)}); times["image features"].append(time.perf_counter() - t)
        t = time.perf_counter(); data.positions = row_positions_of(rm, data); times["position ids"].append(time.perf_counter() - t)
        t = time.perf_counter(); reference_logps(rm, data, feats); times["reference pass"].append(time.perf_counter() - t)
    per_k = {k: statistics.median(v) * 1000 / len(recs) for k, v in times.items()}
    git = lambda *c: subprocess.run(["git", *c], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") + ("+uncommitted" if git("status", "--porcelain", "dt2it_mrm") else "")  # the library that ran
    out = Path(a.out); old = json.loads(out.read_text()) if out.exists() else {}
    runs = old.get("runs", {}) | {a.label: {"commit": commit, "pairs": len(recs), "repeats": a.repeats,
                                            "s_per_1000_pairs": per_k, "total_s_per_1000_pairs": sum(per_k.values()), "runs_s": times}}
    res = {"data": a.data, "cpu": platform.processor() or platform.machine(), "torch_threads": 1, "runs": runs}
    if "before" in runs and "after" in runs:
        res["speedup_total"] = runs["before"]["total_s_per_1000_pairs"] / runs["after"]["total_s_per_1000_pairs"]
        res["speedup_by_part"] = {k: runs["before"]["s_per_1000_pairs"][k] / v for k, v in runs["after"]["s_per_1000_pairs"].items()}
    write_json(out, res)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"} | {"this_run": runs[a.label]["s_per_1000_pairs"]}, indent=1))


if __name__ == "__main__":
    main()
