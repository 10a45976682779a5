"""How far the reward model gets on gold labels, and what moves it: directions for a stronger oracle, each measured on
the neutral dev split of every replicate world (where the choice is made); the primary set `test_neutral` is only
reported.

Directions:
- the base's language-model head as a zero-shot reward (no training): the answer's log-likelihood given the image and
  question, and its visual pointwise mutual information, the same minus its log-likelihood given a blank image (which
  cancels what the text alone predicts: style, length, tell phrases);
- the value head reading the answer instead of the last token (`train.rm.pool`): every answer token scored by the head
  and summed (an error is a local event in the answer, and a sum counts them) or averaged;
- more epochs (the sweep in `reports/bench/oracle_sweep.md` found the last-token head under-trained);
- a head that can only penalise (`pool: penalty`: minus the summed softplus of the token scores, so a longer answer
  cannot gain by its length);
- reward centering (`train.rm.center`): Bradley–Terry sees only the difference of a pair's rewards, so each prompt's
  offset is free, and a summed head fills it with the answer's length; a penalty on the squared mean of each pair's
  rewards pins it, and the reward-length correlation across prompts goes with it;
- the language-model head kept and fine-tuned as an implicit reward (`train.rm.reward: lm`, the `lm*` rows): lm_beta times
  the LoRA-adapted model's answer log-likelihood minus the frozen base's, the base seeing a blank image (training starts
  from the visual PMI, the `lm_pmi` row) or the same image (it starts from 0: DPO's implicit reward); or added to the
  summed value head (`reward: head_lm`);
- the implicit reward's training knobs: LoRA rank, learning rate, batch size (twice the steps), a fourth epoch;
- the gold pairs with the construction's counterfactual twins added (`+ twins`: the same question's answer on another
  image as the negative), as the constructed arms get them: twice the pairs, twice the cost;
- the learning curve: the study's reward model on seeded subsets of 500 and 1,000 gold pairs, and on 4,000 (the 2,000
  plus 2,000 more drawn as the world draws them, from another seed): is it short of data?;
- the cost budget spent on more gold pairs: 3,000 pairs; 4,000 for 2 or 2.5 epochs; 6,000 or 8,000 seen once.

A last section breaks the study's row's dev accuracy down by the pair's error gap, task, group and scene difficulty:
where the reward model still errs.

Each trained row is one reward model per world on `train_oracle.jsonl` with the study's `train.rm` settings plus the
row's overrides (seed `base.seed`). Accuracies carry 95% intervals from a bootstrap over worlds, then pairs; the length
columns are the Spearman correlation of reward and answer length over the unique answers of dev and of `test_neutral`;
the choice is the best dev accuracy among the rows whose |dev length ρ| ≤ 0.1 (the construction ablation's rule);
`train s` is the mean wall time of one training in the run that trained the row (rows trained in different runs, with
other jobs beside them, compare only roughly). Every training records the run that timed it, so `× last` (a row's cost
over the last-token head's) is given only where both were timed in the same run, and a second choice, the cost rule,
takes the best dev row among those at most `--budget` (2) times the head's cost, whatever their data and epochs.

    .venv/bin/python benchmarks/oracle_dev.py [--worlds 0 1 2] [--variants last sum ...] [--workers 2] [--reuse]

Writes reports/bench/oracle_dev.json and .md.
"""
import argparse, json, os, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from construction_ablation import choose, job  # noqa: E402

