"""Device, precision and launch settings of the reward model: batches and features follow the model's device (a no-op
on the CPU), `compute_dtype` and `attn_implementation` train, save, reload and can be overridden for scoring, the
defaults keep every fingerprint, the accelerate configs in configs/accelerate load with accelerate's own launcher,
and the GPU benchmark's CPU smoke mode runs the same code path."""
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from rm_fixtures import ROOT, _env
from dt2it_mrm.config import ConfigError
from dt2it_mrm.core import stable_hash
from dt2it_mrm.reward_model import (BLANK, PairData, RMConfig, base_fingerprint, blank_tensors, build_reward_model, features_by_key, fit,
                                    load_reward_model, model_fingerprint, pair_items, pair_loss, rewards, save_reward_model, trainable)
from dt2it_mrm.score import RewardScorer
from dt2it_mrm.vlm import autocast, load_base, load_processor, to_device

CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
SMALL = dict(lora_r=4, epochs=2, batch_size=4, lr=5e-3, warmup=1, seed=0)


def test_to_device_moves_every_nested_tensor_and_is_the_identity_where_they_already_are():
    t = torch.arange(3.0)
    x = {"a": t, "b": [t, (t, {"c": t})], "n": 3, "s": "x"}
    same = to_device(x, torch.device("cpu"))
    assert same["a"] is t and same["b"][0] is t and same["b"][1][1]["c"] is t and same["n"] == 3  # no copy on the CPU
    assert to_device(x, None) is x
    meta = to_device(x, "meta")
    assert meta["a"].device.type == meta["b"][0].device.type == meta["b"][1][0].device.type == meta["b"][1][1]["c"].device.type == "meta"
    assert isinstance(meta["b"][1], tuple) and meta["s"] == "x" and t.device.type == "cpu"
    assert isinstance(autocast("float32", "cpu"), type(autocast(torch.float32, "cpu"))) and not isinstance(autocast("bf16", "cpu"), type(autocast("float32", "cpu")))


def test_the_new_settings_default_to_todays_behaviour_and_leave_the_fingerprint_as_it_was(base, pairs):
    cfg = RMConfig(**SMALL)
    assert cfg.compute_dtype == "float32" and cfg.attn_implementation is None and cfg.pool == "last"
    rm = build_reward_model(base, cfg)
    assert all(p.dtype == torch.float32 for p in rm.parameters() if p.dtype.is_floating_point)
    new = ("compute_dtype", "attn_implementation", "min_pixels", "max_pixels", "max_length", "image_cache_mb", "feature_cache_mb", "pool", "center", "reward", "lm_beta", "lm_reference", "share_prefix", "max_tokens")
    old = {k: v for k, v in asdict(cfg).items() if k not in new}  # the config before these settings
    h = __import__("hashlib").sha256()
    for n, t in sorted((n, p) for n, p in rm.named_parameters() if "lora_" in n or not n.startswith("vlm.")):
        h.update(n.encode()); h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    assert model_fingerprint(rm) == stable_hash(base_fingerprint(base), old, h.hexdigest())
    for change in ({"compute_dtype": "bf16"}, {"pool": "sum"}, {"reward": "lm"}, {"share_prefix": True}):
        rm.cfg = RMConfig(**SMALL, **change)
        assert model_fingerprint(rm) != stable_hash(base_fingerprint(base), old, h.hexdigest())  # a setting that changes scores changes it


