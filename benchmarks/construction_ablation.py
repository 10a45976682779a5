"""The construction ablation: one reward model per way of building the training set from the same constructed labels,
in each replicate world, measured on the neutral dev split (where the choice is made) and on the primary neutral test
set (only reported).

The variants are the files the `construct` stage writes under `construct.ablation_dir` (params.yaml
`construct.ablation`): labels only, the old product of heuristic weights, one stabilised propensity weight, soft
labels, a product of experts with the frozen nuisance model, counterfactual augmentation, and combinations. Each is
trained with the study's `train.rm` settings (one member, seed `base.seed`) and scored on dev and `test_neutral`. Per
variant: accuracy with a 95% interval (bootstrap over worlds, then pairs), the paired difference to `labels_only` and
to the study's `baseline` arm (its stored per-pair scores), the reward–length Spearman correlation on the primary set
(as `evaluate` measures it), the ESS share and the label accuracy (plain, weighted, and the mass the soft labels put on
the truly better answer) from `reports/construct/<world>/construct.json`. The choice, made on dev only: the best mean
dev accuracy among the variants whose reward-length Spearman on dev is within ±`--max-length-rho` (0.1); the test
columns play no part in it.

    .venv/bin/python benchmarks/construction_ablation.py [--worlds 0 1 2] [--variants labels_only poe ...] [--workers 2]

Writes reports/bench/construction_ablation.json and .md (the trained models are not kept).
"""
import argparse, hashlib, json, os, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))


def file_sha(path) -> str:
    "The sha256 of a file's bytes (a reused run must have trained on the same file)."
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def job(variant: str, world: str, seed: int, rm: dict, train_path: str, sets: dict, base: str = "data/base", cwd: str | None = None) -> dict:
    "Train one reward model on `train_path` (relative to `cwd`); per set its per-pair margins, and the length correlation on the primary set."
    import torch; torch.set_num_threads(1)
    if cwd: os.chdir(cwd)
    from common import read_pairs
    from dt2it_mrm.core import set_offline
    from dt2it_mrm.evaluate import length_correlation, pair_margins
    from dt2it_mrm.reward_model import RMConfig, train_reward_model
    from dt2it_mrm.score import RewardScorer
    set_offline()
    train = read_pairs(train_path)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter(); train_reward_model(train, base, RMConfig(**(rm | {"seed": seed})), out_dir=Path(tmp) / "rm", progress=False)
        out = {"variant": variant, "world": world, "train_s": round(time.perf_counter() - t0, 1), "pairs": len(train), "file_sha256": file_sha(train_path), "margins": {}}
        sc = RewardScorer.load(Path(tmp) / "rm")
        for name, path in sets.items():
            recs = read_pairs(path.format(world=world))
            out["margins"][name] = pair_margins(recs, sc).tolist()
            rho = length_correlation(recs, sc)
            out |= rho if name == "test_neutral" else {f"{name}_{k}": v for k, v in rho.items()}
    return out


def choose(rows: dict, max_rho: float) -> str:
    "The variant with the best mean dev accuracy among those with |dev length ρ| ≤ `max_rho`; if there is none, the one with the smallest |dev length ρ|."
    ok = [v for v, r in rows.items() if abs(r["dev_length_spearman"]) <= max_rho]
    return max(ok, key=lambda v: rows[v]["dev"]["estimate"]) if ok else min(rows, key=lambda v: abs(rows[v]["dev_length_spearman"]))


