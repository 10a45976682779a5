"""The QLoRA reward model: the CPU 4-bit gradient trap, training behaviour, every family and quantisation, fusion
variants, ensembles, save/reload in a fresh process, and a 2-process `accelerate launch` that trains the same model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rm_fixtures import ROOT, _env, make_base, run_py
from dt2it_mrm.reward_model import (BLANK, FUSIONS, PENALTY_BIAS, PairData, pair_items, RMConfig, blank_tensors, bt_loss, build_reward_model,
                                    features_by_key, fit, pack_rows, pair_groups, row_positions, row_positions_of, load_reward_model, member_paths, pair_loss, pool_answer, rewards,
                                    train_ensemble, train_reward_model, trainable)
from dt2it_mrm.vlm import FAMILIES, load_processor, quantized_modules


def _data(base, recs, blank=False):
    proc = load_processor(base)
    return proc, PairData(proc, recs, blank)


def _feats(rm, proc, data):
    return features_by_key(rm, data, {BLANK: blank_tensors(proc, 84)})


def test_bt_loss_is_weighted_and_has_a_margin():
    c, r = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    per = bt_loss(c, r, reduction="none")
    assert torch.allclose(per, torch.nn.functional.softplus(r - c))
    assert torch.allclose(bt_loss(c, r, torch.tensor([2.0, 0.0, 1.0])), (2 * per[0] + per[2]) / 3)
    assert bt_loss(c, r, margin=1.0) > bt_loss(c, r) and torch.isclose(bt_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0), torch.log(torch.tensor(2.0)))


def test_bt_loss_soft_labels_and_the_product_of_experts_offset_by_hand():
    c, r = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    plain = bt_loss(c, r, reduction="none")
    assert torch.equal(bt_loss(c, r, reduction="none", target=torch.ones(3), offset=torch.zeros(3)), plain)  # hard labels, no offset: the same bits
    t = torch.tensor([0.9, 0.5, 0.7])
    soft = bt_loss(c, r, reduction="none", target=t)
    assert torch.allclose(soft, t * torch.nn.functional.softplus(r - c) + (1 - t) * torch.nn.functional.softplus(c - r))
    assert torch.isclose(soft[1], torch.log(torch.tensor(2.0)))  # a coin-flip label pulls the margin to 0
    o = torch.tensor([2.0, -1.0, 0.0])  # the nuisance expert already explains pair 0 and opposes pair 1
    assert torch.allclose(bt_loss(c, r, reduction="none", offset=o), torch.nn.functional.softplus(r - c - o))


def test_pair_data_reads_soft_labels_and_nuisance_margins_only_where_given(base, pairs):
    proc = load_processor(base)
    plain = PairData(proc, pairs[:4])
    assert plain.target is None and plain.offset is None  # the loss takes exactly the old path
    recs = [dict(r, meta={**r.get("meta", {}), "soft_label": 0.8, "nuisance_margin": 1.5}) for r in pairs[:2]] + pairs[2:4]
    d = PairData(proc, recs)
    assert torch.allclose(d.target, torch.tensor([0.8, 0.8, 1.0, 1.0])) and torch.allclose(d.offset, torch.tensor([1.5, 1.5, 0.0, 0.0]))


def test_a_nuisance_expert_takes_the_pairs_it_explains_off_the_reward_model(base, pairs):
    "Product of experts: the pairs a frozen expert already explains teach the reward model far less than the others."
    cfg = RMConfig(lora_r=4, epochs=6, batch_size=8, lr=5e-3, warmup=2, seed=0)
    recs = pairs[:16]
    poe = [dict(r, meta={**r.get("meta", {}), "nuisance_margin": 8.0 if i % 2 else 0.0}) for i, r in enumerate(recs)]  # odd pairs explained
    ratio = {}
    for name, data_recs in {"plain": recs, "poe": poe}.items():
        rm = build_reward_model(base, cfg)
        proc, data = _data(base, data_recs)
        fit(rm, data, cfg, progress=False)
        r = rewards(rm, data, _feats(rm, proc, data)); m = r[:16] - r[16:]
        ratio[name] = float(m[1::2].mean() / m[0::2].mean())
    assert ratio["plain"] > 0.6 and ratio["poe"] < 0.7 * ratio["plain"], ratio  # ignoring the offset would give the same ratio: same seed, same data


def _lora_grads(rm, data, feats, pairs_idx):
    """One eval/no-grad pass first (the pass that makes bitsandbytes repack 4-bit weights on AVX512-BF16 CPUs), then
    the training loss's gradients of the trainable weights."""
    rm.eval()
    with torch.no_grad(): rewards(rm, data, feats)
    rm.train(); rm.zero_grad()
    pair_loss(rm, data, feats, pairs_idx, rm.cfg).backward()
    return {n: p.grad.clone() for n, p in trainable(rm).items()}