def test_bad_precision_and_attention_settings_get_clear_errors(base):
    with pytest.raises(ConfigError, match="compute_dtype"): RMConfig(compute_dtype="fp64")
    with pytest.raises(ConfigError, match="attn_implementation"): RMConfig.from_params({"attn_implementation": "fast"})
    with pytest.raises(ValueError, match="share_prefix needs a 4-D attention mask"): RMConfig(share_prefix=True, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="fp16 needs a GPU"): build_reward_model(base, RMConfig(compute_dtype="fp16", **SMALL), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash_attention_2.*CUDA"): load_base(base, "none", attn_implementation="flash_attention_2")


def test_bf16_with_sdpa_trains_saves_and_scores_with_its_settings_and_a_float32_override(base, pairs, tmp_path):
    cfg = RMConfig(**SMALL, compute_dtype="bf16", attn_implementation="sdpa")
    rm = build_reward_model(base, cfg)
    assert rm.vlm.get_base_model().model.language_model.embed_tokens.weight.dtype == torch.bfloat16  # the base's unquantised weights
    assert {p.dtype for p in trainable(rm).values()} == {torch.float32}  # LoRA and heads keep float32 master weights
    assert rm.vlm.get_base_model().config._attn_implementation == "sdpa"
    data = PairData(load_processor(base), pairs[:8])
    rep = fit(rm, data, cfg, evals={"tr": data}, progress=False)
    assert np.isfinite([h["loss"] for h in rep["history"]]).all() and 0 <= rep["history"][-1]["acc_tr"] <= 1
    mine = rewards(rm, data, features_by_key(rm, data, {BLANK: blank_tensors(data.processor)}))
    assert mine.dtype == np.float32 and np.unique(mine).size > 1
    save_reward_model(rm, tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())["config"]
    assert meta["compute_dtype"] == "bf16" and meta["attn_implementation"] == "sdpa"
    back = load_reward_model(tmp_path / "rm")
    assert back.cfg.compute_dtype == "bf16" and back.cfg.attn_implementation == "sdpa"
    assert back.vlm.get_base_model().model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    items = pair_items(pairs[:8])
    sc = RewardScorer(back, batch_size=16)
    np.testing.assert_allclose(sc(items), mine.astype(float), atol=2e-2)  # bf16 scoring: same model, another summation order
    f32 = RewardScorer.load(tmp_path / "rm", compute_dtype="float32", attn_implementation="eager", batch_size=16)
    m = f32.models[0]
    assert m.cfg.compute_dtype == "float32" and m.vlm.get_base_model().model.language_model.embed_tokens.weight.dtype == torch.float32
    assert f32.fingerprint != sc.fingerprint  # the override is part of what produced the scores
    np.testing.assert_allclose(f32(items), sc(items), atol=5e-2)


def test_a_float32_fit_after_a_bf16_fit_in_one_process_runs_without_mixed_precision(base, pairs):
    data = PairData(load_processor(base), pairs[:8])
    def losses(**kw):
        cfg = RMConfig(**SMALL, **kw); rm = build_reward_model(base, cfg)
        return [h["loss"] for h in fit(rm, data, cfg, progress=False)["history"]]
    before = losses(); half = losses(compute_dtype="bf16"); after = losses()
    assert before == after and half != before


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.name)
def test_each_accelerate_config_loads_with_accelerates_own_launcher(cfg, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType
    c = load_config_from_file(str(cfg))
    assert isinstance(c, ClusterConfig) and c.mixed_precision == "no"  # precision is the reward model's compute_dtype
    text = cfg.read_text()
    assert text.startswith("#") and "Use it" in text.split("compute_environment")[0]  # each says when to use it
    args = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(cfg), "train.py"]))[0]
    kind = {"ddp.yaml": DistributedType.MULTI_GPU, "multinode_ddp.yaml": DistributedType.MULTI_GPU,
            "fsdp.yaml": DistributedType.FSDP, "deepspeed_zero2.yaml": DistributedType.DEEPSPEED}[cfg.name]
    assert c.distributed_type == kind and args.num_processes >= 2
    if cfg.name == "multinode_ddp.yaml": assert c.num_machines >= 2 and c.main_process_ip and c.main_process_port
    if cfg.name == "deepspeed_zero2.yaml": assert args.use_deepspeed and int(args.zero_stage) == 2
    if cfg.name == "fsdp.yaml":
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.launch import prepare_multi_gpu_env
        env = prepare_multi_gpu_env(args)
        assert env["FSDP_VERSION"] == "1" and env["FSDP_USE_ORIG_PARAMS"] == "true"
        for k, v in env.items():
            if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP")): monkeypatch.setenv(k, v)
        plugin = FullyShardedDataParallelPlugin()  # accelerate's own reading of what launch hands each process
        assert plugin.fsdp_version == 1 and plugin.use_orig_params and plugin.min_num_params == 100_000_000


