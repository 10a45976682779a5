"""Tests for dt2it_mrm.loop: calibration, out-of-fold scoring, posterior flips, budgeted review, augmentation without
privileged information, truth measured from content, and one iteration on a slice of the synthetic world."""
import numpy as np
import pytest

from dt2it_mrm.core import rng
from dt2it_mrm.data import swap_sides
from dt2it_mrm.loop import (LOOP_DEFAULTS, EnsembleScores, apply_weights, augment_pairs, bayes_update, budget_curve, calibrate,
                            calibrated, combine_votes, dedupe, fit_calibration, loop_params, nuisance_features, out_of_fold, p_wrong, pair_key, reannotator, restyle,
                            review_order, run_iteration, same_image_negatives, other_image_negatives)
from dt2it_mrm.resample import relabel
from dt2it_mrm.reward_model import fold_of
from dt2it_mrm.world import SimJudge, SimRewriter, WorldConfig, WorldTruth, make_split, read_claims


def pair(id, c, r, q="q", img="x.png", **kw):
    return dict(id=id, images=[img], question=q, chosen=c, rejected=r, **kw)


class Table:
    "A scorer reading each answer's score from a table, recording every call."
    def __init__(self, table): self.table, self.calls = table, []
    def __call__(self, items):
        self.calls.append([it["answer"] for it in items])
        return np.array([self.table.get(it["answer"], 0.0) for it in items], float)


# ---------------------------------------------------------------- scoring, calibration, posterior

def test_each_unique_item_scored_once_per_member():
    recs = [pair("p", "A", "B"), pair("q", "B", "C"), pair("r", "A", "C"), pair("s", "A", "B", img="y.png")]
    m1, m2 = Table({"A": 3, "B": 1, "C": 0}), Table({"A": 0, "B": 1, "C": 5})
    ens = EnsembleScores([m1, m2])
    M = ens.margins(recs)
    assert [len(c) for c in m1.calls] == [5] and ens.calls == 2 and M.tolist() == [[2, 1, 3, 2], [-1, -4, -5, -1]]
    ens.margins(recs + [pair("t", "C", "A")])
    assert ens.calls == 2
    with pytest.raises(ValueError, match="at least one"): EnsembleScores([])
    with pytest.raises(ValueError, match="non-finite"): EnsembleScores([lambda it: np.array([0, np.nan])]).margins([pair("p", "A", "B")])


def test_fit_calibration_is_the_maximum_likelihood_and_calibrates():
    r = np.random.default_rng(0)
    true_a, m = 1.7, r.normal(0.5, 2.0, 20000)
    right = r.random(len(m)) < 1 / (1 + np.exp(-true_a * m))   # P(label right | m) = σ(a m)
    signed = np.where(right, m, -m)                              # the margin of the right label
    a = fit_calibration(signed)[0]
    assert abs(a - true_a) < 0.1
    ll = lambda a: -np.logaddexp(0, -a * signed).sum() - 1e-3 * a * a / 2
    assert ll(a) >= ll(a + 1e-4) and ll(a) >= ll(a - 1e-4)
    assert fit_calibration(np.zeros((0, 2))).tolist() == [1.0, 0.0] and np.isfinite(fit_calibration(np.array([1.0, 2.0]))).all()
    assert calibrate(np.stack([signed, 2 * signed])).round(2).ravel().tolist() == [round(a, 2), round(a / 2, 2)]