@pytest.mark.parametrize("which", ["qwen2_vl", "llava"])
def test_lora_gradients_on_4bit_match_the_dequantised_fp32_model_after_an_eval_pass(which, base, qwen_base, pairs):
    import bitsandbytes as bnb
    path = qwen_base if which == "qwen2_vl" else base
    cfg = dict(lora_r=4, seed=0)
    rm4, rm32 = build_reward_model(path, RMConfig(quant="4bit", **cfg)), build_reward_model(path, RMConfig(quant="none", **cfg))
    # the fp32 twin gets exactly the 4-bit model's weights, dequantised (before any eval pass touches them)
    mods32 = dict(rm32.named_modules())
    deq = {n: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state) for n, m in rm4.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert deq
    for n, w in deq.items(): mods32[n].weight.data.copy_(w)
    torch.manual_seed(1)  # LoRA B starts at zero (A's gradient would be zero): give every trainable weight a value
    for (n4, p4), (n32, p32) in zip(trainable(rm4).items(), trainable(rm32).items()):
        assert n4 == n32; p4.data.normal_(0, 0.2); p32.data.copy_(p4.data)
    proc, data = _data(path, pairs[:6])
    g4, g32 = (_lora_grads(rm, data, _feats(rm, proc, data), [0, 1, 2, 3]) for rm in (rm4, rm32))
    for n in g4:
        assert g4[n].abs().max() > 0, n
        torch.testing.assert_close(g4[n], g32[n], rtol=1e-3, atol=1e-5, msg=lambda m: f"{n}: {m}")
    # the trap is real on this CPU: without the fix, the same sequence corrupts the gradients (or crashes)
    from bitsandbytes.functional import has_avx512bf16
    if has_avx512bf16():
        rm_bad = build_reward_model(path, RMConfig(quant="4bit", **cfg))
        for m in rm_bad.modules():
            if isinstance(m, bnb.nn.Linear4bit): m.support_avx512bf16_for_cpu = True
        for (n, p), p4 in zip(trainable(rm_bad).items(), trainable(rm4).values()): p.data.copy_(p4.data)
        try:
            gb = _lora_grads(rm_bad, data, _feats(rm_bad, proc, data), [0, 1, 2, 3])
            assert any(not torch.allclose(gb[n], g32[n], rtol=1e-3, atol=1e-5) for n in gb)
        except (RuntimeError, ValueError):
            pass


def test_training_lowers_the_loss_moves_adapters_and_head_and_leaves_the_base_bit_identical(base, pairs):
    cfg = RMConfig(lora_r=4, epochs=8, batch_size=8, lr=5e-3, warmup=2, seed=0)
    rm = build_reward_model(base, cfg)
    proc, data = _data(base, pairs[:16])
    feats = _feats(rm, proc, data)
    frozen = {n: p.detach().clone() for n, p in rm.named_parameters() if not p.requires_grad}
    frozen |= {n: b.detach().clone() for n, b in rm.named_buffers()}
    moving = {n: p.detach().clone() for n, p in trainable(rm).items()}
    with torch.no_grad(): before = pair_loss(rm.eval(), data, feats, list(range(16)), cfg).item()
    rep = fit(rm, data, cfg, evals={"train": data}, progress=False)
    with torch.no_grad(): after = pair_loss(rm.eval(), data, feats, list(range(16)), cfg).item()
    assert after < before - 0.05, (before, after)
    assert rep["steps"] == 16 and rep["history"][-1]["acc_train"] > 0.5
    now = dict(rm.named_parameters()) | dict(rm.named_buffers())
    assert all(torch.equal(frozen[n], now[n]) for n in frozen), [n for n in frozen if not torch.equal(frozen[n], now[n])][:3]
    assert any("base_layer" in n for n in frozen) and quantized_modules(rm)  # the 4-bit weights were among them
    changed = {n for n in moving if not torch.equal(moving[n], now[n])}
    assert {n for n in moving if "lora_" in n} <= changed and {n for n in moving if n.startswith("head.")} <= changed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_in_4bit_and_runs_a_qlora_step(family, tokenizer, pairs, tmp_path):
    path = make_base(tokenizer, family, tmp_path / family)
    cfg = RMConfig(lora_r=4, epochs=2, batch_size=4, lr=5e-3, warmup=1)
    rm = build_reward_model(path, cfg)
    assert quantized_modules(rm) and all("language_model" in n for n in quantized_modules(rm))
    # LoRA B and the value head start at zero, so the first step moves the head and the second LoRA B
    moving = {n: p.detach().clone() for n, p in trainable(rm).items() if "lora_B" in n}
    proc, data = _data(path, pairs[:4])
    rep = fit(rm, data, cfg, progress=False)
    assert rep["steps"] == 2 and np.isfinite(rep["history"][-1]["loss"])
    assert all(not torch.equal(moving[n], p) for n, p in trainable(rm).items() if n in moving)


