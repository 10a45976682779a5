"""Resampling: every strategy's weights by hand, combining, clipping, ESS, relabelling, the sampler, the loss and dynamic updates."""
import numpy as np
import pytest
import torch

from dt2it_mrm import bias, resample
from dt2it_mrm.data import PrefRecord
from dt2it_mrm.evaluate import pair_margins


def rec(i, chosen, rejected, group, gold=1, labels=None, meta=None):
    return {"id": f"r{i}", "images": [f"i{i}.png"], "question": f"Q{i}?", "chosen": chosen, "rejected": rejected,
            "group": group, "labels": labels, "gold": gold, "weight": 1.0, "meta": meta or {}}


# lengths: chosen longer in r0, r1, r2, r4; shorter in r3, r5; r6 equal length
TOY = [rec(0, "long answer", "short", "a"), rec(1, "long answer", "tiny", "a"), rec(2, "long answer", "no", "a"),
       rec(3, "x", "long one", "a"), rec(4, "long answer", "nope", "b"), rec(5, "y", "long too", "b"), rec(6, "abcd", "wxyz", "c")]


def test_group_weights_by_hand():
    # 7 pairs, 3 groups (4, 2, 1): raw (7/3)/n = 7/12, 7/6, 7/3; already mean 1
    assert np.allclose(resample.group_weights(TOY), [7 / 12] * 4 + [7 / 6] * 2 + [7 / 3])
    half = np.array([1 / 2] * 4 + [1 / np.sqrt(2)] * 2 + [1.0])  # power 0.5: proportional to n^-1/2
    assert np.allclose(resample.group_weights(TOY, power=0.5), half / half.mean())
    assert np.allclose(resample.group_weights(TOY, power=0), 1)


def test_length_weights_by_hand():
    # n₊ = 4, n₋ = 2, n₀ = 1: w₊ = 6/8, w₋ = 6/4, w₀ = 1; mean (3 + 3 + 1)/7 = 1
    w = resample.length_weights(TOY)
    assert np.allclose(w, [0.75, 0.75, 0.75, 1.5, 0.75, 1.5, 1.0])
    d = bias.length_diffs(TOY)
    assert np.isclose(w[d > 0].sum() / w[d != 0].sum(), 0.5)
    # min_diff 6: |d| = 6, 7, 9, 7, 7, 7, 0 → r0 becomes a tie: n₊ = 3, n₋ = 2 → w₊ = 5/6, w₋ = 5/4
    w = resample.length_weights(TOY, min_diff=6)
    raw = np.array([1, 5 / 6, 5 / 6, 5 / 4, 5 / 6, 5 / 4, 1])
    assert np.allclose(w, raw / raw.mean())


def test_length_weights_within_strata():
    # a: n₊ = 3, n₋ = 1 → 2/3, 2; b: one each → 1, 1; c: only a tie → 1
    w = resample.length_weights(TOY, strata="group")
    raw = np.array([2 / 3, 2 / 3, 2 / 3, 2, 1, 1, 1])
    assert np.allclose(w, raw / raw.mean())
    d, g = bias.length_diffs(TOY), np.array([r["group"] for r in TOY])
    for k in ("a", "b"):
        m = (g == k) & (d != 0)
        assert np.isclose(w[m & (d > 0)].sum() / w[m].sum(), 0.5)


def test_length_weights_leave_one_sided_data_alone():
    assert np.allclose(resample.length_weights(TOY[:3]), 1)


def test_signal_strategies_by_hand():
    assert np.allclose(resample.shortcut_weights([0.9, 0.5, 0.2, 0.6]), np.array([0.1, 0.5, 0.8, 0.4]) / 0.45)
    sq = np.array([0.1, 0.5, 0.8, 0.4]) ** 2
    assert np.allclose(resample.shortcut_weights([0.9, 0.5, 0.2, 0.6], strength=2), sq / sq.mean())
    assert np.allclose(resample.annotator_weights([1.0, 0.5], power=2), [1.6, 0.4])
    assert np.allclose(resample.jtt_weights([0.3, -1.0, 0.0, 2.0], factor=3), [0.5, 1.5, 1.5, 0.5])  # a tie counts wrong
    with pytest.raises(ValueError): resample.shortcut_weights([1.2])
    with pytest.raises(ValueError): resample.annotator_weights([-0.1])
    with pytest.raises(ValueError): resample.normalise([0, 0])