def main():
    from dt2it_mrm.core import atomic_write, load_params, write_json, world_name
    from dt2it_mrm.stats import diff_of_means, interval_str, mean_of, paired_bootstrap
    params = load_params(ROOT / "params.yaml")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", nargs="+", type=int, default=params["base"]["worlds"])
    ap.add_argument("--variants", nargs="+", default=list(params["construct"]["ablation"]))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="reports/bench/construction_ablation")
    ap.add_argument("--max-length-rho", type=float, default=0.1, help="the choice: best dev accuracy among variants whose |dev reward-length Spearman| is at most this")
    ap.add_argument("--reuse", action="store_true", help="keep the runs of --out's JSON (and of its .partial.jsonl, left by a run that did not finish) whose training file is byte-identical (same sha256) and whose train.rm is the same; train the rest")
    a = ap.parse_args(); os.chdir(ROOT)
    if "labels_only" not in a.variants: a.variants = ["labels_only", *a.variants]
    worlds = [world_name(w) for w in a.worlds]
    sets = {"dev": params["data"]["dev"], "test_neutral": params["data"]["test_sets"]["test_neutral"]}
    rm, seed = params["train"]["rm"], params["base"]["seed"]
    cdir = str(Path(params["construct"]["out"]).parent.parent)
    partial = Path(a.out + ".partial.jsonl")  # every finished run, appended as it ends: a crashed or stopped run resumes with --reuse
    found = json.loads(Path(a.out + ".json").read_text())["runs"] if a.reuse and Path(a.out + ".json").exists() else []
    if a.reuse and partial.exists(): found += [json.loads(l) for l in partial.read_text().splitlines() if l.strip()]
    old = {(r["variant"], r["world"]): r for r in found
           if r.get("file_sha256") == file_sha(Path(cdir) / r["world"] / "ablation" / f"{r['variant']}.jsonl") and r.get("seed") == seed and r.get("rm") == rm
           and "dev_length_spearman" in r}
    todo = [(v, w) for v in a.variants for w in worlds if (v, w) not in old]
    print(f"{len(old)} runs reused, {len(todo)} to train")
    with ProcessPoolExecutor(a.workers) as ex, partial.open("a") as log:
        futs = {ex.submit(job, *k, seed, rm, str(Path(cdir) / k[1] / "ablation" / f"{k[0]}.jsonl"), sets): k for k in todo}
        for f in as_completed(futs):
            old[futs[f]] = f.result() | {"seed": seed, "rm": rm}; log.write(json.dumps(old[futs[f]]) + "\n"); log.flush()
    runs = [old[k] for k in ((v, w) for v in a.variants for w in worlds)]
    by = {(r["variant"], r["world"]): r for r in runs}
    base_f = {w: Path(f"data/eval/baseline/{w}.json") for w in worlds}
    have_base = all(f.exists() for f in base_f.values())  # the study's baseline arm (dvc repro); without it the column is left empty
    if not have_base: print("no baseline scores under data/eval/baseline (run dvc repro): the vs-baseline column is left empty")
    base_m = {w: json.loads(f.read_text())["sets"]["test_neutral"]["margin"] for w, f in base_f.items()} if have_base else {}
    cons = {w: json.loads((Path(params["construct"]["report_dir"].format(world=w)) / "construct.json").read_text()) for w in worlds}
    correct = lambda m: (np.asarray(m) > 0).astype(float)
    rows = {}
    for v in a.variants:
        per = [{"dev": correct(by[v, w]["margins"]["dev"])} for w in worlds]
        test = [{"v": correct(by[v, w]["margins"]["test_neutral"]), "lo": correct(by["labels_only", w]["margins"]["test_neutral"]),
                 **({"base": correct(base_m[w])} if have_base else {})} for w in worlds]
        ab = [cons[w]["ablation"][v] for w in worlds]
        rows[v] = {"dev": paired_bootstrap(per, mean_of("dev"), seed=0), "test_neutral": paired_bootstrap(test, mean_of("v"), seed=0),
                   "vs_labels_only": paired_bootstrap(test, diff_of_means("v", "lo"), seed=0),
                   "vs_baseline": paired_bootstrap(test, diff_of_means("v", "base"), seed=0) if have_base else None,
                   "length_spearman": float(np.mean([by[v, w]["length_spearman"] for w in worlds])),
                   "length_spearman_per_world": [by[v, w]["length_spearman"] for w in worlds],
                   "dev_length_spearman": float(np.mean([by[v, w]["dev_length_spearman"] for w in worlds])),
                   "ess_share": float(np.mean([x["ess_share"] for x in ab])), "pairs": float(np.mean([x["pairs"] for x in ab])),
                   "labels_right": float(np.mean([x["constructed"] for x in ab])),
                   "labels_right_weighted": float(np.mean([x["constructed_weighted"] for x in ab])),
                   "soft_mass_right_weighted": float(np.mean([x["constructed_soft_weighted"] for x in ab])),
                   "longer_label_mass": float(np.mean([x["longer_label_mass"] for x in ab])) if all(x.get("longer_label_mass") is not None for x in ab) else None,
                   "counterfactual_pairs_right": (float(np.mean([x["counterfactual_pairs_right"] for x in ab])) if ab[0].get("counterfactual_pairs_right") is not None else None),
                   "change": ab[0]["change"], "train_s": float(np.mean([by[v, w]["train_s"] for w in worlds]))}
    best = choose(rows, a.max_length_rho)
    write_json(Path(a.out + ".json"), {"worlds": worlds, "variants": rows, "chosen_on_dev": best, "max_length_rho": a.max_length_rho, "runs": runs})
    f = lambda x: "–" if x is None else f"{x:.3f}"
    md = ["# Construction ablation", "", f"One reward model per variant and world ({', '.join(worlds)}; `train.rm` settings, seed {seed}); 95% intervals from a "
          "bootstrap over worlds, then pairs. The choice is made on `dev`; `test_neutral` (the primary set) is only reported. Differences are in points, "
          "paired on the same test pairs; `baseline` is the study's baseline arm. Length ρ: Spearman correlation of reward and answer length over the unique "
          f"answers of a set. The choice: the best dev accuracy among the variants whose |dev length ρ| ≤ {a.max_length_rho} (if none, the smallest |dev length ρ|). "
          "Labels right: share of the training pairs whose label is right (measured against the world), weighted by the pair weights; soft: the share of "
          "the weighted soft-label mass on the truly better answer. Longer: the weighted label mass on the longer answer, as the loss sees it "
          "(soft labels included; 0.5: the labels say nothing about length).", "",
          "| variant | dev accuracy | dev length ρ | test_neutral accuracy | vs labels_only, points | vs baseline, points | length ρ | ESS share | longer | labels right | weighted | soft, weighted | pairs | train s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v, r in rows.items():
        md.append(f"| {v}{' (chosen on dev)' if v == best else ''} | {interval_str(r['dev'])} | {r['dev_length_spearman']:+.3f} | {interval_str(r['test_neutral'])} | {interval_str(r['vs_labels_only'], 100, 1)} | "
                  f"{interval_str(r['vs_baseline'], 100, 1) if r['vs_baseline'] else '–'} | {r['length_spearman']:+.3f} | {r['ess_share']:.3f} | {f(r['longer_label_mass'])} | {f(r['labels_right'])} | {f(r['labels_right_weighted'])} | "
                  f"{f(r['soft_mass_right_weighted'])} | {r['pairs']:.0f} | {r['train_s']:.0f} |")
    md += ["", "Variants (overrides of `construct`): " + "; ".join(f"`{v}`: {json.dumps(r['change'])}" for v, r in rows.items()),
           "", "    .venv/bin/python benchmarks/construction_ablation.py " + " ".join(sys.argv[1:])]
    atomic_write(Path(a.out + ".md"), "\n".join(md) + "\n"); partial.unlink(missing_ok=True)
    print("\n".join(md))


if __name__ == "__main__":
    main()