@pytest.mark.parametrize("quant", ["8bit", "none"])
def test_other_quantisations_train(quant, base, pairs):
    cfg = RMConfig(quant=quant, lora_r=4, epochs=2, batch_size=4, lr=5e-3, warmup=1)
    rm = build_reward_model(base, cfg)
    assert bool(quantized_modules(rm)) == (quant != "none")
    rep = fit(rm, _data(base, pairs[:4])[1], cfg, progress=False)
    assert np.isfinite(rep["history"][-1]["loss"])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_variant_learns_the_training_pairs(fusion, base, pairs):
    cfg = RMConfig(fusion=fusion, lora_r=4, epochs=10, batch_size=8, lr=5e-3, warmup=2, seed=0)
    rm = build_reward_model(base, cfg)
    proc, data = _data(base, pairs[:8])
    feats = _feats(rm, proc, data)
    with torch.no_grad(): before = pair_loss(rm.eval(), data, feats, list(range(8)), cfg).item()
    fit(rm, data, cfg, progress=False)
    with torch.no_grad(): after = pair_loss(rm.eval(), data, feats, list(range(8)), cfg).item()
    assert after < before, (fusion, before, after)


def test_answer_pooling_scores_every_answer_token_and_nothing_of_the_prompt(base, pairs):
    "The sum pool is the head's score of each token from the answer's first one to the row's end, summed (by hand); mean divides by their count."
    from dt2it_mrm.vlm import encode_texts, with_features
    rm = build_reward_model(base, RMConfig(quant="none", lora_r=4, pool="sum", seed=0))
    with torch.no_grad():
        for n, p in trainable(rm).items(): p.normal_(0, 0.05)
    proc, data = _data(base, pairs[:4]); feats = _feats(rm, proc, data)
    got = rewards(rm, data, feats)
    lab = encode_texts(proc, [(t["question"], t["answer"]) for t in pair_items(pairs[:4])], [data.ntok[k] for k in data.keys], labels=True)
    for i, t in enumerate(data.texts):
        assert torch.equal(t["answer_mask"].bool(), lab[i]["labels"] != -100)  # the mask starts where the language-model labels start
        b = data.batch([i]); b.pop("answer_mask")
        with torch.no_grad(): h = rm.backbone()(**with_features(b, [feats[data.keys[i]]]), use_cache=False).last_hidden_state[0]
        n_prompt = int((lab[i]["labels"] == -100).sum()); tok = h[n_prompt:] @ rm.head.weight[0]
        assert 0 < n_prompt < len(h) and got[i] == pytest.approx(tok.sum().item(), abs=1e-5)
    rm.cfg.pool = "mean"
    n_ans = np.array([int(t["answer_mask"].sum()) for t in data.texts])
    np.testing.assert_allclose(rewards(rm, data, feats), got / n_ans, atol=1e-6)


def test_the_centering_penalty_is_the_squared_mean_of_each_pairs_rewards(base, pairs):
    "center adds center × mean over pairs of ((r_chosen + r_rejected) / 2)²: BT alone is blind to a shift of both."
    rm = build_reward_model(base, RMConfig(quant="none", lora_r=4, pool="sum", seed=0))
    with torch.no_grad():
        for n, p in trainable(rm).items(): p.normal_(0, 0.05)
    proc, data = _data(base, pairs[:6]); feats = _feats(rm, proc, data); rm.eval()
    r = torch.tensor(rewards(rm, data, feats)); rows = data.pair_rows(list(range(6))); c, j = r[rows[:6]], r[rows[6:]]
    with torch.no_grad():
        plain = pair_loss(rm, data, feats, list(range(6)), RMConfig(pool="sum")).item()
        centred = pair_loss(rm, data, feats, list(range(6)), RMConfig(pool="sum", center=0.5)).item()
    assert plain == pytest.approx(bt_loss(c, j).item(), abs=1e-5)
    assert centred - plain == pytest.approx(0.5 * (((c + j) / 2) ** 2).mean().item(), abs=1e-5) and centred > plain


def test_the_penalty_pool_only_subtracts_so_a_longer_answer_cannot_gain():
    "penalty = minus the summed softplus of the answer tokens' scores: prompt tokens are ignored and each answer token lowers the reward."
    scores = torch.tensor([[5.0, -1.0, 2.0, 0.0, 9.0], [5.0, -1.0, 2.0, 0.0, 9.0]])
    answer = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # the second row is the first with two more answer tokens
    got = pool_answer(scores, answer, "penalty")
    want = -(F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(2.0)))
    assert got[0].item() == pytest.approx(want.item(), abs=1e-6) and (got <= 0).all() and got[1] < got[0]
    assert pool_answer(scores, answer, "sum")[1] > pool_answer(scores, answer, "sum")[0]  # where the sum pays for the extra positive token


