"""Scoring throughput: the batched scorer vs a one-record-at-a-time loop (as DT2IT's inference script), same model, same
items, one run. Writes reports/bench/throughput.json.

The batched scorer is timed as shipped (LoRA folded into dense layers for scoring, `merge=True`, where the reward is
the value head's; the items of one prompt encoded as one row, `share_prefix=True`), with the adapters kept apart
(`merge=False`), and with every item its own row (`share_prefix=False`), so the share of the gain that folding and
prefix sharing bring is on record; one more call of each of the shared and the separate-rows scorer under cProfile
says where their time goes. Three models: the study's trained `oracle` reward model (a tiny base); a fresh reward model
on a random base of at least 100M parameters (the memory benchmark's config), closer to a real VLM; and that base once
more with the images resized to a real VLM's size (448 x 448: 256 image tokens, where the prompt is most of a row and
sharing it counts most). Both paths must give the same scores.

On the study model the batched call is also run under torch's profiler: the seconds it spends in the model's arithmetic
(matrix products, attention, convolution, log-softmax) give the speed-up the batched scorer would reach if everything
else (encoding, packing, Python) took no time (`speedup_ceiling`), the bound on what more batching can win; and, without
a profiler, the seconds it spends inside the model's own passes (vision tower, language-model passes, answer
log-probabilities; `model_passes_s`): the speed-up if reading, decoding, tokenising, positions and packing were free
(`speedup_model_passes_bound`), which holds the elementwise work around the arithmetic that the loop runs too.

    .venv/bin/python benchmarks/throughput.py [--model data/models/oracle/w0] [--data data/world/w0/test_iid.jsonl] [--n 200] [--image_side 448]
"""
import argparse, json, platform, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import upscaled  # noqa: E402
from memory import build  # noqa: E402
from dt2it_mrm.core import atomic_write, set_offline, write_json
from dt2it_mrm.reward_model import RMConfig, build_reward_model, load_reward_model, member_paths, pair_items
from dt2it_mrm.score import RewardScorer, naive_scores
from dt2it_mrm.vlm import load_processor


def where_time_goes(rm, items, batch_size: int, share_prefix: bool = True) -> dict:
    "One more batched call under cProfile: seconds in each part of it (the profiler's overhead included, so only the shares compare)."
    import cProfile, inspect, pstats
    from dt2it_mrm.reward_model import ItemData, RewardModel, row_positions_of
    parts = {"total": RewardScorer.member_scores, "inputs (tokenise, image tensors)": ItemData.__init__, "image features": RewardScorer._features,
             "position ids (once per prompt)": row_positions_of, "packing (block mask)": RewardModel.pack, "reference pass (frozen base, blank image)": RewardModel.reference_logp,
             "adapted pass": RewardModel.forward}
    pr = cProfile.Profile(); scorer = RewardScorer(rm, batch_size=batch_size, share_prefix=share_prefix)
    pr.enable(); scorer(items); pr.disable()
    st = pstats.Stats(pr).stats
    key = lambda f: (lambda c: (c.co_filename, c.co_firstlineno, c.co_name))(inspect.unwrap(f).__code__)
    return {name: round(st[key(f)][3], 4) if key(f) in st else 0.0 for name, f in parts.items()}


ARITHMETIC = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
              "aten::mkldnn_convolution", "aten::convolution", "aten::_log_softmax")