def test_a_length_shortcut_is_calibrated_out_on_neutral_dev():
    r = np.random.default_rng(1)
    n = 6000
    sig = r.normal(0.8, 1.5, n)                     # the model's knowledge of the truth (label-right direction)
    z = r.choice([-1.0, 1.0], n)                    # dev is neutral: chosen longer half the time
    W = calibrate((sig + 1.5 * z)[None, :], z[:, None])
    plain = calibrate((sig + 1.5 * z)[None, :])
    # training pairs: 90% of labels right, the better answer the longer one 80% of the time, so a right label's chosen
    # answer is mostly the longer and a wrong label's mostly the shorter; the model adds its length bonus to both
    right = r.random(n) < 0.9
    zt = np.where((r.random(n) < 0.8) == right, 1.0, -1.0)
    m_t = r.normal(0.8, 1.5, n) * np.where(right, 1, -1) + 1.5 * zt
    prior = np.where(zt > 0, 0.9 * 0.8 / (0.9 * 0.8 + 0.1 * 0.2), 0.9 * 0.2 / (0.9 * 0.2 + 0.1 * 0.8))  # the construction's confidence, which knows the length structure
    def flip_precision(L):
        flips = p_wrong(prior, L) > 0.5
        return (~right[flips]).mean(), flips.sum()
    (p_aware, n_aware), (p_plain, n_plain) = flip_precision(calibrated(m_t[None, :], W, zt[:, None])[0]), flip_precision(calibrated(m_t[None, :], plain)[0])
    assert p_aware > 0.6 and p_aware > p_plain, (p_aware, n_aware, p_plain, n_plain)  # measured: 0.627 (279 flips) vs 0.586 (372)
    recs = [pair("p", "a long answer", "short"), pair("q", "Yes. As shown,", "No", ), pair("r", "x", "As shown, y")]
    assert np.allclose(nuisance_features(recs, ["As shown,"]), [[1, 0.08, 0], [1, 0.12, 1], [-1, -0.10, -1]])


def test_out_of_fold_uses_only_members_that_did_not_see_the_pair():
    L = calibrated(np.array([[10., 1., 2.], [-10., 3., 4.]]), np.array([[1.], [2.]]))
    saw = np.array([[True, False, True], [False, False, True]])
    logit, oof = out_of_fold(L, saw)
    assert logit.tolist() == [-20., (1 + 6) / 2, (2 + 8) / 2] and oof.tolist() == [True, True, False]


def test_posterior_combines_prior_and_evidence_as_odds():
    c, l = np.array([0.9, 0.5, 0.99]), np.array([0.0, -1.0, -np.log(99)])
    q = p_wrong(c, l)
    assert np.allclose(q, [0.1, 1 / (1 + np.exp(-1)), 0.5])


def test_review_order_and_bayes_update():
    e = np.array([0.2, 0.6, 0.01, 0.2, 0.049])
    assert review_order(e, 0.95).tolist() == [1, 0, 3]
    out = bayes_update(np.array([0.5, 0.5, 0.7]), np.array([1., 0., np.nan]), 0.9)
    assert np.allclose(out, [0.9, 0.9, 0.7])
    assert combine_votes([[1, 0, None], [1, 1, 0]]) == [1, None, None] and combine_votes([[1, 0, None], [1, 1, 0]], 1) == [1, None, 0]
    assert reannotator([lambda rs: [1] * len(rs), lambda rs: [None] * len(rs)], 1)([pair("p", "A", "B")]) == [1]


def test_params_are_checked():
    assert loop_params() == LOOP_DEFAULTS
    with pytest.raises(ValueError, match="curate.loop.flip_share.*did you mean 'flip_above'"): loop_params({"flip_share": 0.5})
    with pytest.raises(ValueError, match="flip_above"): loop_params({"flip_above": 1.5})
    with pytest.raises(ValueError, match="judge_budget"): loop_params({"judge_budget": 10.5})
    with pytest.raises(ValueError, match="panel_accuracy"): loop_params({"panel_accuracy": 0.5})
    with pytest.raises(ValueError, match="weigh_by_posterior"): loop_params({"weigh_by_posterior": 1})


# ---------------------------------------------------------------- one pair-flip function everywhere

def world_pairs(n=60, seed=0):
    recs, prompts = make_split(WorldConfig(n_train=n), "train_raw", seed, "img")
    return recs, WorldTruth({p.scene.id: p.scene.objects for p in prompts})


