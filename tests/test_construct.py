"""Debiased construction: label modes, the judge on unsure pairs, weights tied to the current label."""
import numpy as np
import pytest

from dt2it_mrm.bias import dawid_skene
from dt2it_mrm.config import ConfigError
from dt2it_mrm.construct import construct_labels, construct_weights, debias, label_shortcut, nuisance_margins
from dt2it_mrm.judge import Judge, distil_pairs
from dt2it_mrm.simulate import SimBackend
from dt2it_mrm.world import WorldConfig, generate_world, load_world, world_judge


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w")
    cfg = WorldConfig(n_train=300, n_test=20, n_expert=2, n_pretrain=2, n_neutral=20, n_dev=10, n_bon=2)
    generate_world(cfg, out, seed=3, progress=False)
    return cfg, load_world(out)


def test_modes_and_their_gold_accuracy(world):
    cfg, w = world
    raw = w["train_raw"]
    gold = np.array([r["gold"] for r in raw], float)
    perfect = gold * 0.98 + 0.01  # a posterior that knows the truth
    maj, _, c = construct_labels(raw, perfect, "majority")
    assert [r["gold"] for r in maj] == [r["gold"] for r in raw] and c["kept"] == 300
    ds, conf, c = construct_labels(raw, perfect, "ds")
    assert all(r["gold"] == 1 for r in ds) and c["ds_flipped"] == int((gold == 0).sum()) and np.all(conf >= 0.98)
    with pytest.raises(ValueError, match="unknown label mode"): construct_labels(raw, perfect, "vote")
    with pytest.raises(ValueError, match="needs a judge_fn"): construct_labels(raw, perfect, "ds_judge")


def test_unsure_pairs_go_to_a_both_order_judge(world):
    cfg, w = world
    raw = w["train_raw"]
    unsure = np.full(len(raw), 0.55)  # an uninformative posterior: every pair goes to the judge
    exact = WorldConfig(judge={"position_bias": 0.0, "error_penalty": 2.0, "length_weight": 0.0, "noise": 0.0, "difficulty_noise": 0.0})
    j = Judge(SimBackend(world_judge(w, exact, seed=0)))
    judge_fn = lambda rs: distil_pairs(rs, j, "pairwise", both_orders=True, seed=0)
    out, _, c = construct_labels(raw, unsure, "ds_judge", judge_fn, ds_confidence=0.8)
    assert c["asked_judge"] == 300 and c["kept"] == 300 and c["dropped"] == 0
    assert all(r["gold"] == 1 and r["meta"]["label_source"] == "judge" for r in out)  # a noiseless judge fixes every label


def test_shortcut_follows_the_label_and_weights_average_one(world):
    _, w = world
    raw = w["train_raw"][:50]
    flipped, conf, _ = construct_labels(raw, np.zeros(50) + 0.2, "ds")  # every pair flipped
    tm = {r["id"]: 1.5 for r in raw}
    assert np.allclose(label_shortcut(flipped, tm), 1 / (1 + np.exp(1.5)))
    recs, rep = construct_weights(flipped, conf, tm, {"group": {"power": 1.0}, "shortcut": {"strength": 1.0}})
    ws = np.array([r["weight"] for r in recs])
    assert abs(ws.mean() - 1) < 1e-9 and rep["n"] == 50 and len(set(np.round(ws, 6))) > 1


def test_label_confidence_is_the_posterior_of_the_final_label(world):
    cfg, w = world
    raw = w["train_raw"][:40]
    post = np.linspace(0.05, 0.95, 40)
    ds, conf, _ = construct_labels(raw, post, "ds")
    assert np.allclose([r["meta"]["label_confidence"] for r in ds], np.maximum(post, 1 - post)) and np.allclose(conf, np.maximum(post, 1 - post))
    # a judge that flips every unsure pair: its label's confidence combines the Dawid-Skene odds with the judge's A/(1-A)
    flip_all = lambda rs: [{**r, "meta": {**r["meta"], "judge": {"verdict": "rejected"}}} for r in rs]
    out, _, c = construct_labels(raw, post, "ds_judge", flip_all, ds_confidence=0.8, judge_accuracy=0.9)
    q = 1 - np.maximum(post, 1 - post)  # the annotator model's probability of the judge's (opposite) label
    asked = np.maximum(post, 1 - post) < 0.8
    got = np.array([r["meta"]["label_confidence"] for r in out])
    assert np.allclose(got[asked], q[asked] * 0.9 / (q[asked] * 0.9 + (1 - q[asked]) * 0.1))
    assert np.allclose(got[~asked], np.maximum(post, 1 - post)[~asked]) and c["judge_flipped"] == asked.sum()


