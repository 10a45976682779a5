"""GPU training throughput and peak memory of the reward model: QLoRA (4-bit NF4 base, bf16 compute) vs bf16 LoRA
(unquantised bf16 base), on a Qwen2-VL-2B-sized model with random weights (text: hidden 1536, 28 layers, 12 heads,
2 KV heads, MLP 8960, vocabulary 151,936; vision: 1280 wide, 32 deep, 16 heads, MLP ratio 4) built from a config with
`dt2it_mrm.vlm`'s family machinery and saved to a temporary folder. Each mode trains with `fit` (the library's own
training loop, through accelerate) on generated 448x448 images and prompts, in its own fresh process.

Measured per mode: pairs per second over the steps after the warm-up (each step ends on `loss.item()`, which waits for
the GPU, and the clock is read after `torch.cuda.synchronize()`), and `torch.cuda.max_memory_allocated` (and
reserved) from the loaded model through the whole training, with the device's name. Results go to
`reports/bench/gpu_qlora.json` and `.md`.

Without CUDA it prints that and exits 0 without writing anything, unless `--smoke`: a tiny config on the CPU that
runs the same code path in seconds and writes to `--out` (default: a fresh temporary folder), never to reports/.

    .venv/bin/python benchmarks/gpu_qlora.py [--steps 40 --warmup 8 --batch-size 8 --grad-ckpt]
    .venv/bin/python benchmarks/gpu_qlora.py --smoke --out reports/bench/smoke
"""
import argparse, json, os, random, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QWEN2_VL_2B = dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=151936,
                   vision_hidden=1280, vision_layers=32, vision_heads=16, vision_mlp_ratio=4, tie=True)
SMOKE = dict(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=None,
             vision_hidden=32, vision_layers=1, vision_heads=1, vision_mlp_ratio=2, tie=False)
MODES = {"qlora_4bit": "4bit", "lora_bf16": "none"}  # name -> RMConfig.quant; both compute in bf16
WORDS = ("red green blue yellow circle square triangle star small large left right top bottom dark plain textured "
         "outline how many what colour is there a the shape in of on picture image answer").split()


def sentence(rnd, n: int) -> str: return " ".join(rnd.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_data(folder: Path, n_pairs: int, n_images: int, size: int, seed: int = 0) -> list[dict]:
    "Random-noise PNG images of `size` and preference records over them, with prompts and answers of varied length."
    import numpy as np
    from PIL import Image
    rnd, rng = random.Random(seed), np.random.default_rng(seed)
    imgs = []
    for i in range(n_images):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p); imgs.append(str(p))
    return [{"id": f"p{i}", "images": [imgs[i % n_images]], "question": sentence(rnd, rnd.randint(8, 24)),
             "chosen": sentence(rnd, rnd.randint(10, 60)), "rejected": sentence(rnd, rnd.randint(10, 60))} for i in range(n_pairs)]


def build(path: Path, records: list[dict], sizes: dict, image_size: int) -> int:
    "Save a random Qwen2-VL of `sizes` (and its processor for `image_size` images) to `path`; its parameter count."
    import torch
    from dt2it_mrm.vlm import FAMILIES, make_processor, save_base, tiny_config, train_tokenizer
    tok = train_tokenizer([t for r in records for t in (r["question"], r["chosen"], r["rejected"])])
    cfg = tiny_config("qwen2_vl", tok, hidden=sizes["hidden"], layers=sizes["layers"], heads=sizes["heads"],
                      vision_hidden=sizes["vision_hidden"], vision_layers=sizes["vision_layers"], image_size=image_size)
    t, v = cfg.text_config, cfg.vision_config  # what tiny_config does not size: GQA, MLP widths, vocabulary, tying
    t.num_key_value_heads, t.intermediate_size = sizes["kv_heads"], sizes["intermediate"]
    v.num_heads, v.mlp_ratio = sizes["vision_heads"], sizes["vision_mlp_ratio"]
    if sizes["vocab"]: t.vocab_size = cfg.vocab_size = sizes["vocab"]
    cfg.tie_word_embeddings = t.tie_word_embeddings = sizes["tie"]
    torch.manual_seed(0)
    model = FAMILIES["qwen2_vl"].model_cls(cfg)
    n = sum(p.numel() for p in model.parameters())
    save_base(model, make_processor("qwen2_vl", tok, image_size), path); del model
    return n