def test_relabel_then_augment_keeps_text_errors_claims_and_gold_aligned():
    recs, truth = world_pairs()
    flipped, _ = relabel(recs, np.zeros(len(recs)))  # every label turned around
    for r, f in zip(recs, flipped):
        assert (f["chosen"], f["meta"]["errors"], f["meta"]["claims"], f["gold"]) == (r["rejected"], r["meta"]["errors"][::-1], r["meta"]["claims"][::-1], 1 - r["gold"])
        for i, side in enumerate(("chosen", "rejected")):  # the text, the claims and the errors of each side still agree
            assert sorted(map(tuple, f["meta"]["claims"][i])) == sorted((o.colour, o.shape, o.cell) for o in read_claims(f[side]))
            assert truth.errors(f["images"][0], f[side]) == f["meta"]["errors"][i]
    assert (truth(flipped) == np.array([f["gold"] for f in flipped])).all()
    aug = restyle(SimRewriter(0.0))
    new = [a for f in flipped for a in aug(f, rng(0))]
    assert len(new) > 40
    parent = {f["id"]: f for f in flipped}
    # a faithful rewriter keeps each side's errors, so the augmented label is exactly as right as its parent's, measured
    assert (truth(new) == np.array([parent[a["id"]]["gold"] for a in new])).all()
    assert all(a["gold"] is None and "errors" not in a["meta"] and "claims" not in a["meta"] for a in new)  # nothing copied to go stale


def test_swap_sides_is_used_by_relabel_and_the_world():
    r = pair("p", "A", "B", gold=1, labels={"x": 1}, meta={"errors": [0, 1], "claims": [[1], [2]], "tell": "chosen", "label_confidence": 0.8})
    out, _ = relabel([r], [0.1])
    assert out[0] == {**swap_sides(r), "meta": {**swap_sides(r)["meta"], "relabelled": True}}


def test_restyle_reverses_length_and_a_slipping_rewriter_is_measured():
    recs, truth = world_pairs(200, 1)
    for rate, lo, hi in ((0.0, 1.0, 1.0), (0.5, 0.55, 0.95)):
        aug = restyle(SimRewriter(rate, seed=2))
        new = [(r, a) for r in recs if r["gold"] == 1 for a in aug(r, rng(0))]
        assert all((len(a["chosen"]) > len(a["rejected"])) != (len(r["chosen"]) > len(r["rejected"])) for r, a in new)
        acc = np.nan_to_num(truth([a for _, a in new]), nan=0.0).mean()  # a tie (the slip closed the gap) is not a right label
        assert lo <= acc <= hi, (rate, acc)
    assert restyle(SimRewriter())(pair("p", "not a world answer", "nor this", q="Why?"), rng(0)) == []


def test_same_image_negatives_never_cross_images():
    pool = [pair(f"p{i}", f"answer {i}", "x", q=f"q{i % 3}", img=f"{i % 2}.png") for i in range(12)]
    aug = same_image_negatives(pool, n=3)
    for rec in pool:
        for a in aug(rec, rng(1, rec["id"])):
            donor = next(p for p in pool if p["chosen"] == a["rejected"])
            assert donor["images"] == rec["images"] and donor["question"] != rec["question"]


def test_other_image_negatives_keep_the_question_and_change_the_image():
    pool = [pair(f"p{i}", f"answer {i}", "x", q=f"q{i % 3}", img=f"{i % 4}.png") for i in range(12)]
    aug = other_image_negatives(pool, n=2)
    got = [a for rec in pool for a in aug(rec, rng(1, rec["id"]))]
    assert len(got) == 24
    for a in got:
        donor = next(p for p in pool if p["chosen"] == a["rejected"])
        assert donor["question"] == a["question"] and donor["images"] != a["images"] and a["meta"]["negative_from"] == donor["id"]
    assert other_image_negatives(pool[:1])(pool[0], rng(0)) == []  # no other image with that question


def test_swap_sides_turns_soft_labels_and_nuisance_margins_with_the_label():
    r = pair("p", "A", "B", meta={"soft_label": 0.8, "nuisance_margin": 1.5, "label_confidence": 0.9})
    s = swap_sides(r)
    assert (s["meta"]["soft_label"], s["meta"]["nuisance_margin"]) == (pytest.approx(0.2), -1.5) and s["meta"]["label_confidence"] == pytest.approx(0.1)


def test_augment_pairs_ids_unique_and_invalid_counted():
    hard = [pair("p", "A", "B"), pair("q", "C", "D")]
    same = lambda rec, r: [dict(rec, chosen="new", rejected="new")]  # identical answers: invalid
    ok = lambda rec, r: [dict(rec, chosen=rec["chosen"] + "!", rejected=rec["rejected"]) for _ in range(2)]
    new, counts = augment_pairs(hard, {"bad": same, "ok": ok}, 0, {"p", "q"})
    assert counts == {"bad": {"tried": 2, "added": 0, "invalid": 2}, "ok": {"tried": 2, "added": 4, "invalid": 0}}
    assert len({r["id"] for r in new}) == 4 and all(r["id"].startswith(("p~ok-", "q~ok-")) for r in new)


