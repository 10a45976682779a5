"""Tests for dt2it_mrm.evaluate: every metric against hand-computed values, the one-call scoring contract, and the
benchmark adapters on tiny hand-made files and on the real benchmark files vendored in vendor/benchmarks/."""
import os
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

import json, math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dt2it_mrm.data import PrefRecord, PreferenceDataError
from dt2it_mrm.evaluate import (ImagesMissingError, ScoreCache, acc_plus, accuracy, best_of_n, ece, evaluate_scorer, evaluation_items, expert_agreement, item_key,
                                group_accuracy, kendall_tau_b, length_correlation, macro_accuracy, mm_rlhf_metrics,
                                mmrb_area, mmrb_category, multimodal_rewardbench_metrics, pair_items, pair_margins,
                                read_mm_rlhf_rewardbench, read_multimodal_rewardbench, read_vl_rewardbench, score_items,
                                set_metrics, tie_rate, vl_rewardbench_metrics, vlrb_category)

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "vendor" / "benchmarks"
L3 = math.log(3)  # sigmoid(ln 3) = 0.75


# ---------------------------------------------------------------- scorers

class Counting:
    "A scorer that records every call; `f(item)` gives the score."
    def __init__(self, f): self.f, self.calls = f, []
    def __call__(self, items):
        self.calls.append(list(items)); return np.array([self.f(it) for it in items], dtype=float)

def n_chars(it): return len(it["answer"])
def length(items): return np.array([n_chars(it) for it in items], dtype=float)  # the length scorer
def constant(items): return np.zeros(len(items))

def pair(i, chosen, rejected, image="x.png", **kw):
    return dict(id=f"p{i}", images=[image] if image else [], question=kw.pop("question", "q"), chosen=chosen, rejected=rejected,
                gold=kw.pop("gold", 1), **kw)


# ---------------------------------------------------------------- accuracy and groups

def test_accuracy_counts_ties_and_nan_as_wrong():
    assert accuracy([2.0, -1.0, 0.0, np.nan]) == 0.25
    assert accuracy([0.0, 0.0]) == 0.0 and tie_rate([0.0, 1.0, 0.0, -2.0]) == 0.5
    assert math.isnan(accuracy([]))

def test_group_accuracy_worst_gap_and_macro():
    m, g = [1, -1, 0, 2, 3, 5], ["a", "a", "b", "b", "c", None]
    ga = group_accuracy(m, g)
    assert ga == {"per_group": {"a": 0.5, "b": 0.5, "c": 1.0, "unknown": 1.0}, "worst": 0.5, "gap": 0.5}
    assert macro_accuracy(m, g) == 0.75  # (0.5 + 0.5 + 1 + 1) / 4, while the pooled accuracy is 4/6
    with pytest.raises(ValueError, match="3 groups for 6 margins"): group_accuracy(m, g[:3])