@pytest.mark.parametrize("pool", ["sum", "penalty"])
def test_answer_pooling_trains_and_needs_a_token_head(pool, base, pairs):
    cfg = RMConfig(pool=pool, lora_r=4, epochs=10, batch_size=8, lr=5e-3, warmup=2, seed=0)
    rm = build_reward_model(base, cfg); proc, data = _data(base, pairs[:8]); feats = _feats(rm, proc, data)
    if pool == "penalty": assert rm.head.bias.item() == PENALTY_BIAS and (rewards(rm, data, feats) < 0).all()
    with torch.no_grad(): before = pair_loss(rm.eval(), data, feats, list(range(8)), cfg).item()
    fit(rm, data, cfg, progress=False)
    with torch.no_grad(): after = pair_loss(rm.eval(), data, feats, list(range(8)), cfg).item()
    assert after < before - 0.1
    with pytest.raises(ValueError, match="pool 'sum' needs fusion early or contrastive"): RMConfig(pool="sum", fusion="late")


def _answer_logp_by_the_lm_loss(vlm, proc, items, blank: bool) -> np.ndarray:
    "Σ log p(answer tokens) per item through transformers' own language-model loss on pixels (not the reward model's path)."
    from dt2it_mrm.reward_model import ItemData
    from dt2it_mrm.vlm import collate, encode_texts
    out = []
    for it in items:
        one = ItemData(proc, [it], blank=blank); keys = one.row_images(0)
        lab = encode_texts(proc, [(it["question"], it["answer"])], [one.ntok[k] for k in keys], labels=True)[0]
        b = collate([lab], [one.images[k] for k in keys], proc.tokenizer.pad_token_id)
        with torch.no_grad(): out.append(-vlm(**b).loss.item() * int((b["labels"][:, 1:] != -100).sum()))
    return np.array(out)


def test_the_implicit_reward_is_the_adapted_models_answer_likelihood_minus_the_frozen_bases_by_the_lm_loss(base, pairs):
    "reward lm = beta × (Σ log p_adapted(answer | image) − Σ log p_base(answer | blank or same image)), checked against transformers' loss on pixels."
    rm = build_reward_model(base, RMConfig(quant="none", lora_r=4, reward="lm", lm_beta=0.5, seed=0))
    with torch.no_grad():
        for n, p in trainable(rm).items(): p.normal_(0, 0.05)  # adapters away from zero: adapted and frozen models differ
    assert not any(p.requires_grad for p in rm.head.parameters())  # the value head is never read
    proc, data = _data(base, pairs[:3]); feats = _feats(rm, proc, data); rm.eval()
    items = pair_items(pairs[:3])
    adapted = _answer_logp_by_the_lm_loss(rm.vlm, proc, items, blank=False)
    with rm.vlm.disable_adapter():
        frozen_blank = _answer_logp_by_the_lm_loss(rm.vlm, proc, items, blank=True)
        frozen_image = _answer_logp_by_the_lm_loss(rm.vlm, proc, items, blank=False)
    assert np.abs(adapted - frozen_image).max() > 1e-3 and np.abs(frozen_image - frozen_blank).max() > 1e-3
    np.testing.assert_allclose(rewards(rm, data, feats), 0.5 * (adapted - frozen_blank), atol=1e-4)
    rm.cfg.lm_reference = "image"
    np.testing.assert_allclose(rewards(rm, data, feats), 0.5 * (adapted - frozen_image), atol=1e-4)
    with torch.no_grad(): rm.head.weight.normal_(0, 0.05)
    rm.cfg.pool, rm.cfg.reward = "sum", "head"; head = rewards(rm, data, feats)
    rm.cfg.reward = "head_lm"  # the value head's pooled reward plus the implicit one
    assert np.abs(head).min() > 1e-3
    np.testing.assert_allclose(rewards(rm, data, feats), head + 0.5 * (adapted - frozen_image), atol=1e-4)
    with pytest.raises(ValueError, match="reward 'lm' needs fusion early or contrastive"): RMConfig(reward="lm", fusion="late")