# ---------------------------------------------------------------- without annotator votes

def _no_votes(recs): return [{**r, "labels": None} for r in recs]


def _scripted_judge(verdict_of):
    "A fake judge_fn: `verdict_of(record)` -> chosen / rejected / undecided; it remembers the ids it was asked about."
    def judge_fn(rs):
        judge_fn.asked += [r["id"] for r in rs]
        return [{**r, "meta": {**r["meta"], "judge": {"verdict": verdict_of(r)}}} for r in rs]
    judge_fn.asked = []
    return judge_fn


def _reconciles(c):
    assert c["n"] == c["kept"] + c["dropped"]
    if "asked_judge" in c:
        assert c["asked_judge"] == c["judge_decided"] + c["undecided"] and c["judge_decided"] == c["judge_kept"] + c["judge_flipped"]
        assert c["asked_judge"] <= c["judge_candidates"]


def test_no_votes_the_vote_modes_refuse_and_recorded_keeps_every_label(world):
    _, w = world
    raw = _no_votes(w["train_raw"][:60])
    post, _ = dawid_skene(w["train_raw"][:60])
    for mode in ("majority", "ds", "ds_judge"):
        with pytest.raises(ValueError, match=f"label mode '{mode}' needs annotator votes.*'recorded'"):
            construct_labels(raw, [None] * 60, mode, judge_fn=lambda rs: rs)
    out, ann, c = construct_labels(raw, None, "recorded", prior=0.75)
    assert [(r["chosen"], r["rejected"]) for r in out] == [(r["chosen"], r["rejected"]) for r in raw]
    assert {r["meta"]["label_source"] for r in out} == {"recorded"} and {r["meta"]["label_confidence"] for r in out} == {0.75}
    assert np.isnan(ann).all() and c == {"n": 60, "without_votes": 60, "dropped": 0, "kept": 60}
    # the construct stage's posterior for data without votes: bias_audit's signals hold null
    assert construct_labels(raw, np.array([None] * 60), "recorded", prior=0.75)[0] == out
    # recorded ignores a posterior even where there is one
    assert construct_labels(w["train_raw"][:60], post, "recorded")[2]["without_votes"] == 0
    assert all(not r.get("meta", {}).get("label_source") for r in raw)  # the caller's records are untouched


def test_no_votes_weights_switch_the_annotator_strategy_off(world):
    _, w = world
    raw = _no_votes(w["train_raw"][:80])
    out, ann, _ = construct_labels(raw, None, "recorded")
    tm = {r["id"]: 0.3 * (i % 5 - 2) for i, r in enumerate(raw)}
    strat = {"group": {"power": 1.0}, "shortcut": {"strength": 0.5}, "annotator": {"power": 1.0}}
    got, rep = construct_weights(out, ann, tm, strat, {"min_weight": 0.1, "max_weight": 10.0})
    ref, _ = construct_weights(out, ann, tm, {k: v for k, v in strat.items() if k != "annotator"}, {"min_weight": 0.1, "max_weight": 10.0})
    ws = np.array([r["weight"] for r in got])
    assert np.isfinite(ws).all() and np.allclose(ws, [r["weight"] for r in ref])  # annotator weight 1 for every pair
    assert rep["annotator"] == {"pairs": 80, "without_posterior": 80, "switched_off": True}


