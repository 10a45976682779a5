"""Tests for dt2it_mrm.stats: determinism, coverage of the two-level bootstrap, pairing, `combine`, verdicts, the null
fairness gap and the group stats against hand-computed values."""
import math
import time

import numpy as np
import pytest

from dt2it_mrm.stats import (diff_of_means, group_gap_of, interval_str, mean_of, null_gap, paired_bootstrap, verdict,
                             worst_group_of)


def bern(rng, n, p): return (rng.random(n) < p).astype(float)

def unbatched(stat):
    "The same stat without its vectorised form: paired_bootstrap must call it once per resample."
    return lambda w: stat(w)

def study(seed=0, n_worlds=3, n=500):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_worlds):
        a = bern(rng, n, 0.8)
        out.append({"a": a, "b": a * (rng.random(n) > 0.1), "group": rng.choice(np.array(["plain", "dark", "blur"]), n)})
    return out


# ---------------------------------------------------------------- (a) determinism

@pytest.mark.parametrize("stat", [diff_of_means("a", "b"), unbatched(diff_of_means("a", "b")), group_gap_of("a", "group")])
def test_same_seed_same_result(stat):
    r1, r2 = paired_bootstrap(study(), stat, n_boot=300, seed=7), paired_bootstrap(study(), stat, n_boot=300, seed=7)
    assert r1 == r2
    assert paired_bootstrap(study(), stat, n_boot=300, seed=8) != r1
    assert set(r1) == {"estimate", "low", "high", "level", "n_boot", "n_nan", "bias", "bias_corrected", "n_worlds", "n_items",
                       "per_world"}
    assert r1["n_worlds"] == 3 and r1["n_items"] == [500] * 3 and r1["n_boot"] == 300 and r1["n_nan"] == 0


@pytest.mark.parametrize("make", [lambda: mean_of("a"), lambda: diff_of_means("a", "b"), lambda: group_gap_of("a", "group"),
                                  lambda: worst_group_of("b", "group")])
def test_batch_path_matches_per_resample_path(make):
    s = study(1, n=300)
    fast, slow = paired_bootstrap(s, make(), n_boot=200, seed=3), paired_bootstrap(s, unbatched(make()), n_boot=200, seed=3)
    for k in ("estimate", "low", "high"): assert fast[k] == pytest.approx(slow[k], abs=1e-12)
    assert fast["per_world"] == slow["per_world"]


def test_estimate_is_mean_over_worlds_of_full_stat():
    s = study(2)
    r = paired_bootstrap(s, mean_of("a"), n_boot=50)
    assert r["per_world"] == [float(np.mean(w["a"])) for w in s]
    assert r["estimate"] == pytest.approx(np.mean(r["per_world"]), abs=1e-15)
    assert r["low"] <= r["estimate"] <= r["high"]


def test_bias_correction_shifts_the_interval_by_the_bootstrap_bias():
    s = study(4)
    raw, fixed = (paired_bootstrap(s, group_gap_of("a", "group"), n_boot=400, seed=5, bias_correct=b) for b in (False, True))
    assert not raw["bias_corrected"] and fixed["bias_corrected"] and raw["bias"] == fixed["bias"]
    assert raw["bias"] > 0  # max - min of noisy group means is biased upward
    assert fixed["estimate"] == raw["estimate"]
    assert fixed["low"] == pytest.approx(raw["low"] - raw["bias"]) and fixed["high"] == pytest.approx(raw["high"] - raw["bias"])


def test_fast_enough():
    s = study(3, n_worlds=3, n=2000)
    t = time.perf_counter()
    paired_bootstrap(s, diff_of_means("a", "b"), n_boot=2000)
    assert time.perf_counter() - t < 5


# ---------------------------------------------------------------- (b) coverage

