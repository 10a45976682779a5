"""How many of a prompt's answers to pack into one row when scoring: the scorer's `pack_ratio` on the study's evaluation
items (the first world's test sets, the blanked primary set, the expert lists of 4 answers and the best-of-N lists of 16),
scored by one arm's reward model exactly as the evaluate stage scores them (the score_reference table given, one call).
Each setting is timed in a fresh scorer, in turn, `--repeats` times (medians); the scores must agree with the packed-whole
ones to float rounding. Writes reports/bench/pack_ratio.json and .md.

    .venv/bin/python benchmarks/pack_ratio.py [--arm oracle] [--world 0] [--repeats 2]
"""
import argparse, json, platform, sys, time
from pathlib import Path

import numpy as np
import torch

from dt2it_mrm.core import atomic_write, for_world, load_params, read_json, set_offline, world_name, write_json
from dt2it_mrm import evaluate
from dt2it_mrm.reward_model import member_paths
from dt2it_mrm.score import RewardScorer

SETTINGS = {"packed whole": None, "pack_ratio 3": 3.0, "pack_ratio 2 (default)": 2.0, "pack_ratio 1.5": 1.5, "apart (pack_ratio 1)": 1.0}


def evaluation_items(params: dict, world: str) -> list[dict]:
    "The items the evaluate stage scores in `world`, from the study's `params` (data and evaluate groups)."
    d = for_world(params["data"], world)
    sets, expert, bon = evaluate.read_evaluation_sets(d["test_sets"], d["format"], d["image_root"], d["expert_set"], d["bon_set"])
    return evaluate.evaluation_items(sets, params["evaluate"]["blank_sets"], (expert or []) + (bon or []))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", default="oracle"); ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2); ap.add_argument("--out", default="reports/bench/pack_ratio.json")
    a = ap.parse_args(); set_offline(); torch.set_num_threads(1)
    params, w = load_params("params.yaml"), world_name(a.world); items = evaluation_items(params, w)
    model = member_paths(Path(params["train"]["models_dir"]) / a.arm / w)[0]
    table = read_json(for_world(params["score_reference"]["reference"], w))
    times, scores = {k: [] for k in SETTINGS}, {}
    for _ in range(a.repeats):
        for name, r in SETTINGS.items():  # in turn, so a slow spell of the machine falls on every setting
            scorer = RewardScorer.load(model, pack_ratio=r); scorer.use_references(table)
            t0 = time.perf_counter(); scores[name] = scorer(items); times[name].append(time.perf_counter() - t0)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    ref, by = scores["packed whole"], {}
    for it in items: by.setdefault((str(it.get("image")), it["question"], it.get("system")), []).append(it)
    res = {"model": str(model), "items": len(items), "prompts_with_more_than_2_items": sum(len(v) > 2 for v in by.values()), "torch_threads": 1,
           "cpu": platform.processor() or platform.machine(), "repeats": a.repeats,
           "settings": {k: {"pack_ratio": r, "seconds": float(np.median(times[k])), "runs": times[k],
                            "max_abs_score_diff": float(np.abs(scores[k] - ref).max())} for k, r in SETTINGS.items()}}
    assert all(s["max_abs_score_diff"] < 1e-3 for s in res["settings"].values()), "packing changed scores beyond float rounding"
    write_json(a.out, res)
    base = res["settings"]["packed whole"]["seconds"]
    rows = [f"| {k} | {s['seconds']:.1f} ({', '.join(f'{x:.1f}' for x in s['runs'])}) | {s['seconds'] / base:.2f}x | {s['max_abs_score_diff']:.1e} |"
            for k, s in res["settings"].items()]
    atomic_write(Path(a.out).with_suffix(".md"), "\n".join([
        "# Packing a prompt's answers into one row: `pack_ratio`", "",
        f"The evaluate stage's items of world {w} ({res['items']} items; {res['prompts_with_more_than_2_items']} prompts with more than two), "
        f"scored by {model} in one call, the reference table given; {res['torch_threads']} torch thread on {res['cpu']}, "
        f"medians of {a.repeats} runs, settings timed in turn.", "",
        "| packing | seconds (runs) | of packed whole | max abs score diff |", "| --- | --- | --- | --- |", *rows, "",
        f"    .venv/bin/python benchmarks/pack_ratio.py {' '.join(sys.argv[1:])}".rstrip(), ""]))


if __name__ == "__main__":
    main()
