"""Claim checking in pre-training (issue 13's second direction): does a base pre-trained to tell an answer from a false
copy of it make a better reward model?

The study's base is pre-trained on captioning alone (`pretrain_base`). This benchmark pre-trains a second base with the
same data, architecture, seed and pins, plus `PretrainConfig.verify`: each answer against a copy with a word replaced
by another the corpus uses in the same context (`dt2it_mrm.vlm.corrupt_answer`), a Bradley–Terry term on their summed
log-likelihoods beside captioning. Then, on both bases and every replicate world, with gold labels:

- the base's zero-shot visual PMI (`lm_pmi` of `oracle_dev.py`: the answer's log-likelihood given the image minus given
  a blank image, no training);
- the study's oracle (`train.rm`, 2,000 gold pairs) and, on the new base, the cost-budget row of `oracle_dev.py`
  (`lm_beta0.5_n4000_r32_epochs2`), beside the last-token head on the study's base (the cost unit: one training
  today), all timed in this run.

The base's own figures (held-out loss, seeing gap, and claim accuracy: the share of held-out (answer, false copy) pairs
where the answer is the likelier) are measured on the held-out scenes of pre-training. Accuracies carry 95% intervals
from a bootstrap over worlds, then pairs; the paired dev difference is the new base's row minus the study base's. The
choice is on dev; `test_neutral` is only reported. Every process runs pinned as the stages do (`base.repro`).

    .venv/bin/python benchmarks/claim_pretraining.py [--verify 1.0] [--words 1] [--workers 2] [--keep-base] [--study-runs reports/bench/claim_pretraining.json --out ...]

Writes reports/bench/claim_pretraining.json and .md; the new base goes to data/bench/base_claims.
"""
import argparse, json, os, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from dt2it_mrm.core import load_params  # noqa: E402  (no torch import)
from dt2it_mrm.repro import pinned_env  # noqa: E402

ROWS = {  # name -> (base: "study" or "claims", oracle_dev variant)
    "last": ("study", "last"), "lm_beta0.5": ("study", "lm_beta0.5"),
    "lm_beta0.5 (claims base)": ("claims", "lm_beta0.5"), "lm_beta0.5_n4000_r32_epochs2 (claims base)": ("claims", "lm_beta0.5_n4000_r32_epochs2")}