def test_mixed_votes_pairs_without_votes_go_to_the_judge_with_the_prior(world):
    _, w = world
    raw = w["train_raw"][:100]
    mixed = [({**r, "labels": None} if i % 4 == 0 else r) for i, r in enumerate(raw)]
    post, rep = dawid_skene(mixed)
    assert np.isnan(post[::4]).all() and np.isfinite(np.delete(post, np.s_[::4])).all() and rep["without_votes"] == 25
    judge = _scripted_judge(lambda r: "chosen" if r["gold"] == 1 else "rejected")
    out, ann, c = construct_labels(mixed, post, "ds_judge", judge, ds_confidence=0.8, prior=0.6, judge_accuracy=0.9)
    _reconciles(c)
    novote = {r["id"] for r in mixed[::4]}
    assert novote <= set(judge.asked) and c["without_votes"] == 25 and c["asked_judge"] == len(judge.asked)
    by = {r["id"]: r for r in out}
    for i in novote:  # the judge's label with the prior combined: 0.6 kept (0.6·0.9 / ...), 0.4 flipped
        q = 0.6 if by[i]["meta"].get("relabelled") is not True else 0.4
        assert by[i]["gold"] == 1 and by[i]["meta"]["label_source"] == "judge"
        assert np.isclose(by[i]["meta"]["label_confidence"], q * 0.9 / (q * 0.9 + (1 - q) * 0.1))
    assert np.isnan(ann[[j for j, r in enumerate(out) if r["id"] in novote]]).all()
    ws, wrep = construct_weights(out, ann, {r["id"]: 0.0 for r in out}, {"annotator": {"power": 1.0}})
    assert np.isfinite([r["weight"] for r in ws]).all() and wrep["annotator"]["without_posterior"] == 25 and not wrep["annotator"]["switched_off"]
    # and without a judge mode they keep their recorded label with the prior
    ds, ann_ds, c = construct_labels(mixed, post, "ds", prior=0.6)
    assert all(ds[j]["meta"]["label_source"] == "recorded" and ds[j]["meta"]["label_confidence"] == 0.6 for j in range(0, 100, 4))
    assert (ds[0]["chosen"], ds[0]["rejected"]) == (mixed[0]["chosen"], mixed[0]["rejected"]) and c["ds_flipped"] == int((post < 0.5).sum())


def test_judge_only_every_pair_or_a_budget(world):
    _, w = world
    raw = _no_votes(w["train_raw"][:50])
    verdict = lambda r: "undecided" if r["id"] == raw[3]["id"] else ("chosen" if r["gold"] == 1 else "rejected")
    judge = _scripted_judge(verdict)
    out, ann, c = construct_labels(raw, None, "judge", judge)
    _reconciles(c)
    assert c["asked_judge"] == c["judge_candidates"] == 50 and c["undecided"] == c["dropped"] == 1 and c["kept"] == 49
    assert all(r["gold"] == 1 and r["meta"]["label_source"] == "judge" for r in out)
    kept, _, c = construct_labels(raw, None, "judge", _scripted_judge(verdict), drop_undecided=False)
    assert c["kept"] == 50 and c["dropped"] == 0 and kept[3]["meta"]["label_source"] == "recorded"
    # a seeded random budget: the same pairs for the same seed, others for another, in index order
    j1, j2, j3 = (_scripted_judge(verdict) for _ in range(3))
    _, _, c1 = construct_labels(raw, None, "judge", j1, judge_pairs=10, judge_order="random", seed=4)
    construct_labels(raw, None, "judge", j2, judge_pairs=10, judge_order="random", seed=4)
    construct_labels(raw, None, "judge", j3, judge_pairs=10, judge_order="random", seed=5)
    ids = [r["id"] for r in raw]
    assert j1.asked == j2.asked != j3.asked and len(j1.asked) == 10 and j1.asked == sorted(j1.asked, key=ids.index)
    _reconciles(c1); assert c1["judge_candidates"] == 50 and c1["asked_judge"] == 10 and c1["kept"] + c1["dropped"] == 50
    # judge_pairs 0: nobody asked, every label kept as recorded
    out0, _, c0 = construct_labels(raw, None, "judge", _scripted_judge(verdict), judge_pairs=0)
    assert c0["asked_judge"] == 0 and {r["meta"]["label_source"] for r in out0} == {"recorded"}


def test_budget_lowest_confidence_first(world):
    _, w = world
    raw = w["train_raw"][:40]
    post = np.linspace(0.02, 0.98, 40)  # confidence max(p, 1-p): lowest in the middle
    judge = _scripted_judge(lambda r: "chosen")
    _, _, c = construct_labels(raw, post, "ds_judge", judge, ds_confidence=0.9, judge_pairs=6, judge_order="confidence")
    conf = np.maximum(post, 1 - post)
    want = [raw[i]["id"] for i in sorted(np.argsort(conf, kind="stable")[:6])]
    assert judge.asked == want and c["judge_candidates"] == int((conf < 0.9).sum()) and c["asked_judge"] == 6
    _reconciles(c)


