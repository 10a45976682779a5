"""Ensemble scoring as curation does it: every member of a cross-fitted ensemble scores the same items (`load_ensemble`
+ `loop.EnsembleScores`), with the implicit reward's reference (the frozen base on a blank image) computed once per batch
and shared by the members on that base, against each member computing its own. Same items, one run, medians; the scores
must be equal to the bit. Writes reports/bench/ensemble_scoring.json.

    .venv/bin/python benchmarks/ensemble_scoring.py [--model data/models/debiased/w0] [--data data/construct/w0/train.jsonl] [--n 500]
"""
import argparse, json, platform, time
from pathlib import Path

import numpy as np
import torch

from dt2it_mrm.core import set_offline, write_json
from dt2it_mrm.loop import EnsembleScores
from dt2it_mrm.reward_model import pair_items
from dt2it_mrm.score import load_ensemble


def timed(members, items) -> tuple[float, np.ndarray]:
    "Seconds for the ensemble to score `items` once (curation's path), and the scores (members x items)."
    t0 = time.perf_counter(); s = EnsembleScores(members).scores(items)
    return time.perf_counter() - t0, s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/debiased/w0", help="an ensemble folder (member_i/)")
    ap.add_argument("--data", default="data/construct/w0/train.jsonl", help="pairs whose answers are scored (curation scores its training set)")
    ap.add_argument("--n", type=int, default=500, help="pairs (2 items each)")
    ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--out", default="reports/bench/ensemble_scoring.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: as a study stage runs)")
    a = ap.parse_args(); set_offline(); torch.set_num_threads(a.threads)
    items = pair_items([json.loads(l) for l in Path(a.data).read_text().splitlines()[: a.n]])
    warm = load_ensemble(a.model); EnsembleScores(warm).scores(items[:4])  # first-call costs (imports, kernels) outside the timings
    shared_s, apart_s = [], []
    for _ in range(a.repeats):  # fresh scorers each time: no image features or folded layers carried over
        members = load_ensemble(a.model)
        t, shared = timed(members, items); shared_s.append(t)
        members = load_ensemble(a.model)
        for m in members: m._refs = {}  # each member its own reference memo: every member computes the reference itself
        t, apart = timed(members, items); apart_s.append(t)
        if not np.array_equal(shared, apart): raise AssertionError(f"shared and per-member references give other scores (max diff {np.abs(shared - apart).max()})")
    ts, ta = float(np.median(shared_s)), float(np.median(apart_s))
    res = {"model": a.model, "members": len(members), "data": a.data, "items": len(items), "repeats": a.repeats, "torch_threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "reward": members[0].models[0].cfg.reward,
           "reference_shared_s": ts, "reference_per_member_s": ta, "speedup": ta / ts, "speedups": [p / s for s, p in zip(shared_s, apart_s)],
           "scores_bit_equal": True}
    print(json.dumps(res, indent=1)); write_json(a.out, res)


if __name__ == "__main__":
    main()