def test_clip_weights_exact():
    c = resample.clip_weights([1, 1, 1, 9], max_weight=2)
    assert np.allclose(c, [2 / 3, 2 / 3, 2 / 3, 2])
    assert np.allclose(resample.clip_weights([0, 1, 1, 2], min_weight=0.5), [0.5, 7 / 8, 7 / 8, 7 / 4])
    w = np.random.default_rng(0).lognormal(0, 2, 500)
    c = resample.clip_weights(w, 0.2, 5)
    assert np.isclose(c.mean(), 1) and c.min() >= 0.2 - 1e-12 and c.max() <= 5 + 1e-12
    assert np.all(np.diff(c[np.argsort(w)]) >= -1e-12)  # order kept
    assert np.allclose(resample.clip_weights([1, 2, 3]), [0.5, 1, 1.5])  # no bounds: just normalised
    with pytest.raises(ValueError, match="bracket"): resample.clip_weights([1, 2], max_weight=0.5)


def test_effective_sample_size():
    assert resample.effective_sample_size([1] * 10) == 10
    assert np.isclose(resample.effective_sample_size([2 / 3, 2 / 3, 2 / 3, 2]), 3)
    assert np.isclose(resample.effective_sample_size([1, 0, 0, 0]), 1)


def test_compute_weights_multiplies_normalises_and_clips():
    m = [1, 1, -1, 1, 1, 1, 1]
    w = resample.compute_weights(TOY, {"group": {}, "length": {}, "jtt": {"factor": 2}}, margins=m)
    raw = np.array([7 / 12] * 4 + [7 / 6] * 2 + [7 / 3]) * np.array([0.75, 0.75, 0.75, 1.5, 0.75, 1.5, 1]) * np.array([1, 1, 2, 1, 1, 1, 1])
    assert np.allclose(w, raw / raw.mean())
    c = resample.compute_weights(TOY, {"group": {}, "length": {}, "jtt": {"factor": 2}}, margins=m, clip={"max_weight": 1.5})
    assert np.isclose(c.mean(), 1) and np.isclose(c.max(), 1.5) and np.allclose(c, resample.clip_weights(w, max_weight=1.5))
    assert np.allclose(resample.compute_weights(TOY, ["group"]), resample.group_weights(TOY))  # a list means default options
    assert np.allclose(resample.compute_weights(TOY, {"group": True, "length": None, "jtt": False}), resample.group_weights(TOY))
    assert np.allclose(resample.compute_weights(TOY, None), 1)
    with pytest.raises(ValueError, match="strategies.balance.*no such setting"): resample.compute_weights(TOY, {"balance": {}})
    with pytest.raises(ValueError, match="margins"): resample.compute_weights(TOY, {"jtt": {}})


def test_compute_weights_from_a_scorer_and_default_signals():
    scorer = bias.length_scorer()
    w = resample.compute_weights(TOY, {"jtt": {"factor": 4}}, scorer=scorer)
    assert np.allclose(w, resample.jtt_weights(pair_margins(TOY, scorer), 4))
    r = np.random.default_rng(0)
    words = "red blue green circle square two three".split()
    recs = [rec(i, ("clearly " if i % 4 else "") + " ".join(r.choice(words, 5)), " ".join(r.choice(words, 5)), "g",
                labels={"x": 1, "y": int(i % 3 > 0), "z": 1}) for i in range(60)]
    ws = resample.compute_weights(recs, {"shortcut": {}}, folds=3, seed=1)
    short = bias.shortcut_scores(pair_margins(recs, bias.cross_fit(recs, bias.fit_text_model, 3, 1)))
    assert np.allclose(ws, resample.shortcut_weights(short))
    assert ws[[i for i in range(60) if i % 4 == 0]].mean() > ws.mean()  # the pairs without the tell gain weight
    wa = resample.compute_weights(recs, {"annotator": {}})
    assert np.allclose(wa, resample.annotator_weights(bias.dawid_skene(recs)[0]))


def test_relabel_swaps_where_the_posterior_says_so():
    r = rec(0, "A", "B", "g", gold=0, labels={"x": 1, "y": 0}, meta={"errors": [2, 0], "styles": ["verbose", "list"], "tell": "chosen"})
    out, conf = resample.relabel([r, TOY[0]], [0.2, 0.7])
    s = out[0]
    assert (s["chosen"], s["rejected"], s["gold"], s["labels"]) == ("B", "A", 1, {"x": 0, "y": 1})
    assert s["meta"] == {"errors": [0, 2], "styles": ["list", "verbose"], "tell": "rejected", "relabelled": True}
    assert out[1] is TOY[0] and np.allclose(conf, [0.8, 0.7]) and r["chosen"] == "A"  # the input is not modified
    PrefRecord.from_dict(s)  # still a valid record