def test_acc_plus_needs_every_pair_of_a_group_right():
    # group g1 all right, g2 has a tie, g3 one wrong of two
    assert acc_plus([1, 2, 1, 0, 3, -1], ["g1", "g1", "g2", "g2", "g3", "g3"]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- scoring contract

def test_pair_margins_one_call_on_unique_items():
    recs = [pair(0, "long answer", "short"), pair(1, "short", "tiny"), pair(2, "abc", "xyz", image="y.png")]
    s = Counting(n_chars)
    assert pair_margins(recs, s).tolist() == [6.0, 1.0, 0.0]
    assert len(s.calls) == 1 and len(s.calls[0]) == 5  # "short" on x.png is scored once

def test_pair_items_blank_view_and_record_objects():
    r = PrefRecord("p", ["img.png", "img2.png"], "q?", "yes", "no", meta={"system": "Be brief."})
    ch, rj = pair_items([r])  # every image, in order, and the system prompt
    assert ch == [{"image": ["img.png", "img2.png"], "question": "q?", "answer": "yes", "system": "Be brief."}] and rj[0]["answer"] == "no"
    assert pair_items([pair(0, "a", "b")])[0][0] == {"image": "x.png", "question": pair(0, "a", "b")["question"], "answer": "a"}
    chb, _ = pair_items([r.to_dict()], blank_image=True)
    assert chb[0]["image"] is None
    assert pair_items([pair(0, "a", "b", image=None)])[0][0]["image"] is None  # a record with no image

def test_evaluation_items_are_every_item_once_with_blanked_sets_and_list_answers():
    sets = {"a": [pair(0, "long answer", "short"), pair(1, "short", "tiny")], "b": [pair(2, "short", "tiny")]}
    lists = [{"id": "l", "images": ["z.png"], "question": "q?", "answers": ["x", "y", "x"], "scores": [1, 0, 1], "meta": {"system": "Be brief."}}]
    items = evaluation_items(sets, ["a"], lists)
    assert len(items) == len({item_key(it) for it in items}) == 3 + 3 + 2  # "short" and "tiny" on x.png once (b adds none); blanked "a" apart; "x" once
    assert [it["image"] for it in items[3:6]] == [None] * 3 and items[-1] == {"image": "z.png", "question": "q?", "answer": "y", "system": "Be brief."}
    c = ScoreCache(Counting(n_chars)).prefetch(items)
    expert_agreement(lists, c); pair_margins(sets["a"], c, blank_image=True)
    assert c.calls == 1  # the lists' items are those expert_agreement asks for (system prompt included)

def test_scorer_returning_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="returned 1 scores for 2 items"):
        score_items([{"image": None, "question": "q", "answer": "a"}, {"image": None, "question": "q", "answer": "b"}],
                    lambda items: np.zeros(1))

def test_score_cache_reuses_scores_across_calls():
    s = Counting(n_chars)
    c = ScoreCache(s).prefetch([{"image": None, "question": "q", "answer": "ab"}])
    assert c([{"image": None, "question": "q", "answer": "ab"}, {"image": None, "question": "q", "answer": "abc"}]).tolist() == [2, 3]
    assert [len(x) for x in s.calls] == [1, 1] and c.calls == 2


# ---------------------------------------------------------------- expert agreement

def test_kendall_tau_b_hand_values_and_scipy():
    # x=[1,3,2], y=[-2,0,0]: pairs (0,1) concordant, (0,2) concordant, (1,2) tied in y: n_c=2, n_d=0, n_0=3, n_y=1
    assert kendall_tau_b([1, 3, 2], [-2, 0, 0]) == pytest.approx(2 / math.sqrt(3 * 2))
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    r = np.random.default_rng(0)
    for _ in range(20):
        x, y = r.integers(0, 3, 6), r.integers(0, 3, 6)
        ref = stats.kendalltau(x, y, variant="b").statistic
        assert (math.isnan(ref) and math.isnan(kendall_tau_b(x, y))) or kendall_tau_b(x, y) == pytest.approx(ref)

def test_expert_agreement_skips_flat_grades_and_scores_constant_as_zero():
    lists = [dict(id="a", images=["x.png"], question="q", answers=["a", "bbb", "cc"], scores=[-2, 0, 0]),
             dict(id="b", images=["x.png"], question="q", answers=["dd", "e"], scores=[0, 0]),           # flat: skipped
             dict(id="c", images=["y.png"], question="q", answers=["f", "gg", "hhh"], scores=[0, None, -1])]  # None dropped
    ea = expert_agreement(lists, length)
    # list a: tau-b 2/sqrt(6), 2 of 2 strictly graded pairs right; list c: lengths [1,3] vs grades [0,-1]: tau -1, 0 of 1 right
    assert ea["expert_tau"] == pytest.approx((2 / math.sqrt(6) - 1) / 2)
    assert ea["pair_accuracy"] == pytest.approx(2 / 3) and ea["n_lists"] == 2 and ea["n_skipped"] == 1
    ec = expert_agreement(lists, lambda items: np.zeros(len(items)))
    assert ec["expert_tau"] == 0.0 and ec["pair_accuracy"] == 0.0 and ec["n_lists"] == 2
    assert ea["per_list"]["tau"] == pytest.approx([2 / math.sqrt(6), -1.0])  # the scored lists a and c, in order
    assert ea["per_list"]["pair_right"] == [2, 0] and ea["per_list"]["pair_total"] == [2, 1]
    assert ec["per_list"] == {"tau": [0.0, 0.0], "pair_right": [0, 0], "pair_total": [2, 1]}