def test_coverage_of_the_mean():
    rng, hits, widths = np.random.default_rng(2024), 0, []
    for k in range(200):
        s = [{"a": bern(rng, 400, 0.7)} for _ in range(3)]
        r = paired_bootstrap(s, mean_of("a"), n_boot=400, seed=k)
        hits += r["low"] <= 0.7 <= r["high"]; widths.append(r["high"] - r["low"])
    assert 0.90 <= hits / 200 <= 0.995
    # the width is of the order of the true 95% width of a mean of 1200 Bernoulli(0.7) (resampling both levels is conservative)
    true_width = 2 * 1.96 * math.sqrt(0.7 * 0.3 / 1200)
    assert 0.8 * true_width < np.mean(widths) < 1.6 * true_width


# ---------------------------------------------------------------- (c) pairing

def test_paired_difference_of_shifted_copies_has_zero_width():
    rng = np.random.default_rng(5)
    s = [{"a": (a := bern(rng, n, 0.6)), "b": a - 0.25} for n in (300, 500)]
    d = paired_bootstrap(s, diff_of_means("a", "b"), n_boot=500)
    assert d["estimate"] == pytest.approx(0.25) and d["low"] == pytest.approx(0.25, abs=1e-12)
    assert d["high"] - d["low"] < 1e-12
    single = paired_bootstrap(s, mean_of("a"), n_boot=500)  # each arm on its own is noisy
    assert single["high"] - single["low"] > 0.03


def test_single_world_resamples_items_only():
    rng = np.random.default_rng(6)
    r = paired_bootstrap([{"a": bern(rng, 1000, 0.5)}], mean_of("a"), n_boot=1000)
    se = math.sqrt(0.25 / 1000)
    assert r["n_worlds"] == 1 and (r["high"] - r["low"]) == pytest.approx(2 * 1.96 * se, rel=0.15)


# ---------------------------------------------------------------- (d) combine

def test_combine_is_ratio_of_across_world_means():
    # world 1: mean a = 1, mean b = 1 (ratio 1); world 2: mean a = 1, mean b = 3 (ratio 1/3)
    s = [{"a": np.ones(4), "b": np.ones(4)}, {"a": np.ones(4), "b": np.full(4, 3.0)}]
    stat = lambda w: [np.mean(w["a"]), np.mean(w["b"])]
    r = paired_bootstrap(s, stat, combine=lambda v: v[0] / v[1], n_boot=2000)
    mean_of_ratios = np.mean([1 / 1, 1 / 3])
    assert r["estimate"] == pytest.approx(1 / 2) and r["estimate"] != pytest.approx(mean_of_ratios)
    assert r["per_world"] == [[1.0, 1.0], [1.0, 3.0]]
    # replicates draw worlds (1,1), (1,2), (2,2): ratios 1, 1/2, 1/3; each extreme has probability 1/4
    assert r["low"] == pytest.approx(1 / 3) and r["high"] == pytest.approx(1.0)


def test_vector_stat_needs_combine():
    with pytest.raises(ValueError, match="combine"):
        paired_bootstrap([{"a": np.ones(3)}], lambda w: [1.0, 2.0])


def test_nan_replicates_are_dropped_and_counted():
    s = [{"a": np.array([1.0, 0.0, 1.0]), "b": np.array([0.0, 1.0, 0.0])}]
    stat = lambda w: np.mean(w["a"]) if w["b"].any() else math.nan  # NaN when a resample misses the single b=1 item
    r = paired_bootstrap(s, stat, n_boot=2000)
    assert abs(r["n_nan"] / 2000 - (2 / 3) ** 3) < 0.05
    assert not math.isnan(r["low"]) and not math.isnan(r["high"])
    allnan = paired_bootstrap(s, lambda w: math.nan, n_boot=20)
    assert allnan["n_nan"] == 20 and math.isnan(allnan["low"]) and verdict(allnan["low"], allnan["high"], 0) == "inconclusive"


