"""The four fusion strategies as reward-model variants, trained on the same data with the same settings (params.yaml
`train.rm`, fusion replaced) and compared on the test sets. Writes reports/bench/fusion.json and fusion.md.

    .venv/bin/python benchmarks/fusion.py [--train data/world/train_oracle.jsonl] [--fusions early late cross contrastive]
"""
import argparse, json, tempfile, time
from pathlib import Path

import pandas as pd

from dt2it_mrm.core import atomic_write, load_params, set_offline, write_json
from dt2it_mrm.data import read_preferences
from dt2it_mrm.evaluate import accuracy, group_accuracy, pair_margins
from dt2it_mrm.reward_model import FUSIONS, RMConfig, train_reward_model
from dt2it_mrm.score import RewardScorer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="data/world/train_oracle.jsonl"); ap.add_argument("--fusions", nargs="+", default=list(FUSIONS))
    ap.add_argument("--out", default="reports/bench/fusion"); ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(); set_offline()
    params = load_params(); base = params["base"]["model"]; seed = params["base"]["seed"] if a.seed is None else a.seed
    read = lambda p: [r.to_dict() for r in read_preferences(p, on_error="raise")[0]]
    train = read(a.train); tests = {k: read(Path(params["generate"]["out_dir"]) / f"{k}.jsonl") for k in params["evaluate"]["test_sets"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fusion in a.fusions:
            cfg = RMConfig.from_params(params["train"]["rm"], fusion=fusion, seed=seed)
            t0 = time.perf_counter()
            train_reward_model(train, base, cfg, out_dir=Path(tmp) / fusion)
            t_train = time.perf_counter() - t0
            sc = RewardScorer.load(Path(tmp) / fusion)
            row = {"fusion": fusion, "train_s": round(t_train, 1)}
            for name, recs in tests.items():
                m = pair_margins(recs, sc)
                row[name] = accuracy(m); row[f"{name}_worst_group"] = group_accuracy(m, [r["group"] for r in recs])["worst"]
            rows.append(row); print(row, flush=True)
    df = pd.DataFrame(rows).set_index("fusion")
    write_json(a.out + ".json", {"train": a.train, "base": base, "seed": seed, "rm": params["train"]["rm"], "rows": rows})
    atomic_write(a.out + ".md", f"Fusion variants trained on `{a.train}` (base `{base}`, seed {seed}); accuracy = share of pairs "
                 "with score(chosen) > score(rejected).\n\n" + df.round(3).to_markdown() + "\n")
    print(df.round(3).to_string())


if __name__ == "__main__":
    main()