def worker(mode: str, base: str, data: str, steps: int, warmup: int, batch_size: int, grad_ckpt: bool, seed: int) -> dict:
    "Train one mode with `fit` for `steps` optimizer steps; throughput after `warmup` steps and peak memory."
    import resource
    import torch
    from dt2it_mrm.core import seed_everything
    from dt2it_mrm.reward_model import PairData, RMConfig, build_reward_model, fit, trainable
    from dt2it_mrm.vlm import load_processor, quantized_modules
    cuda = torch.cuda.is_available()
    recs = [json.loads(l) for l in Path(data).read_text().splitlines()]
    epochs = (steps + 0.5) * batch_size / len(recs)  # fit takes int(epochs * pairs / batch_size) steps
    cfg = RMConfig(quant=MODES[mode], compute_dtype="bf16", attn_implementation="sdpa", lora_r=16, lora_alpha=16,
                   batch_size=batch_size, epochs=epochs, lr=1e-4, warmup=2, grad_ckpt=grad_ckpt, group_by_length=False, seed=seed)
    seed_everything(seed)
    rm = build_reward_model(base, cfg); proc = load_processor(base)
    d = PairData(proc, recs)
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    loaded = torch.cuda.memory_allocated() if cuda else None
    rep = fit(rm, d, cfg, progress=False)
    if cuda: torch.cuda.synchronize()
    h = rep["history"]; assert rep["steps"] == steps, (rep["steps"], steps)
    t_warm = h[warmup - 1]["s"] if warmup else 0.0
    timed = steps - warmup; secs = h[-1]["s"] - t_warm
    mb = lambda b: None if b is None else round(b / 2 ** 20, 1)
    return {"mode": mode, "quant": cfg.quant, "compute_dtype": cfg.compute_dtype, "attn_implementation": cfg.attn_implementation,
            "grad_ckpt": grad_ckpt, "steps": steps, "warmup_steps": warmup, "timed_steps": timed, "batch_size_pairs": batch_size,
            "timed_s": round(secs, 3), "pairs_per_s": round(timed * batch_size / secs, 3) if secs > 0 else None,
            "rows_per_s": round(2 * timed * batch_size / secs, 3) if secs > 0 else None,
            "peak_allocated_mb": mb(torch.cuda.max_memory_allocated()) if cuda else None,
            "peak_reserved_mb": mb(torch.cuda.max_memory_reserved()) if cuda else None,
            "model_loaded_mb": mb(loaded), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "first_loss": h[0]["loss"], "last_loss": h[-1]["loss"],
            "trainable_parameters": sum(p.numel() for p in trainable(rm).values()), "quantized_layers": len(quantized_modules(rm)),
            "mean_tokens_per_row": round(sum(d.lengths()) / len(d), 1)}