# ---------------------------------------------------------------- best of N

def bon_list(i, answers, errors, tell=None, image="x.png"):
    return dict(id=f"b{i}", images=[image], question=f"q{i}", answers=answers, scores=[-e for e in errors],
                meta={"errors": errors, **({"tell": tell} if tell is not None else {})})

BON = [bon_list(0, ["aa", "b", "cccc", "ddd"], [0, 1, 3, 2], tell=[False, True, False, False]),
       bon_list(1, ["eee", "f", "gg", "hhhh"], [2, 0, 1, 3], tell=[True, True, False, False]),
       bon_list(2, ["ii", "jjj", "k", "llll"], [3, 2, 1, 0], tell=[False, False, False, True])]

def oracle(items):  # grade −errors, looked up by answer
    err = {a: e for r in BON for a, e in zip(r["answers"], r["meta"]["errors"])}
    return np.array([-err[it["answer"]] for it in items], dtype=float)

def test_best_of_n_oracle_picks_the_best_of_every_list():
    b = best_of_n(BON, oracle)
    assert b["n_lists"] == 3 and b["picked_grade"] == 0.0 == b["best_grade"] and b["picked_is_best"] == 1.0
    assert b["random_grade"] == -1.5 and b["per_list"]["random"] == [-1.5] * 3 and b["per_list"]["picked"] == [0.0] * 3
    assert b["per_list"]["picked_length"] == [2, 1, 4] and b["picked_length"] == pytest.approx(7 / 3)

def test_best_of_n_length_scorer_picks_the_longest():
    b = best_of_n(BON, length)
    assert b["per_list"]["picked"] == [-3.0, -3.0, 0.0] and b["picked_grade"] == -2.0 and b["picked_is_best"] == pytest.approx(1 / 3)
    assert b["per_list"]["picked_length"] == [4, 4, 4] and b["picked_length"] == 4.0 and b["mean_length"] == 2.5
    assert b["picked_tell_share"] == pytest.approx(1 / 3) and b["tell_share"] == pytest.approx((1 / 4 + 2 / 4 + 1 / 4) / 3)

def test_best_of_n_ties_go_to_the_first_answer():
    b = best_of_n(BON, constant)
    assert b["per_list"]["picked"] == [0.0, -2.0, -3.0] and b["per_list"]["picked_length"] == [2, 3, 2]
    assert b["picked_tell_share"] == pytest.approx(1 / 3)
    top2 = lambda items: np.array([1.0 if len(it["answer"]) >= 3 else 0.0 for it in items])  # ties among the maxima
    assert best_of_n(BON, top2)["per_list"]["picked_length"] == [4, 3, 3]

def test_best_of_n_scores_each_unique_item_once_and_per_list_lengths_match():
    dup = BON + [BON[0]]
    s = Counting(n_chars)
    b = best_of_n(dup, s)
    assert len(s.calls) == 1 and len(s.calls[0]) == 12 and b["n_lists"] == 4
    assert all(len(v) == 4 for v in b["per_list"].values()) and set(b["per_list"]) == {"picked", "random", "best", "picked_length", "mean_length"}
    no_tell = [bon_list(0, ["a", "bb"], [1, 0])]
    assert "picked_tell_share" not in best_of_n(no_tell, length) and best_of_n(no_tell, length)["picked_is_best"] == 1.0
    with pytest.raises(ValueError, match="grade for every answer"): best_of_n([{**no_tell[0], "scores": [0, None]}], length)