def test_report_sampler_loss_and_weight_field():
    w = resample.compute_weights(TOY, {"group": {}, "length": {"strata": "group"}})
    rep = resample.weight_report(w, TOY)
    assert all(np.isclose(v, 1 / 3) for v in rep["group_share"].values())  # length weights have mean 1 within each group
    assert np.isclose(rep["chosen_longer"], 0.5) and np.isclose(rep["chosen_longer_unweighted"], 4 / 6)
    assert np.isclose(rep["ess"], resample.effective_sample_size(w)) and rep["label_accuracy"] == 1.0
    draws = list(resample.weighted_sampler(w, 20000, seed=3))
    assert draws == list(resample.weighted_sampler(w, 20000, seed=3))  # seeded
    assert np.abs(np.bincount(draws, minlength=7) / 20000 - w / w.sum()).max() < 0.015
    recs = resample.with_weights(TOY, w)
    assert [PrefRecord.from_dict(r).weight for r in recs] == pytest.approx(w.tolist()) and TOY[0]["weight"] == 1.0
    with pytest.raises(ValueError, match="weights for"): resample.with_weights(TOY, w[:3])
    m, wt = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 3.0, 0.0])
    want = (1.0 * -torch.nn.functional.logsigmoid(m[0]) + 3.0 * -torch.nn.functional.logsigmoid(m[1])) / 4.0
    assert torch.isclose(resample.weighted_bt_loss(m, wt), want)
    assert torch.isclose(resample.weighted_bt_loss(m), -torch.nn.functional.logsigmoid(m).mean())


def test_dynamic_weights_recompute_from_the_current_model():
    dyn = resample.DynamicWeights(TOY, {"group": {}, "jtt": {"factor": 3}}, clip={"max_weight": 3})
    w0 = dyn.update()  # no model yet
    assert np.allclose(w0, resample.group_weights(TOY))
    w1 = dyn.update(margins=[1, 1, -1, 1, 1, 1, 1])
    w2 = dyn.update(margins=[1, 1, 1, 1, 1, 1, -1])
    raw = np.array([7 / 12] * 4 + [7 / 6] * 2 + [7 / 3]) * np.array([1, 1, 3, 1, 1, 1, 1])
    assert np.allclose(w1, resample.clip_weights(raw, max_weight=3))
    assert w2[6] == 3.0 and w2[2] < w1[2] and len(dyn.history) == 3 and dyn.history[2]["max"] == 3.0
    with pytest.raises(ValueError, match="margins"): dyn.update()  # after the first round JTT needs a model


def test_pairs_without_votes_have_no_annotator_weight_and_are_not_relabelled():
    "NaN posterior (no votes): annotator weight 1, the others mean 1 among themselves; relabel keeps the label."
    p = np.array([0.9, np.nan, 0.6, np.nan])
    w = resample.annotator_weights(p)
    assert w[1] == w[3] == 1.0 and np.allclose(w[[0, 2]], [0.9 / 0.75, 0.6 / 0.75])
    assert np.array_equal(resample.annotator_weights([0.9, 0.6]), resample.normalise([0.9, 0.6]))  # all voted: as before
    assert (resample.annotator_weights([np.nan] * 3) == 1).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"): resample.annotator_weights([1.2, np.nan])
    out, conf = resample.relabel(TOY[:4], [0.2, np.nan, 0.7, np.nan])
    assert [r["chosen"] for r in out] == ["short", "long answer", "long answer", "x"] and np.isnan(conf[[1, 3]]).all()
    mixed = [rec(i, f"answer {i} " * (1 + i % 3), f"ans {i}", "a", labels=None if i % 5 == 0 else {"x": 1, "y": i % 2, "z": 1}) for i in range(30)]
    w = resample.compute_weights(mixed, {"annotator": {}})  # the default posterior: Dawid–Skene, NaN where no votes
    assert np.isfinite(w).all() and (w[::5] == 1).all()


def _lp(i, longer_chosen, group, tell=None):
    "A pair whose chosen answer is longer (or not), with the tell phrase on one side (or none)."
    c, r = ("a long answer here", "short") if longer_chosen else ("short", "a long answer here")
    if tell == "chosen": c = "T! " + c
    if tell == "rejected": r = "T! " + r
    return rec(i, c, r, group)


