"""What the pinned CPU mode costs in time: one reward-model training of realistic size (400 pairs of a generated world,
the study's base sizes, RMConfig defaults but two epochs), each in a fresh process, under

- `unpinned_2t`: no pinning, torch's default threads (all cores);
- `unpinned_1t`: no ISA pinning, 1 thread (separates the cost of one thread from the cost of the pins);
- `pinned_1t`, `pinned_2t`: `pinned_env("avx2", threads)` + `apply_pins`;
- `pinned_1t_mkl_compatible`: as `pinned_1t` with MKL's COMPATIBLE branch (the only one MKL documents as giving the same
  bits on Intel and non-Intel CPUs);
- `pinned_1t_x2`, `pinned_1t_x3`: two or three `pinned_1t` processes at the same time (throughput of 2 or 3 workers on
  this machine). From them, `three_worlds`: the wall time of a stage fanned out over three worlds with `base.workers`
  2 (two rounds: two worlds, then one alone on one core) against 3 (one round, the cores shared).

Median of `--repeats` runs each. Writes reports/bench/repro_cost.json and prints a table.

    .venv/bin/python benchmarks/repro_cost.py [--pairs 400] [--repeats 2] [--out reports/bench/repro_cost.json]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dt2it_mrm.repro import PIN_VARS, pinned_env  # noqa: E402  (no torch import)

SIZES = dict(hidden=128, layers=2, heads=4, vision_hidden=64, vision_layers=2)  # the study's base (params.yaml pretrain_base.arch)
RM = dict(quant="4bit", epochs=2.0, seed=0)  # RMConfig defaults otherwise (lora_r 16, batch 16): 50 steps on 400 pairs
VARIANTS = {  # name -> (pinned isa or None, threads or None for torch's default, extra env, processes at once)
    "unpinned_2t": (None, None, {}, 1), "unpinned_1t": (None, 1, {}, 1),
    "pinned_1t": ("avx2", 1, {}, 1), "pinned_2t": ("avx2", 2, {}, 1),
    "pinned_1t_mkl_compatible": ("avx2", 1, {"MKL_CBWR": "COMPATIBLE"}, 1), "pinned_1t_x2": ("avx2", 1, {}, 2),
    "pinned_1t_x3": ("avx2", 1, {}, 3)}


def child(work: Path, threads: int | None, pinned: bool):
    "One timed training in this (fresh) process; prints a JSON line."
    t0 = time.perf_counter()
    import torch
    from dt2it_mrm.repro import apply_pins
    if pinned: apply_pins(threads)
    from dt2it_mrm.core import set_offline
    from dt2it_mrm.reward_model import RMConfig, train_reward_model
    set_offline(); os.chdir(work)
    recs = [json.loads(l) for l in Path("pairs.jsonl").read_text().splitlines()]
    t1 = time.perf_counter()
    _, rep = train_reward_model(recs, "base", RMConfig(**RM), progress=False)
    print(json.dumps({"train_s": time.perf_counter() - t1, "fit_s": rep["wall_s"], "startup_s": t1 - t0, "steps": rep["steps"],
                      "threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability()}))


def setup(work: Path, n_pairs: int):
    "A world with `n_pairs` training pairs and a random base of the study's sizes, in `work`."
    from dt2it_mrm.core import set_offline, write_jsonl
    from dt2it_mrm.vlm import build_base, save_base, train_tokenizer, world_texts
    from dt2it_mrm.world import WorldConfig, generate_world
    set_offline(); cwd = os.getcwd(); os.chdir(work)
    generate_world(WorldConfig(n_train=n_pairs, n_test=4, n_expert=2, n_pretrain=4), "world", seed=0, progress=False)
    recs = [json.loads(l) for l in Path("world/train_oracle.jsonl").read_text().splitlines()][:n_pairs]
    write_jsonl("pairs.jsonl", recs)
    tok = train_tokenizer(world_texts(["world/pretrain.jsonl", "world/train_raw.jsonl"]), vocab_size=1000)
    save_base(*build_base("qwen3_vl", tok, seed=0, **SIZES), "base"); os.chdir(cwd)
    return len(recs)


def env_for(isa, threads, extra) -> dict:
    "A clean environment (the caller's pinning variables removed) with the variant's pins."
    env = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    env["PYTHONPATH"] = str(ROOT)
    if isa: env |= pinned_env(isa, threads)
    elif threads: env |= pinned_env(None, threads)
    return env | extra


def launch(work, isa, threads, extra, n) -> list[dict]:
    "Start `n` child trainings at once; wait for all; their reports (plus the wall time of the whole batch)."
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", str(work), "--threads", str(threads or 0)] + (["--pinned"] if isa else [])
    ps = [subprocess.Popen(cmd, env=env_for(isa, threads, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate() for p in ps]
    wall = time.perf_counter() - t0
    for p, (o, e) in zip(ps, outs):
        if p.returncode: raise RuntimeError(f"child failed ({isa}, {threads}):\n{e[-3000:]}")
    return [json.loads(o.strip().splitlines()[-1]) | {"batch_wall_s": wall} for o, _ in outs]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=400); ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS)); ap.add_argument("--out", default="reports/bench/repro_cost.json")
    ap.add_argument("--child"); ap.add_argument("--threads", type=int, default=0); ap.add_argument("--pinned", action="store_true")
    a = ap.parse_args()
    if a.child: return child(Path(a.child), a.threads or None, a.pinned)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="repro_cost_") as tmp:
        n = setup(Path(tmp), a.pairs); setup_s = time.perf_counter() - t_start
        runs = {v: [] for v in a.variants}
        for r in range(a.repeats):  # interleaved: a drift in the machine's load touches every variant alike
            for v in a.variants:
                isa, threads, extra, procs = VARIANTS[v]
                runs[v].append(launch(Path(tmp), isa, threads, extra, procs)); print(f"  {v} run {r + 1}: {[round(x['train_s'], 1) for x in runs[v][-1]]} s", flush=True)
    rows = {}
    for v, rs in runs.items():
        isa, threads, extra, procs = VARIANTS[v]
        train = statistics.median(x["train_s"] for batch in rs for x in batch)
        wall = statistics.median(batch[0]["batch_wall_s"] for batch in rs)
        rows[v] = {"isa": isa, "threads": rs[0][0]["threads"], "processes": procs, "extra_env": extra, "steps": rs[0][0]["steps"],
                   "capability": rs[0][0]["capability"], "train_s": round(train, 2), "train_s_runs": [round(x["train_s"], 2) for b in rs for x in b],
                   "batch_wall_s": round(wall, 2), "trainings_per_min": round(60 * procs / wall, 3)}
    ref = rows.get("unpinned_2t")
    for r in rows.values():
        if ref: r["time_vs_unpinned_2t"] = round(r["train_s"] / ref["train_s"], 3); r["throughput_vs_unpinned_2t"] = round(r["trainings_per_min"] / ref["trainings_per_min"], 3)
    three = None
    if {"pinned_1t", "pinned_1t_x2", "pinned_1t_x3"} <= set(rows):
        w2 = rows["pinned_1t_x2"]["batch_wall_s"] + rows["pinned_1t"]["batch_wall_s"]
        three = {"workers_2_s": round(w2, 2), "workers_3_s": rows["pinned_1t_x3"]["batch_wall_s"],
                 "ratio_3_vs_2": round(rows["pinned_1t_x3"]["batch_wall_s"] / w2, 3)}
    from dt2it_mrm.core import write_json
    from dt2it_mrm.repro import machine_report
    out = {"pairs": n, "base": SIZES, "rm": RM, "repeats": a.repeats, "variants": rows, "three_worlds": three, "setup_s": round(setup_s, 1),
           "total_s": round(time.perf_counter() - t_start, 1), "machine": machine_report()}
    write_json(ROOT / a.out, out)
    print(f"\n{'variant':26s} {'thr':>3s} {'procs':>5s} {'train s':>8s} {'x unpinned':>10s} {'trainings/min':>13s} {'x thrpt':>7s}")
    for v, r in rows.items():
        print(f"{v:26s} {r['threads']:3d} {r['processes']:5d} {r['train_s']:8.1f} {r.get('time_vs_unpinned_2t', 0):10.2f} {r['trainings_per_min']:13.2f} {r.get('throughput_vs_unpinned_2t', 0):7.2f}")
    if three: print(f"a stage over 3 worlds: {three['workers_2_s']:.1f} s with 2 workers, {three['workers_3_s']:.1f} s with 3 ({three['ratio_3_vs_2']:.2f}x)")
    print(f"wrote {a.out} ({out['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