def test_dedupe_and_weights():
    a, b = pair("a", "X", "Y"), pair("b", " Y", "X ")
    assert pair_key(a) == pair_key(b) and dedupe([a, b])[1] == 1
    with pytest.raises(ValueError, match="2 weights for 3"): apply_weights([{}, {}, {}], np.ones(2))
    with pytest.raises(ValueError, match="negative"): apply_weights([{}], np.array([-1.0]))


# ---------------------------------------------------------------- the budget curve

def test_budget_curve_active_beats_random_when_the_order_knows_where_errors_are():
    n = 400
    right = (np.arange(n) % 10 != 0).astype(float)  # 10% wrong
    recs = [dict(id=f"p{i}") for i in range(n)]
    panel = lambda rs: [int(right[int(r["id"][1:])]) for r in rs]  # a perfect panel
    order = np.argsort(right, kind="stable")          # wrong labels first
    c = budget_curve(recs, order, panel, right, 100, 4, seed=0)
    assert c["active"][-1][1] == 1.0 and c["random"][0][1] == 0.9
    assert c["random_final"] < 1.0 and c["ratio"] <= 0.6
    assert len(c["active"]) == len(c["random"]) == 101 and c["calls"] == 400


# ---------------------------------------------------------------- iterations

def test_nothing_bypasses_review_and_undecided_pairs_are_kept():
    recs = [pair(k, f"{k}1", f"{k}2", meta={"label_confidence": 0.9}) for k in "abcd"]
    tab = {"a1": -3.0, "b1": 1.0, "c1": -1.5, "d1": 2.0}  # a: P(wrong) 0.69, flipped to 0.31, still reviewed; c: 0.33
    out, log = run_iteration(recs, [Table(tab)], None, None, lambda rs: [None] * len(rs), 4, params={"judge_budget": 8, "hard_share": 0.0, "flip_above": 0.5, "carry": "all"})
    assert log["flip"]["flipped"] == 1 and log["review"]["sent"] == 2 and log["review"]["undecided"] == 2
    assert [r["id"] for r in out] == list("abcd")  # undecided: kept, not dropped
    a = out[0]
    assert a["chosen"] == "a2" and a["meta"]["curation"][0] == "flip" and abs(a["meta"]["label_confidence"] - 1 / (1 + np.exp(np.log(9) - 3))) < 1e-12  # its posterior carried
    assert out[0]["weight"] < 1 and all(0 < r["weight"] <= 1 for r in out)  # down-weighted by the posterior
    assert log["truth"]["label_accuracy_before"] is None  # no truth: no figure
    _, log2 = run_iteration(out, [Table(tab)], None, None, lambda rs: [None] * len(rs), 4, params={"judge_budget": 8, "hard_share": 0.0, "flip_above": 0.5})
    assert log2["review"]["sent"] == 0 and log2["review"]["undecided_before"] == 2  # not asked again


def test_budget_is_respected_and_nothing_is_asked_without_a_panel():
    recs = [pair(f"p{i}", f"a{i}", f"b{i}") for i in range(50)]
    tab = {f"a{i}": -0.5 for i in range(50)}
    asked = []
    def panel(rs): asked.extend(rs); return [1] * len(rs)
    _, log = run_iteration(recs, [Table(tab)], params={"judge_budget": 40, "hard_share": 0.0}, reannotate=panel, calls_per_pair=4)
    assert len(asked) == 10 == log["review"]["sent"] and log["review"]["calls"] == 40
    _, log = run_iteration(recs, [Table(tab)], params={"hard_share": 0.0})
    assert log["review"]["sent"] == 0 and log["review"]["budget"] == 0


@pytest.fixture(scope="module")
def world_slice():
    cfg = WorldConfig(n_train=400, n_dev=300)
    recs, prompts = make_split(cfg, "train_raw", 0, "img")
    dev, dprompts = make_split(cfg, "dev", 0, "img")
    truth = WorldTruth({p.scene.id: p.scene.objects for p in prompts + dprompts})
    return cfg, recs, dev, truth