def markdown(res: dict) -> str:
    "The results as a short Markdown report."
    rows = ["| mode | pairs/s | peak allocated (MB) | peak reserved (MB) | model loaded (MB) | first → last loss |", "|---|---|---|---|---|---|"]
    for m in res["modes"].values():
        if "error" in m: rows.append(f"| {m['mode']} | failed: {m['error'][0][:120]} | | | | |"); continue
        rows.append(f"| {m['mode']} ({m['quant']}, {m['compute_dtype']}) | {m['pairs_per_s']} | {m['peak_allocated_mb']} | "
                    f"{m['peak_reserved_mb']} | {m['model_loaded_mb']} | {m['first_loss']:.4f} → {m['last_loss']:.4f} |")
    s = res["setup"]
    return "\n".join([f"# Reward-model training on {res['device']}: QLoRA 4-bit vs bf16 LoRA", "",
                      f"Base: random Qwen2-VL of {res['base_parameters']:,} parameters ({s['sizes']}); images {s['image_size']}x{s['image_size']}, "
                      f"{s['pairs']} pairs, {s['batch_size']} pairs per step, {s['steps']} steps of which the first {s['warmup']} are warm-up "
                      f"(not timed); gradient checkpointing {'on' if s['grad_ckpt'] else 'off'}; attention sdpa.", "", *rows, "",
                      f"Peak memory of QLoRA relative to bf16 LoRA: {res.get('ratio_peak_allocated')}; throughput ratio: {res.get('ratio_pairs_per_s')}.",
                      f"Versions: {res['versions']}.", ""])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU (seconds), results to --out only")
    ap.add_argument("--out", help="folder for gpu_qlora.json/.md (default: reports/bench, or a temporary folder with --smoke)")
    ap.add_argument("--steps", type=int, default=40); ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--pairs", type=int, default=256); ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the language model")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "BASE", "DATA"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(*a.worker, a.steps, a.warmup, a.batch_size, a.grad_ckpt, seed=0)), flush=True); return 0
    import torch
    if not torch.cuda.is_available() and not a.smoke:
        print("gpu_qlora: no CUDA GPU here, nothing measured and nothing written (run it on a GPU machine, or --smoke for a CPU check)")
        return 0
    modes = a.modes.split(",")
    if bad := [m for m in modes if m not in MODES]: ap.error(f"unknown modes {bad}; known: {list(MODES)}")
    if a.warmup >= a.steps: ap.error("--warmup must be smaller than --steps")
    if a.smoke: a.steps, a.warmup, a.batch_size, a.pairs, a.images, a.image_size = min(a.steps, 3), min(a.warmup, 1), 2, 6, 2, 56
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="gpu_qlora_smoke_")) if a.smoke else ROOT / "reports" / "bench")
    sizes = SMOKE if a.smoke else QWEN2_VL_2B
    from dt2it_mrm.core import OFFLINE_ENV, write_json
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT)}
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)", "smoke": a.smoke, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp); (tmp / "img").mkdir()
        recs = make_data(tmp / "img", a.pairs, a.images, a.image_size)
        data = tmp / "pairs.jsonl"; data.write_text("".join(json.dumps(r) + "\n" for r in recs))
        t0 = time.perf_counter(); res["base_parameters"] = build(tmp / "base", recs, sizes, a.image_size)
        res["build_s"] = round(time.perf_counter() - t0, 1)
        for mode in modes:  # each in a fresh process: its own CUDA peak, its own accelerate state
            cmd = [sys.executable, __file__, "--worker", mode, str(tmp / "base"), str(data), "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--batch-size", str(a.batch_size)] + (["--grad-ckpt"] if a.grad_ckpt else [])
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
            if r.returncode or not line:  # recorded, and the other modes still run (e.g. bf16 LoRA out of memory where QLoRA fits)
                print(f"gpu_qlora: mode {mode} failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}", file=sys.stderr)
                res["modes"][mode] = {"mode": mode, "error": (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]}
            else: res["modes"][mode] = json.loads(line[-1][7:])
    q, f = res["modes"].get("qlora_4bit"), res["modes"].get("lora_bf16")
    if q and f and "error" not in q and "error" not in f:
        if q["peak_allocated_mb"] and f["peak_allocated_mb"]: res["ratio_peak_allocated"] = round(q["peak_allocated_mb"] / f["peak_allocated_mb"], 3)
        if q["pairs_per_s"] and f["pairs_per_s"]: res["ratio_pairs_per_s"] = round(q["pairs_per_s"] / f["pairs_per_s"], 3)
    import bitsandbytes, transformers, peft, accelerate
    res["versions"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                       "peft": peft.__version__, "accelerate": accelerate.__version__, "bitsandbytes": bitsandbytes.__version__}
    res["setup"] = {"sizes": sizes, "image_size": a.image_size, "pairs": a.pairs, "images": a.images, "batch_size": a.batch_size,
                    "steps": a.steps, "warmup": a.warmup, "grad_ckpt": a.grad_ckpt}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_qlora.json", res); (out / "gpu_qlora.md").write_text(markdown(res), encoding="utf-8")
    print(json.dumps({k: v for k, v in res.items() if k != "setup"}, indent=1)); print(f"written: {out / 'gpu_qlora.json'}")
    return 1 if any("error" in m for m in res["modes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
