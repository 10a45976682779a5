"""Scoring: the Scorer protocol (blanked images), batched = one-at-a-time, image work done once per image, ensembles,
and a scoring run killed mid-way that a rerun completes into exactly the uninterrupted output."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import pytest

from rm_fixtures import ROOT, _env, read_jsonl
from dt2it_mrm.reward_model import (BLANK, PairData, RMConfig, blank_tensors, build_reward_model, features_by_key, pair_items, pair_loss,
                                    train_ensemble, train_reward_model, trainable)
from dt2it_mrm.vlm import load_processor
from dt2it_mrm.reward_model import packed_length
from dt2it_mrm.score import RewardScorer, item_key, load_ensemble, merged_lora_layers, naive_scores, prompt_batches, read_scored, score_to_jsonl


@pytest.fixture(scope="module")
def rm_path(base, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    train_reward_model(pairs[:8], base, RMConfig(lora_r=4, epochs=3, batch_size=4, lr=5e-3, warmup=1), out_dir=out, progress=False)
    return out


def test_scorer_protocol_blank_images_and_order(rm_path, pairs):
    sc = RewardScorer.load(rm_path, batch_size=5)
    items = pair_items(pairs[:6])
    s = sc(items)
    assert isinstance(s, np.ndarray) and s.shape == (12,) and s.dtype == float and np.unique(s).size > 6
    assert np.array_equal(sc(items[::-1]), s[::-1])
    blanked = [{**it, "image": None} for it in items]
    b = sc(blanked)
    assert not np.allclose(b, s)  # the blanked view is a different input
    same = sc([{**items[0], "image": None}, {**items[1], "image": None}])
    assert np.array_equal(same, b[:2]) or np.allclose(same, b[:2], atol=1e-6)  # every None is the same grey image
    assert sc([]).shape == (0,)


def test_batched_scores_match_the_one_at_a_time_loop(rm_path, pairs):
    sc = RewardScorer.load(rm_path, batch_size=8)
    items = pair_items(pairs[:10]) + [{**pair_items(pairs[:1])[0], "image": None}]
    np.testing.assert_allclose(sc(items), naive_scores(sc.models[0], items), atol=1e-5)


@pytest.mark.parametrize("pool", ["sum", "mean", "penalty"])
def test_answer_pooled_scores_match_the_one_at_a_time_loop(pool, base, pairs):
    import torch
    rm = build_reward_model(base, RMConfig(lora_r=4, pool=pool, seed=0))
    with torch.no_grad():
        for n, p in trainable(rm).items(): p.normal_(0, 0.05)
    items = pair_items(pairs[:6]) + [{**pair_items(pairs[:1])[0], "image": None}]
    got = RewardScorer(rm, batch_size=4)(items)
    np.testing.assert_allclose(got, naive_scores(rm, items), atol=1e-5)  # the loop finds the answer's first token by itself
    assert np.unique(got).size > 4


@pytest.mark.parametrize("reward", ["lm", "head_lm"])
def test_implicit_reward_scores_match_the_one_at_a_time_loop_and_survive_a_reload(reward, base, pairs, tmp_path):
    "The scorer keeps the adapters apart for an implicit reward (its reference switches them off) and matches the loop and a reloaded copy."
    rm, _ = train_reward_model(pairs[:8], base, RMConfig(lora_r=4, pool="sum", reward=reward, epochs=2, batch_size=4, lr=5e-3, warmup=1),
                               out_dir=tmp_path / "rm", progress=False)
    items = pair_items(pairs[:6]) + [{**pair_items(pairs[:1])[0], "image": None}]
    got = RewardScorer(rm, batch_size=4)(items)
    # a difference of two summed answer log-likelihoods, each far larger than it: in float32 the padding of a batch moves it by up to ~3e-5
    np.testing.assert_allclose(got, naive_scores(rm, items), atol=1e-4)
    np.testing.assert_allclose(RewardScorer.load(tmp_path / "rm", batch_size=3)(items), got, atol=1e-4)
    assert np.unique(got).size > 4

def test_prompt_batches_keep_a_prompts_items_together_and_every_item_once():
    lens = [5, 9, 7, 7, 3, 8, 6]; keys = [str(i) for i in range(7)]; prompt = lambda i: "abcabdd"[i]
    b = prompt_batches(lens, keys, prompt, 3)
    assert sorted(i for bt in b for g in bt for i in g) == list(range(7)) and all(sum(map(len, bt)) <= 3 for bt in b)
    assert all(len({prompt(i) for i in g}) == 1 for bt in b for g in bt) and [sorted(g) for bt in b for g in bt if prompt(g[0]) == "d"] == [[5, 6]]
    assert [g for bt in prompt_batches(lens, keys, lambda i: i, 3) for g in bt] == [[4], [0], [6], [2], [3], [5], [1]]  # no sharing: by length, as before
    tb = prompt_batches(lens, keys, lambda i: i, 3, max_tokens=16)  # a token budget: 2 rows of up to 8 tokens, then 1 of 9
    assert [[g[0] for g in bt] for bt in tb] == [[4, 0], [6, 2], [3, 5], [1]] and all(len(bt) * max(lens[g[0]] for g in bt) <= 16 for bt in tb[:-1])
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9, 9, 9, 9], [1, 2, 7, 7, 7, 7, 7], [1, 2, 8], [1, 2, 3]]
    assert packed_length(ids[:2]) == 5 + 9 - 3 and packed_length(ids[:3]) == 5 + 9 + 7 - 2 * 2 and packed_length(ids[3:4]) == 3


def test_pack_ratio_cuts_a_long_list_of_answers_but_never_a_pair():
    ids = [list(range(10)) + [100 + i] * 8 for i in range(4)] + [[0, 1, 2, 50, 51], [0, 1, 2, 60, 61, 62, 63, 64, 65, 66, 67]]  # 4 answers of 8 tokens to a 10-token prompt; a pair with a short prompt
    lens, keys = [len(x) for x in ids], [str(i) for i in range(6)]; prompt = lambda i: "xxxxyy"[i]
    groups = lambda r: sorted(sorted(g) for bt in prompt_batches(lens, keys, prompt, 8, ids=ids, pack_ratio=r) for g in bt)
    assert groups(None) == [[0, 1, 2, 3], [4, 5]]
    assert groups(2.0) == [[0, 1, 2], [3], [4, 5]]  # 3 answers pack to 34 tokens (<= 2 x 18), a 4th would make 42; the pair packs (13 <= 2 x 11)
    assert groups(1.0) == [[0], [1], [2], [3], [4], [5]]  # no row longer than its longest item: nothing shares
    for r in (2.0, 3.0, 10.0):  # a pair's packed row is never longer than twice its longer item
        assert packed_length([ids[4], ids[5]]) <= r * max(lens[4], lens[5]) and [4, 5] in groups(r)
    with pytest.raises(ValueError, match="needs the items' token ids"): prompt_batches(lens, keys, prompt, 8, pack_ratio=2.0)


@pytest.mark.parametrize("reward", ["head", "lm"])
def test_items_of_one_prompt_scored_with_the_prompt_once_match_separate_rows(reward, base, pairs, monkeypatch):
    import dt2it_mrm.reward_model as rmod
    rm = build_reward_model(base, RMConfig(lora_r=4, reward=reward, pool="sum"))
    torch.manual_seed(0)
    for p in trainable(rm).values(): torch.nn.init.normal_(p, std=0.05)
    items = pair_items(pairs[:5]) + [{**pair_items(pairs[5:6])[0], "answer": pairs[6]["chosen"]}] + pair_items(pairs[5:6])  # a prompt with three answers
    packed = []; real = rmod.pack_rows
    monkeypatch.setattr(rmod, "pack_rows", lambda b, pos, groups, *a: packed.append([len(g) for g in groups]) or real(b, pos, groups, *a))
    one = RewardScorer(rm, batch_size=4, share_prefix=True)(items)
    assert packed and max(max(g) for g in packed) == 3 and sum(map(sum, packed)) >= len(items)  # the three answers in one row
    assert max(map(len, packed)) == 2  # two prompts' rows in one pass
    packed.clear(); sep = RewardScorer(rm, batch_size=4, share_prefix=False)(items)
    tol = 1e-5 if reward == "head" else 1e-4  # an implicit reward is a difference of two summed log-likelihoods, each far larger than it
    assert not packed and np.abs(sep - one).max() < tol and np.unique(one).size == len(items)
    budget = RewardScorer(rm, batch_size=4, max_tokens=200)  # a packed row is over 100 tokens: one per pass
    assert np.abs(budget(items) - one).max() < tol and max(map(len, packed)) == 1
    packed.clear(); apart = RewardScorer(rm, batch_size=4, pack_ratio=1.0)(items)  # no row longer than its longest item: nothing is packed
    assert not packed and np.abs(apart - one).max() < tol
    with pytest.raises(ValueError, match="pack_ratio must be at least 1"): RewardScorer(rm, pack_ratio=0.5)


@pytest.mark.parametrize("quant", ["4bit", "none", "8bit"])
def test_dense_scoring_gives_the_same_scores_and_leaves_the_model_trainable(quant, qwen_base, pairs):
    import torch
    rm = build_reward_model(qwen_base, RMConfig(quant=quant, lora_r=4, seed=0))
    with torch.no_grad():  # LoRA B starts at zero: give the adapters something to fold
        for n, p in trainable(rm).items(): p.normal_(0, 0.05)
    items = pair_items(pairs[:6])
    merged = merged_lora_layers(rm)
    assert len(merged) == (0 if quant == "8bit" else 7 * 2)  # 8-bit projections are scored as they are
    dense, plain = RewardScorer(rm, batch_size=5)(items), RewardScorer(rm, batch_size=5, merge=False)(items)
    np.testing.assert_allclose(dense, plain, atol=1e-5)
    np.testing.assert_allclose(dense, naive_scores(rm, items), atol=1e-5)
    assert not np.allclose(dense, dense[0])
    rm.train(); before = {n: p.detach().clone() for n, p in trainable(rm).items()}  # the swap is undone: training goes on
    data = PairData(load_processor(qwen_base), pairs[:4]); feats = features_by_key(rm, data, {BLANK: blank_tensors(data.processor)})
    pair_loss(rm, data, feats, [0, 1, 2, 3], rm.cfg).backward()
    opt = torch.optim.SGD(list(trainable(rm).values()), lr=0.1); opt.step()
    assert all(not torch.equal(before[n], p) for n, p in trainable(rm).items() if "lora_A" in n)


def test_vision_work_is_done_once_per_distinct_image(rm_path, pairs, monkeypatch):
    sc = RewardScorer.load(rm_path, batch_size=4)
    calls = []
    vlm = sc.models[0].vlm.get_base_model().model
    orig = vlm.get_image_features
    monkeypatch.setattr(vlm, "get_image_features", lambda pixel_values, **kw: calls.append(len(pixel_values)) or orig(pixel_values, **kw))
    items = pair_items(pairs[:5])  # 10 answers about 5 images
    sc(items); sc(items[:4])
    assert sum(calls) == 5 + 1  # five images and the blank one, once each, across both calls


def test_an_ensemble_scores_the_mean_of_its_members(base, pairs, tmp_path):
    train_ensemble(pairs[:8], base, RMConfig(lora_r=4, epochs=2, batch_size=4, lr=5e-3), k=2, out_dir=tmp_path / "ens", progress=False)
    ens = RewardScorer.load(tmp_path / "ens")
    items = pair_items(pairs[:4])
    per = ens.member_scores(items)
    assert per.shape == (2, 8) and not np.allclose(per[0], per[1])
    np.testing.assert_allclose(ens(items), per.mean(0))
    np.testing.assert_allclose(per[1], RewardScorer.load(tmp_path / "ens" / "member_1")(items), atol=1e-6)
    members = load_ensemble(tmp_path / "ens")  # one scorer per member, one shared image-feature cache
    assert len(members) == 2 and members[0]._feats is members[1]._feats
    np.testing.assert_allclose(np.stack([m(items) for m in members]), per, atol=1e-6)


def test_members_on_one_base_share_an_implicit_rewards_reference_to_the_bit(base, pairs, tmp_path, monkeypatch):
    "The frozen base's reference is computed once per batch for every member on it (one scorer or `load_ensemble`'s), and the scores are those of members scored apart."
    from dt2it_mrm.reward_model import RewardModel
    train_ensemble(pairs[:8], base, RMConfig(lora_r=4, reward="lm", pool="sum", epochs=2, batch_size=4, lr=5e-3, warmup=1), k=2,
                   out_dir=tmp_path / "ens", progress=False)
    items = pair_items(pairs[:6]) + [{**pair_items(pairs[:1])[0], "image": None}]
    apart = np.stack([RewardScorer.load(tmp_path / "ens" / f"member_{i}", batch_size=4)(items) for i in range(2)])
    calls = []; orig = RewardModel.reference_logp
    monkeypatch.setattr(RewardModel, "reference_logp", lambda self, *a, **kw: calls.append(1) or orig(self, *a, **kw))
    one = RewardScorer.load(tmp_path / "ens", batch_size=4)
    together = one.member_scores(items); n_batches = len(calls)
    assert np.array_equal(together, apart) and not np.allclose(apart[0], apart[1])
    calls.clear(); RewardScorer.load(tmp_path / "ens" / "member_0", batch_size=4)(items)
    assert n_batches == len(calls) > 0  # two members, one reference pass per batch
    members = load_ensemble(tmp_path / "ens", batch_size=4); calls.clear()
    first = members[0](items); k = len(calls); second = members[1](items)
    assert k > 0 and len(calls) == k and np.array_equal(np.stack([first, second]), apart)
    members[0](items[:3]); assert all(set(m) == {item_key(it) for it in items[:3]} for m in members[0]._refs.values())  # only the latest call's items are kept


def test_a_reference_table_from_the_base_gives_a_trained_models_scores_to_the_bit_without_its_reference_pass(base, pairs, tmp_path, monkeypatch):
    "score_reference's table: the frozen base's reference computed once, from the base alone, and taken by a trained model on that base."
    from dt2it_mrm.reward_model import RewardModel
    cfg = RMConfig(lora_r=4, reward="lm", pool="sum", epochs=2, batch_size=4, lr=5e-3, warmup=1)
    train_reward_model(pairs[:8], base, cfg, out_dir=tmp_path / "rm", progress=False)
    items = pair_items(pairs[:6]) + [{**pair_items(pairs[:1])[0], "image": None}]
    own = RewardScorer.load(tmp_path / "rm", batch_size=4)(items)
    table = RewardScorer(build_reward_model(base, cfg), batch_size=4).reference_table(items)
    assert len(table["items"]) == len(items) and table["identity"]["lm_reference"] == "blank"
    table = json.loads(json.dumps(table))  # as the stage writes and reads it
    calls = []; orig = RewardModel.reference_logp
    monkeypatch.setattr(RewardModel, "reference_logp", lambda self, *a, **kw: calls.append(1) or orig(self, *a, **kw))
    sc = RewardScorer.load(tmp_path / "rm", batch_size=4)
    assert sc.use_references(table) == [0] and np.array_equal(sc(items), own) and not calls
    other = RewardScorer(build_reward_model(base, RMConfig(lora_r=4, reward="lm", lm_reference="image")), batch_size=4)
    assert other.use_references(table) == [] and RewardScorer(build_reward_model(base, RMConfig(lora_r=4)), batch_size=4).use_references(table) == []
    with pytest.raises(ValueError, match="no reference"): RewardScorer(build_reward_model(base, RMConfig(lora_r=4)), batch_size=4).reference_table(items)


def test_an_implicit_rewards_reference_has_no_adapters_when_projections_cannot_be_folded(qwen_base, pairs):
    "8-bit projections are scored as they are, so their adapters must be switched off for the frozen base's reference."
    import torch
    rm = build_reward_model(qwen_base, RMConfig(quant="8bit", lora_r=4, reward="lm", pool="sum", seed=0))
    with torch.no_grad():
        for n, p in trainable(rm).items(): p.normal_(0, 0.05)
    items = pair_items(pairs[:4])
    got = RewardScorer(rm, batch_size=4)(items)
    np.testing.assert_allclose(got, RewardScorer(rm, batch_size=4, merge=False)(items), atol=1e-4)
    np.testing.assert_allclose(got, naive_scores(rm, items), atol=1e-4)


RUN = """
import sys, json, time
from dt2it_mrm.reward_model import pair_items
from dt2it_mrm.score import RewardScorer, score_to_jsonl
rm, data, out, slow = sys.argv[1:]
recs = [json.loads(l) for l in open(data)]
sc = RewardScorer.load(rm, batch_size=4)
def scorer(items):
    s = sc(items); time.sleep(float(slow)); return s