def truth_scorer(truth, noise, seed):
    "A noisy reward model that measures each answer's errors, plus a mild length bias."
    def score(items):
        return np.array([-truth.errors(it["image"], it["answer"]) + 0.3 * len(it["answer"]) / 100
                         + rng(seed, "noise", it["answer"]).normal(0, noise) for it in items])
    return score


def test_iteration_on_the_world_makes_labels_better(world_slice):
    cfg, recs, dev, truth = world_slice
    members = [truth_scorer(truth, 1.2, s) for s in range(3)]
    saw = lambda ids: np.array([[fold_of(i, 3, 0) != m for i in ids] for m in range(3)])  # member m saw every fold but m
    judge = SimJudge.from_records(recs, cfg.judge)
    def vote(seed):
        j = SimJudge(judge.truth, **cfg.judge, seed=seed)
        def v(rs):
            out = []
            for r in rs:
                a = j.pairwise(r["images"][0], r["question"], r["chosen"], r["rejected"]) == 0
                b = j.pairwise(r["images"][0], r["question"], r["rejected"], r["chosen"]) == 1
                out.append(int(a) if a == b else None)
            return out
        return v
    augs = {"restyle": restyle(SimRewriter(0.1, seed=1))}
    args = dict(saw=saw, dev=dev, reannotate=reannotator([vote(1), vote(2)]), calls_per_pair=4, augmenters=augs, truth=truth,
                params={"judge_budget": 200, "prior": 0.8}, seed=3, curve=True)
    out, log = run_iteration(recs, members, **args)
    t = log["truth"]
    assert t["label_accuracy_before"] < 0.85 and t["after_flips"] > t["label_accuracy_before"] and t["after_review"] > t["after_flips"]
    assert log["flip"]["flipped"] > 10 and log["flip"]["precision"] > 0.6
    assert log["review"]["decided_accuracy"] > 0.9 and log["review"]["calls"] <= 200
    assert log["score"]["calibrated"] and log["score"]["posterior_vs_truth"]["ece"] < 0.1
    assert log["augment"]["restyle"]["added"] > 0 and 0.8 < log["augment"]["restyle"]["label_accuracy"] <= 1.0
    assert log["curve"]["ratio"] is not None and log["curve"]["ratio"] <= 0.6
    assert len({r["id"] for r in out}) == len(out) == log["merge"]["size"]
    again, log2 = run_iteration(recs, members, **args)
    assert again == out and log2 == log  # deterministic


def test_an_undecided_label_more_likely_wrong_than_right_is_dropped_and_counted():
    recs = [pair(k, f"{k}1", f"{k}2", meta={"label_confidence": 0.9}) for k in "ab"]
    tab = {"a1": -2.6, "b1": 1.0}  # a: P(wrong) 0.60, between 0.5 and flip_above 0.7: not flipped
    truth = lambda rs: np.array([float(r["chosen"] == f"{r['id']}2") if r["id"] == "a" else 1.0 for r in rs])  # a's label is wrong
    out, log = run_iteration(recs, [Table(tab)], reannotate=lambda rs: [None] * len(rs), calls_per_pair=4, params={"hard_share": 0.0}, truth=truth)
    assert [r["id"] for r in out] == ["b"] and log["review"]["dropped"] == 1 and log["review"]["dropped_were_wrong"] == 1.0
    assert log["truth"]["label_accuracy_before"] == 0.5 and log["truth"]["label_accuracy_after"] == 1.0


def test_carry_none_keeps_the_construction_prior_and_turns_it_with_a_flip():
    recs = [pair(k, f"{k}1", f"{k}2", meta={"label_confidence": 0.9}) for k in "ab"]
    tab = {"a1": -8.0, "b1": -1.0}  # a: flipped (P(wrong) > 0.9); b: kept, no panel
    out, log = run_iteration(recs, [Table(tab)], params={"hard_share": 0.0, "carry": "none"})
    assert log["flip"]["flipped"] == 1 and [round(r["meta"]["label_confidence"], 12) for r in out] == [0.1, 0.9]