def arithmetic_seconds(rm, items, batch_size: int) -> dict:
    "One more batched call under torch's profiler: the seconds it spends in the model's arithmetic (matrix products, attention, convolution, log-softmax), and their share of all operator time."
    from torch.profiler import ProfilerActivity, profile
    scorer = RewardScorer(rm, batch_size=batch_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof: scorer(items)
    ev = prof.key_averages(); total = sum(e.self_cpu_time_total for e in ev)
    arith = {e.key: e.self_cpu_time_total for e in ev if e.key in ARITHMETIC}
    return {"arithmetic_s": sum(arith.values()) / 1e6, "arithmetic_share_of_ops": sum(arith.values()) / total,
            "arithmetic_ops_s": {k: round(v / 1e6, 4) for k, v in arith.items()}}


def compare(rm, items, batch_size: int, repeats: int = 3, processor=None) -> dict:
    "Time both paths on `items` with reward model `rm`, `repeats` times each (medians; first-call costs excluded)."
    naive_scores(rm, items[:2], processor); RewardScorer(rm)(items[:2])
    t_naive, t_batched, t_plain, t_sep = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter(); ref = naive_scores(rm, items, processor); t_naive.append(time.perf_counter() - t0)
        scorer = RewardScorer(rm, batch_size=batch_size)  # a fresh scorer: no image features cached, LoRA not folded yet
        t0 = time.perf_counter(); got = scorer(items); t_batched.append(time.perf_counter() - t0)
        plain = RewardScorer(rm, batch_size=batch_size, merge=False)  # the same, LoRA kept apart: what folding adds
        t0 = time.perf_counter(); got_plain = plain(items); t_plain.append(time.perf_counter() - t0)
        sep = RewardScorer(rm, batch_size=batch_size, share_prefix=False)  # the same, every item its own row: what prefix sharing adds
        t0 = time.perf_counter(); got_sep = sep(items); t_sep.append(time.perf_counter() - t0)
    diff = float(max(np.abs(ref - got).max(), np.abs(ref - got_plain).max(), np.abs(ref - got_sep).max()))
    assert diff < 1e-3 * max(1.0, float(np.abs(ref).max())), f"batched and one-at-a-time scores disagree by {diff}"
    tn, tb, tp, ts = (float(np.median(t)) for t in (t_naive, t_batched, t_plain, t_sep))
    return {"items": len(items), "distinct_images": len({it["image"] for it in items}), "batch_size": batch_size, "repeats": repeats,
            "one_at_a_time_s": tn, "batched_s": tb, "batched_unfolded_s": tp, "one_at_a_time_items_per_s": len(items) / tn,
            "batched_items_per_s": len(items) / tb, "speedup": tn / tb, "speedups": [n / b for n, b in zip(t_naive, t_batched)],
            "speedup_unfolded": tn / tp, "batched_separate_rows_s": ts, "speedup_separate_rows": tn / ts,
            "max_abs_score_diff": diff, "max_abs_score_diff_shared_vs_separate": float(np.abs(got - got_sep).max()),
            "reward": rm.cfg.reward, "batched_profile_s": where_time_goes(rm, items, batch_size),
            "batched_separate_rows_profile_s": where_time_goes(rm, items, batch_size, share_prefix=False)}


def model_pass_seconds(rm, items, batch_size: int, repeats: int = 3) -> dict:
    "Seconds a batched call spends inside the model's own passes (the vision tower, the language model's hidden states, the answer log-probabilities), timed around them without a profiler; medians of `repeats` fresh scorers."
    import dt2it_mrm.score as S
    from dt2it_mrm.reward_model import RewardModel
    spent, saved = {}, [(S, "image_features"), (RewardModel, "hidden_states"), (RewardModel, "answer_logp")]
    def timed(owner, name):
        f = getattr(owner, name)
        def g(*a, **k):
            t0 = time.perf_counter(); out = f(*a, **k); spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0; return out
        return f, g
    originals = {(o, n): timed(o, n) for o, n in saved}
    runs = []
    try:
        for (o, n), (_, g) in originals.items(): setattr(o, n, g)
        for _ in range(repeats):
            spent.clear(); scorer = RewardScorer(rm, batch_size=batch_size)
            t0 = time.perf_counter(); scorer(items); total = time.perf_counter() - t0
            runs.append((total, dict(spent)))
    finally:
        for (o, n), (f, _) in originals.items(): setattr(o, n, f)
    med = lambda xs: float(np.median(xs))
    return {"model_passes_s": med([sum(p.values()) for _, p in runs]), "model_passes_parts_s": {n: med([p.get(n, 0.0) for _, p in runs]) for _, n in saved},
            "model_passes_call_s": med([t for t, _ in runs])}


def with_ceiling(res: dict, rm, items, batch_size: int) -> dict:
    "`res` with the seconds of the batched call spent in the model's arithmetic and in its own passes, and the speed-ups the batched scorer would reach if everything else took no time."
    a, m = arithmetic_seconds(rm, items, batch_size), model_pass_seconds(rm, items, batch_size)
    return res | a | m | {"arithmetic_share_of_batched": a["arithmetic_s"] / res["batched_s"], "speedup_ceiling": res["one_at_a_time_s"] / a["arithmetic_s"],
                          "speedup_model_passes_bound": res["one_at_a_time_s"] / m["model_passes_s"], "batched_s_for_10x": res["one_at_a_time_s"] / 10}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/oracle/w0"); ap.add_argument("--data", default="data/world/w0/test_iid.jsonl")
    ap.add_argument("--n", type=int, default=200, help="pairs (2 items each) for the study's model")
    ap.add_argument("--n_large", type=int, default=12, help="pairs for the >=100M-parameter model")
    ap.add_argument("--image_side", type=int, default=448, help="the large model once more with images resized to this side (448: 256 image tokens; 0: skip)")
    ap.add_argument("--n_images", type=int, default=8, help="pairs for the large model with resized images")
    ap.add_argument("--batch_size", type=int, default=32); ap.add_argument("--out", default="reports/bench/throughput.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: timings that hold up beside other work on the machine)")
    a = ap.parse_args(); set_offline(); torch.manual_seed(0); torch.set_num_threads(a.threads)
    recs = [json.loads(l) for l in Path(a.data).read_text().splitlines()]
    res = {"data": a.data, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    study, items = load_reward_model(member_paths(a.model)[0]), pair_items(recs[: a.n])
    res["study_model"] = {"model": a.model, **with_ceiling(compare(study, items, a.batch_size), study, items, a.batch_size)}
    print(json.dumps(res["study_model"], indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        n = build(Path(tmp) / "base", "qwen3_vl", 1024, 16, 16)
        rm = build_reward_model(Path(tmp) / "base", RMConfig(quant="4bit", lora_r=16, lora_alpha=16))
        with torch.no_grad(): rm.head.weight.normal_(0, 0.02)  # the value head starts at zero: give the scores a spread
        res["large_model"] = {"parameters": n, "config": {"hidden": 1024, "layers": 16, "heads": 16, "quant": "4bit"},
                              **compare(rm, pair_items(recs[: a.n_large]), a.batch_size)}
        print(json.dumps(res["large_model"], indent=1), flush=True)
        if a.image_side:  # the prompt then is mostly image tokens, as with real images
            px = a.image_side ** 2; big = pair_items(upscaled(recs[: a.n_images], a.image_side, Path(tmp) / "images"))
            rm = build_reward_model(Path(tmp) / "base", RMConfig(quant="4bit", lora_r=16, lora_alpha=16, min_pixels=px, max_pixels=px))
            with torch.no_grad(): rm.head.weight.normal_(0, 0.02)
            res["large_images"] = {"parameters": n, "image_side": a.image_side, **compare(rm, big, a.batch_size, processor=load_processor(Path(tmp) / "base", px, px))}
            print(json.dumps(res["large_images"], indent=1))
    write_json(a.out, res)
    atomic_write(Path(a.out).with_suffix(".md"), report(res, " ".join(sys.argv[1:])))


def report(res: dict, args: str) -> str:
    "The markdown table of a run."
    names = {"study_model": f"study `oracle` ({res['study_model']['model']}, {res['study_model']['reward']} reward)",
             "large_model": "random Qwen3-VL, {:.0f}M parameters, 4-bit (head reward)", "large_images": "the same, images at {side}x{side}"}
    rows = []
    for k, r in ((k, res[k]) for k in names if k in res):
        name = names[k].format(res["large_model"]["parameters"] / 1e6, side=r.get("image_side"))
        rows.append(f"| {name} | {r['items']} | {r['one_at_a_time_s']:.2f} | {r['batched_s']:.2f} | **{r['speedup']:.2f}x** "
                    f"({', '.join(f'{x:.2f}' for x in r['speedups'])}) | {r['speedup_unfolded']:.2f}x | {r['speedup_separate_rows']:.2f}x | {r['max_abs_score_diff']:.1e} |")
    s = res["study_model"]
    ops = ", ".join(f"{k.removeprefix('aten::')} {v:.3f} s" for k, v in sorted(s["arithmetic_ops_s"].items(), key=lambda kv: -kv[1]) if v)
    return "\n".join([
        "# Scoring throughput: batched scorer vs one record at a time", "",
        f"Same model, same items, one run; medians of {s['repeats']} timings; {res['torch_threads']} torch thread(s) on {res['cpu']}. "
        "Batched as shipped (LoRA folded, the items of one prompt packed as one row); `unfolded`: adapters kept apart; "
        "`separate rows`: every item its own row.", "",
        "| model | items | loop s | batched s | speed-up (runs) | unfolded | separate rows | max abs score diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        f"On the study model the batched call spends {s['arithmetic_s']:.2f} s of its {s['batched_s']:.2f} s ({s['arithmetic_share_of_batched']:.0%}) in the "
        f"model's arithmetic ({ops}; self times under torch's profiler, {s['arithmetic_share_of_ops']:.0%} of all operator time). Were everything "
        f"else (encoding, packing, Python) free, the batched scorer would be **{s['speedup_ceiling']:.1f}x** the loop, the most batching can win "
        f"on this model; 10x needs the batched call at {s['batched_s_for_10x']:.2f} s, the rest of it cut from "
        f"{s['batched_s'] - s['arithmetic_s']:.2f} s to {s['batched_s_for_10x'] - s['arithmetic_s']:.2f} s.", "",
        f"The model's own passes, timed around them without a profiler in {s['model_passes_call_s']:.2f} s calls (the vision tower "
        f"{s['model_passes_parts_s']['image_features']:.2f} s, the reference and adapted language-model passes {s['model_passes_parts_s']['hidden_states']:.2f} s, "
        f"their answer log-probabilities {s['model_passes_parts_s']['answer_logp']:.2f} s), take **{s['model_passes_s']:.2f} s**: with reading and decoding "
        f"the images, tokenising, positions and packing free, the batched scorer would be **{s['speedup_model_passes_bound']:.1f}x** the loop. "
        "Those passes hold the arithmetic above and the elementwise work around it (norms, rotary embeddings, activations, masks), "
        "which the loop runs too.", "",
        f"    .venv/bin/python benchmarks/throughput.py {args}".rstrip(), ""])


if __name__ == "__main__":
    main()
