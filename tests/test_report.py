"""The report: every claim decided by its interval over replicate worlds and test pairs, honestly either way."""
import numpy as np
import pytest

from dt2it_mrm.report import (arm_summary, claims, claims_markdown, headline_rows, md_table, pair_worlds, saturation_verdict)

SETS = ("test_neutral", "test_hard", "test_shift")


def scores(accs: dict, worlds: int = 3, n: int = 600, seed: int = 0, tau: dict | None = None) -> dict:
    "Arms of known accuracy per set (a float, or {set: float}), 4 balanced groups, expert lists and best-of-N lists, per world."
    r = np.random.default_rng(seed); out = {a: {} for a in accs}
    for w in range(worlds):
        ids, groups = [f"w{w}p{i}" for i in range(n)], [("plain", "dark", "textured", "outline")[i % 4] for i in range(n)]
        for a, p in accs.items():
            sets = {}
            for s in SETS:
                q = p[s] if isinstance(p, dict) else p
                sets[s] = {"id": ids, "group": groups, "margin": np.where(r.random(n) < q, 1.0, -1.0).tolist()}
            t = (tau or {}).get(a, 0.5)
            out[a][f"w{w}"] = {"sets": sets, "expert": {"tau": (t + r.normal(0, 0.3, 100)).tolist(), "pair_right": [4] * 100, "pair_total": [6] * 100},
                               "best_of_n": {"picked": (-r.random(100)).tolist(), "random": [-1.5] * 100, "best": [0.0] * 100}}
    return out


def test_a_method_that_does_not_help_is_not_reproduced():
    s = scores({"baseline": 0.75, "oracle": 0.9, "debiased": 0.76, "iter1": 0.76, "iter2": 0.76}, tau={"baseline": 0.4, "iter2": 0.38})
    c = claims(s, n_boot=400)
    assert c["final_arm"] == "iter2" and c["worlds"] == 3
    assert c["accuracy"]["verdict"] == "not reproduced" and c["accuracy"]["gain_points"]["high"] < 8
    assert c["expert"]["verdict"] == "not reproduced" and c["fairness"]["verdict"] != "reproduced"
    assert "**not reproduced**" in claims_markdown(c)


def test_a_method_that_helps_is_reproduced_and_a_noisy_small_effect_is_inconclusive():
    big = claims(scores({"baseline": 0.70, "oracle": 0.95, "debiased": 0.80, "iter1": 0.86, "iter2": 0.90}, tau={"baseline": 0.3, "iter2": 0.6}), n_boot=400)
    assert big["accuracy"]["verdict"] == "reproduced" and big["expert"]["verdict"] == "reproduced"
    assert 0.7 < big["gap_closed"]["estimate"] < 0.9
    # exactly +8 points measured on one small world: the interval straddles the threshold
    s = scores({"baseline": 0.70, "debiased": 0.78}, worlds=1, n=200)
    order = np.random.default_rng(1).permutation(200)
    for a, k in (("baseline", 140), ("debiased", 156)):
        for blk in s[a]["w0"]["sets"].values(): blk["margin"] = np.where(np.isin(np.arange(200), order[:k] if a == "debiased" else np.arange(k)), 1.0, -1.0).tolist()
    small = claims(s, final="debiased", n_boot=400)
    assert abs(small["accuracy"]["gain_points"]["estimate"] - 8) < 1e-9
    assert small["accuracy"]["gain_points"]["low"] < 8 < small["accuracy"]["gain_points"]["high"]
    assert small["accuracy"]["verdict"] == "inconclusive"


def test_iteration_claims_and_saturation():
    accs = {"baseline": 0.7, "debiased": 0.72,
            "iter1": {"test_neutral": 0.80, "test_hard": 0.85, "test_shift": 0.78},
            "iter2": {"test_neutral": 0.88, "test_hard": 0.86, "test_shift": 0.90},
            "iter3": {"test_neutral": 0.88, "test_hard": 0.86, "test_shift": 0.90}}
    it = claims(scores(accs, n=1500), n_boot=400)["iterations"]
    assert it["sequence"] == ["debiased", "iter1", "iter2", "iter3"]
    assert it["iter1_hard"] == "reproduced" and it["iter2_shift"] == "reproduced" and it["saturates"] == "reproduced"
    g = lambda lo, hi: {"low": lo, "high": hi}
    assert saturation_verdict([g(1, 2), g(-1, 1)]) == "reproduced"
    assert saturation_verdict([g(1, 2), g(0.5, 1)]) == "not reproduced"
    assert saturation_verdict([g(-1, 2), g(-1, 1)]) == "inconclusive"