VARIANTS = {  # name -> overrides of params.yaml train.rm (every row names its reward, pooling and centering, whatever the study's default)
    "last": {"reward": "head", "pool": "last", "center": 0.0},
    "mean": {"reward": "head", "pool": "mean", "center": 0.0},
    "sum": {"reward": "head", "pool": "sum", "center": 0.0},
    "last_epochs6": {"reward": "head", "pool": "last", "center": 0.0, "epochs": 6},
    "sum_epochs6": {"reward": "head", "pool": "sum", "center": 0.0, "epochs": 6},
    "penalty": {"reward": "head", "pool": "penalty", "center": 0.0},
    "sum_center0.01": {"reward": "head", "pool": "sum", "center": 0.01},
    "sum_center0.1": {"reward": "head", "pool": "sum", "center": 0.1},
    "sum_center0.01_epochs6": {"reward": "head", "pool": "sum", "center": 0.01, "epochs": 6},
    "lm": {"reward": "lm", "lm_beta": 1.0, "lm_reference": "blank", "center": 0.0},
    "lm_center0.01": {"reward": "lm", "lm_beta": 1.0, "lm_reference": "blank", "center": 0.01},
    "lm_image": {"reward": "lm", "lm_beta": 1.0, "lm_reference": "image", "center": 0.0},
    "lm_beta0.5": {"reward": "lm", "lm_beta": 0.5, "lm_reference": "blank", "center": 0.0},
    "lm_beta2": {"reward": "lm", "lm_beta": 2.0, "lm_reference": "blank", "center": 0.0},
    "lm_epochs5": {"reward": "lm", "lm_beta": 1.0, "lm_reference": "blank", "center": 0.0, "epochs": 5},
    "sum_center0.01_plus_lm": {"reward": "head_lm", "pool": "sum", "lm_beta": 1.0, "lm_reference": "blank", "center": 0.01},
}
_LM = VARIANTS["lm_beta0.5"]  # the study's implicit reward: the rows below change one thing of it
R32 = {"lora_r": 32, "lora_alpha": 32}
VARIANTS |= {"lm_beta0.5_r32": _LM | R32, "lm_beta0.5_lr0.004": _LM | {"lr": 0.004}, "lm_beta0.5_lr0.001": _LM | {"lr": 0.001},
             "lm_beta0.5_bs8": _LM | {"batch_size": 8}, "lm_beta0.5_epochs4": _LM | {"epochs": 4},
             "lm_beta0.5_twins": _LM, "lm_beta0.5_twins_bs8": _LM | {"batch_size": 8},
             "lm_beta0.5_n500": _LM, "lm_beta0.5_n1000": _LM, "lm_beta0.5_n4000": _LM, "lm_beta0.5_n4000_r32": _LM | R32,
             "lm_beta0.5_n4000_bs8": _LM | {"batch_size": 8}, "lm_beta0.5_n4000_r32_epochs2": _LM | R32 | {"epochs": 2},
             "lm_beta0.5_n4000_epochs2": _LM | {"epochs": 2},
             "lm_beta0.5_n3000_r32": _LM | R32, "lm_beta0.5_n4000_r32_epochs2.5": _LM | R32 | {"epochs": 2.5},
             "lm_beta0.5_n6000_r32_epochs1": _LM | R32 | {"epochs": 1}, "lm_beta0.5_n8000_r32_epochs1": _LM | R32 | {"epochs": 1}}
DATA = {  # rows trained on other data than the 2,000 gold pairs: twins (the construction's counterfactual twins added, as the constructed arms get them), a seeded subset of this many pairs, or this many more gold pairs (the learning curve)
    "lm_beta0.5_twins": {"twins": True}, "lm_beta0.5_twins_bs8": {"twins": True},
    "lm_beta0.5_n500": {"pairs": 500}, "lm_beta0.5_n1000": {"pairs": 1000}, "lm_beta0.5_n4000": {"extra": 2000},
    "lm_beta0.5_n4000_r32": {"extra": 2000}, "lm_beta0.5_n4000_bs8": {"extra": 2000},
    "lm_beta0.5_n4000_r32_epochs2": {"extra": 2000}, "lm_beta0.5_n4000_epochs2": {"extra": 2000},  # two epochs of twice the pairs: 1.33x the steps of three of 2,000
    "lm_beta0.5_n3000_r32": {"extra": 1000}, "lm_beta0.5_n4000_r32_epochs2.5": {"extra": 2000},
    "lm_beta0.5_n6000_r32_epochs1": {"extra": 4000}, "lm_beta0.5_n8000_r32_epochs1": {"extra": 6000}}  # one pass over 3x (the study's steps) or 4x the pairs
data_note = lambda d: " + twins" if d.get("twins") else f" on {d['pairs']} pairs" if d.get("pairs") else f" + {d['extra']} more gold pairs" if d.get("extra") else ""
EXTRA_SEED = 10_000  # more gold pairs of world w<k> are drawn with seed EXTRA_SEED + k: the same knobs, scenes the world never holds
ZERO_SHOT = ("lm_logp", "lm_pmi")  # the base's language-model head, untrained