def test_the_implicit_reward_trains_from_a_reference_computed_once(base, pairs):
    "fit computes the frozen base's reference once; the loss with it equals the loss computing it per batch, and training lowers it."
    cfg = RMConfig(lora_r=4, reward="lm", epochs=10, batch_size=8, lr=5e-3, warmup=2, seed=0)
    rm = build_reward_model(base, cfg); proc, data = _data(base, pairs[:8]); feats = _feats(rm, proc, data)
    with torch.no_grad(): before = pair_loss(rm.eval(), data, feats, list(range(8)), cfg).item()
    untrained = rewards(rm, data, feats); head = {n: p.clone() for n, p in rm.head.named_parameters()}
    fit(rm, data, cfg, progress=False)
    assert data.lm_reference is not None and data.lm_reference.shape == (16,)
    with torch.no_grad():
        once = pair_loss(rm.eval(), data, feats, list(range(8)), cfg).item()
        ref, data.lm_reference = data.lm_reference, None
        per_batch = pair_loss(rm, data, feats, list(range(8)), cfg).item()
    assert once == pytest.approx(per_batch, abs=1e-5) and once < before - 0.1
    assert all(torch.equal(p, head[n]) for n, p in rm.head.named_parameters())
    # the untrained implicit reward with a blank reference is the visual PMI: the reference is its second term
    assert np.abs(rewards(rm, data, feats) - untrained).max() > 1e-3 and ref.abs().min() > 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_pair_encoded_with_its_prompt_once_gives_the_hidden_states_loss_gradients_and_training_of_separate_rows(family, attn, tokenizer, pairs, tmp_path):
    "share_prefix packs a pair into one row (prompt once, answers behind a block mask, their own positions): the same numbers to 1e-5, with fewer tokens; so do positions computed once."
    path = make_base(tokenizer, family, tmp_path / family)
    cfg = RMConfig(lora_r=4, reward="head_lm", pool="sum", attn_implementation=attn, epochs=2, batch_size=4, lr=5e-3, warmup=1, seed=0)
    rm = build_reward_model(path, cfg); proc, data = _data(path, pairs[:6]); feats = _feats(rm, proc, data)
    torch.manual_seed(1)
    for p in trainable(rm).values(): torch.nn.init.normal_(p, std=0.05)  # adapters and head that act
    rows = data.pair_rows(range(6)); b = data.batch(rows); b.pop("answer_mask"); view = [feats[data.keys[j]] for j in rows]
    packed, idx = pack_rows(b, row_positions(rm.backbone(), b), pair_groups(12))
    assert len(packed["input_ids"]) == 6 and (idx < 6 * packed["input_ids"].shape[1]).all()
    m = b["attention_mask"].bool()
    assert int(m.sum()) - len(idx[m].unique()) >= 6 * 10  # tokens encoded once for both answers: at least the image and the question of each pair
    with torch.no_grad(): sep, one = rm.hidden_states(b, view), rm.hidden_states(b, view, pair_groups(12))
    assert (sep - one)[m].abs().max() < 1e-5
    whole = row_positions(rm.backbone(), data.batch(range(len(data))))  # every row's rope from its own tokens, in one batch
    data.positions = row_positions_of(rm, data)  # what fit stores: each row's positions, computed once per prompt, carried by its batches
    assert all(torch.equal(q, whole[..., i, :q.shape[-1]]) for i, q in enumerate(data.positions))
    bp = data.batch(rows); bp.pop("answer_mask")
    assert bp["position_ids"].shape[-2:] == m.shape
    with torch.no_grad(): assert torch.allclose(rm.hidden_states(bp, view)[m], sep[m], atol=1e-6) and torch.allclose(rm.hidden_states(bp, view, pair_groups(12))[m], sep[m], atol=1e-5)
    grads = {}
    for share in (False, True):
        c = RMConfig.from_params(vars(cfg), share_prefix=share); rm.zero_grad()
        loss = pair_loss(rm, data, feats, list(range(6)), c); loss.backward()
        grads[share] = (loss.item(), {n: p.grad.clone() for n, p in trainable(rm).items() if p.grad is not None})
    assert grads[True][0] == pytest.approx(grads[False][0], abs=1e-5) and grads[True][1].keys() == grads[False][1].keys()
    assert all(torch.allclose(grads[True][1][n], g, atol=1e-5, rtol=1e-4) for n, g in grads[False][1].items())
    trained = {}
    for share in (False, True):
        c = RMConfig.from_params(vars(cfg), share_prefix=share); r = build_reward_model(path, c)
        fit(r, _data(path, pairs[:8])[1], c, progress=False); trained[share] = trainable(r)
    assert any(p.abs().max() > 1e-3 for n, p in trained[False].items() if "lora_B" in n)  # training moved the adapters
    assert all(torch.allclose(trained[True][n], p, atol=1e-5) for n, p in trained[False].items())


def test_gradient_accumulation_checkpointing_and_a_token_cap_train_the_same_weights(base, pairs):
    def run(**kw):
        cfg = RMConfig(lora_r=4, epochs=1, batch_size=8, lr=5e-3, warmup=1, **kw)
        rm = build_reward_model(base, cfg); rep = fit(rm, _data(base, pairs[:16])[1], cfg, progress=False)
        return {n: p.detach() for n, p in trainable(rm).items()}, rep
    (ref, rep), (acc, _), (ckpt, _), (cap, capped) = run(), run(grad_accum=2), run(grad_ckpt=True), run(max_tokens=1)
    assert "passes" not in rep and capped["passes"] == 16  # 2 steps of 8 pairs, every pair its own forward-backward pass
    for n in ref:
        torch.testing.assert_close(acc[n], ref[n], rtol=1e-3, atol=2e-5)  # summation order differs; Adam amplifies it
        torch.testing.assert_close(ckpt[n], ref[n], rtol=1e-3, atol=2e-5)
        torch.testing.assert_close(cap[n], ref[n], rtol=1e-3, atol=2e-5)


