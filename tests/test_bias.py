"""Bias audits: length/style, position, the cross-fitted text-only shortcut, groups, Dawid–Skene, benchmark text audits."""
import json
from functools import partial

import numpy as np
import pytest

from dt2it_mrm import bias
from dt2it_mrm.evaluate import accuracy, pair_margins, read_mm_rlhf_rewardbench, read_vl_rewardbench, mm_rlhf_metrics, vl_rewardbench_metrics
from dt2it_mrm.world import SimJudge, WorldConfig, make_split


def rec(i, chosen, rejected, gold=1, group="g", labels=None, styles=None, question="Q?"):
    return {"id": f"r{i}", "images": [f"img{i}.png"], "question": question, "chosen": chosen, "rejected": rejected,
            "group": group, "gold": gold, "labels": labels, "weight": 1.0, "meta": {"styles": styles} if styles else {}}


TOY = [rec(0, "a long answer here", "short", 1, "a", styles=["verbose", "concise"]),
       rec(1, "another long answer", "tiny", 0, "a", styles=["verbose", "concise"]),
       rec(2, "brief", "a much longer one", 1, "b", styles=["concise", "verbose"]),
       rec(3, "long enough answer", "no", 0, "b", styles=["hedged", "concise"]),
       rec(4, "same", "size", 1, "b")]


# ---------- length and style
def test_length_bias_counts_by_hand():
    lb = bias.length_bias(TOY, n_bins=2)
    c = lb["chars"]
    assert c["ties"] == 1 and c["n"] == 4  # "same" vs "size"
    assert c["chosen_longer"] == 0.75 and c["better_longer"] == 0.25
    assert np.isclose(c["label_length_pref"], (1 + 2 / 3) / 2)
    assert sum(r["n"] for r in c["curve"]) == 4
    assert lb["words"]["chosen_longer"] == 0.75  # 4 vs 1 words, 3 vs 1, 1 vs 4, 3 vs 1
    assert lb["per_style"]["concise"] == {"n": 4, "chosen": 0.25, "better": 0.75}
    assert lb["per_pair"]["concise vs hedged"] == {"n": 1, "chosen": 0.0, "better": 1.0}


def test_length_curve_separates_small_and_large_differences():
    recs = [rec(i, "x" * (10 + d), "x" * 10, 1) for i, d in enumerate([1, 2, 3, 4])]  # small gaps: chosen longer
    recs += [rec(10 + i, "x" * 10, "x" * (10 + d), 1) for i, d in enumerate([50, 60, 70, 80])]  # large gaps: chosen shorter
    curve = bias.length_curve(recs, n_bins=2)
    assert [(r["n"], r["chosen_longer"]) for r in curve] == [(4, 1.0), (4, 0.0)]
    assert curve[0]["hi"] < curve[1]["lo"]


def test_answer_length_rejects_unknown_unit():
    with pytest.raises(ValueError, match="unit"): bias.answer_length("a b", "tokens")


# ---------- position bias
def test_position_bias_by_hand():
    p = bias.position_bias([(0, 0), (0, 1), (1, 0), (0, 0)], gold=[1, 1, 0, 0])
    assert (p["first_position_win_rate"], p["position_bias"], p["flip_rate"]) == (0.75, 0.5, 0.5)
    assert (p["accuracy_order1"], p["accuracy_order2"], p["consistent_share"], p["accuracy_consistent"]) == (0.75, 0.75, 0.5, 1.0)


def test_both_order_verdicts_of_a_blind_and_a_fair_judge():
    blind = bias.position_bias(bias.both_order_verdicts(TOY, lambda img, q, a, b: 0))
    assert blind["position_bias"] == 1.0 and blind["flip_rate"] == 1.0
    longer = lambda img, q, a, b: int(len(b) > len(a))  # order-blind: prefers the longer answer
    v = bias.both_order_verdicts(TOY, longer)
    fair = bias.position_bias(v, [r["gold"] for r in TOY])
    assert fair["flip_rate"] == 0.2 and fair["accuracy_consistent"] == 0.25  # the equal-length pair flips; right only on record 0
    assert v[0].tolist() == [0, 1]


def test_position_bias_of_the_simulated_judge_matches_its_knob():
    recs, _ = make_split(WorldConfig(n_train=10, n_test=400), "test_hard", 0, "img")
    knobs = {**WorldConfig().judge, "position_bias": 0.4}
    p = bias.position_bias(bias.both_order_verdicts(recs, SimJudge.from_records(recs, knobs, seed=0).pairwise))
    assert abs(p["position_bias"] - 0.4) < 4 * p["position_bias_se"]