def test_best_of_n_on_a_world_bon_set():
    from dt2it_mrm.world import WorldConfig, make_bon
    recs, _ = make_bon(WorldConfig(n_bon=40), 0, "img")
    err = {(r["question"], r["images"][0], a): e for r in recs for a, e in zip(r["answers"], r["meta"]["errors"])}
    b = best_of_n(recs, lambda items: -np.array([err[(it["question"], it["image"], it["answer"])] for it in items], float))
    assert b["picked_grade"] == 0.0 and b["picked_is_best"] == 1.0 and b["random_grade"] == -1.5 and b["n_lists"] == 40
    lb = best_of_n(recs, length)
    assert lb["picked_length"] == pytest.approx(np.mean([max(map(len, r["answers"])) for r in recs]))
    assert abs(lb["tell_share"] - 0.3) < 0.08


# ---------------------------------------------------------------- length, calibration, image reliance

def test_length_correlation():
    recs = [pair(0, "aaaa", "b"), pair(1, "cc", "ddd")]
    assert length_correlation(recs, length) == {"length_spearman": 1.0, "length_pearson": 1.0}
    neg = length_correlation(recs, lambda items: -np.array([len(i["answer"]) ** 2 for i in items], float))
    assert neg["length_spearman"] == pytest.approx(-1.0) and -1 < neg["length_pearson"] < -0.9
    assert all(math.isnan(v) for v in length_correlation(recs, lambda items: np.ones(len(items))).values())

def test_ece_constructed_cases():
    assert ece([L3, L3, L3, -L3]) == pytest.approx(0.0)   # right 3 times in 4 at p=0.75: calibrated
    assert ece([L3] * 4) == pytest.approx(0.25)           # always right at p=0.75: under-confident by 0.25
    # a tie costs nothing; p=0.75 right once: points (.5,1),(.5,0),(.75,1),(.25,0): (2/4)*0 + (1/4)*.25 + (1/4)*.25
    assert ece([0.0, L3]) == pytest.approx(0.125)
    assert ece([50.0, 50.0]) == pytest.approx(0.0, abs=1e-12)  # confident and right
    assert ece([-50.0]) == pytest.approx(1.0)                 # confident and wrong
    assert ece([L3, -L3, L3, L3], bins=1) == pytest.approx(0.0)  # one bin: mean p is 0.5 = mean outcome

def test_image_reliance_of_a_scorer_that_reads_the_image():
    recs = [pair(0, "right", "wrong answer", group="g", task="t"), pair(1, "ok", "not ok", group="g", task="t")]
    good = {"right", "ok"}
    # a good answer scores 1 with the image and -1 blind; a bad one 0 either way
    sees = lambda items: np.array([(it["answer"] in good) * (1 if it["image"] else -1) for it in items], float)
    m = set_metrics(recs, sees)
    assert m["accuracy"] == 1.0 and m["accuracy_blank"] == 0.0 and m["image_reliance"] == 1.0
    assert set_metrics(recs, length)["image_reliance"] == 0.0


# ---------------------------------------------------------------- evaluate_scorer