def test_token_pieces_cut_a_micro_batch_in_order_under_the_cap(base, pairs):
    from dt2it_mrm.reward_model import pair_tokens, token_pieces
    data = _data(base, pairs[:12])[1]
    shared, separate = pair_tokens(data, True), pair_tokens(data, False)
    lens = data.lengths()
    assert separate == [2 * max(lens[i], lens[12 + i]) for i in range(12)] and all(s < t for s, t in zip(shared, separate))  # the prompt once
    order = [5, 0, 9, 3, 11, 7, 1]; cap = 3 * max(shared[i] for i in order)
    pieces = token_pieces(order, shared, cap)
    assert [i for p in pieces for i in p] == order and len(pieces) > 1  # in order; any 3 pairs fit under the cap, never all 7
    assert all(len(p) * max(shared[i] for i in p) <= cap for p in pieces)
    assert all((len(p) + 1) * max(shared[i] for i in p + q[:1]) > cap for p, q in zip(pieces, pieces[1:]))  # a piece ends only where the next pair would break the cap
    assert token_pieces(order, shared, 1) == [[i] for i in order]  # a pair over the cap is a piece of its own
    assert token_pieces(order, shared, None) == [order] and token_pieces([], shared, 1) == [[]]
    with pytest.raises(ValueError, match="contrastive"): RMConfig(fusion="contrastive", max_tokens=512)


SCORE = """
import sys, json, numpy as np
from dt2it_mrm.reward_model import load_reward_model, PairData, features_by_key, rewards, BLANK, blank_tensors
from dt2it_mrm.vlm import load_processor
path, data, out = sys.argv[1:]
rm = load_reward_model(path); proc = load_processor(rm.base_path)
d = PairData(proc, [json.loads(l) for l in open(data)][:10], rm.cfg.blank_image)
np.save(out, rewards(rm, d, features_by_key(rm, d, {BLANK: blank_tensors(proc, 84)})))
"""


def test_a_fresh_process_reloads_the_model_and_reproduces_the_scores_exactly(base, world, pairs, tmp_path):
    cfg = RMConfig(lora_r=4, epochs=2, batch_size=4, lr=5e-3, warmup=1, fusion="late")
    rm, _ = train_reward_model(pairs[:8], base, cfg, out_dir=tmp_path / "rm", progress=False)
    files = {p.name for p in (tmp_path / "rm").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "heads.safetensors", "reward_model.json"} <= files
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["base"] == str(base) and meta["config"]["fusion"] == "late"
    proc, data = _data(base, pairs[:10])
    here = rewards(rm, data, _feats(rm, proc, data))
    run_py(SCORE, tmp_path / "rm", world / "train_oracle.jsonl", tmp_path / "s.npy")
    there = np.load(tmp_path / "s.npy")
    assert np.array_equal(here, there) and np.unique(here).size > 1


def test_reloading_refuses_a_different_base(base, tokenizer, pairs, tmp_path):
    rm, _ = train_reward_model(pairs[:4], base, RMConfig(lora_r=4, epochs=1, batch_size=4), out_dir=tmp_path / "rm", progress=False)
    other = make_base(tokenizer, "llava", tmp_path / "other", hidden=64)
    with pytest.raises(ValueError, match="fingerprint"): load_reward_model(tmp_path / "rm", base=other)


def test_an_ensemble_is_trained_in_one_call_and_saved_side_by_side(base, pairs, tmp_path):
    paths, reps = train_ensemble(pairs[:8], base, RMConfig(lora_r=4, epochs=1, batch_size=4), k=3, out_dir=tmp_path / "ens", progress=False)
    assert [p.name for p in paths] == ["member_0", "member_1", "member_2"] and member_paths(tmp_path / "ens") == paths
    seeds = [json.loads((p / "reward_model.json").read_text())["config"]["seed"] for p in paths]
    assert seeds == [0, 1, 2]
    proc, data = _data(base, pairs[8:14])
    scores = [rewards(m, data, _feats(m, proc, data)) for m in map(load_reward_model, paths)]
    assert not np.allclose(scores[0], scores[1])


ACCEL = """
import sys, json, torch
from accelerate import Accelerator
from safetensors.torch import save_file
import dt2it_mrm.reward_model as R
from dt2it_mrm.reward_model import PairData, RMConfig, RewardModel, pair_tokens, train_reward_model, trainable
from dt2it_mrm.vlm import load_processor
base, data, out, reward, share, cap = sys.argv[1:]
packed, pack, cuts, pieces_of = [], RewardModel.pack, [], R.token_pieces
def counted(self, *a, **kw): p = pack(self, *a, **kw); packed.append(p.inputs is not None); return p
def cut(*a, **kw): p = pieces_of(*a, **kw); cuts.append(len(p)); return p
RewardModel.pack, R.token_pieces = counted, cut
recs = [json.loads(l) for l in open(data)][:16]
cost = sorted(pair_tokens(PairData(load_processor(base), recs), share == "share"))
max_tokens = None if cap == "none" else 2 * cost[int(float(cap) * (len(cost) - 1))]  # two pairs in a pass only where both cost at most this quantile
cfg = RMConfig(lora_r=4, epochs=1, batch_size=8, grad_accum=2, lr=5e-3, warmup=1, seed=0, reward=reward, share_prefix=share == "share", max_tokens=max_tokens)
acc = Accelerator(cpu=True, gradient_accumulation_steps=cfg.grad_accum)
rm, rep = train_reward_model(recs, base, cfg, accelerator=acc, progress=False)
assert rep["processes"] == acc.num_processes
if acc.is_main_process: print("processes", acc.num_processes)
json.dump([sum(packed), len(packed), cuts], open(f"{out}.rank{acc.process_index}.json", "w"))  # a file per process: their prints interleave
if acc.is_main_process: save_file({n: p.detach().contiguous() for n, p in trainable(rm).items()}, out)
"""