def test_propensity_weights_make_every_oriented_nuisance_independent_of_the_label_in_every_group():
    recs = ([_lp(i, True, "a") for i in range(12)] + [_lp(12 + i, False, "a") for i in range(4)]
            + [_lp(20 + i, True, "b", tell="chosen") for i in range(5)] + [_lp(30 + i, True, "b", tell="rejected") for i in range(1)]
            + [_lp(40 + i, False, "b", tell="rejected") for i in range(2)])
    w, soft, rep = resample.propensity_weights(recs, orient=["length", "tell"], balance=["group"], phrases=["T!"], target_ess=None)
    g = np.array([r["group"] for r in recs]); d = np.array([len(r["chosen"]) - len(r["rejected"]) for r in recs])
    assert np.isclose(w.mean(), 1) and np.allclose(soft, 1) and rep["strata"] == 2
    assert np.isclose(w[g == "a"].sum(), w[g == "b"].sum())  # groups of equal total weight
    assert np.isclose(w[(g == "a") & (d > 0)].sum(), w[(g == "a") & (d < 0)].sum())  # group a: chosen longer as often as shorter
    tell = np.array([("T!" in r["chosen"]) - ("T!" in r["rejected"]) for r in recs])
    cell = lambda L, T: w[(g == "b") & (np.sign(d) == L) & (tell == T)].sum()
    assert np.isclose(cell(1, 1), cell(-1, -1)) and cell(-1, 1) == 0  # group b: (longer, tell) as heavy as its mirror
    # the cell (longer, tell on rejected) has no mirror (shorter, tell on chosen): it keeps its whole mass
    assert np.isclose(cell(1, -1), w[g == "b"].sum() * 1 / 8)


def test_uncertain_labels_split_a_pairs_weight_between_its_label_and_the_other_answer():
    recs = [_lp(i, True, "a") for i in range(6)] + [_lp(6 + i, False, "a") for i in range(2)]
    q = np.array([1.0] * 6 + [0.6] * 2)
    w, soft, _ = resample.propensity_weights(recs, q, orient=["length"], balance=[], target_ess=None)
    # expected counts: longer 6 + 0.8, shorter 1.2; w(longer) = 8·½/6.8, w(shorter) = 8·½/1.2
    wl, ws = 4 / 6.8, 4 / 1.2
    assert np.allclose(w, [wl] * 6 + [0.6 * ws + 0.4 * wl] * 2) and np.allclose(soft[6:], 0.6 * ws / (0.6 * ws + 0.4 * wl))
    with pytest.raises(ValueError, match="confidence"): resample.propensity_weights(recs, [1.2] * 8)
    with pytest.raises(ValueError, match="oriented nuisance"): resample.propensity_weights(recs, orient=["colour"])


def test_the_noise_modes_weight_a_doubtful_label_by_its_own_cell_or_take_it_as_right():
    recs = [_lp(i, True, "a") for i in range(6)] + [_lp(6 + i, False, "a") for i in range(2)]
    q = np.array([1.0] * 6 + [0.6] * 2)
    d = np.array([len(r["chosen"]) > len(r["rejected"]) for r in recs])
    # confidence: each pair only in its own cell, with mass q; cell masses 6 and 1.2 are balanced, the label stays hard
    w, soft, rep = resample.propensity_weights(recs, q, orient=["length"], balance=[], target_ess=None, noise="confidence")
    assert rep["noise"] == "confidence" and np.allclose(soft, 1) and np.isclose(w.mean(), 1)
    assert np.isclose(w[d].sum(), w[~d].sum()) and np.allclose(w[~d] / w[d][0], 0.6 * 6 / 1.2)
    # ignore: the labels taken as right (counts 6 and 2), the confidence only as the soft label
    w, soft, _ = resample.propensity_weights(recs, q, orient=["length"], balance=[], target_ess=None, noise="ignore")
    assert np.isclose(w[d].sum(), w[~d].sum()) and np.allclose(w[~d] / w[d][0], 3) and np.allclose(soft, q)
    # expect (the default) differs from both: the doubtful pairs back the other answer with part of their weight
    w, soft, _ = resample.propensity_weights(recs, q, orient=["length"], balance=[], target_ess=None)
    assert not np.allclose(soft, 1) and not np.allclose(soft, q)
    with pytest.raises(ValueError, match="noise mode"): resample.propensity_weights(recs, q, noise="drop")


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_trimming_reaches_the_target_ess_with_the_largest_cap(target):
    w = np.random.default_rng(0).lognormal(0, 1.5, 500)
    t, cap = resample.trim_to_ess(w, target)
    share = lambda x: resample.effective_sample_size(x) / len(x)
    assert share(w) < target <= share(t) + 1e-9 and np.isclose(t.mean(), 1) and np.isclose(t.max(), cap)
    assert share(resample.clip_weights(w, max_weight=cap * 1.01)) < target  # a looser cap misses it
    assert resample.trim_to_ess(np.ones(5), 0.9)[1] == np.inf
