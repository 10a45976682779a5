"""Debiased construction: label modes, the judge on unsure pairs, weights tied to the current label."""
import numpy as np
import pytest

from dt2it_mrm.construct import construct_labels, construct_weights, label_shortcut
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