def test_verdicts_from_judge_annotations():
    views = lambda w1, w2: {"judge": {"views": [{"shown": [0, 1], "winner": w1}, {"shown": [1, 0], "winner": w2}]}}
    anns = [{"gold": 1, "meta": views(0, 0)}, {"gold": 0, "meta": views(1, 1)}, {"gold": 1, "meta": views(None, 0)},
            {"gold": 1, "meta": {}}]  # the last was never judged
    v, g = bias.verdicts_from_annotations(anns)
    assert np.array_equal(v[:2], [[0, 1], [1, 0]]) and np.isnan(v[2, 0]) and v[2, 1] == 1 and g.tolist() == [1, 0, 1]
    p = bias.position_bias(v, g)
    assert p["n_verdicts"] == 5 and p["n_both"] == 2 and p["flip_rate"] == 0.0


# ---------- inter-modal: the text-only shortcut
def _tell_records(n=200, share=0.8, seed=0):
    r = np.random.default_rng(seed)
    words = "red blue green circle square two three left right top".split()
    ans = lambda: " ".join(r.choice(words, 6))
    out = []
    for i in range(n):
        c, rj = ans(), ans()
        if r.random() < share: c = "clearly " + c
        out.append({**rec(i, c, rj, question=f"q{i % 50}"), "images": [f"img{i % 50}.png"]})  # 50 prompts
    return out


def test_text_model_is_antisymmetric_and_swap_invariant():
    recs = _tell_records()
    m = bias.fit_text_model(recs)
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in recs]
    assert np.allclose(pair_margins(recs, m), -pair_margins(swapped, m))
    assert np.allclose(m.w, bias.fit_text_model(recs, seed=3).w, atol=1e-4)
    assert accuracy(pair_margins(recs, m)) > 0.8


def test_cross_fitted_shortcut_finds_the_tell_and_gold():
    recs = _tell_records(share=0.8)
    s, m = bias.intermodal_bias(recs, k=4)
    assert 0.8 <= s["text_solvable"] <= 0.97 and s["gold_text_solvable"] == s["text_solvable"]  # gold = 1 everywhere
    assert np.allclose(bias.shortcut_scores(m), 1 / (1 + np.exp(-m)))
    none, _ = bias.intermodal_bias(_tell_records(share=0.0), k=4)
    assert none["text_solvable"] < 0.65  # no tell: nothing to find


def test_prompt_folds_keep_a_prompt_together():
    recs = _tell_records(100)  # 50 prompts, two pairs each
    f = bias.prompt_folds(recs, k=5, seed=0)
    by_q = {}
    for r, x in zip(recs, f): by_q.setdefault(r["question"], set()).add(x)
    assert all(len(v) == 1 for v in by_q.values()) and sorted(set(f)) == [0, 1, 2, 3, 4]
    assert np.array_equal(f, bias.prompt_folds(recs, k=5, seed=0)) and not np.array_equal(f, bias.prompt_folds(recs, k=5, seed=1))
    with pytest.raises(ValueError, match="distinct prompts"): bias.prompt_folds(recs[:4], k=5)


def test_cross_fit_plugs_in_any_fit_and_never_scores_a_training_answer():
    recs = _tell_records(100)
    seen_images = []
    def memoriser(train):  # scores 1 an answer it was trained on, 0 otherwise
        known = {r[k] for r in train for k in ("chosen", "rejected")}
        def score(items):
            seen_images.extend(it["image"] for it in items)
            return np.array([float(it["answer"] in known) for it in items])
        return score
    oof = bias.cross_fit(recs, memoriser, k=5)
    assert np.all(pair_margins(recs, oof) == 0) and set(seen_images) == {None}  # out of fold, image blanked
    lengths = bias.cross_fit(recs, lambda train: bias.length_scorer(), k=5)
    assert np.allclose(pair_margins(recs, lengths), pair_margins(recs, bias.length_scorer()))
    with pytest.raises(KeyError, match="not scored"): oof([{"image": None, "question": "new", "answer": "x"}])