def answer_logps(model, processor, items: list[tuple], image_of, batch_size: int = 64) -> np.ndarray:
    "Summed log-probability of each (image path, question, answer) item's answer tokens, its image given by `image_of(path)`."
    import torch
    from dt2it_mrm.vlm import collate, encode_texts
    texts = encode_texts(processor, [(q, a) for _, q, a in items], [image_of(p)[1] for p, _, _ in items], labels=True)
    out = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            b = collate(texts[i:i + batch_size], [image_of(p)[0] for p, _, _ in items[i:i + batch_size]], processor.tokenizer.pad_token_id)
            y = b.pop("labels")[:, 1:]; lp = model(**b).logits[:, :-1].float().log_softmax(-1)
            out.append((lp.gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y != -100)).sum(1))
    return torch.cat(out).numpy()


def zero_shot(world: str, base: str, sets: dict) -> dict:
    "Per set, the pair margins of the base's answer log-likelihood and of its visual PMI (no training), and their length correlations on the primary set."
    import torch; torch.set_num_threads(1)
    from common import read_pairs
    from dt2it_mrm.core import set_offline
    from dt2it_mrm.data import load_image
    from dt2it_mrm.evaluate import length_correlation
    from dt2it_mrm.vlm import blank_image, encode_images, load_base, load_processor
    set_offline()
    model, proc = load_base(base, quant="none"), load_processor(base)
    out = {v: {"variant": v, "world": world, "margins": {}} for v in ZERO_SHOT}
    for name, path in sets.items():
        recs = read_pairs(path.format(world=world))
        paths = list(dict.fromkeys(r["images"][0] for r in recs))
        enc = dict(zip(paths, encode_images(proc, [load_image(p) for p in paths]))); blank = encode_images(proc, [blank_image()])[0]
        items = [(r["images"][0], r["question"], r[k]) for k in ("chosen", "rejected") for r in recs]
        lp = answer_logps(model, proc, items, enc.__getitem__); lp_blank = answer_logps(model, proc, items, lambda p: blank)
        n = len(recs)
        for v, s in (("lm_logp", lp), ("lm_pmi", lp - lp_blank)):
            out[v]["margins"][name] = (s[:n] - s[n:]).tolist()
            if name == "test_neutral":
                by_item = dict(zip(items, s))  # a scorer over the scores just computed (one image per record here)
                scorer = lambda its: np.array([by_item[it["image"], it["question"], it["answer"]] for it in its])
                out[v] |= length_correlation(recs, scorer)
    return out


def trained_as(x: dict) -> dict:
    "The full training settings of a `train.rm` group: a setting a run did not record had its default; the lm_* settings only act on an implicit reward."
    from dataclasses import asdict
    from dt2it_mrm.reward_model import RMConfig
    c = asdict(RMConfig.from_params(x))
    return {k: v for k, v in c.items() if c["reward"] != "head" or not k.startswith("lm_")}


def cost_vs_last(runs: dict, v: str, worlds: list) -> float | None:
    "Mean train s of row `v` over that of `last`, if every world of both was timed in the same run (else None: other runs had other loads)."
    stamps = {runs[x, w].get("timed_in") for x in (v, "last") for w in worlds}
    if v in ZERO_SHOT or len(stamps) != 1 or None in stamps: return None
    return float(np.mean([runs[v, w]["train_s"] for w in worlds]) / np.mean([runs["last", w]["train_s"] for w in worlds]))


def breakdown(runs: dict, variant: str, worlds: list, dev_path: str) -> dict:
    "Where `variant` errs on dev: its accuracy (pooled over `worlds`) by each pair's error gap, task, group and scene difficulty, with the pairs in each cell."
    from common import read_pairs
    cells = {}
    for w in worlds:
        recs = read_pairs(dev_path.format(world=w))
        for r, m in zip(recs, runs[variant, w]["margins"]["dev"]):
            meta = r.get("meta") or {}
            for by, val in (("gap", meta.get("gap")), ("task", r.get("task")), ("group", r.get("group")),
                            ("difficulty", None if meta.get("difficulty") is None else round(meta["difficulty"], 2))):
                if val is not None: cells.setdefault(by, {}).setdefault(str(val), []).append(float(m > 0))
    return {by: {k: {"accuracy": float(np.mean(v)), "pairs": len(v)} for k, v in sorted(vals.items())} for by, vals in cells.items()}


