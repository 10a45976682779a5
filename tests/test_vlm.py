"""The base VLM layer: tokenizer, four families, processor-equivalent encoding, shared image features, quantised
loading, and a pre-trained base that `from_pretrained` reads in a fresh process."""
import json

import numpy as np
import pytest
import torch

from rm_fixtures import TINY, make_base, read_jsonl, run_py
from dt2it_mrm.vlm import _lm_batch
from dt2it_mrm.vlm import (FAMILIES, PretrainConfig, SPECIAL_TOKENS, build_base, chat_text, claim_accuracy, claim_loss, collate,
                           corrupt_answer, encode, encode_images, false_claims, family_of, image_features, lm_examples, lm_loss,
                           load_base, load_processor, pretrain, quantized_modules, qwen_pixels, save_base, split_images,
                           with_features, word_substitutes)
from dt2it_mrm.data import load_image


def test_tokenizer_is_trained_on_the_world_and_keeps_special_tokens(tokenizer, world):
    text = read_jsonl(world / "test_iid.jsonl")[0]["chosen"]
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # merges learnt from the world's text, not bytes
    assert all(len(tokenizer(t).input_ids) == 1 for t in SPECIAL_TOKENS)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_builds_saves_reloads_and_encodes_like_its_processor(family, tokenizer, pairs, tmp_path):
    path = make_base(tokenizer, family, tmp_path / family)
    assert family_of(path) is FAMILIES[family]
    proc = load_processor(path)
    r = pairs[0]; im = load_image(r["images"][0])
    t, i = encode(proc, im, r["question"], r["chosen"])
    ref = proc(text=[chat_text(proc, r["question"], r["chosen"])], images=[im], return_tensors="pt")
    assert all(t[k].equal(ref[k][0]) for k in t) and all(i[k].equal(ref[k]) for k in i)
    n_img = int((t["input_ids"] == proc.image_token_id).sum())
    assert n_img == (10 if family == "llava" else 9)  # one token per 28-px grid cell (+ CLS for LLaVA)
    m = load_base(path, "none")
    b = collate([t], [i], proc.tokenizer.pad_token_id)
    with torch.no_grad():
        ref_logits = m(**b).logits
        shared = m(**with_features(b, image_features(m, [i]))).logits  # image features computed apart, handed in
    assert ref_logits.shape == (1, len(t["input_ids"]), len(tokenizer))
    assert torch.allclose(ref_logits, shared, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava"])
def test_vectorised_image_tensors_equal_the_processors_bit_for_bit(family, tokenizer, pairs, tmp_path):
    from PIL import Image
    proc = load_processor(make_base(tokenizer, family, tmp_path / family))
    ims = [load_image(r["images"][0]) for r in pairs[:5]]
    noise = np.random.default_rng(0).integers(0, 256, (*ims[0].size[::-1], 3), dtype=np.uint8)
    noise.reshape(-1, 3)[:256] = np.arange(256)[:, None]  # every byte value in every channel
    ims.append(Image.fromarray(noise))
    ref = proc(text=[chat_text(proc, "")] * len(ims), images=ims, return_tensors="pt", padding=True)
    got = encode_images(proc, ims)
    assert [n for _, n in got] == (ref["input_ids"] == proc.image_token_id).sum(1).tolist()
    assert set(got[0][0]) == set(split_images(ref, len(ims))[0])  # every image tensor the processor makes, and no other
    for k in got[0][0]: assert torch.cat([g[k] for g, _ in got]).equal(ref[k])
    assert (qwen_pixels(proc, ims) is None) == (family == "llava")  # LLaVA's processor always does the work itself
    if family != "llava":  # a size the processor would resize, or another mode: the processor does it
        assert qwen_pixels(proc, [ims[0].resize((100, 90))]) is None and qwen_pixels(proc, [ims[0].convert("L")]) is None
        odd = ims[:2] + [ims[0].resize((100, 90))]
        ref2 = proc(text=[chat_text(proc, "")] * 3, images=odd, return_tensors="pt", padding=True)
        assert torch.cat([g["pixel_values"] for g, _ in encode_images(proc, odd)]).equal(ref2["pixel_values"])


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantisation_keeps_the_vision_side_and_head_unquantised(base, quant):
    m = load_base(base, quant)
    q = quantized_modules(m)
    n_linear = sum(1 for n, x in m.named_modules() if type(x).__name__ == "Linear" and "language_model" in n)
    assert q and all(n.startswith("model.language_model.layers.") for n in q) and n_linear == 0
    assert all(not p.requires_grad for p in m.parameters())


def test_unknown_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"): family_of(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not supported"): family_of(tmp_path)


