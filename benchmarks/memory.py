"""Peak memory of one QLoRA (4-bit NF4) training step vs unquantised (fp32) LoRA, on a random VLM config of at least
100M parameters. Writes reports/bench/memory.json.

Method: each mode runs in its own fresh subprocess (so neither sees the other's allocations). The worker imports
everything, builds the reward model and copies every weight out of the checkpoint's memory map (transformers may leave
fp32 weights as lazily read file pages, which would hide them from the process's anonymous memory), frees what loading
left behind (`malloc_trim`), and runs one full training step (forward, backward, AdamW step) while a thread samples
the process's anonymous resident memory (`RssAnon`) every millisecond. CPU tensors live in that memory; there is no
allocator to ask on CPU, so the workers run with glibc returning freed blocks at once (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`): resident memory then follows the live tensors, not the heap's high-water mark. Reported: the step's peak, and the same minus the memory after imports (what the model and
the step add to an idle Python with torch/transformers loaded). Both modes checkpoint activations by default, so the
weights, not the activations of a long batch, decide the comparison; `--no_grad_ckpt` shows the other case.

`--token_budget N` measures the training's token cap instead (`RMConfig.max_tokens`): the same 4-bit step on `--pairs`
pairs whose images are resized to `--image_side` (a real VLM's image size, where activations dominate), with
activations kept, once whole and once cut into pieces of at most N padded tokens (`reward_model.token_pieces`, as `fit`
cuts a micro-batch), prompts shared (`share_prefix`), the study's implicit reward (`reward: lm`: the gradient reaches every LoRA B
matrix at the first step, where a zero value head would stop it). Reported: both peaks, the step times and the largest difference
between the two steps' gradients. Writes reports/bench/token_budget.json and .md.

    .venv/bin/python benchmarks/memory.py [--hidden 1024 --layers 16] [--family qwen3_vl]
    .venv/bin/python benchmarks/memory.py --token_budget 1024 --pairs 8 --image_side 448
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"): return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(mode: str, base: str, data: str, n_pairs: int, grad_ckpt: bool, max_tokens: int | None = None, pixels: int | None = None,
           grads_out: str | None = None, reward: str = "head"):
    import ctypes, gc, threading
    import torch
    from dt2it_mrm.reward_model import BLANK, PairData, RMConfig, blank_tensors, build_reward_model, features_by_key, pair_loss, pair_tokens, token_pieces
    from dt2it_mrm.vlm import load_processor, quantized_modules
    torch.set_num_threads(2)
    rss_import = rss_kb("RssAnon")
    cfg = RMConfig(quant=mode, lora_r=16, lora_alpha=16, batch_size=n_pairs, grad_ckpt=grad_ckpt, min_pixels=pixels, max_pixels=pixels,
                   share_prefix=pixels is not None, max_tokens=max_tokens, **({"reward": "lm", "pool": "sum", "lm_beta": 0.5} if reward == "lm" else {}))
    rm = build_reward_model(base, cfg); proc = load_processor(base, pixels, pixels)
    with torch.no_grad():
        for t in [*rm.parameters(), *rm.buffers()]:
            if t.dtype.is_floating_point: t.data = t.data.clone()  # out of the file mapping, into process memory
    recs = [json.loads(l) for l in Path(data).read_text().splitlines()][:n_pairs]
    d = PairData(proc, recs); feats = features_by_key(rm, d, {BLANK: blank_tensors(proc, 84)})
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss_loaded = rss_kb("RssAnon"); peak = [rss_loaded]; done = threading.Event()
    def sample():
        while not done.is_set(): peak[0] = max(peak[0], rss_kb("RssAnon")); time.sleep(0.001)
    th = threading.Thread(target=sample); th.start(); t0 = time.perf_counter()
    cost = pair_tokens(d, cfg.share_prefix); rm.train(); loss = 0.0; pieces = token_pieces(list(range(n_pairs)), cost, max_tokens)
    for piece in pieces:  # as `fit` runs a micro-batch: each piece's loss scaled by the whole batch's size
        part = pair_loss(rm, d, feats, piece, cfg, scale=1 / n_pairs); part.backward(); loss += part.item(); del part
    if grads_out:
        from safetensors.torch import save_file
        save_file({n: p.grad.detach().contiguous() for n, p in rm.named_parameters() if p.requires_grad and p.grad is not None}, grads_out)
    opt.step(); opt.zero_grad()
    step_s = time.perf_counter() - t0; done.set(); th.join(); peak[0] = max(peak[0], rss_kb("RssAnon"))
    out = {"mode": mode, "anon_after_imports_mb": rss_import / 1024, "anon_loaded_mb": rss_loaded / 1024,
           "step_peak_mb": peak[0] / 1024, "step_s": step_s, "loss": loss, "passes": len(pieces), "max_tokens": max_tokens,
           "padded_tokens_per_pass": [len(q) * max(cost[i] for i in q) for q in pieces],
           "base_parameters": sum(p.numel() for n, p in rm.named_parameters() if "lora_" not in n and not n.startswith("head")),
           "trainable_parameters": sum(p.numel() for p in params), "quantized_layers": len(quantized_modules(rm))}
    out["step_peak_minus_imports_mb"] = out["step_peak_mb"] - out["anon_after_imports_mb"]
    print("RESULT " + json.dumps(out))


def build(path: Path, family: str, hidden: int, layers: int, heads: int) -> int:
    from dt2it_mrm.vlm import build_base, save_base, train_tokenizer, world_texts
    tok = train_tokenizer(world_texts([ROOT / "data/world/w0/pretrain.jsonl"]))
    m, p = build_base(family, tok, seed=0, hidden=hidden, layers=layers, heads=heads, vision_hidden=64, vision_layers=2)
    n = sum(x.numel() for x in m.parameters()); save_base(m, p, path)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen3_vl"); ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16); ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--no_grad_ckpt", action="store_true", help="keep activations (by default both modes checkpoint them)"); ap.add_argument("--data", default="data/world/w0/train_oracle.jsonl")
    ap.add_argument("--out", default=None, help="default reports/bench/memory.json (token_budget.json with --token_budget)")
    ap.add_argument("--token_budget", type=int, default=None, help="measure the training's token cap at this many padded tokens per pass (see above)")
    ap.add_argument("--image_side", type=int, default=448, help="--token_budget: images resized to this side")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "BASE")); ap.add_argument("--max_tokens", type=int, default=None)
    ap.add_argument("--pixels", type=int, default=None); ap.add_argument("--grads_out", default=None); ap.add_argument("--reward", default="head")
    a = ap.parse_args()
    if a.worker: return worker(a.worker[0], a.worker[1], a.data, a.pairs, not a.no_grad_ckpt, a.max_tokens, a.pixels, a.grads_out, a.reward)
    from dt2it_mrm.core import OFFLINE_ENV, write_json
    # large blocks straight from mmap and back to the kernel when freed: resident memory then tracks live tensors
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    if a.token_budget: return token_budget(a, env)
    with tempfile.TemporaryDirectory() as tmp:
        n = build(Path(tmp) / "base", a.family, a.hidden, a.layers, a.heads)
        assert n >= 100_000_000, f"config has only {n:,} parameters"
        res = {mode: run_worker(env, mode, str(Path(tmp) / "base"), "--data", a.data, "--pairs", str(a.pairs), *(["--no_grad_ckpt"] if a.no_grad_ckpt else []))
               for mode in ("4bit", "none")}
    q, f = res["4bit"], res["none"]
    out = {"family": a.family, "parameters": n, "config": {"hidden": a.hidden, "layers": a.layers, "heads": a.heads},
           "pairs_per_step": a.pairs, "grad_ckpt": not a.no_grad_ckpt, "qlora_4bit": q, "lora_fp32": f,
           "ratio_step_peak": q["step_peak_mb"] / f["step_peak_mb"],
           "ratio_step_peak_minus_imports": q["step_peak_minus_imports_mb"] / f["step_peak_minus_imports_mb"],
           "method": "each mode in a fresh subprocess; weights copied out of the checkpoint's memory map; peak anonymous "
                     "resident memory (RssAnon, sampled every ms) of one training step; 'minus imports' subtracts it after "
                     "importing torch, transformers, peft and bitsandbytes, before the model is loaded"}
    write_json(a.out or "reports/bench/memory.json", out); print(json.dumps(out, indent=1))


def run_worker(env: dict, *args: str) -> dict:
    "One worker subprocess's RESULT."
    r = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, cwd=ROOT, env=env)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(line[-1][7:])


def token_budget(a, env: dict):
    "The 4-bit step on resized images, whole and cut into pieces under the token cap: peaks, times and the gradients' largest difference."
    from safetensors.torch import load_file
    from common import upscaled
    from dt2it_mrm.core import atomic_write, write_json
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp); n = build(t / "base", a.family, a.hidden, a.layers, a.heads)
        recs = [json.loads(l) for l in Path(a.data).read_text().splitlines()][:a.pairs]
        data = t / "pairs.jsonl"; data.write_text("".join(json.dumps(r) + "\n" for r in upscaled(recs, a.image_side, t / "images")))
        common = ["4bit", str(t / "base"), "--data", str(data), "--pairs", str(a.pairs), "--pixels", str(a.image_side ** 2), "--no_grad_ckpt", "--reward", "lm"]
        whole = run_worker(env, *common, "--grads_out", str(t / "whole.safetensors"))
        cut = run_worker(env, *common, "--max_tokens", str(a.token_budget), "--grads_out", str(t / "cut.safetensors"))
        g1, g2 = load_file(t / "whole.safetensors"), load_file(t / "cut.safetensors")
        assert g1.keys() == g2.keys() and g1
        diff = max(float((g1[k] - g2[k]).abs().max()) for k in g1); scale = max(float(v.abs().max()) for v in g1.values())
    out = {"family": a.family, "parameters": n, "config": {"hidden": a.hidden, "layers": a.layers, "heads": a.heads}, "pairs_per_step": a.pairs,
           "image_side": a.image_side, "token_budget": a.token_budget, "whole": whole, "cut": cut,
           "ratio_step_peak_minus_imports": cut["step_peak_minus_imports_mb"] / whole["step_peak_minus_imports_mb"],
           "ratio_step_s": cut["step_s"] / whole["step_s"], "max_abs_grad_diff": diff, "max_abs_grad": scale}
    write_json(a.out or "reports/bench/token_budget.json", out)
    md = ["# A token cap on training passes: peak memory of one step, whole and in pieces", "",
          f"Random Qwen3-VL of {n / 1e6:.0f}M parameters, 4-bit, the study's implicit reward, activations kept (no checkpointing), prompts shared; one training step on "
          f"{a.pairs} pairs with images resized to {a.image_side}x{a.image_side}; each run in a fresh process, peak anonymous resident memory "
          "sampled every ms, minus the memory after imports.", "",
          "| run | passes | padded tokens per pass | step peak MB | step s | loss |", "| --- | --- | --- | --- | --- | --- |",
          *[f"| {name} | {r['passes']} | {', '.join(map(str, r['padded_tokens_per_pass']))} | {r['step_peak_minus_imports_mb']:.0f} | {r['step_s']:.1f} | {r['loss']:.6f} |"
            for name, r in (("whole batch", whole), (f"max_tokens {a.token_budget}", cut))], "",
          f"The cap holds the step's peak at **{out['ratio_step_peak_minus_imports']:.2f}x** the whole batch's, at {out['ratio_step_s']:.2f}x its time; "
          f"the two steps' gradients differ by at most {diff:.1e} (largest gradient {scale:.1e}).", "",
          "    .venv/bin/python benchmarks/memory.py " + " ".join(sys.argv[1:]), ""]
    atomic_write(Path(a.out or "reports/bench/token_budget.json").with_suffix(".md"), "\n".join(md)); print("\n".join(md))


if __name__ == "__main__":
    main()
