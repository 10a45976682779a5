How far the oracle arm gets: the study's reward-model settings (params.yaml `train.rm`) and variations of them, each
trained on the gold-labelled oracle set of the first world with several seeds. The best setting is chosen on the neutral
`dev` split; the test sets (the primary `test_neutral` first) are only reported. Writes reports/bench/oracle_sweep.json and .md.

This is the evidence of where the tiny CPU base stands, with seed spread, wall time per training, and the settings that
cost more time than the study has.
Rank 32 helps the oracle, yet the study keeps rank 16: with rank 32 the weighted arms (debiased, iterations) lose far
more than the oracle gains; compare `dvc exp run -S train.rm.lora_r=32 -S train.rm.lora_alpha=32` with reports/results.md.

    .venv/bin/python benchmarks/oracle_sweep.py [--seeds 0 1 2] [--variants lora16 lora32 ...]
"""
import argparse, json, sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import read_pairs, study_setup, train_and_measure, world_dir  # noqa: E402
from dt2it_mrm.core import atomic_write, write_json
from dt2it_mrm.reward_model import RMConfig

VARIANTS = {  # name -> overrides of params.yaml train.rm (each names its LoRA shape, whatever the study's default)
    "lora16": {"lora_r": 16, "lora_alpha": 16},
    "lora32": {"lora_r": 32, "lora_alpha": 32},
    "lora32_alpha64": {"lora_r": 32, "lora_alpha": 64},
    "lora16_epochs6": {"lora_r": 16, "lora_alpha": 16, "epochs": 6},
    "lora32_epochs6": {"lora_r": 32, "lora_alpha": 32, "epochs": 6},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=None, help="default: the first world's train_oracle.jsonl"); ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="reports/bench/oracle_sweep")
    a = ap.parse_args(); params, base, tests = study_setup()
    a.train = a.train or str(world_dir(params) / "train_oracle.jsonl")
    train = read_pairs(a.train); rows = []
    for name in a.variants:
        for seed in a.seeds:
            cfg = RMConfig.from_params(params["train"]["rm"], **VARIANTS[name], seed=seed)
            row = {"variant": name, "seed": seed, "overrides": json.dumps(VARIANTS[name]), **train_and_measure(train, base, cfg, tests)}
            rows.append(row); print(row, flush=True)
    df = pd.DataFrame(rows); sets = list(tests)
    summary = df.groupby("variant", sort=False).agg(
        overrides=("overrides", "first"), seeds=("seed", "count"), train_s=("train_s", "mean"),
        **{f"{s}_mean": (s, "mean") for s in sets}, **{f"{s}_min": (s, "min") for s in sets}, **{f"{s}_max": (s, "max") for s in sets},
        dev_sd=("dev", "std"))
    best = summary["dev_mean"].idxmax()
    write_json(a.out + ".json", {"train": a.train, "base": base, "rm": params["train"]["rm"], "rows": rows, "chosen_on_dev": best,
                                 "summary": json.loads(summary.reset_index().to_json(orient="records"))})
    atomic_write(a.out + ".md", f"The oracle arm (`{a.train}`, base `{base}`) under the study's reward-model settings and variations "
                 f"of them, seeds {a.seeds}; accuracy = share of pairs with score(chosen) > score(rejected), ties wrong. "
                 "`train_s` is the mean wall time of one training on this machine. The setting chosen on `dev` (mean over seeds): "
                 f"**{best}**; the test sets are reported, never used to choose.\n\n"
                 + summary.round(3).to_markdown() + "\n\nEvery run:\n\n" + df.round(3).to_markdown(index=False) + "\n")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