def test_bad_inputs():
    with pytest.raises(ValueError, match="different lengths"): paired_bootstrap([{"a": [1, 0], "b": [1]}], mean_of("a"))
    with pytest.raises(ValueError): paired_bootstrap([], mean_of("a"))
    with pytest.raises(ValueError): paired_bootstrap([{"a": [1, 0]}], mean_of("a"), level=1.5)


# ---------------------------------------------------------------- (e) verdict

def test_verdict():
    assert verdict(0.02, 0.05, 0.02) == "reproduced"          # low == threshold counts
    assert verdict(-0.03, 0.019, 0.02) == "not reproduced"
    assert verdict(0.0, 0.02, 0.02) == "inconclusive"         # high == threshold is not below it
    assert verdict(math.nan, 0.05, 0.0) == verdict(0.01, math.nan, 0.0) == "inconclusive"


def test_interval_str():
    d = {"estimate": 0.8123, "low": 0.79, "high": 0.83349}
    assert interval_str(d) == "0.812 [0.790, 0.833]"
    assert interval_str(d, scale=100, digits=1) == "81.2 [79.0, 83.3]"


# ---------------------------------------------------------------- (f) null gap

def test_null_gap():
    big = null_gap([100] * 4, 0.8)
    assert 0.06 <= big["mean"] <= 0.12 and big["q95"] > big["mean"]
    assert big["p"] == 0.8 and big["group_sizes"] == [100] * 4
    assert null_gap([25] * 4, 0.8)["mean"] > big["mean"] > null_gap([400] * 4, 0.8)["mean"]
    assert null_gap([100] * 4, 0.8) == big and null_gap([100], 0.8)["mean"] == 0.0
    with pytest.raises(ValueError): null_gap([100, 0], 0.8)


# ---------------------------------------------------------------- (g, h) group stats

HAND = {"c": np.array([1, 1, 1, 0, 0, 1]), "g": np.array(["x", "x", "y", "y", "y", "z"])}  # x: 1, y: 1/3, z: 1

def test_group_gap_by_hand():
    assert group_gap_of("c", "g")(HAND) == pytest.approx(1 - 1 / 3)
    assert worst_group_of("c", "g")(HAND) == pytest.approx(1 / 3)
    assert group_gap_of("c", "g")({"c": np.array([1, 0]), "g": np.array([3, 7])}) == 1.0  # integer labels
    rows = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 2, 3, 3, 3], [5, 5, 5, 5, 5, 5]])
    assert np.allclose(group_gap_of("c", "g").batch(HAND, rows), [2 / 3, 1 - 1 / 4, 0.0])
    assert np.allclose(worst_group_of("c", "g").batch(HAND, rows), [1 / 3, 1 / 4, 1.0])
    for r in rows:
        sub = {k: v[r] for k, v in HAND.items()}
        assert group_gap_of("c", "g")(sub) == pytest.approx(group_gap_of("c", "g").batch(HAND, r[None])[0])


def test_missing_group_in_resample_does_not_crash():
    rng = np.random.default_rng(9)
    g = np.array(["big"] * 19 + ["rare"])  # a resample misses "rare" with probability (19/20)**20 ~ 0.36
    s = [{"c": bern(rng, 20, 0.7), "g": g}, {"c": bern(rng, 20, 0.7), "g": g}]
    for stat in (group_gap_of("c", "g"), worst_group_of("c", "g"), unbatched(group_gap_of("c", "g"))):
        r = paired_bootstrap(s, stat, n_boot=300)
        assert r["n_nan"] == 0 and 0 <= r["low"] <= r["high"] <= 1
    empty = {"c": np.zeros(0), "g": np.array([], dtype=str)}
    assert math.isnan(group_gap_of("c", "g")(empty)) and math.isnan(mean_of("c")(empty))
    r = paired_bootstrap([empty, s[0]], mean_of("c"), n_boot=50)  # an empty world makes every replicate that draws it NaN
    assert r["n_items"] == [0, 20] and math.isnan(r["estimate"]) and r["n_nan"] > 0