def more_gold(world: str, n: int, knobs: dict, out_dir: str) -> list[dict]:
    "`n` more gold pairs drawn as the world's `train_oracle` split is (its knobs `knobs`), from seed EXTRA_SEED + the world's, their images rendered under `out_dir`."
    from dt2it_mrm.core import rng
    from dt2it_mrm.world import WorldConfig, make_split, render_scene
    cfg, seed = WorldConfig.from_params(knobs | {"n_train": n}), EXTRA_SEED + int(world.lstrip("w"))
    img = Path(out_dir) / f"more_gold_{world}"; img.mkdir(parents=True, exist_ok=True)
    recs, prompts = make_split(cfg, "train_oracle", seed, img.as_posix())
    for q in prompts: render_scene(q.scene, cfg.image_size, rng(seed, "render", q.scene.id)).save(img / f"{q.scene.id}.png")
    return [r | {"id": f"more_{r['id']}"} for r in recs]


def train_data(path: str, out_dir: str, seed: int, twins: bool = False, pairs: int | None = None, extra: int | None = None,
               world: str = "", knobs: dict | None = None) -> str:
    "The pair file `path`, or a copy in `out_dir`: cut to a seeded subset of `pairs` pairs, with `extra` more gold pairs of `world` (its generate knobs `knobs`), or with every pair's counterfactual twin added as the construction adds them (the same question's answer on another image as the negative)."
    if not twins and pairs is None and not extra: return path
    from common import read_pairs
    from dt2it_mrm.construct import debias
    from dt2it_mrm.core import write_jsonl
    out = Path(out_dir) / f"{Path(path).parent.name}_{'twins' if twins else pairs or f'more{extra}'}_{Path(path).name}"
    if out.exists(): return str(out)
    recs = read_pairs(path) + (more_gold(world, extra, knobs or {}, out_dir) if extra else [])
    if pairs is not None: recs = [recs[i] for i in sorted(np.random.default_rng(seed).choice(len(recs), min(pairs, len(recs)), replace=False))]
    write_jsonl(out, debias(recs, {}, weighting="none", counterfactual=["other_image"], seed=seed)[0] if twins else recs)
    return str(out)