def test_length_scorers_count_ties_wrong():
    assert accuracy(pair_margins(TOY, bias.length_scorer())) == 0.6  # 3 of 5; the equal-length pair is a tie
    assert accuracy(pair_margins(TOY, bias.length_scorer(sign=-1))) == 0.2



def test_shortcut_rule_prefers_a_tell_then_length():
    rule = bias.shortcut_rule_scorer(["clearly", "surely"])
    items = [{"image": None, "question": "q", "answer": a} for a in ("clearly no", "a much longer answer", "surely", "ab")]
    assert rule(items).tolist() == [1e6 + 10, 20, 1e6 + 6, 2]  # a tell outweighs any length; without one, length decides
    assert rule.needs_images is False
    assert bias.shortcut_rule_scorer()(items).tolist() == [10, 20, 6, 2]  # no phrases: the length scorer
    assert bias.shortcut_rule_scorer("clearly")(items).tolist() == bias.shortcut_rule_scorer(["clearly"])(items).tolist()


def test_shortcut_rule_solves_the_biased_test_set_but_not_the_neutral_one():
    cfg = WorldConfig(n_test=400, n_neutral=2000)
    rule = bias.shortcut_rule_scorer([cfg.tell_phrase])
    iid = accuracy(pair_margins(make_split(cfg, "test_iid", 0, "img")[0], rule))
    neutral = accuracy(pair_margins(make_split(cfg, "test_neutral", 0, "img")[0], rule))
    assert 0.78 < iid < 0.92 and abs(neutral - 0.5) < 0.04, (iid, neutral)


# ---------- groups
def test_group_bias_by_hand():
    m = pair_margins(TOY, bias.length_scorer())  # +, +, −, +, 0
    gb = bias.group_bias(TOY, {"len": m})
    assert gb["groups"]["a"] == {"n": 2, "share": 0.4, "label_rate": 0.5}
    assert gb["groups"]["b"]["label_rate"] == 2 / 3
    sc = gb["scorers"]["len"]
    assert sc["per_group"] == pytest.approx({"a": 1.0, "b": 1 / 3}) and sc["worst"] == pytest.approx(1 / 3) and sc["gap"] == pytest.approx(2 / 3)
    gold = bias.group_bias(TOY, {"len": m}, against_gold=True)  # record 1 and 3: rejected truly better
    assert gold["scorers"]["len"]["per_group"] == {"a": 0.5, "b": 0.0}


# ---------- annotators
def _votes_world(n, seed, fan_pref=0.9):
    r, recs = np.random.default_rng(seed), []
    acc = {"expert": 0.9, "crowd_a": 0.8, "crowd_b": 0.7, "spammer": 0.5}
    for i in range(n):
        better_long = r.random() < 0.8
        good, bad = ("a long and wordy answer", "short one")[::1 if better_long else -1]
        who = r.choice(["expert", "crowd_a", "crowd_b", "spammer", "fan"], 3, replace=False)
        right = {a: (r.random() < fan_pref) == better_long if a == "fan" else r.random() < acc[a] for a in who}
        maj = sum(right.values()) >= 2
        ch, rj = (good, bad) if maj else (bad, good)
        recs.append(rec(i, f"{ch} {i}", f"{rj} {i}", int(maj), labels={a: int(v == maj) for a, v in right.items()}))
    return recs


def test_dawid_skene_recovers_simulated_annotators():
    aud = bias.annotator_audit(_votes_world(2000, 1))
    assert aud["max_abs_error"] < 0.05, {a: t["error"] for a, t in aud["truth"].items()}
    ds = aud["dawid_skene"]
    assert [s["annotator"] for s in ds["selection"] if s["freed"]] == ["fan"]
    assert abs(ds["annotators"]["fan"]["length_pref"] - 0.9) < 0.05 and ds["annotators"]["expert"]["length_pref"] == 0.5
    la = aud["label_accuracy"]
    assert la["dawid_skene"] > la["majority_vote"] + 0.03 and la["one_coin"] < la["dawid_skene"]
    assert aud["one_coin"]["annotators"]["fan"]["accuracy"] > aud["one_coin"]["annotators"]["expert"]["accuracy"]


def test_dawid_skene_on_the_default_world_is_within_five_points():
    raw, _ = make_split(WorldConfig(), "train_raw", 0, "img")  # the default world's raw training pairs
    aud = bias.annotator_audit(raw)
    assert aud["max_abs_error"] < 0.05, {a: (t["accuracy"], t["estimate"]) for a, t in aud["truth"].items()}
    assert aud["label_accuracy"]["dawid_skene"] > aud["label_accuracy"]["majority_vote"]
    assert [s["annotator"] for s in aud["dawid_skene"]["selection"] if s["freed"]] == ["verbose_fan"]