def test_the_gpu_benchmark_smoke_mode_runs_fit_on_the_cpu_and_writes_only_to_out(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_qlora.py", "--smoke", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_qlora.json").read_text())
    assert set(res["modes"]) == {"qlora_4bit", "lora_bf16"} and res["smoke"]
    q, f = res["modes"]["qlora_4bit"], res["modes"]["lora_bf16"]
    assert q["quantized_layers"] > 0 and f["quantized_layers"] == 0 and q["compute_dtype"] == f["compute_dtype"] == "bf16"
    for m in (q, f): assert m["pairs_per_s"] > 0 and m["timed_steps"] == m["steps"] - m["warmup_steps"] > 0 and np.isfinite(m["last_loss"])
    assert "QLoRA" in (tmp_path / "gpu_qlora.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run for real")
def test_the_gpu_benchmark_without_a_gpu_says_so_and_writes_nothing():
    before = set((ROOT / "reports" / "bench").iterdir())
    r = subprocess.run([sys.executable, "benchmarks/gpu_qlora.py"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env())
    assert r.returncode == 0 and "no CUDA GPU" in r.stdout
    assert set((ROOT / "reports" / "bench").iterdir()) == before


DDP = """
import sys, json
from accelerate import PartialState
from dt2it_mrm.reward_model import RMConfig, train_reward_model
base, data, out = sys.argv[1:]
recs = [json.loads(l) for l in open(data)]
cfg = RMConfig(lora_r=4, epochs=1, batch_size=8, lr=5e-3, warmup=1, seed=0, compute_dtype="bf16", eval_every=1)
rm, rep = train_reward_model(recs[:16], base, cfg, evals={"dev": recs[16:24]}, out_dir=out, progress=False)
st = PartialState()
assert rep["processes"] == st.num_processes == 2 and st.distributed_type.value == "MULTI_CPU" and type(rm).__name__ == "RewardModel"
json.dump([h["acc_dev"] for h in rep["history"]], open(f"{out}.acc{st.process_index}.json", "w"))
"""


def test_two_processes_train_a_bf16_model_with_evaluations_through_the_wrapped_model_and_one_saves_it(base, world, tmp_path):
    script = tmp_path / "ddp.py"; script.write_text(DDP); out = tmp_path / "rm"
    # `accelerate launch --cpu --num_processes 2` starts ONE process (CPU multi-process needs mpirun there); torchrun starts two,
    # and accelerate inside them sees a 2-process MULTI_CPU (gloo) run, which wraps the model in DDP
    launch = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), str(base),
              str(world / "train_oracle.jsonl"), str(out)]
    r = subprocess.run(launch, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a0, a1 = (json.loads(Path(f"{out}.acc{i}.json").read_text()) for i in (0, 1))
    assert a0 == a1 and len(a0) == 2 and all(0 <= a <= 1 for a in a0)  # every process evaluates the same (synchronised) model
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["config"]["compute_dtype"] == "bf16" and meta["train"]["processes"] == 2
    assert load_reward_model(out).cfg.compute_dtype == "bf16"


def test_fit_refuses_an_accelerator_whose_precision_or_accumulation_contradicts_the_config(base, pairs):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    data = PairData(load_processor(base), pairs[:4])
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=True, gradient_accumulation_steps=1)
    cfg = RMConfig(**SMALL, compute_dtype="bf16")
    with pytest.raises(ValueError, match="mixed_precision 'bf16'"): fit(build_reward_model(base, cfg), data, cfg, accelerator=acc, progress=False)
    cfg = RMConfig(**{**SMALL, "grad_accum": 2})
    with pytest.raises(ValueError, match="grad_accum is 2"): fit(build_reward_model(base, cfg), data, cfg, accelerator=acc, progress=False)
