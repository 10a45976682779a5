"""The four fusion strategies as reward-model variants, trained on the same data with the same settings (params.yaml
`train.rm`, fusion replaced) and compared on the test sets. Writes reports/bench/fusion.json and fusion.md.

    .venv/bin/python benchmarks/fusion.py [--train data/world/w0/train_oracle.jsonl] [--fusions early late cross contrastive]
"""
import argparse, sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import read_pairs, study_setup, train_and_measure, world_dir  # noqa: E402
from dt2it_mrm.core import atomic_write, write_json
from dt2it_mrm.reward_model import FUSIONS, RMConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=None, help="default: the first world's train_oracle.jsonl"); ap.add_argument("--fusions", nargs="+", default=list(FUSIONS))
    ap.add_argument("--out", default="reports/bench/fusion"); ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(); params, base, tests = study_setup()
    a.train = a.train or str(world_dir(params) / "train_oracle.jsonl")
    seed = params["base"]["seed"] if a.seed is None else a.seed
    train = read_pairs(a.train); rows = []
    for fusion in a.fusions:
        row = {"fusion": fusion, **train_and_measure(train, base, RMConfig.from_params(params["train"]["rm"], fusion=fusion, seed=seed), tests)}
        rows.append(row); print(row, flush=True)
    df = pd.DataFrame(rows).set_index("fusion")
    write_json(a.out + ".json", {"train": a.train, "base": base, "seed": seed, "rm": params["train"]["rm"], "rows": rows})
    atomic_write(a.out + ".md", f"Fusion variants trained on `{a.train}` (base `{base}`, seed {seed}); accuracy = share of pairs "
                 "with score(chosen) > score(rejected).\n\n" + df.round(3).to_markdown() + "\n")
    print(df.round(3).to_string())


if __name__ == "__main__":
    main()
