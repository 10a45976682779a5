"""Training throughput with and without prefix sharing (`RMConfig.share_prefix`): the same model, data, seed and
settings, one run, the two trainings alternated so that machine load falls on both alike. Writes
reports/bench/train_throughput.json and .md.

With sharing, a pair's chosen and rejected rows are one packed row: the prompt (template, image tokens, question, and
any opening words the two answers share) is encoded once, the two answers behind a block attention mask. The
hidden states equal separate encoding to 1e-5 (tests/test_reward_model.py), so the trained models differ only by float
rounding; the benchmark reports how far their dev rewards drift apart.

Two models: the study's `train.rm` on its base (a tiny Qwen3-VL, where per-call overheads are a large share of a step),
and the same settings on a random Qwen3-VL base of about 170M parameters (the memory benchmark's; a few steps of a
smaller batch only), once with the study's 84-pixel images (9 image tokens) and once with them resized to 448 pixels
(256 image tokens: the prompt is then most of a row, as with a real VLM's images).
Pairs per second count optimizer steps x batch size over the training loop's wall time, from the end of the first step
(its one-time costs left out; image features and the implicit reward's reference are computed before the loop, once, in
both).

    .venv/bin/python benchmarks/train_throughput.py [--pairs 800] [--repeats 2] [--large-pairs 12] [--large-batch 4] [--large-steps 4] [--image-side 448]
"""
import argparse, json, platform, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from common import read_pairs, upscaled  # noqa: E402
from memory import build  # noqa: E402


def train_once(base, recs, rm_params: dict, share: bool, evals: list | None = None, **over) -> dict:
    "One training; its loop's pairs per second, and the rewards of `evals` pairs' items if given."
    from dt2it_mrm.reward_model import PairData, RMConfig, blank_tensors, build_reward_model, features_by_key, fit, rewards, BLANK
    from dt2it_mrm.vlm import load_processor
    cfg = RMConfig.from_params(rm_params, share_prefix=share, **over)
    torch.manual_seed(cfg.seed)
    rm = build_reward_model(base, cfg); proc = load_processor(base, cfg.min_pixels, cfg.max_pixels)
    data = PairData(proc, recs)
    rep = fit(rm, data, cfg, progress=False)
    h = rep["history"]; loop_s = h[-1]["s"] - h[0]["s"]  # the first step (one-time costs) left out
    out = {"share_prefix": share, "steps": rep["steps"], "loop_s": loop_s, "pairs_per_s": (len(h) - 1) * cfg.batch_size / loop_s,
           "final_loss": h[-1]["loss"]}
    if evals:
        d = PairData(proc, evals)
        out["rewards"] = rewards(rm, d, features_by_key(rm, d, {BLANK: blank_tensors(proc, cfg.blank_size)}))
    return out


def compare(base, recs, rm_params: dict, repeats: int, evals=None, **over) -> dict:
    "Alternate trainings without and with sharing `repeats` times; median pairs/s of each and their ratio."
    runs = {False: [], True: []}
    for rep in range(repeats):  # dev rewards from the first repeat only (the only ones compared)
        for share in (False, True): runs[share].append(train_once(base, recs, rm_params, share, evals if rep == 0 else None, **over))
    pps = {s: [r["pairs_per_s"] for r in rs] for s, rs in runs.items()}
    res = {"pairs": len(recs), "steps": runs[False][0]["steps"], "repeats": repeats,
           "pairs_per_s_separate": float(np.median(pps[False])), "pairs_per_s_shared": float(np.median(pps[True])),
           "ratio": float(np.median(pps[True]) / np.median(pps[False])), "ratios": [t / f for f, t in zip(pps[False], pps[True])],
           "final_loss_separate": runs[False][0]["final_loss"], "final_loss_shared": runs[True][0]["final_loss"]}
    if evals:
        a, b = runs[False][0]["rewards"], runs[True][0]["rewards"]; n = len(a) // 2
        res |= {"dev_pairs": n, "dev_reward_max_abs_diff": float(np.abs(a - b).max()),
                "dev_accuracy_separate": float((a[:n] > a[n:]).mean()), "dev_accuracy_shared": float((b[:n] > b[n:]).mean())}
    return res


def token_stats(proc, recs) -> dict:
    "Mean tokens of a row, of a pair as two rows and as one packed row, and the ratio: the most sharing can save where a step's cost is all per token."
    from dt2it_mrm.reward_model import PairData, common_prefix
    d = PairData(proc, recs); L = d.lengths(); ids = [t["input_ids"].tolist() for t in d.texts]
    packed = [L[i] + L[d.n + i] - common_prefix([ids[i], ids[d.n + i]]) for i in range(d.n)]
    return {"row_tokens_mean": float(np.mean(L)), "pair_tokens_separate": float(np.mean(L) * 2), "pair_tokens_shared": float(np.mean(packed)),
            "token_ratio": float(np.mean(L) * 2 / np.mean(packed))}