def test_evaluate_scorer_whole_dict_one_call():
    iid = [pair(0, "long answer", "short", group="plain", task="count"), pair(1, "short", "tiny", group="dark", task="count"),
           pair(2, "abc", "xyz", image="y.png", group="dark", task="spatial")]
    hard = [pair(3, "aa", "bbbb", group="dark", task="count"),
            pair(4, "cccc", "d", group="plain", task="count", gold=0)]  # gold 0: rejected is truly better
    expert = [dict(id="e", images=["x.png"], question="q", answers=["a", "bb", "ccc"], scores=[0, 1, 2])]
    s = Counting(n_chars)
    r = evaluate_scorer(s, {"test_iid": iid, "test_hard": hard}, expert=expert, bins=10)
    assert len(s.calls) == 1 and r["scorer_calls"] == 1
    # iid: 5 unique + 5 blanked; hard: 4 + 4; expert: 3
    assert r["n_items_scored"] == len(s.calls[0]) == 21
    t = r["sets"]["test_iid"]
    assert t["n"] == 3 and t["accuracy"] == pytest.approx(2 / 3) and t["ties"] == pytest.approx(1 / 3)
    assert t["per_group"] == {"dark": 0.5, "plain": 1.0} and t["worst_group"] == 0.5 and t["fairness_gap"] == 0.5
    assert t["per_task"] == {"count": 1.0, "spatial": 0.0} and t["macro_task_accuracy"] == 0.5
    assert t["image_reliance"] == 0.0 and t["length_spearman"] == 1.0
    assert r["hard_accuracy"] == 0.0 == r["sets"]["test_hard"]["accuracy"]  # both pairs: the longer answer is the worse one
    assert r["expert"]["expert_tau"] == 1.0 and r["expert"]["n_lists"] == 1
    assert r["sets"]["test_iid"]["ece"] == pytest.approx(ece(pair_margins(iid, length)))