def test_pretraining_learns_and_saves_a_checkpoint_a_fresh_process_loads(tokenizer, world, tmp_path):
    m, proc = build_base("llava", tokenizer, seed=0, **TINY)
    recs = read_jsonl(world / "pretrain.jsonl")
    rep = pretrain(m, proc, recs, PretrainConfig(epochs=6, batch_size=4, lr=3e-3, val_images=2, eval_every=5), progress=False)
    h = rep["history"]
    assert h[-1]["val_loss"] < h[0]["val_loss"] and rep["val_records"] > 0
    path = save_base(m, proc, tmp_path / "base")
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {p.name for p in path.iterdir()}
    r = read_jsonl(world / "test_iid.jsonl")[0]
    t, i = encode(proc, load_image(r["images"][0]), r["question"], r["chosen"])
    with torch.no_grad(): ref = m(**collate([t], [i], tokenizer.pad_token_id)).logits[0].numpy()
    out = tmp_path / "logits.npy"
    run_py("""
import sys, numpy as np, torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor
from PIL import Image
path, img, q, a, out = sys.argv[1:]
m = LlavaForConditionalGeneration.from_pretrained(path).eval(); p = LlavaProcessor.from_pretrained(path)
text = p.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                              {"role": "assistant", "content": [{"type": "text", "text": a}]}], tokenize=False)
with torch.no_grad(): lg = m(**p(text=[text], images=[Image.open(img).convert("RGB")], return_tensors="pt")).logits[0]
np.save(out, lg.numpy())
""", path, r["images"][0], r["question"], r["chosen"], out)
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)


def test_claim_checking_makes_answers_likelier_than_their_false_copies_and_is_off_by_default(tokenizer, world):
    "False copies read like the corpus but differ in one word; the claim term widens the true answer's lead over them beyond captioning's."
    import random
    recs = read_jsonl(world / "pretrain.jsonl")
    subs = word_substitutes(r["answer"] for r in recs)
    fake = corrupt_answer(recs[0]["answer"], subs, random.Random(0))
    assert fake != recs[0]["answer"] and len(fake.split()) == len(recs[0]["answer"].split())
    cfg = PretrainConfig(verify=1.0, verify_copies=2, seed=0)
    m0, proc = build_base("llava", tokenizer, seed=0, **TINY)
    ex, store = lm_examples(proc, recs)
    fakes = false_claims(proc, recs, ex, subs, cfg)
    assert any(fakes) and all(not torch.equal(f["input_ids"], e["input_ids"]) for e, fs in zip(ex, fakes) for f in fs)
    pick = [(j, fs[0]) for j, fs in enumerate(fakes) if fs][:8]
    pad = tokenizer.pad_token_id
    batch = _lm_batch([ex[j] for j, _ in pick] + [f for _, f in pick], store, pad)
    k, rows, lead = len(pick), list(range(len(pick))), {}
    for weight in (0.0, 1.0):  # the same start, the same steps, with and without the claim term
        m, _ = build_base("llava", tokenizer, seed=0, **TINY); m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        for _ in range(15):
            loss = claim_loss(m, batch, k, rows, weight); opt.zero_grad(); loss.backward(); opt.step()
        m.eval()
        with torch.no_grad(): lead[weight] = claim_loss(m, batch, k, rows, 0.0) - claim_loss(m, batch, k, rows, 1.0)  # minus the pairwise term
    assert lead[1.0] > lead[0.0]  # larger when the true answers lead their copies by more
    true = _lm_batch([ex[j] for j, _ in pick], store, pad)
    with torch.no_grad(): assert torch.isclose(claim_loss(m0, true, len(pick), [], 1.0), lm_loss(m0, true))
    assert 0 <= claim_accuracy(m0, [ex[j] for j, _ in pick], [[f] for _, f in pick], store, pad) <= 1
    assert PretrainConfig().verify == 0.0  # captioning alone unless asked


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,blocksize", [((64, 32), 64), ((96, 66), 64), ((7, 130), 128), ((5,), 64)])
def test_portable_4bit_dequantisation_is_bitsandbytes_reference_bit_for_bit(quant_type, shape, blocksize):
    "The plain-torch kernel equals the reference bitsandbytes ships, and is the CPU kernel once registered."
    import bitsandbytes.functional as bnbF
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from dt2it_mrm.vlm import dequantize_4bit_portable, portable_cpu_4bit
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    q, st = bnbF.quantize_4bit(w, quant_type=quant_type, blocksize=blocksize)
    ref = _dequantize_4bit_compute(q.view(torch.uint8).reshape(-1), st.absmax, bnbF.get_4bit_type(quant_type, device="cpu"), blocksize, st.shape, torch.float32)
    mine = dequantize_4bit_portable(q, st.absmax, blocksize, quant_type, st.shape, torch.float32)
    assert mine.shape == w.shape and torch.equal(mine, ref)
    assert 0 < (mine - w).abs().max() < w.abs().max()  # a real dequantisation, not a copy
    portable_cpu_4bit()
    assert torch.equal(bnbF.dequantize_4bit(q, st), mine)