def main():
    from dt2it_mrm.core import atomic_write, load_params, set_offline, write_json
    from dt2it_mrm.vlm import load_processor
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/world/w0/train_oracle.jsonl"); ap.add_argument("--dev", default="data/world/w0/dev.jsonl")
    ap.add_argument("--pairs", type=int, default=800); ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--large-pairs", type=int, default=12); ap.add_argument("--large-batch", type=int, default=4)
    ap.add_argument("--large-steps", type=int, default=4)
    ap.add_argument("--image-side", type=int, default=448, help="the large model once more with the images resized to this side (448: 256 image tokens, "
                    "a real VLM's usual budget; 0: skip)")
    ap.add_argument("--out", default="reports/bench/train_throughput")
    a = ap.parse_args(); set_offline(); torch.set_num_threads(1)
    import os; os.chdir(ROOT)
    params = load_params(ROOT / "params.yaml"); rm, base = params["train"]["rm"], params["base"]["model"]
    recs = read_pairs(a.data)[: a.pairs]
    tokens = token_stats(load_processor(base), recs)
    res = {"data": a.data, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "train_rm": rm, **tokens}
    res["study_model"] = {"base": base, **compare(base, recs, rm, a.repeats, read_pairs(a.dev)[:500])}
    print(json.dumps(res["study_model"], indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        n = build(Path(tmp) / "base", "qwen3_vl", 1024, 16, 16)
        few = recs[: a.large_pairs]
        steps = dict(epochs=a.large_steps * a.large_batch / len(few), batch_size=a.large_batch, warmup=1)  # a.large_steps optimizer steps
        res["large_model"] = {"parameters": n, "config": {"hidden": 1024, "layers": 16, "heads": 16}, "batch_size": a.large_batch,
                              **compare(Path(tmp) / "base", few, rm, 1, **steps)}
        print(json.dumps(res["large_model"], indent=1), flush=True)
        if a.image_side:  # the prompt then is mostly image tokens, as with real images: what sharing saves grows with it
            px = a.image_side ** 2; big = upscaled(few, a.image_side, Path(tmp) / "images")
            res["large_images"] = {"parameters": n, "image_side": a.image_side, "batch_size": a.large_batch,
                                   **token_stats(load_processor(Path(tmp) / "base", px, px), big),
                                   **compare(Path(tmp) / "base", big, rm, 1, **steps, min_pixels=px, max_pixels=px, blank_size=a.image_side)}
            print(json.dumps(res["large_images"], indent=1), flush=True)
    write_json(Path(a.out + ".json"), res)
    s, l = res["study_model"], res["large_model"]
    md = ["# Training throughput: prefix sharing", "",
          f"The study's `train.rm` ({rm['reward']} reward, batch {rm['batch_size']}, {rm['quant']}), trained with `share_prefix` off and on, alternated, "
          f"{torch.get_num_threads()} torch thread(s) on {res['cpu']}. Pairs/s: optimizer steps x batch size over the training loop's wall time after the first step (medians).", "",
          "| model | pairs x steps | separate, pairs/s | shared, pairs/s | ratio (runs) |", "| --- | --- | --- | --- | --- |",
          f"| study base ({base}) | {s['pairs']} x {s['steps']} | {s['pairs_per_s_separate']:.1f} | {s['pairs_per_s_shared']:.1f} | "
          f"**{s['ratio']:.2f}x** ({', '.join(f'{r:.2f}' for r in s['ratios'])}) |",
          f"| random Qwen3-VL, {n / 1e6:.0f}M parameters (batch {l['batch_size']}) | {l['pairs']} x {l['steps']} | {l['pairs_per_s_separate']:.2f} | {l['pairs_per_s_shared']:.2f} | "
          f"**{l['ratio']:.2f}x** |",
          *([f"| the same, images at {g['image_side']}x{g['image_side']} ({g['row_tokens_mean']:.0f} tokens a row; {g['token_ratio']:.2f}x fewer packed) | "
             f"{g['pairs']} x {g['steps']} | {g['pairs_per_s_separate']:.3f} | {g['pairs_per_s_shared']:.3f} | **{g['ratio']:.2f}x** |"] if (g := res.get("large_images")) else []), "",
          f"Rows average {tokens['row_tokens_mean']:.1f} tokens: a pair is {tokens['pair_tokens_separate']:.1f} tokens as two rows and "
          f"{tokens['pair_tokens_shared']:.1f} packed, {tokens['token_ratio']:.2f}x fewer, the most sharing can save where a step's cost is all per token "
          f"(the tiny base's steps also carry per-call costs that do not shrink). The two study trainings end at loss {s['final_loss_separate']:.4f} and {s['final_loss_shared']:.4f}; "
          f"on {s['dev_pairs']} dev pairs their rewards differ by at most {s['dev_reward_max_abs_diff']:.2e} (float rounding carried through "
          f"{s['steps']} steps), dev accuracy {s['dev_accuracy_separate']:.3f} and {s['dev_accuracy_shared']:.3f}.", "",
          "    .venv/bin/python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])]
    atomic_write(Path(a.out + ".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
