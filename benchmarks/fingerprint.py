"""A bitwise fingerprint of a tiny end-to-end run of the pipeline in this process: world -> tokenizer -> tiny Qwen3-VL
base -> a few pre-training steps -> 4-bit QLoRA reward model (~10 steps) -> scores of test_iid.

Prints JSON {"weights", "scores", "base": 16-hex sha256 prefixes, "seconds", "machine": machine_report(), ...}; two
machines (or two environments) ran the same kernels when the three hashes agree. `--pinned` sets
`dt2it_mrm.repro.pinned_env(isa, threads)` before torch is imported (overriding the caller's environment) and
`apply_pins` after; without it the process runs with whatever the environment says.

    .venv/bin/python benchmarks/fingerprint.py --pinned [--isa avx2] [--threads 1] [--out tests/fingerprint.json]
"""
import argparse, hashlib, json, os, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dt2it_mrm.repro import PIN_ISAS, apply_pins, machine_report, pinned_env  # noqa: E402  (no torch import)

TINY = dict(hidden=32, layers=2, heads=2, vision_hidden=32, vision_layers=1)  # tests/rm_fixtures.py's sizes
PRETRAIN = dict(epochs=2.0, batch_size=8, warmup=2, val_images=4, eval_every=100, seed=0)  # 16 train records: 4 steps
RM = dict(quant="4bit", lora_r=4, epochs=2.0, batch_size=8, lr=5e-3, warmup=2, seed=0)  # 40 pairs: 10 steps


def digest(arrays) -> str:
    "16 hex characters of the sha256 of (name, bytes) pairs, in the given order."
    h = hashlib.sha256()
    for name, b in arrays: h.update(name.encode()); h.update(b"\0"); h.update(b)
    return h.hexdigest()[:16]


def tensor_digest(named: dict) -> str:
    "Digest of float32 tensors by sorted name."
    return digest((n, named[n].detach().float().contiguous().numpy().tobytes()) for n in sorted(named))


def run(work: Path) -> dict:
    "The tiny pipeline in folder `work` (relative paths only, so nothing machine-specific enters the data)."
    import numpy as np
    from dt2it_mrm.core import set_offline
    from dt2it_mrm.reward_model import RMConfig, pair_items, train_reward_model, trainable
    from dt2it_mrm.score import RewardScorer
    from dt2it_mrm.vlm import PretrainConfig, build_base, pretrain, save_base, train_tokenizer, world_texts
    from dt2it_mrm.world import WorldConfig, generate_world
    set_offline(); os.chdir(work); t = {}
    t0 = time.perf_counter()
    generate_world(WorldConfig(n_train=40, n_test=12, n_expert=2, n_pretrain=12), "world", seed=0, progress=False)
    read = lambda name: [json.loads(l) for l in Path(f"world/{name}.jsonl").read_text().splitlines()]
    tok = train_tokenizer(world_texts(["world/pretrain.jsonl", "world/train_raw.jsonl"]))
    t["world_s"] = time.perf_counter() - t0; t0 = time.perf_counter()
    model, proc = build_base("qwen3_vl", tok, seed=0, **TINY)
    rep = pretrain(model, proc, read("pretrain"), PretrainConfig(**PRETRAIN), progress=False)
    base_hash = tensor_digest(model.state_dict())
    save_base(model, proc, "base")
    t["pretrain_s"] = time.perf_counter() - t0; t0 = time.perf_counter()
    rm, rrep = train_reward_model(read("train_oracle"), "base", RMConfig(**RM), out_dir="rm", progress=False)
    weights = tensor_digest(trainable(rm))
    t["train_s"] = time.perf_counter() - t0; t0 = time.perf_counter()
    scores = RewardScorer.load("rm")(pair_items(read("test_iid"))).astype(np.float64)
    t["score_s"] = time.perf_counter() - t0
    return {"weights": weights, "scores": digest([("scores", scores.tobytes())]), "base": base_hash,
            "pretrain_steps": rep["steps"], "pretrain_val_loss": rep["final"].get("val_loss"), "rm_steps": rrep["steps"],
            "rm_final_loss": rrep["history"][-1]["loss"], "scores_head": [round(float(s), 6) for s in scores[:4]],
            "stage_seconds": {k: round(v, 2) for k, v in t.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pinned", action="store_true", help="set pinned_env(isa, threads) before torch, apply_pins after")
    ap.add_argument("--isa", default="avx2", choices=PIN_ISAS); ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.pinned:
        assert "torch" not in sys.modules, "torch was imported before the pinning variables were set"
        os.environ.update(pinned_env(a.isa, a.threads))
    t0 = time.perf_counter()
    import torch  # noqa: F401  (first import: after the environment is final)
    pins = apply_pins(a.threads) if a.pinned else None
    with tempfile.TemporaryDirectory(prefix="fingerprint_") as tmp:
        res = run(Path(tmp))
    os.chdir(ROOT)
    out = {"weights": res.pop("weights"), "scores": res.pop("scores"), "base": res.pop("base"),
           "seconds": round(time.perf_counter() - t0, 1), "pinned": a.pinned,
           "pins": pins and {k: v for k, v in pins.items() if k != "env"}, "run": res, "machine": machine_report()}
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    if a.out: Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