def test_several_images_and_a_system_prompt_reach_the_text_in_the_checkpoints_template(tokenizer, pairs, tmp_path):
    from dt2it_mrm.vlm import encode_texts, messages
    path = make_base(tokenizer, "qwen2_vl", tmp_path / "q")
    (tmp_path / "q" / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['role'] }}]{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}")
    proc = load_processor(path, 56 * 56, 28 * 28 * 64)  # the checkpoint's own template is the one used; images keep their size
    assert chat_text(proc, "what?", "red", 1, "Be brief.") == "[system]Be brief.[user]<|vision_start|><|image_pad|><|vision_end|>what?[assistant]red"
    (tmp_path / "q" / "chat_template.jinja").unlink()  # a real Qwen2-VL folder: the template in chat_template.json
    (tmp_path / "q" / "chat_template.json").write_text(json.dumps({"chat_template": "LEGACY{% for m in messages %}[{{ m['role'] }}]{% endfor %}"}))
    assert chat_text(load_processor(path), "q", "a", 1, "s") == "LEGACY[system][user][assistant]"
    assert messages("a <image> b <image> c", None, 2)[0]["content"] == [
        {"type": "text", "text": "a "}, {"type": "image"}, {"type": "text", "text": " b "}, {"type": "image"}, {"type": "text", "text": " c"}]
    assert [c["type"] for c in messages("q", None, 2)[0]["content"]] == ["image", "image", "text"]  # no marks: images in front
    with pytest.raises(ValueError, match="1 <image> marks for 2 image"): messages("a <image> b", None, 2)
    ims = [load_image(pairs[0]["images"][0]), load_image(pairs[1]["images"][0]).resize((112, 84))]
    q = "left <image> right <image> same?"
    ref = proc(text=[chat_text(proc, q, "no", 2, "Be brief.")], images=ims, return_tensors="pt")
    got = encode_texts(proc, [(q, "no", "Be brief.")], [[n for _, n in encode_images(proc, ims)]])[0]
    assert got["input_ids"].equal(ref["input_ids"][0]) and int((got["input_ids"] == proc.image_token_id).sum()) == 9 + 12


def test_min_and_max_pixels_set_the_image_token_count_of_a_large_image(tokenizer, tmp_path):
    from PIL import Image
    from dt2it_mrm.vlm import set_resolution
    path = make_base(tokenizer, "qwen2_vl", tmp_path / "q")
    big = Image.new("RGB", (1920, 1080), (10, 200, 30))
    assert encode_images(load_processor(path), [big])[0][1] == 2 * 4  # the tiny checkpoint's own setting, about 84x84 pixels: 56x112
    assert encode_images(load_processor(path, 56 * 56, 28 * 28 * 16384), [big])[0][1] == 39 * 69  # Qwen2-VL's defaults: 2,691 tokens
    assert encode_images(load_processor(path, None, 28 * 28 * 256), [big])[0][1] == 12 * 21  # 336x588 pixels: at most 256 tokens
    with pytest.raises(ValueError, match="exceeds max_pixels"): load_processor(path, 10 ** 6, 10 ** 5)
    llava = make_base(tokenizer, "llava", tmp_path / "l")
    with pytest.raises(ValueError, match="fixed size"): load_processor(llava, None, 28 * 28 * 256)
    assert set_resolution(load_processor(llava)) is not None  # nothing asked, nothing refused