def test_evaluate_scorer_on_world_test_sets():
    files = {k: ROOT / "data/world/w0" / f"{k}.jsonl" for k in ("test_iid", "test_shift", "test_hard", "test_expert")}
    if not all(p.exists() for p in files.values()): pytest.skip("world data not generated (dvc repro generate)")
    rd = lambda p: [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    data = {k: rd(p) for k, p in files.items()}
    expert = data.pop("test_expert")
    s = Counting(n_chars)
    r = evaluate_scorer(s, data, expert=expert)
    assert len(s.calls) == 1 and r["hard_accuracy"] == r["sets"]["test_hard"]["accuracy"]
    for k, recs in data.items():
        m = r["sets"][k]
        assert m["n"] == len(recs) and m["image_reliance"] == 0.0 and m["length_spearman"] == pytest.approx(1.0)
        assert set(m["per_group"]) == {x["group"] for x in recs} and m["fairness_gap"] >= 0
    assert r["expert"]["n_lists"] + r["expert"]["n_skipped"] == len(expert)


# ---------------------------------------------------------------- VL-RewardBench

def write_jsonl(p: Path, rows): p.write_text("".join(json.dumps(r) + "\n" for r in rows)); return p

VL_ROWS = [
    {"id": "RLAIF-V-1", "image_path": "images/a.jpg", "query": "Describe.", "response": ["a long careful answer", "short"], "human_ranking": [0, 1], "query_source": "COCO"},
    {"id": "hallucination_pair-7", "image_path": "images/b.jpg", "query": "Q", "response": ["same", "same"], "human_ranking": [0, 1]},
    {"id": "mmmu_pro_test_Art_1", "image_path": "images/c.jpg", "query": "Solve.", "response": ["a wrong long answer", "42"], "human_ranking": [1, 0]},
    {"id": "wildvision-battle-3", "image_path": "images/d.jpg", "query": "Chat.", "response": ["longer one", "short"], "human_ranking": [0, 1]},
]

def test_vlrb_category_rule():
    assert [vlrb_category(i) for i in ("RLAIF-V-14", "RLHF-V-31", "hallucination_pair-1003", "mathverse_2279", "mmmu_pro_test_Art_1",
                                       "wildvision-battle-13", "jailbreak-Fraud-29", "LRVInstruction-000000007746", "svit-complex_reasoning-876")] \
        == ["hallucination"] * 3 + ["reasoning"] * 2 + ["general"] * 4

def test_vl_rewardbench_tiny_file(tmp_path):
    recs = read_vl_rewardbench(write_jsonl(tmp_path / "vl.jsonl", VL_ROWS))
    assert [r["chosen"] for r in recs] == ["a long careful answer", "same", "42", "longer one"]
    assert [r["meta"]["chosen_index"] for r in recs] == [0, 0, 1, 0] and recs[0]["task"] == "COCO"
    m = vl_rewardbench_metrics(recs, length)
    # right: RLAIF (longer), wildvision (longer); tie: hallucination; wrong: mmmu
    assert m["accuracy"] == 0.5 and m["ties"] == 0.25
    assert m["per_category"] == {"general": 1.0, "hallucination": 0.5, "reasoning": 0.0} and m["macro_accuracy"] == 0.5
    assert m["counts"] == {"general": 1, "hallucination": 2, "reasoning": 1} and m["images"] == {"no_folder": 4}

def test_vl_rewardbench_bad_lines_name_file_line_and_field(tmp_path):
    bad = [VL_ROWS[0], {**VL_ROWS[1], "human_ranking": [0, 0]}]
    with pytest.raises(PreferenceDataError, match=r"vl\.jsonl:2: field 'human_ranking'"):
        read_vl_rewardbench(write_jsonl(tmp_path / "vl.jsonl", bad))
    p = tmp_path / "vl2.jsonl"; p.write_text(json.dumps(VL_ROWS[0]) + "\n{not json\n")
    with pytest.raises(PreferenceDataError, match=r"vl2\.jsonl:2: malformed JSON"): read_vl_rewardbench(p)
    with pytest.raises(PreferenceDataError, match="field 'query': missing"):
        read_vl_rewardbench(write_jsonl(tmp_path / "vl3.jsonl", [{k: v for k, v in VL_ROWS[0].items() if k != "query"}]))

class NeedsImages:
    needs_images = True
    def __init__(self): self.seen = []
    def __call__(self, items): self.seen += [it["image"] for it in items]; return np.array([len(it["answer"]) for it in items], float)

def test_image_folder_handling(tmp_path):
    p = write_jsonl(tmp_path / "vl.jsonl", VL_ROWS)
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere does not exist"): read_vl_rewardbench(p, image_root=tmp_path / "nowhere")
    with pytest.raises(ImagesMissingError, match="no image folder was given for 4 of 4"): vl_rewardbench_metrics(read_vl_rewardbench(p), NeedsImages())
    imgs = tmp_path / "bench"; (imgs / "images").mkdir(parents=True)
    for n in "abc": (imgs / "images" / f"{n}.jpg").write_bytes(b"x")
    recs = read_vl_rewardbench(p, image_root=imgs)
    assert [r["meta"]["image_status"] for r in recs] == ["ok", "ok", "ok", "missing"]
    with pytest.raises(ImagesMissingError, match=r"1 of 4 image files are missing, e.g. .*images/d\.jpg"): vl_rewardbench_metrics(recs, NeedsImages())
    assert vl_rewardbench_metrics(recs, length)["images"] == {"missing": 1, "ok": 3}  # text-only scorers still run
    (imgs / "images" / "d.jpg").write_bytes(b"x")
    s = NeedsImages()
    assert vl_rewardbench_metrics(read_vl_rewardbench(p, image_root=imgs), s)["accuracy"] == 0.5
    assert str(imgs / "images" / "a.jpg") in s.seen and None not in s.seen


# ---------------------------------------------------------------- MM-RLHF-RewardBench

MM_ROWS = [
    {"id": "g1", "image": "mcq/1.png", "prompt": "P1", "chosen": "longest answer", "rejected": "short"},
    {"id": "g1", "image": "mcq/1.png", "prompt": "P1", "chosen": "longest answer", "rejected": "mid answer"},
    {"id": "g2", "image": "safety/2.png", "prompt": "P2", "chosen": "no", "rejected": "sure, here is how"},
    {"id": "g3", "video": "video/abc", "prompt": "P3", "chosen": "a b c d", "rejected": "a b"},
    {"id": "g3", "video": "video/abc", "prompt": "P3", "chosen": "xy", "rejected": "zw"},
]

def test_mm_rlhf_tiny_file(tmp_path):
    recs = read_mm_rlhf_rewardbench(write_jsonl(tmp_path / "mm.jsonl", MM_ROWS))
    assert [r["group"] for r in recs] == ["mcq", "mcq", "safety", "video", "video"]
    assert [r["meta"]["prompt_group"] for r in recs] == ["g1", "g1", "g2", "g3", "g3"] and len({r["id"] for r in recs}) == 5
    m = mm_rlhf_metrics(recs, length)
    # video rows skipped and counted; image pairs right: g1 both, g2 no -> 2/3; groups all right: g1 only -> 1/2
    assert m["accuracy"] == pytest.approx(2 / 3) and m["acc_plus"] == 0.5 and m["n_pairs"] == 3 and m["n_groups"] == 2
    assert "video" not in m["per_category"] and m["skipped"] == {"video": 2}
    assert m["per_category"]["mcq"]["acc_plus"] == 1.0 and m["images"] == {"no_folder": 3, "video": 2}
    with pytest.raises(ImagesMissingError, match="for 3 of 3 records"): mm_rlhf_metrics(recs, NeedsImages())  # video rows exempt

def test_mm_rlhf_row_without_media_is_an_error(tmp_path):
    with pytest.raises(PreferenceDataError, match=r"mm\.jsonl:1: field 'image': missing"):
        read_mm_rlhf_rewardbench(write_jsonl(tmp_path / "mm.jsonl", [{k: v for k, v in MM_ROWS[0].items() if k != "image"}]))


# ---------------------------------------------------------------- Multimodal RewardBench (public schema, hand-made file)

MMRB_ROWS = [
    {"ID": "nocaps_1", "Text": "Caption it.", "Image": "images/nocaps/1.jpg", "Output1": "a detailed caption", "Output2": "cap", "Better": "Output1", "Category": "open_generation/correctness_task"},
    {"ID": "visitbench_2", "Text": "Help.", "Image": "images/visitbench/2.jpg", "Output1": "long reply here", "Output2": "ok", "Better": "Output2", "Category": "open_generation/preference_task"},
    {"ID": "PAIRS_3", "Text": "Who?", "Image": "images/pairs/3.jpg", "Output1": "no", "Output2": "that one", "Better": "Output1", "Category": "safety"},
    {"ID": "hateful_4", "Text": "Meme?", "Image": "images/hm/4.jpg", "Output1": "x", "Output2": "yy", "Better": "Output2", "Category": "safety"},
    {"ID": "mathvista_5", "Text": "Solve.", "Image": "images/mathvista/5.jpg", "Output1": "7", "Output2": "8", "Better": "Output1", "Category": "reasoning"},
    {"ID": "emma_coding_6", "Text": "Code.", "Image": "images/EMMA-Coding/6.jpg", "Output1": "def f(): pass", "Output2": "print()", "Better": "Output1", "Meta": {"Category": "reasoning"}},
]

def test_mmrb_category_and_area_rules():
    assert mmrb_category("PAIRS_1", "safety") == "safety/bias" and mmrb_category("hm_1", "safety") == "safety/toxicity"
    assert mmrb_category("MathVista_1", "reasoning") == "reasoning/math" and mmrb_category("emma_1", "reasoning") == "reasoning/coding"
    assert mmrb_area("open_generation/correctness_task") == "general_correctness" and mmrb_area("safety/bias") == "safety"

@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_multimodal_rewardbench_tiny_file(tmp_path, layout):
    p = tmp_path / "all_data.json"
    if layout == "array": p.write_text(json.dumps(MMRB_ROWS, indent=1))
    else: write_jsonl(p, MMRB_ROWS)
    recs = read_multimodal_rewardbench(p)
    assert [r["task"] for r in recs] == ["open_generation/correctness_task", "open_generation/preference_task", "safety/bias",
                                         "safety/toxicity", "reasoning/math", "reasoning/coding"]
    assert recs[1]["chosen"] == "ok" and recs[1]["rejected"] == "long reply here"
    m = multimodal_rewardbench_metrics(recs, length)
    # right: nocaps (longer), toxicity (yy), coding (13 > 7 chars); wrong: preference, bias; tie: math (7 vs 8)
    assert m["n"] == 6 and m["accuracy"] == 0.5 and m["ties"] == pytest.approx(1 / 6)
    assert m["per_area"] == {"general_correctness": 1.0, "general_preference": 0.0, "reasoning": 0.5, "safety": 0.5}
    assert m["macro_accuracy"] == 0.5 and m["per_category"]["reasoning/math"] == 0.0 and m["counts"]["safety"] == 2
    assert multimodal_rewardbench_metrics(recs, constant)["accuracy"] == 0.0

def test_multimodal_rewardbench_bad_label(tmp_path):
    p = tmp_path / "all_data.json"; p.write_text(json.dumps([MMRB_ROWS[0], {**MMRB_ROWS[1], "Better": "A"}]))
    with pytest.raises(PreferenceDataError, match=r"all_data\.json:item 2: field 'Better': expected \"Output1\" or \"Output2\""):
        read_multimodal_rewardbench(p)


# ---------------------------------------------------------------- the real benchmark files

def bench(name):
    p = BENCH / name
    if not p.exists(): pytest.skip(f"{p} absent (the real benchmark text is vendored in vendor/benchmarks/)")
    return p

def test_real_vl_rewardbench_counts_and_length_scorer():
    recs = read_vl_rewardbench(bench("vl_rewardbench.jsonl"))
    assert len(recs) == 1250 and len({r["id"] for r in recs}) == 1250 and len({r["meta"]["bench_id"] for r in recs}) == 1232
    assert Counter(r["group"] for r in recs) == {"hallucination": 749, "reasoning": 318, "general": 183}
    assert Counter(r["meta"]["chosen_index"] for r in recs) == {0: 1245, 1: 5}
    m = vl_rewardbench_metrics(recs, length)
    assert m["counts"] == {"general": 183, "hallucination": 749, "reasoning": 318} and m["images"] == {"no_folder": 1250}
    assert m["accuracy"] == pytest.approx(0.4264) and m["ties"] == pytest.approx(11 / 1250)
    assert m["per_category"] == pytest.approx({"general": 68 / 183, "hallucination": 302 / 749, "reasoning": 163 / 318})
    assert m["macro_accuracy"] == pytest.approx(np.mean([68 / 183, 302 / 749, 163 / 318]))
    c = vl_rewardbench_metrics(recs, constant)
    assert c["accuracy"] == 0.0 and c["macro_accuracy"] == 0.0 and c["ties"] == 1.0

def test_real_mm_rlhf_counts_and_length_scorer():
    recs = read_mm_rlhf_rewardbench(bench("mm_rlhf_rewardbench.jsonl"))
    m = mm_rlhf_metrics(recs, length)
    assert m["n_pairs"] == 145 and m["n_groups"] == 36 and m["skipped"] == {"video": 25}  # the 25 video pairs (10 prompts) are not scored
    assert {c: (v["n_pairs"], v["n_groups"]) for c, v in m["per_category"].items()} == \
        {"long": (37, 10), "mcq": (42, 10), "safety": (32, 6), "short": (34, 10)}
    assert m["images"] == {"no_folder": 145, "video": 25}
    assert m["accuracy"] == pytest.approx(99 / 145) and m["acc_plus"] == pytest.approx(14 / 36) and m["ties"] == pytest.approx(1 / 145)
    c = mm_rlhf_metrics(recs, constant)
    assert c["accuracy"] == 0.0 and c["acc_plus"] == 0.0 and all(v["accuracy"] == 0.0 for v in c["per_category"].values())
