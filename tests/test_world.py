"""The synthetic world: exact error counts, determinism, and every knob honoured (and detectably not)."""
import hashlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dt2it_mrm.core import read_json, rng
from dt2it_mrm.world import (GROUPS, NUMBERS, SPLITS, STYLES, TASKS, Obj, Prompt, Scene, SimJudge, WorldConfig, corrupt, error_distance,
                             generate_world, headline, load_world, make_bon, make_prompt, make_split, measure_world, sample_scene,
                             world_judge)

SMALL = dict(n_train=1500, n_test=200, n_neutral=400, n_dev=200, n_bon=40, n_expert=10, n_pretrain=20)
TINY = dict(n_train=60, n_test=12, n_neutral=8, n_dev=8, n_bon=4, n_expert=4, n_pretrain=6)
OLD_FILES = ("train_raw", "train_oracle", "test_iid", "test_shift", "test_hard", "test_expert", "pretrain")


def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(**SMALL)
    generate_world(cfg, out, seed=123, progress=False)
    return cfg, out, load_world(out)


def test_every_answer_has_exactly_its_error_count():
    for i in range(300):
        s = sample_scene(rng(7, "scene", i), f"s{i}", GROUPS[i % 4])
        p = make_prompt(rng(7, "prompt", i), s, f"p{i}", task=TASKS[i % len(TASKS)])
        for k in range(4):
            claims = corrupt(p, rng(7, "c", i, k), k)
            assert error_distance(p.truth, claims) == k
            assert 1 <= len(claims) <= 4  # never more objects than a scene holds, never none
            if p.task == "count": assert NUMBERS[sum(o.shape == p.target["shape"] for o in claims)] in headline(p, claims)


def test_error_distance_reference_values():
    t = [Obj("red", "circle", 0), Obj("blue", "square", 4)]
    assert error_distance(t, t) == 0
    assert error_distance(t, [Obj("green", "circle", 0), Obj("blue", "square", 4)]) == 1  # recolour
    assert error_distance(t, [Obj("red", "circle", 2), Obj("blue", "square", 4)]) == 1  # move
    assert error_distance(t, [Obj("red", "circle", 0)]) == 1  # omit
    assert error_distance(t, t + [Obj("red", "triangle", 8)]) == 1  # hallucinate
    assert error_distance(t, [Obj("green", "circle", 5)]) == 3  # recolour+move of one object = omit+hallucinate, plus an omit


def test_headline_follows_claims():
    s = Scene("s", "plain", [Obj("red", "circle", 0), Obj("blue", "circle", 4), Obj("red", "square", 8)])
    p = make_prompt(rng(0, "p"), s, "p", task="description")
    assert headline(p, p.truth) == "I can see three objects"
    assert headline(p, p.truth[:1]) == "I can see one object"
    q = Prompt("q", s, "existence", "Is there a red square in the image?", {"colour": "red", "shape": "square"}, [s.objects[2]])
    assert headline(q, q.truth).startswith("Yes") and headline(q, []).startswith("No")