def pretrain_claims(params: dict, out: str, verify: float, words: int) -> dict:
    "Pre-train the study's base again with claim checking (`verify`, `words`), save it at `out`; its report."
    import shutil, torch
    from dt2it_mrm.core import set_offline
    from dt2it_mrm.repro import apply_pins
    from dt2it_mrm.vlm import PretrainConfig, pretrain_base, save_base
    set_offline(); apply_pins(params["base"]["repro"]["solo_threads"])
    p = params["pretrain_base"]
    cfg = PretrainConfig.from_params({**p["pretrain"], "seed": params["base"]["seed"], "verify": verify, "verify_words": words})
    model, proc, _, rep = pretrain_base(p["text_files"], p["data"], p["family"], cfg, p["vocab_size"], p["arch"], progress=False)
    if Path(out).exists(): shutil.rmtree(out)
    save_base(model, proc, out)
    report = {"final": rep["final"], "steps": rep["steps"], "wall_s": round(rep["wall_s"], 1), "config": cfg.__dict__, "torch": torch.__version__}
    (Path(out) / "pretrain_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def base_figures(params: dict, base: str, words: int) -> dict:
    "Held-out loss, seeing gap and claim accuracy of the base at `base` on pre-training's held-out scenes (false copies as `pretrain` draws them)."
    from dt2it_mrm.core import read_jsonl, set_offline
    from dt2it_mrm.repro import apply_pins
    from dt2it_mrm.vlm import (PretrainConfig, claim_accuracy, false_claims, lm_examples, load_base, load_processor, seeing_gap,
                               split_by_image, word_substitutes)
    set_offline(); apply_pins(params["base"]["repro"]["threads"])
    p, seed = params["pretrain_base"], params["base"]["seed"]
    records = read_jsonl(p["data"])
    cfg = PretrainConfig.from_params({**p["pretrain"], "seed": seed, "verify": 1.0, "verify_words": words})
    tr, val = split_by_image(records, cfg.val_images, seed)
    model, proc = load_base(base, quant="none"), load_processor(base)
    ex, store = lm_examples(proc, val)
    fakes = false_claims(proc, val, ex, word_substitutes(r["answer"] for r in tr), cfg)
    pad = proc.tokenizer.pad_token_id
    return seeing_gap(model, ex, store, pad) | {"claim_accuracy": claim_accuracy(model, ex, fakes, store, pad),
                                                "claim_pairs": sum(map(len, fakes))}


def main():
    params = load_params(ROOT / "params.yaml")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify", type=float, default=1.0, help="weight of the claim-checking term")
    ap.add_argument("--words", type=int, default=1, help="words replaced in a false copy")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base-out", default="data/bench/base_claims")
    ap.add_argument("--out", default="reports/bench/claim_pretraining")
    ap.add_argument("--study-runs", help="a JSON this script wrote: take its trainings on the study's base instead of training them again (their × last then stays theirs)")
    ap.add_argument("--keep-base", action="store_true", help="keep the base at --base-out (and its pretrain_report.json, from an earlier run) instead of pre-training it again")
    a = ap.parse_args(); os.chdir(ROOT)
    os.environ.update(pinned_env(params["base"]["repro"]["isa"], params["base"]["repro"]["threads"]))  # before torch, in every worker
    from construction_ablation import job
    from oracle_dev import DATA, VARIANTS, train_data, zero_shot
    import numpy as np
    from dt2it_mrm.core import write_json, world_name
    from dt2it_mrm.stats import diff_of_means, interval_str, mean_of, paired_bootstrap
    worlds = [world_name(w) for w in params["base"]["worlds"]]
    sets = {"dev": params["data"]["dev"], "test_neutral": params["data"]["test_sets"]["test_neutral"]}
    rm, seed, bases = params["train"]["rm"], params["base"]["seed"], {"study": params["base"]["model"], "claims": a.base_out}
    train = str(Path(params["generate"]["out_dir"]) / "train_oracle.jsonl")
    t0 = time.perf_counter(); stamp = time.strftime("%Y-%m-%dT%H:%M:%S"); tmp = tempfile.TemporaryDirectory()
    with ProcessPoolExecutor(a.workers) as ex:
        zs = {("study", w): ex.submit(zero_shot, w, bases["study"], sets) for w in worlds}  # beside the pre-training, on the other core
        kept = Path(a.base_out) / "pretrain_report.json"
        pre = json.loads(kept.read_text()) if a.keep_base and kept.exists() else ex.submit(pretrain_claims, params, a.base_out, a.verify, a.words).result()
        zs |= {("claims", w): ex.submit(zero_shot, w, bases["claims"], sets) for w in worlds}
        figs = {b: ex.submit(base_figures, params, path, a.words) for b, path in bases.items()}
        took = {tuple(r["key"]): r for r in json.loads(Path(a.study_runs).read_text())["runs"] if ROWS[r["key"][0]][0] == "study"} if a.study_runs else {}
        data = {(r, w): train_data(train.format(world=w), tmp.name, seed, world=w, knobs=params["generate"]["world"], **DATA.get(v, {}))
                for r, (b, v) in ROWS.items() for w in worlds if (r, w) not in took}  # all made before any training is timed
        zs = {k: f.result()["lm_pmi"] for k, f in zs.items()}; figs = {b: f.result() for b, f in figs.items()}
        futs = {(r, w): ex.submit(job, v, w, seed, rm | VARIANTS[v], path, sets, bases[b]) for (r, w), path in data.items() for b, v in [ROWS[r]]}
        runs = took | {k: f.result() | {"timed_in": stamp} for k, f in futs.items()}
    correct = lambda m: (np.asarray(m) > 0).astype(float)
    rows = {}
    for name, margins in [*((f"lm_pmi zero-shot ({b} base)", {w: zs[b, w]["margins"] for w in worlds}) for b in bases),
                          *((r, {w: runs[r, w]["margins"] for w in worlds}) for r in ROWS)]:
        dev = [{"v": correct(margins[w]["dev"])} for w in worlds]
        rows[name] = {"dev": paired_bootstrap(dev, mean_of("v"), seed=0),
                      "test_neutral": paired_bootstrap([{"v": correct(margins[w]["test_neutral"])} for w in worlds], mean_of("v"), seed=0),
                      "train_s": float(np.mean([runs[name, w]["train_s"] for w in worlds])) if name in ROWS else None}
    same_run = lambda r: len({runs[x, w].get("timed_in") for x in (r, "last") for w in worlds}) == 1
    for name in ROWS: rows[name]["cost_vs_last"] = rows[name]["train_s"] / rows["last"]["train_s"] if same_run(name) else None
    pair = lambda x, y: paired_bootstrap([{"x": correct(x[w]["dev"]), "y": correct(y[w]["dev"])} for w in worlds], diff_of_means("x", "y"), seed=0)
    deltas = {"lm_pmi zero-shot": pair({w: zs["claims", w]["margins"] for w in worlds}, {w: zs["study", w]["margins"] for w in worlds}),
              "lm_beta0.5": pair({w: runs["lm_beta0.5 (claims base)", w]["margins"] for w in worlds}, {w: runs["lm_beta0.5", w]["margins"] for w in worlds})}
    cmd = "    .venv/bin/python benchmarks/claim_pretraining.py " + " ".join(sys.argv[1:])
    write_json(Path(a.out + ".json"), {"command": cmd, "worlds": worlds, "rm": rm, "pretrain": pre, "bases": figs, "rows": rows,
                                        "dev_claims_minus_study": deltas, "wall_s": round(time.perf_counter() - t0),
                                        "runs": [r | {"key": list(k)} for k, r in runs.items()]})
    md = ["# Claim checking in pre-training", "",
          f"The study's base (captioning, `pretrain_base`) against one pre-trained with the same data, architecture, seed and pins plus claim checking "
          f"(`verify: {a.verify}`, `verify_words: {a.words}`: each answer against a copy with {a.words} word(s) replaced by another the corpus uses in the same context). "
          f"Worlds {', '.join(worlds)}; gold labels; 95% intervals from a bootstrap over worlds, then pairs. The choice is on dev; `test_neutral` is only reported. "
          "Every process ran pinned as the stages run.", "",
          "| base | held-out loss | seeing gap | claim accuracy (held out) | pre-training s |", "| --- | --- | --- | --- | --- |"]
    for b in bases:
        f = figs[b]; secs = f"{pre['wall_s']:.0f}" if b == "claims" else "(the stage's)"
        md.append(f"| {b} | {f['val_loss']:.4f} | {f['gap']:.3f} | {f['claim_accuracy']:.3f} ({f['claim_pairs']} pairs) | {secs} |")
    md += ["", "Train s: mean wall time of one training; × last: over the last-token head's on the study's base, where both were timed in the same run (– if not)."
           + (f" The trainings on the study's base come from an earlier run (`{a.study_runs}`)." if a.study_runs else ""),
           "", "| row | dev accuracy | test_neutral accuracy | train s | × last |", "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        secs = "–" if r["train_s"] is None else f"{r['train_s']:.0f}"
        cost = "–" if r.get("cost_vs_last") is None else f"{r['cost_vs_last']:.2f}"
        md.append(f"| {name} | {interval_str(r['dev'])} | {interval_str(r['test_neutral'])} | {secs} | {cost} |")
    md += ["", "Dev accuracy, claims base minus the study's base (paired, points): "
           + "; ".join(f"{k} {100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" for k, d in deltas.items()) + ".", "", cmd]
    Path(a.out + ".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