def main():
    from dt2it_mrm.core import atomic_write, load_params, write_json, world_name
    from dt2it_mrm.stats import diff_of_means, interval_str, mean_of, paired_bootstrap
    params = load_params(ROOT / "params.yaml")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", nargs="+", type=int, default=params["base"]["worlds"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="reports/bench/oracle_dev")
    ap.add_argument("--from-json", action="store_true", help="re-tabulate the runs of --out's JSON instead of training")
    ap.add_argument("--max-length-rho", type=float, default=0.1, help="the choice: best dev accuracy among rows whose |dev reward-length Spearman| is at most this")
    ap.add_argument("--reuse", action="store_true", help="keep the runs of --out's JSON and train only the (row, world) pairs it lacks")
    ap.add_argument("--budget", type=float, default=2.0, help="the cost rule: the best dev row among those whose training took at most this many times the last-token head's, timed in the same run")
    ap.add_argument("--retrain", nargs="*", default=[], choices=list(VARIANTS), help="with --reuse: train these rows again (their train s then comes from this run)")
    a = ap.parse_args(); os.chdir(ROOT)
    if "last" not in a.variants: a.variants = ["last", *a.variants]
    worlds = [world_name(w) for w in a.worlds]
    sets = {"dev": params["data"]["dev"], "test_neutral": params["data"]["test_sets"]["test_neutral"]}
    rm, seed, base = params["train"]["rm"], params["base"]["seed"], params["base"]["model"]
    train = str(Path(params["generate"]["out_dir"]) / "train_oracle.jsonl")
    t0 = time.perf_counter(); tmp = tempfile.TemporaryDirectory(); stamp = time.strftime("%Y-%m-%dT%H:%M:%S")  # the run that timed a training
    cmd = "    .venv/bin/python benchmarks/oracle_dev.py " + " ".join(sys.argv[1:])
    if a.from_json:
        old = json.loads(Path(a.out + ".json").read_text()); runs = {tuple(r["key"]): r for r in old["runs"]}; cmd = old.get("command", cmd)
        a.variants = [v for v in a.variants if all((v, w) in runs for w in worlds)]
    else:
        kept = {tuple(r["key"]): r for r in json.loads(Path(a.out + ".json").read_text())["runs"]} if a.reuse else {}
        same = lambda x, y: x is not None and trained_as(x) == trained_as(y)
        kept = {(v, w): r for (v, w), r in kept.items() if v in ZERO_SHOT or (v in VARIANTS and v not in a.retrain and same(r.get("rm"), rm | VARIANTS[v]))}
        data = {(v, w): train_data(train.format(world=w), tmp.name, seed, world=w, knobs=params["generate"]["world"], **DATA.get(v, {}))
                for v in a.variants for w in worlds if (v, w) not in kept}  # all made before any training is timed
        with ProcessPoolExecutor(a.workers) as ex:
            futs = {(v, w): ex.submit(job, v, w, seed, rm | VARIANTS[v], path, sets, base) for (v, w), path in data.items()}
            zs = {w: ex.submit(zero_shot, w, base, sets) for w in worlds if any((z, w) not in kept for z in ZERO_SHOT)}
            runs = kept | {(v, w): f.result() | {"rm": rm | VARIANTS[v], "timed_in": stamp} for (v, w), f in futs.items()}
            runs |= {(v, w): r for w, f in zs.items() for v, r in f.result().items()}
        write_json(Path(a.out + ".json"), {"command": cmd, "runs": [r | {"key": list(k)} for k, r in runs.items()]})  # kept before any tabulating
    correct = lambda m: (np.asarray(m) > 0).astype(float)
    study = next((v for v in a.variants if v not in DATA and trained_as(rm | VARIANTS[v]) == trained_as(rm)), "last")  # the row trained as the study trains
    rows = {}
    for v in [*ZERO_SHOT, *a.variants]:
        dev = [{"v": correct(runs[v, w]["margins"]["dev"]), "last": correct(runs["last", w]["margins"]["dev"]), "study": correct(runs[study, w]["margins"]["dev"])} for w in worlds]
        test = [{"v": correct(runs[v, w]["margins"]["test_neutral"])} for w in worlds]
        rows[v] = {"dev": paired_bootstrap(dev, mean_of("v"), seed=0), "test_neutral": paired_bootstrap(test, mean_of("v"), seed=0),
                   "dev_vs_last": paired_bootstrap(dev, diff_of_means("v", "last"), seed=0),
                   "dev_vs_study": paired_bootstrap(dev, diff_of_means("v", "study"), seed=0),
                   "length_spearman": float(np.mean([runs[v, w]["length_spearman"] for w in worlds])),
                   "dev_length_spearman": float(np.mean([runs[v, w]["dev_length_spearman"] for w in worlds])) if v in VARIANTS else None,
                   "train_s": float(np.mean([runs[v, w]["train_s"] for w in worlds])) if v in VARIANTS else None,
                   "change": VARIANTS.get(v), "cost_vs_last": cost_vs_last(runs, v, worlds)}
    best = choose({v: rows[v] for v in a.variants if "epochs" not in VARIANTS[v] and v not in DATA}, a.max_length_rho)  # the study's epochs and data: its time budget
    within = {v: r for v, r in rows.items() if r["cost_vs_last"] is not None and r["cost_vs_last"] <= a.budget}
    budget = choose(within, a.max_length_rho) if within else None  # any data, any epochs: what the oracle reaches for at most `budget` times the head's cost
    limits = breakdown(runs, study, worlds, sets["dev"])
    write_json(Path(a.out + ".json"), {"command": cmd, "worlds": worlds, "seed": seed, "rm": rm, "variants": rows, "chosen_on_dev": best, "chosen_within_budget": budget, "budget": a.budget, "study_row": study, "study_row_on_dev_by": limits,
                                       "wall_s": old.get("wall_s") if a.from_json else round(time.perf_counter() - t0), "runs": [r | {"key": list(k)} for k, r in runs.items()]})
    md = ["# Oracle directions on dev", "",
          f"Gold labels (`train_oracle.jsonl`), worlds {', '.join(worlds)}, one model per world and row (`train.rm` plus the row's change, seed {seed}); "
          "95% intervals from a bootstrap over worlds, then pairs. The choice is made on dev; `test_neutral` (the primary set) is only reported. The `(zero-shot)` rows use the base's language-model head untrained; the other `lm*` rows fine-tune it as an implicit reward (`reward: lm`). Length ρ: Spearman of reward and answer length over the "
          "unique answers of a set. The choice, as in the construction ablation: the best dev accuracy among the trained rows at the study's epochs "
          f"(more epochs multiply the cost of every training of the study) whose |dev length ρ| ≤ {a.max_length_rho} (if none, the smallest |dev length ρ|), on the gold pairs alone: the `+ twins` rows add every pair's counterfactual twin "
          "(the same question's answer on another image as the negative, as the construction adds them), which doubles the pairs and the cost of a training; the `on N pairs` rows train on a seeded subset, the `more gold pairs` row on the 2,000 and as many more drawn like them from another seed (the learning curve). "
          f"Points vs the study: the paired dev difference from the row trained as the study trains (`{study}`). Train s: mean wall time of one training in the run that trained the row.", "",
          "× last: the row's train s over the last-token head's (`last`) when both were timed in the same run (– if not).", "",
          "| direction | change of train.rm | dev accuracy | dev, points vs last | dev, points vs the study | dev length ρ | test_neutral accuracy | length ρ | train s | × last |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v, r in rows.items():
        secs = "–" if r["train_s"] is None else f"{r['train_s']:.0f}"
        cost = "–" if r["cost_vs_last"] is None else f"{r['cost_vs_last']:.2f}"
        dev_rho = "–" if r["dev_length_spearman"] is None else f"{r['dev_length_spearman']:+.3f}"
        md.append(f"| {v}{' (chosen on dev)' if v == best else ''} | {json.dumps(r['change']) + data_note(DATA.get(v, {})) if r['change'] else '(zero-shot)'} | {interval_str(r['dev'])} | "
                  f"{interval_str(r['dev_vs_last'], 100, 1)} | {interval_str(r['dev_vs_study'], 100, 1)} | {dev_rho} | {interval_str(r['test_neutral'])} | {r['length_spearman']:+.3f} | {secs} | {cost} |")
    gain = rows[best]["dev_vs_study"]
    md += ["", f"The study's reward model (`train.rm`): reward `{rm.get('reward', 'head')}`, pool `{rm['pool']}`, center {rm.get('center', 0.0)}, "
           f"lm_beta {rm.get('lm_beta', 1.0)}, {rm['epochs']} epochs. The row chosen on dev (`{best}`) is "
           + ("the study's own." if best == study else f"{interval_str(gain, 100, 1)} points from it on dev (paired): "
              + ("above it, so the study should take its settings." if gain["low"] > 0 else "not distinguishable from it, so the study keeps its settings (each change reruns every training of the study).")), "",
           (f"Within the cost budget (a training at most {a.budget:g}× the last-token head's, timed in the same run; any data and epochs), the row chosen on dev by the same rule is `{budget}`: "
            f"{rows[budget]['cost_vs_last']:.2f}× the head's cost, dev {interval_str(rows[budget]['dev'])}, test_neutral {interval_str(rows[budget]['test_neutral'])}." if budget else
            f"No row timed in the same run as `last` costs at most {a.budget:g}× its training."), "",
           f"Where the study's row (`{study}`) errs on dev, pooled over the worlds (accuracy, pairs): by the pair's error gap (errors of the worse answer minus the better's), task, group and scene difficulty.", ""]
    for by, cells in limits.items():
        md += [f"- {by}: " + "; ".join(f"{k} {c['accuracy']:.3f} ({c['pairs']})" for k, c in cells.items())]
    md += ["", cmd]
    atomic_write(Path(a.out + ".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