print(json.dumps(score_to_jsonl(pair_items(recs), out, scorer, chunk=6, progress=False, fingerprint=sc.fingerprint)))
"""


def _run(*args):
    return subprocess.Popen([sys.executable, "-c", RUN, *map(str, args)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_scoring_killed_mid_run_resumes_to_the_uninterrupted_output(rm_path, world, tmp_path):
    data = world / "train_oracle.jsonl"
    n = 2 * len(read_jsonl(data))
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    p = _run(rm_path, data, ref, 0); assert p.wait(timeout=300) == 0, p.stderr.read()
    p = _run(rm_path, data, out, 0.5)
    deadline = time.time() + 300
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 12): time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    part = out.read_bytes()
    assert 12 <= part.count(b"\n") < n  # killed mid-run
    with open(out, "ab") as f: f.write(b'{"image_path": "data/world/ima')  # and as if mid-write
    p = _run(rm_path, data, out, 0); assert p.wait(timeout=300) == 0, p.stderr.read()
    rep = json.loads(p.stdout.read().strip().splitlines()[-1])
    assert out.read_bytes() == ref.read_bytes()  # identical to the uninterrupted run
    assert rep["scored"] == n - part.count(b"\n") and rep["skipped"] == part.count(b"\n")  # nothing scored twice
    rows = read_jsonl(out)
    assert len(rows) == n and len({item_key({"image": r["image_path"], "question": r["question"], "answer": r["answer"]}) for r in rows}) == n
    assert set(rows[0]) == {"image_path", "question", "answer", "score"}


def test_torn_lines_are_repaired_and_garbage_is_refused(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"image_path": "a.png", "question": "q", "answer": "x", "score": 1.5}) + "\n" + '{"image_pa')
    assert read_scored(f) == {item_key({"image": "a.png", "question": "q", "answer": "x"}): 1.5}
    assert f.read_text().endswith("}\n")
    f.write_text("not json\n")
    with pytest.raises(ValueError, match=r"s.jsonl:1"): read_scored(f)


def test_scorer_fingerprint_changes_with_the_heads(rm_path, tmp_path):
    "A scorer's fingerprint is the same on reload and differs once a head weight changes, so a scoring output of one is refused to the other."
    import shutil
    from safetensors.torch import load_file, save_file
    a = RewardScorer.load(rm_path).fingerprint
    assert RewardScorer.load(rm_path).fingerprint == a
    other = tmp_path / "other"; shutil.copytree(rm_path, other)
    heads = load_file(str(other / "heads.safetensors")); k = sorted(heads)[0]; heads[k] = heads[k] + 1e-3
    save_file(heads, str(other / "heads.safetensors"))
    b = RewardScorer.load(other)
    assert b.fingerprint != a
    items = [{"image": None, "question": "How many shapes?", "answer": "Two."}]
    out = tmp_path / "s.jsonl"
    score_to_jsonl(items, out, RewardScorer.load(rm_path), progress=False)
    with pytest.raises(ValueError, match="holds scores of another scorer"): score_to_jsonl(items, out, b, progress=False)


def test_dt2it_score_command(rm_path, pairs, tmp_path, capsys):
    "`dt2it-score` scores every answer of a DT2IT file once, with the scorer's own scores; a rerun resumes and scores nothing."
    from dt2it_mrm.data import PrefRecord, write_records
    from dt2it_mrm.score import main, record_items
    recs = [PrefRecord.from_dict(p) for p in pairs[:4]]
    inp, out = write_records(recs, tmp_path / "in.jsonl", "dt2it"), tmp_path / "out.jsonl"
    main([str(rm_path), str(inp), str(out), "--fmt", "dt2it", "--batch-size", "3"])
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (rep["read"], rep["kept"], rep["items"], rep["scored"]) == (4, 4, 8, 8)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    want = RewardScorer.load(rm_path)(record_items(recs))
    np.testing.assert_allclose([r["score"] for r in rows], want, atol=1e-5)
    main([str(rm_path), str(inp), str(out), "--fmt", "dt2it"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 8


def test_several_images_and_a_system_prompt_score_as_the_processor_encodes_them(qwen_base, pairs):
    from dt2it_mrm.score import record_items
    rm = build_reward_model(qwen_base, RMConfig(quant="none", fusion="early"))
    for p in rm.head.parameters(): torch.nn.init.normal_(p)
    rm.base_path = str(qwen_base)
    a, b, c = (pairs[i]["images"][0] for i in range(3))
    items = [{"image": a, "question": "q", "answer": "x"}, {"image": [a, b], "question": "q", "answer": "x"},
             {"image": [a, c], "question": "one <image> two <image> ?", "answer": "x"},
             {"image": a, "question": "q", "answer": "x", "system": "Be strict."}]
    got = RewardScorer(rm, batch_size=3)(items)
    np.testing.assert_allclose(got, naive_scores(rm, items), rtol=0, atol=1e-5)  # the stock processor, images and system in its messages
    assert len(set(np.round(got, 6).tolist())) == 4
    rec = {"id": "r", "images": [a, b], "question": "q", "chosen": "x", "rejected": "y", "meta": {"system": "Be strict."}}
    assert record_items([rec]) == [{"image": [a, b], "question": "q", "answer": "x", "system": "Be strict."},
                                   {"image": [a, b], "question": "q", "answer": "y", "system": "Be strict."}]


def test_item_keys_of_single_image_items_are_unchanged_and_others_are_distinct():
    from dt2it_mrm.core import stable_hash
    it = {"image": "a.png", "question": "q", "answer": "x"}
    assert item_key(it) == stable_hash("a.png", "q", "x", n=24) == item_key(it | {"system": None}) == item_key(it | {"image": ["a.png"]})
    keys = {item_key(it), item_key(it | {"system": "s"}), item_key(it | {"image": ["a.png", "b.png"]}), item_key(it | {"image": ["b.png", "a.png"]})}
    assert len(keys) == 4


def test_scoring_refuses_items_over_max_length_and_resumes_items_with_a_system_prompt(qwen_base, pairs, tmp_path):
    rm = build_reward_model(qwen_base, RMConfig(quant="none", max_length=40)); rm.base_path = str(qwen_base)
    items = pair_items(pairs[:2])
    with pytest.raises(ValueError, match="more than max_length=40 tokens"): RewardScorer(rm)(items)
    rm.cfg.max_length = None
    sys_items = [it | {"system": "Be strict."} for it in items]
    out = tmp_path / "s.jsonl"; sc = RewardScorer(rm, batch_size=2)
    first = score_to_jsonl(sys_items[:2], out, sc, progress=False)
    again = score_to_jsonl(sys_items, out, sc, progress=False)
    assert first["scored"] == 2 and again["skipped"] == 2 and again["scored"] == len(sys_items) - 2
    rows = read_jsonl(out); assert all(r["system"] == "Be strict." for r in rows)
    assert set(read_scored(out)) == {item_key(it) for it in sys_items}
