"""An arm's evaluation with the implicit reward's reference read from `score_reference`'s table against the same
evaluation computing it: every item `evaluate` scores (`evaluate.evaluation_items`), one scorer call each way, fresh
scorers, medians. The process is pinned as the study's stages are (`base.repro`: `isa`, `threads`), so the table the
study wrote must give the scores computed in place bit for bit; it is also taken. Writes reports/bench/reference_table.json.

    .venv/bin/python benchmarks/reference_table.py [--arm iter3] [--world w0] [--repeats 2]
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dt2it_mrm.core import load_params  # noqa: E402  (no torch import)
from dt2it_mrm.repro import pinned_env  # noqa: E402


def items_of(params: dict, world: str) -> list[dict]:
    "The items the arm's `evaluate` stage scores in `world`, from the study's params."
    from dt2it_mrm import evaluate
    d, w = params["data"], lambda p: p.replace("{world}", world) if p else p
    sets, expert, bon = evaluate.read_evaluation_sets({s: w(p) for s, p in d["test_sets"].items()}, d["format"], d["image_root"], w(d["expert_set"]), w(d["bon_set"]))
    return evaluate.evaluation_items(sets, params["evaluate"]["blank_sets"], (expert or []) + (bon or []))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", default="iter3"); ap.add_argument("--world", default="w0")
    ap.add_argument("--repeats", type=int, default=2); ap.add_argument("--out", default="reports/bench/reference_table.json")
    a = ap.parse_args()
    params = load_params("params.yaml"); repro = params["base"]["repro"]
    os.environ.update(pinned_env(repro["isa"], repro["threads"]))  # before torch is imported: the stages' kernels
    import numpy as np
    from dt2it_mrm.core import read_json, set_offline, write_json
    from dt2it_mrm.repro import apply_pins
    from dt2it_mrm.reward_model import member_paths
    from dt2it_mrm.score import RewardScorer
    pins = apply_pins(repro["threads"]); set_offline()
    items = items_of(params, a.world)
    table = read_json(params["score_reference"]["reference"].replace("{world}", a.world))
    model = member_paths(Path(params["train"]["models_dir"]) / a.arm / a.world)[0]
    own_s, table_s = [], []
    for _ in range(a.repeats):
        sc = RewardScorer.load(model)
        t0 = time.perf_counter(); own = sc(items); own_s.append(time.perf_counter() - t0)
        sc = RewardScorer.load(model)
        if sc.use_references(table) != [0]: raise AssertionError(f"{model}: the table of {a.world} was not taken (another base or settings)")
        t0 = time.perf_counter(); got = sc(items); table_s.append(time.perf_counter() - t0)
        if not np.array_equal(own, got): raise AssertionError(f"scores with the table differ from scores computed in place (max diff {np.abs(own - got).max()})")
    to, tt = float(np.median(own_s)), float(np.median(table_s))
    res = {"arm": a.arm, "world": a.world, "model": str(model), "items": len(items), "repeats": a.repeats, "pins": pins,
           "cpu": platform.processor() or platform.machine(), "reference_in_place_s": to, "reference_from_table_s": tt, "speedup": to / tt,
           "speedups": [o / t for o, t in zip(own_s, table_s)], "scores_bit_equal": True}
    print(json.dumps(res, indent=1)); write_json(a.out, res)


if __name__ == "__main__":
    main()
