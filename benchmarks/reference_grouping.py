"""Does the implicit reward's reference pass get cheaper when it is packed by question rather than by pair?

The reference is the frozen base on a blank image, so its prompt (template, blank image, question) is the same for
every item that asks the same question, whatever its image: packed by question, that prompt is encoded once for up to
`G` answers instead of once per pair (the scorer's packing today). Fewer tokens, but longer rows (attention grows with
their square, and rows of one batch are padded to the longest). This times the reference pass alone on the study's
`oracle` model, the scorer's own packing (`RewardModel.pack`) with groups of each size (batched by packed length,
the least padding), medians of `--repeats`
alternated timings, and checks the references agree. Writes reports/bench/reference_grouping.json and .md.

    .venv/bin/python benchmarks/reference_grouping.py [--n 200] [--sizes 4 8 16] [--repeats 3]
"""
import argparse, json, platform, sys, time
from pathlib import Path

import numpy as np
import torch

from dt2it_mrm.core import atomic_write, set_offline, write_json
from dt2it_mrm.reward_model import ItemData, blank_tensors, load_reward_model, member_paths, packed_length, pair_items, row_positions_of
from dt2it_mrm.score import _local, merged_lora_layers, swapped
from dt2it_mrm.vlm import image_features, load_processor


def batches(keys: list, ids: list[list[int]], size: int, rows: int) -> list[list[list[int]]]:
    "Items grouped by key, each group cut into pieces of `size`, sorted by their packed length (least padding), then batched by `rows` rows."
    by: dict = {}
    for i, k in enumerate(keys): by.setdefault(k, []).append(i)
    groups = [sorted(g, key=lambda i: (len(ids[i]), i)) for g in by.values()]
    groups = sorted((g[s:s + size] for g in groups for s in range(0, len(g), size)), key=lambda g: (packed_length([ids[i] for i in g]), g[0]))
    out, cur = [], []
    for g in groups:
        if cur and sum(map(len, cur)) + len(g) > rows: out.append(cur); cur = []
        cur.append(g)
    return out + [cur]


def reference_pass(rm, data: ItemData, blank: dict, plan: list[list[list[int]]]) -> tuple[np.ndarray, float, int]:
    "Every item's reference log-probability under `plan`'s packing; the seconds it took and the padded tokens it ran."
    out, tokens, t0 = np.zeros(len(data)), 0, time.perf_counter()
    with torch.inference_mode(), swapped(rm, merged_lora_layers(rm, adapters=False)):
        for groups in plan:
            rows = [i for g in groups for i in g]
            b = data.batch(rows); view = [blank] * len(rows)
            p = rm.pack(b, _local(groups))
            tokens += (p.inputs["input_ids"].numel() if p.inputs is not None else b["input_ids"].numel())
            r = rm.reference_logp({k: v for k, v in b.items() if k != "answer_mask"}, b["answer_mask"], view, view, p, adapters_off=False)
            out[rows] = r.double().numpy()
    return out, time.perf_counter() - t0, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/oracle/w0"); ap.add_argument("--data", default="data/world/w0/test_iid.jsonl")
    ap.add_argument("--n", type=int, default=200, help="pairs (2 items each)"); ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--rows", type=int, default=32, help="rows per forward pass (the scorer's batch_size)")
    ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--out", default="reports/bench/reference_grouping")
    a = ap.parse_args(); set_offline(); torch.set_num_threads(1)
    recs = [json.loads(l) for l in Path(a.data).read_text().splitlines()][: a.n]
    items = pair_items(recs); rm = load_reward_model(member_paths(a.model)[0]); c = rm.cfg; rm.eval()
    proc = load_processor(rm.base_path, c.min_pixels, c.max_pixels)
    data = ItemData(proc, items, c.blank_image, None, c.blank_size, c.image_cache_mb); data.positions = row_positions_of(rm, data)
    blank = image_features(rm.vlm, [blank_tensors(proc, c.blank_size)])[0]
    ids = [t["input_ids"].tolist() for t in data.texts]
    plans = {"pair (as shipped)": batches([(it["image"], it["question"]) for it in items], ids, 2, a.rows),
             **{f"question, up to {g}": batches([it["question"] for it in items], ids, g, a.rows) for g in a.sizes}}
    ref, _, _ = reference_pass(rm, data, blank, plans["pair (as shipped)"])
    times = {k: [] for k in plans}; res = {}
    for _ in range(a.repeats):  # alternated, so that load on the machine falls on every plan alike
        for k, plan in plans.items():
            v, s, tok = reference_pass(rm, data, blank, plan); times[k].append(s)
            res[k] = {"padded_tokens": tok, "max_abs_diff": float(np.abs(v - ref).max()), "rows": sum(len(b) for b in plan)}
    for k in plans: res[k] |= {"s": float(np.median(times[k])), "runs_s": times[k], "vs_pair": float(np.median(times["pair (as shipped)"]) / np.median(times[k]))}
    out = {"model": a.model, "data": a.data, "items": len(items), "distinct_questions": len({it["question"] for it in items}),
           "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "plans": res}
    write_json(Path(a.out + ".json"), out)
    md = ["# The implicit reward's reference pass: packed by pair or by question", "",
          f"{len(items)} items of `{a.data}` ({out['distinct_questions']} distinct questions), the study's `{a.model}`, reference pass alone "
          f"(frozen base, blank image), {a.rows} rows a pass, medians of {a.repeats} alternated timings, {out['torch_threads']} torch thread(s).", "",
          "| packing | packed rows | padded tokens | seconds | speed-up vs pair | max abs diff |", "| --- | --- | --- | --- | --- | --- |",
          *[f"| {k} | {r['rows']} | {r['padded_tokens']:,} | {r['s']:.3f} | {r['vs_pair']:.2f}x | {r['max_abs_diff']:.1e} |"
            for k, r in res.items()], "",
          "    .venv/bin/python benchmarks/reference_grouping.py " + " ".join(sys.argv[1:])]
    atomic_write(Path(a.out + ".md"), "\n".join(md) + "\n"); print("\n".join(md))


if __name__ == "__main__":
    main()