def test_claims_are_the_same_for_the_same_scores_and_pairs_must_line_up():
    s = scores({"baseline": 0.7, "debiased": 0.8})
    assert claims(s, final="debiased", n_boot=200) == claims(s, final="debiased", n_boot=200)
    s["debiased"]["w1"]["sets"]["test_neutral"]["id"] = s["debiased"]["w1"]["sets"]["test_neutral"]["id"][::-1]
    with pytest.raises(ValueError, match="different pairs"):
        pair_worlds(s, ["baseline", "debiased"], "test_neutral")


def test_headline_rows_show_intervals_and_the_null_gap():
    summ = arm_summary(scores({"baseline": 0.7, "oracle": 0.9}), list(SETS), n_boot=200)
    head, rows = headline_rows(summ, list(SETS))
    assert [r[0] for r in rows] == ["oracle", "baseline"] and head[1] == "test_neutral accuracy"
    assert "[" in rows[0][1] and "(" in rows[0][3] and rows[0][-1] == "3"
    assert md_table(head, rows).count("\n") == len(rows) + 2


def test_a_negatively_scaled_interval_keeps_low_below_high():
    from dt2it_mrm.report import _ci, fmt_ci
    got = _ci({"estimate": 0.2, "low": 0.1, "high": 0.3, "n_worlds": 3}, -1.0)
    assert (got["low"], got["estimate"], got["high"]) == (-0.3, -0.2, -0.1)
    assert fmt_ci(got, 1) == "-0.2 [-0.3, -0.1]"


def curation_log(before, after, n=1000, flipped=10, precision=0.7, ratio=0.3, ablations=None):
    return {"truth": {"label_accuracy_before": before, "label_accuracy_after": after, "known_before": n, "known_after": n, "augmented": 0.95},
            "flip": {"flipped": flipped, "precision": precision}, "review": {"calls": 800, "sent": 200},
            "curve": {"ratio": ratio}, "ablations": ablations or {}}


def test_loop_summary_measures_change_per_iteration_with_an_honest_interval():
    from dt2it_mrm.report import loop_markdown, loop_summary, share_change_ci
    ab = lambda a: {"no_flips": {"truth": {"label_accuracy_after": a, "known_after": 1000, "augmented": None}, "flip": {"flipped": 0}, "review": {"sent": 200}}}
    cur = {"iter1": {f"w{i}": curation_log(0.94, 0.96 + 0.002 * i, ablations=ab(0.95)) for i in range(3)},
           "iter2": {f"w{i}": curation_log(0.96, 0.958, precision=None, flipped=0) for i in range(3)}}
    ls = loop_summary(cur, n_boot=500)
    it1, it2 = ls["iterations"]["iter1"], ls["iterations"]["iter2"]
    assert abs(it1["change"]["estimate"] - 0.022) < 1e-12 and 0 < it1["change"]["low"] < 0.022 < it1["change"]["high"]
    assert it2["change"]["low"] < 0 < it2["change"]["high"]  # a 0.2-point drop on 3 x 1000 pairs: the interval cannot tell
    assert it1["flip_precision_pooled"] == 0.7 and it2["flip_precision_pooled"] is None
    assert set(ls["ablations"]) == {"full", "no_flips"} and abs(ls["ablations"]["no_flips"]["change"]["estimate"] - 0.01) < 1e-12
    md = loop_markdown(ls)
    assert "| iter1 | 0.940 (0.940–0.940) | 0.962 (0.960–0.964) | +2.20 [" in md and "no_flips" in md
    # the interval widens with fewer pairs and collapses without sampling noise
    wide, narrow = share_change_ci([(0.9, 100)] * 3, [(0.92, 100)] * 3), share_change_ci([(0.9, 10**6)] * 3, [(0.92, 10**6)] * 3)
    assert wide["high"] - wide["low"] > 10 * (narrow["high"] - narrow["low"])