@pytest.mark.parametrize("reward,share,cap", [("head", "separate", "none"), ("lm", "separate", "none"), ("lm", "share", "none"), ("lm", "share", "0.25")])
def test_accelerate_launch_with_two_processes_trains_the_same_model(reward, share, cap, base, world, tmp_path):
    from safetensors.torch import load_file
    script = tmp_path / "train.py"; script.write_text(ACCEL)
    data = world / "train_oracle.jsonl"
    run_py(ACCEL, base, data, tmp_path / "one.safetensors", reward, share, cap)
    # torchrun, not `accelerate launch --cpu --num_processes 2`: that one starts a single process on a machine without mpirun
    launch = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), str(base), str(data),
              str(tmp_path / "two.safetensors"), reward, share, cap]
    r = subprocess.run(launch, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "processes 2" in r.stdout  # really two (DDP over gloo)
    packs = [json.loads((tmp_path / f"two.safetensors.rank{i}.json").read_text()) for i in range(2)]
    assert all((k > 0 and k == n) if share == "share" else n == 0 for k, n, _ in packs), packs  # each process really packed its pairs (or never did)
    if cap != "none": assert packs[0][2] != packs[1][2], packs  # the cap cut the processes' shares of some micro-batch into different numbers of passes (each syncs once)
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys() and any("lora_B" in k for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-3, atol=2e-5)  # DDP sums gradients in another order; Adam amplifies it


def test_a_cross_fitted_ensemble_leaves_each_pair_to_a_member_that_never_saw_it(base, pairs, tmp_path):
    from dt2it_mrm.reward_model import fold_of, members_saw
    recs = pairs[:12] + [dict(pairs[0], id=pairs[0]["id"] + "~restyle-0001")]  # a pair derived from pair 0 shares its fold
    paths, reps = train_ensemble(recs, base, RMConfig(lora_r=4, epochs=1, batch_size=2), k=3, out_dir=tmp_path / "cf", progress=False, crossfit=True)
    saw = members_saw(tmp_path / "cf", [r["id"] for r in recs])
    assert saw.shape == (3, 13) and (saw.sum(0) == 2).all() and (saw[:, 0] == saw[:, 12]).all()
    assert [r["pairs"] for r in reps] == saw.sum(1).tolist()  # each member trained on exactly the pairs it is said to have seen
    assert fold_of("p~x-1", 3, 0) == fold_of("p", 3, 0) and members_saw(tmp_path / "none", ["a"]).all()  # not an ensemble: in-sample
    with pytest.raises(ValueError, match="at least 2"): train_ensemble(recs, base, RMConfig(), k=1, out_dir=tmp_path / "x", crossfit=True)


def _two_image_items(pairs):
    a, b, c = (pairs[i]["images"][0] for i in range(3))
    return [{"image": a, "question": "q", "answer": "x"}, {"image": [a, b], "question": "q", "answer": "x"},
            {"image": [a, c], "question": "q", "answer": "x"}, {"image": a, "question": "q", "answer": "x", "system": "Be strict."},
            {"image": [b, a], "question": "left <image> right <image> which?", "answer": "x"}]


@pytest.mark.parametrize("family", ["llava", "qwen3_vl"])
def test_every_image_and_the_system_prompt_reach_the_reward(family, tokenizer, pairs, tmp_path):
    from dt2it_mrm.reward_model import ItemData
    base = make_base(tokenizer, family, tmp_path / family); proc = load_processor(base)
    data = ItemData(proc, _two_image_items(pairs))
    n1 = int((data.texts[0]["input_ids"] == proc.image_token_id).sum())
    assert [int((t["input_ids"] == proc.image_token_id).sum()) for t in data.texts] == [n1, 2 * n1, 2 * n1, n1, 2 * n1]
    assert "Be strict." in proc.tokenizer.decode(data.texts[3]["input_ids"]) and data.texts[3]["input_ids"].shape != data.texts[0]["input_ids"].shape
    for fusion in ("early", "late"):
        rm = build_reward_model(base, RMConfig(quant="none", fusion=fusion))
        for p in rm.head.parameters(): torch.nn.init.normal_(p)
        r = rewards(rm, data, _feats(rm, proc, data))
        assert len(set(r[:4].tolist())) == 4  # a second image counts, which one counts, and the system prompt counts


def test_pairs_over_max_length_are_skipped_counted_and_warned(base, pairs):
    proc = load_processor(base)
    lens = PairData(proc, pairs[:8]).lengths(); pair_len = [max(lens[i], lens[8 + i]) for i in range(8)]
    cut = sorted(pair_len)[4]
    with pytest.warns(UserWarning, match="pairs skipped"):
        d = PairData(proc, pairs[:8], max_length=cut)
    assert d.kept == [i for i in range(8) if pair_len[i] <= cut] and d.n == len(d.kept) < 8 and d.skipped == {"over_max_length": 8 - d.n}
    assert max(d.lengths()) <= cut and d.weight.shape == (d.n,) and set(d.distinct) == {pairs[i]["images"][0] for i in d.kept}
    _, rep = train_reward_model(pairs[:8], base, RMConfig(epochs=1, batch_size=2, max_length=cut), progress=False)
    assert rep["pairs"] == d.n and rep["skipped"]["train"] == d.skipped


def test_bounded_image_and_feature_caches_give_the_unbounded_rewards(base, qwen_base, pairs):
    from dt2it_mrm.reward_model import FeatureCache
    for b in (base, qwen_base):
        proc = load_processor(b); recs = pairs[:6]
        rm = build_reward_model(b, RMConfig(quant="none"))
        for p in rm.head.parameters(): torch.nn.init.normal_(p)
        full = PairData(proc, recs); ref = rewards(rm, full, _feats(rm, proc, full), batch_size=4)
        tiny = PairData(proc, recs, image_cache_mb=0.2)  # room for one image or so: the rest is encoded again when needed
        assert tiny.dropped and len(tiny.images) < len(tiny.distinct) and "pixel_values" not in tiny.batch([0, 1])
        rm.cfg.feature_cache_mb = 0.004  # a few images' features: computed per batch, least recently used dropped
        f = _feats(rm, proc, tiny)
        assert isinstance(f, FeatureCache) and f.compute is not None
        got = rewards(rm, tiny, f, batch_size=4)
        assert len(f) - 1 < len(tiny.distinct)  # not every image's features were held at once (the blank's always are)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        rm.cfg.feature_cache_mb = 4096


def test_feature_cache_drops_least_recently_used_only_when_over_budget():
    from dt2it_mrm.reward_model import FeatureCache
    piece = lambda: {"pooler_output": torch.zeros(2, 4)}  # 32 bytes of features
    calls = []
    f = FeatureCache(lambda keys: (calls.append(list(keys)), [piece() for _ in keys])[1], budget=96, pinned=["blank"], items=[("blank", piece())])
    f.get_many(["a", "b"]); assert list(f) == ["blank", "a", "b"] and f.held == 96 and calls == [["a", "b"]]
    f["a"]; assert list(f) == ["blank", "b", "a"]  # a hit moves to the most recent end
    f["c"]; assert list(f) == ["blank", "a", "c"] and f.held == 96  # over budget: the least recently used unpinned key went
    class NoScan(FeatureCache):
        def __iter__(self): raise AssertionError("a cache under its budget was scanned")
    g = NoScan(lambda keys: [piece() for _ in keys], budget=10 ** 6)
    for k in range(50): g[str(k)]  # every lookup of a cache under budget is O(1): no pass over its keys
    assert g.held == 50 * 32 and dict.__len__(g) == 50


def test_single_image_pairs_encode_bit_for_bit_as_before(base, qwen_base, pairs):
    "Digests of the text and image tensors of six one-image pairs, as the code before several images, system prompts and caches made them."
    import hashlib
    def digest(d):
        h = hashlib.sha256()
        for t in d.texts:
            for k in sorted(set(t) - {"answer_mask"}): h.update(k.encode()); h.update(t[k].numpy().tobytes())  # the answer mask came later (tested apart)
        for k in sorted(d.images, key=lambda k: Path(k).name):
            for n in sorted(d.images[k]): h.update(n.encode()); h.update(d.images[k][n].numpy().tobytes())
        return h.hexdigest()[:16]
    assert digest(PairData(load_processor(base), pairs[:6])) == "3bddc79e0d56d708"      # llava, at commit ad2876f
    assert digest(PairData(load_processor(qwen_base), pairs[:6])) == "89b3731e21b8dd0a" # qwen2_vl, at commit ad2876f


def test_training_with_tiny_caches_follows_the_unbounded_training(base, pairs):
    cfg = dict(quant="none", lora_r=4, epochs=2, batch_size=4, lr=5e-3, warmup=1)
    _, ref = train_reward_model(pairs[:8], base, RMConfig(**cfg), evals={"ev": pairs[8:12]}, progress=False)
    _, got = train_reward_model(pairs[:8], base, RMConfig(**cfg, image_cache_mb=0, feature_cache_mb=0.002), evals={"ev": pairs[8:12]}, progress=False)
    np.testing.assert_allclose([h["loss"] for h in got["history"]], [h["loss"] for h in ref["history"]], rtol=0, atol=1e-4)
    assert got["history"][-1]["acc_ev"] == ref["history"][-1]["acc_ev"]