def test_impossible_settings_are_clear_errors(world):
    _, w = world
    raw = w["train_raw"][:10]
    post = np.full(10, 0.9)
    with pytest.raises(ValueError, match="mode 'judge' needs a judge_fn"): construct_labels(raw, post, "judge")
    with pytest.raises(ConfigError, match="construct.judge_pairs"): construct_labels(raw, post, "judge", lambda rs: rs, judge_pairs=-1)
    with pytest.raises(ConfigError, match="construct.judge_order"): construct_labels(raw, post, "judge", lambda rs: rs, judge_order="best")
    with pytest.raises(ConfigError, match="construct.prior"): construct_labels(raw, post, "recorded", prior=0.3)
    with pytest.raises(ValueError, match="10 records but 9 posteriors"): construct_labels(raw, post[:9], "ds")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"): construct_labels(raw, np.full(10, 1.5), "ds")
    with pytest.raises(ValueError, match="returned 0 records for 10 pairs"): construct_labels(raw, post, "judge", lambda rs: [])
    with pytest.raises(ValueError, match="verdicts \\['maybe'\\]"):
        construct_labels(raw, post, "judge", lambda rs: [{**r, "meta": {**r["meta"], "judge": {"verdict": "maybe"}}} for r in rs])


def _labelled(world):
    cfg, w = world
    raw = w["train_raw"]
    recs, _, _ = construct_labels(raw, None, "recorded")  # the raw majority labels, confidence 0.9
    return [dict(r, meta={**r["meta"], "relabelled": i % 7 == 0}) for i, r in enumerate(recs)]  # some marked as relabelled (poe text)


def test_the_nuisance_expert_is_cross_fitted_and_learns_that_longer_and_tell_win(world):
    recs = _labelled(world)
    m = nuisance_margins(recs, ["As the image clearly shows,"], folds=5, seed=0)
    d = np.array([len(r["chosen"]) - len(r["rejected"]) for r in recs])
    tell = np.array([("As the image clearly shows," in r["chosen"]) - ("As the image clearly shows," in r["rejected"]) for r in recs])
    assert np.mean(m[(d > 0) & (tell == 0)] > 0) > 0.95 and np.mean(m[(d < 0) & (tell == 0)] < 0) > 0.95  # the length-biased world: longer wins
    assert m[(d > 0) & (tell > 0)].mean() > m[(d > 0) & (tell == 0)].mean() > m[(d > 0) & (tell < 0)].mean()  # the tell's side wins too
    assert not np.allclose(m, nuisance_margins(recs, ["As the image clearly shows,"], folds=5, seed=1))  # other folds, other fits


def test_debias_combines_every_part_and_each_is_switchable(world):
    recs = _labelled(world)
    tm = {r["id"]: 0.5 for r in world[1]["train_raw"]}
    plain, rep0 = debias(recs, tm, weighting="none")
    assert all(r["weight"] == 1.0 and "soft_label" not in r["meta"] and "nuisance_margin" not in r["meta"] for r in plain)
    assert [r["chosen"] for r in plain] == [r["chosen"] for r in recs] and recs[0]["meta"] is not plain[0]["meta"]  # the caller's records stay
    full, rep = debias(recs, tm, weighting="propensity", propensity={"target_ess": 0.7}, soft_labels=True, poe="nuisance",
                       counterfactual=["other_image"], phrases=["As the image clearly shows,"])
    new = [r for r in full if r["meta"].get("negative_from")]
    assert len(full) == len(recs) + len(new) == len(recs) + rep["counterfactual"]["added"] and new
    twins = [dict(recs[0], id="twin")] + recs  # the same prompt and answers twice: its counterfactual twin is kept once
    twins[0]["rejected"] = recs[0]["rejected"] + " (again)"
    _, trep = debias(twins, tm, weighting="none", counterfactual=["other_image"], seed=0)
    assert trep["counterfactual"]["added"] + trep["counterfactual"]["duplicates_dropped"] == trep["counterfactual"]["other_image"]["added"]
    assert rep["propensity"]["ess_share"] >= 0.7 - 1e-9 and np.isclose(np.mean([r["weight"] for r in full]), 1)
    assert all(0 <= r["meta"]["soft_label"] <= 1 for r in full) and all("nuisance_margin" in r["meta"] for r in full)
    assert rep["weights"]["chosen_longer"] < rep["weights"]["chosen_longer_unweighted"]
    text, _ = debias(recs, tm, weighting="none", poe="text")
    assert [r["meta"]["nuisance_margin"] for r in text] == [(-0.5 if r["meta"].get("relabelled") else 0.5) for r in recs]
    with pytest.raises(ConfigError, match="construct.poe"): debias(recs, tm, poe="length")
    with pytest.raises(ConfigError, match="construct.propensity.orient"): debias(recs, tm, propensity={"orient": ["colour"]})