def old_digest(folder: Path) -> str:
    "One digest of the files, scenes and image pixels a world had before dev, test_neutral and test_bon were added."
    h, pre = hashlib.sha256(), tuple(f"{s}_" for s in OLD_FILES)
    for s in OLD_FILES: h.update((folder / f"{s}.jsonl").read_bytes())
    h.update("\n".join(l for l in (folder / "scenes.jsonl").read_text().splitlines() if l.startswith(tuple(f'{{"id": "{p}' for p in pre))).encode())
    for p in sorted((folder / "images").glob("*.png")):
        if p.name.startswith(pre): h.update(p.name.encode() + np.asarray(Image.open(p).convert("RGB")).tobytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_seeded(tmp_path, monkeypatch):
    cfg = WorldConfig(**TINY)
    for run, seed in (("a", 5), ("b", 5), ("c", 6)):  # same relative out_dir, as from a project root
        (tmp_path / run).mkdir(); monkeypatch.chdir(tmp_path / run)
        generate_world(cfg, "data/world", seed=seed, progress=False)
    da, db, dc = (digest(tmp_path / run / "data/world") for run in "abc")
    assert da == db
    assert da["train_raw.jsonl"] != dc["train_raw.jsonl"]
    # adding dev, test_neutral and test_bon left every existing split byte-identical (digest of a world made before them)
    assert old_digest(tmp_path / "a" / "data/world") == "f5f0a4026b1c3ced957f6d7d9ea0238d639ef2a89307d581da9bb1cdbcb5ac93"
    assert {"dev.jsonl", "test_neutral.jsonl", "test_bon.jsonl"} <= set(da)


def test_records_are_paths_relative_to_the_out_dir_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generate_world(WorldConfig(n_train=10, n_test=4, n_neutral=4, n_dev=4, n_bon=2, n_expert=2, n_pretrain=2), "data/w", seed=0, progress=False)
    rec = load_world("data/w")["train_raw"][0]
    assert rec["images"][0].startswith("data/w/images/") and Path(rec["images"][0]).exists()


def test_fresh_seed_honours_every_knob(small_world):
    cfg, _, world = small_world
    checks = measure_world(world, cfg, seed=123)
    off = [c for c in checks if not c["ok"]]
    assert not off, off
    assert len(checks) > 40


def test_checks_detect_a_world_that_does_not_honour_its_knobs(small_world):
    cfg, _, world = small_world
    wrong = WorldConfig(**{**SMALL, "length_bias": 0.5, "train_group_shares": {"plain": 0.25, "textured": 0.25, "dark": 0.25, "outline": 0.25}})
    off = {c["knob"] for c in measure_world(world, wrong, seed=123) if not c["ok"]}
    assert "train_raw: length_bias (P better answer is longer)" in off
    assert "train_group_shares.plain" in off


def test_knobs_move_the_data():
    lo = WorldConfig(n_train=400, length_bias=0.5, tell_precision=0.5)
    hi = WorldConfig(n_train=400, length_bias=0.95, tell_precision=1.0)
    from dt2it_mrm.world import make_split
    def rates(cfg):
        recs, _ = make_split(cfg, "train_raw", 1, "img")
        longer = np.mean([(len(r["chosen"]) > len(r["rejected"])) == bool(r["gold"]) for r in recs])
        told = [r for r in recs if r["meta"]["tell"]]
        return longer, np.mean([(r["meta"]["tell"] == "chosen") == bool(r["gold"]) for r in told])
    (l0, t0), (l1, t1) = rates(lo), rates(hi)
    assert l1 - l0 > 0.3 and t1 == 1.0 and t0 < 0.7


def test_raw_labels_are_noisy_but_gold_sets_are_clean(small_world):
    _, _, world = small_world
    raw = np.mean([r["gold"] for r in world["train_raw"]])
    assert 0.65 < raw < 0.92
    for split in [s for s in SPLITS if s != "train_raw"]:
        assert all(r["gold"] == 1 and r["meta"]["errors"][0] < r["meta"]["errors"][1] for r in world[split])
    for r in world["test_expert"]:
        assert sorted(r["meta"]["errors"]) == [0, 1, 2, 3] and r["scores"] == [-e for e in r["meta"]["errors"]]


def test_judge_is_deterministic_per_request_and_order_matters(small_world):
    cfg, _, world = small_world
    j = world_judge(world, cfg, seed=0)
    r = world["test_hard"][0]; img, q = r["images"][0], r["question"]
    assert j.pointwise(img, q, r["chosen"]) == j.pointwise(img, q, r["chosen"])
    unbiased = SimJudge(j.truth, position_bias=0.0, error_penalty=2.0, length_weight=0.0, noise=0.0, difficulty_noise=0.0)
    assert unbiased.pairwise(img, q, r["chosen"], r["rejected"]) == 0 and unbiased.pairwise(img, q, r["rejected"], r["chosen"]) == 1
    lazy = SimJudge(j.truth, position_bias=1.0, error_penalty=2.0, length_weight=0.0, noise=0.0, difficulty_noise=0.0)
    assert lazy.pairwise(img, q, r["rejected"], r["chosen"]) == 0
    assert unbiased.pointwise(img, q, "an answer the world never wrote") < unbiased.pointwise(img, q, r["rejected"])


def test_config_rejects_unknown_or_bad_knobs():
    with pytest.raises(ValueError, match="generate.world.n_trian.*did you mean .n_train."): WorldConfig.from_params({"n_trian": 5})
    with pytest.raises(ValueError, match="sum to 1"): WorldConfig(train_group_shares={"plain": 0.5, "dark": 0.2})
    with pytest.raises(ValueError, match="judge knobs"): WorldConfig(judge={"position_bias": 0.1})
    for k, v in (("n_neutral", 0), ("n_dev", -1), ("n_bon", 1.5), ("n_bon", True)):
        with pytest.raises(ValueError, match=f"{k}.*expected a whole number >= 1"): WorldConfig(**{k: v})


def test_params_yaml_sets_every_world_knob(root):
    world = yaml.safe_load((root / "params.yaml").read_text())["generate"]["world"]
    assert set(world) == {f.name for f in fields(WorldConfig)}


def test_committed_stats_show_every_knob_honoured_in_every_world(root):
    p = yaml.safe_load((root / "params.yaml").read_text())
    params = p["generate"]["world"]
    for seed in p["base"]["worlds"]:
        stats = read_json(root / f"reports/world/w{seed}/stats.json")
        assert stats["all_ok"] and stats["n_off"] == 0, seed
        asked = {c["knob"]: c["asked"] for c in stats["checks"]}
        assert asked["train_raw: length_bias (P better answer is longer)"] == params["length_bias"]
        assert asked["judge.position_bias (2·first-position win rate − 1)"] == params["judge"]["position_bias"]
        for g, share in params["train_group_shares"].items(): assert asked[f"train_group_shares.{g}"] == share


def test_rewrites_keep_the_claims_and_the_truth(small_world):
    from dt2it_mrm.world import rewrite_answer
    _, _, world = small_world
    for rec in world["train_raw"][:50]:
        for side in (0, 1):
            base = rewrite_answer(rec, side, rec["meta"]["styles"][side])
            text = rec["chosen"] if side == 0 else rec["rejected"]
            if rec["meta"]["tell"] is None: assert text.startswith(base)
            short = max(len(rewrite_answer(rec, side, s)) for s in ("concise", "list"))
            assert min(len(rewrite_answer(rec, side, s)) for s in ("verbose", "hedged")) > short


def test_text_alone_barely_solves_a_neutral_set(small_world):
    """Without length or tell signal, a cross-fitted text-only model must stay near chance: the world needs the image."""
    from dt2it_mrm.bias import fit_text_model, intermodal_bias
    _, _, world = small_world
    summary, _ = intermodal_bias(world["train_oracle"][:800], fit_text_model, k=4, seed=0)
    assert summary["gold_text_solvable"] < 0.65, summary


# ---------------------------------------------------------------- the neutral splits and the best-of-N set

def test_shortcut_rule_copies_test_iid_but_is_at_chance_on_the_neutral_splits():
    """The no-image rule 'tell, else longer' scores ~0.85 on test_iid and ~0.5 on test_neutral (2000 pairs) and dev (1000)."""
    from dt2it_mrm.bias import shortcut_rule_scorer
    from dt2it_mrm.evaluate import accuracy, pair_margins
    cfg = WorldConfig()
    rule = shortcut_rule_scorer([cfg.tell_phrase])
    acc = {s: accuracy(pair_margins(make_split(cfg, s, 0, "img")[0], rule)) for s in ("test_iid", "test_neutral", "dev")}
    assert acc["test_iid"] > 0.8, acc
    assert abs(acc["test_neutral"] - 0.5) < 0.04 and abs(acc["dev"] - 0.5) < 0.04, acc
    assert len(make_split(cfg, "test_neutral", 0, "img")[0]) == 2000 and len(make_split(cfg, "dev", 0, "img")[0]) == 1000


def test_neutral_splits_exist_and_are_neutral(small_world):
    cfg, out, world = small_world
    assert {"dev", "test_neutral", "test_bon"} <= set(world) and (out / "test_neutral.jsonl").exists()
    assert len(world["test_neutral"]) == cfg.n_neutral and len(world["dev"]) == cfg.n_dev and len(world["test_bon"]) == cfg.n_bon
    for split in ("dev", "test_neutral"):
        rs = world[split]
        longer = np.mean([len(r["chosen"]) > len(r["rejected"]) for r in rs])
        told = [r["meta"]["tell"] == "chosen" for r in rs if r["meta"]["tell"]]
        assert abs(longer - 0.5) < 0.12 and abs(np.mean(told) - 0.5) < 0.2, (split, longer, np.mean(told))
        assert [sum(r["group"] == g for r in rs) for g in GROUPS] == [len(rs) // 4] * 4


def test_no_scene_is_shared_between_splits(small_world):
    _, out, world = small_world
    owner = {}
    for name, rs in world.items():
        if name == "scenes": continue
        for img in {r["images"][0] for r in rs}:
            assert owner.setdefault(img, name) == name, (img, owner[img], name)  # an image belongs to one split
    scenes = world["scenes"]
    assert len({s["id"] for s in scenes}) == len(scenes) == len(owner) == len(list((out / "images").glob("*.png")))


def test_bon_lists_hold_every_style_and_error_count_once(small_world):
    cfg, _, world = small_world
    full = sorted((s, e) for s in STYLES for e in range(cfg.max_errors + 1))
    for r in world["test_bon"]:
        m = r["meta"]
        assert len(r["answers"]) == len(set(r["answers"])) == 16 and sorted(zip(m["styles"], m["errors"])) == full
        assert r["scores"] == [-e for e in m["errors"]] and len(m["tell"]) == 16 and all(type(t) is bool for t in m["tell"])
        assert all((cfg.tell_phrase in a) == t for a, t in zip(r["answers"], m["tell"]))
        for i, (a, e) in enumerate(zip(r["answers"], m["errors"])):  # the recorded claims are the answer's
            assert error_distance([Obj(*o) for o in m["claims"][m["errors"].index(0)]], [Obj(*o) for o in m["claims"][i]]) == e
    assert [r["group"] for r in world["test_bon"][:4]] == list(GROUPS)
    assert make_bon(cfg, 123, "x")[0][0]["meta"] == make_bon(cfg, 123, "x")[0][0]["meta"]  # deterministic


def test_bon_length_and_tell_carry_little_information():
    """Over 400 default lists: the longest answer and the told answers are near-random picks (1/4 of them error-free)."""
    recs, _ = make_bon(WorldConfig(n_bon=400), 0, "img")
    longest = np.mean([r["meta"]["errors"][int(np.argmax([len(a) for a in r["answers"]]))] == 0 for r in recs])
    told = np.mean([e == 0 for r in recs for e, t in zip(r["meta"]["errors"], r["meta"]["tell"]) if t])
    assert abs(longest - 0.25) < 0.1 and abs(told - 0.25) < 0.04, (longest, told)