def test_dawid_skene_posterior_orientation_and_unlabelled_pairs():
    recs = _votes_world(600, 2)
    post, rep = bias.dawid_skene(recs)
    flipped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"], "labels": {a: 1 - v for a, v in r["labels"].items()}} for r in recs]
    post_f, _ = bias.dawid_skene(flipped)
    assert np.allclose(post, 1 - post_f, atol=1e-6)  # P(chosen better) follows the swap
    post_u, rep_u = bias.dawid_skene(recs + [rec(999, "long answer x", "y", labels=None)])
    assert np.isnan(post_u[-1]) and rep_u["without_votes"] == 1 and "without_votes" not in rep  # no votes: no posterior, counted
    assert np.allclose(post_u[:-1], post, atol=1e-6)  # and the voted pairs' posteriors do not move
    with pytest.raises(ValueError, match="no annotator labels"): bias.dawid_skene([rec(0, "a", "b")])
    with pytest.raises(ValueError, match="length_bias"): bias.dawid_skene(recs, length_bias="maybe")


def test_majority_vote_and_truth():
    recs = [rec(0, "long one", "s", 1, labels={"a": 1, "b": 0}), rec(1, "long one", "s", 0, labels={"a": 1, "b": 1, "c": 0})]
    assert bias.majority_vote(recs).tolist() == [0.5, 2 / 3]
    t = bias.annotator_truth(recs)
    assert t["a"]["accuracy"] == 0.5 and t["b"]["accuracy"] == 0.0 and t["a"]["longer_when_better"] == 1.0 and t["a"]["longer_when_worse"] == 1.0


# ---------- real benchmark formats, text only
def _write(path, rows): path.write_text("".join(json.dumps(r) + "\n" for r in rows)); return path


def test_benchmark_text_audit_uses_the_official_metrics(tmp_path):
    vl = [{"id": f"{pre}-{i}", "image_path": f"images/{i}.jpg", "query": f"q{i}", "response": [short, long_], "human_ranking": rank,
           "query_source": "x"}
          for i, (pre, rank) in enumerate([("RLAIF-V", [0, 1]), ("mathverse", [1, 0]), ("wildvision", [1, 0]), ("RLHF-V", [1, 0])] * 3)
          for short, long_ in [("no.", f"a longer answer {i}")]]
    recs = read_vl_rewardbench(_write(tmp_path / "vl.jsonl", vl))
    out = bias.benchmark_text_audit(recs, vl_rewardbench_metrics, fit=None)
    assert out["longer_wins"]["accuracy"] == 0.75 and out["shorter_wins"]["accuracy"] == 0.25
    assert out["longer_wins"]["per_category"] == {"general": 1.0, "hallucination": 0.5, "reasoning": 1.0}
    assert np.isclose(out["longer_wins"]["macro_accuracy"], 2.5 / 3)
    mm = [{"id": f"p{i // 2}", "image": f"mcq/{i}.png", "prompt": f"prompt {i // 2}", "chosen": "x" * (5 + i % 2 * 10), "rejected": "y" * 8}
          for i in range(8)]
    mrecs = read_mm_rlhf_rewardbench(_write(tmp_path / "mm.jsonl", mm))
    mo = bias.benchmark_text_audit(mrecs, mm_rlhf_metrics, fit=partial(bias.fit_text_model, l2=1.0), k=2)
    assert mo["longer_wins"]["accuracy"] == 0.5 and mo["longer_wins"]["acc_plus"] == 0.0  # every prompt has one wrong pair
    assert set(mo) == {"longer_wins", "shorter_wins", "text_model_crossfit"} and 0 <= mo["text_model_crossfit"]["accuracy"] <= 1


def test_figures_are_written(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    lb = bias.length_bias(_tell_records(50), n_bins=3)
    bias.plot_length_curve(lb, path=tmp_path / "curve.png")
    bias.plot_annotators(bias.annotator_audit(_votes_world(300, 0)), tmp_path / "ann.png")
    bias.plot_bars({"x": {"a": 0.3, "b": None}}, "t", path=tmp_path / "bars.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("curve.png", "ann.png", "bars.png"))
