"""The report: claims measured from the arms and judged honestly, tables and seeds."""
import math

from dt2it_mrm.report import arm_table, claims, claims_markdown, gap_closed, main_arms, seed_table, table_markdown


def arm(acc, gap, tau, hard=None, shift=None):
    s = lambda a: {"accuracy": a, "fairness_gap": gap, "worst_group": a - gap / 2, "per_group": {"plain": a + gap / 2, "dark": a - gap / 2}}
    return {"sets": {"test_iid": s(acc), "test_hard": s(hard or acc), "test_shift": s(shift or acc)}, "expert": {"expert_tau": tau}}


def study(final_acc, final_gap, final_tau):
    return {"arms": {"baseline": arm(0.80, 0.10, 0.40), "oracle": arm(0.96, 0.02, 0.80), "debiased": arm(0.82, 0.09, 0.42),
                     "iter2": arm(final_acc, final_gap, final_tau, hard=0.83), "iter1": arm(0.83, 0.09, 0.43, hard=0.86, shift=0.83)}}


def test_a_method_that_does_not_help_is_reported_as_not_reproducing():
    c = claims(study(0.81, 0.11, 0.38))
    assert c["final_arm"] == "iter2"
    assert math.isclose(c["accuracy_gain_points"]["measured"]["test_iid"], 1.0) and not c["accuracy_gain_points"]["reproduced"]
    assert math.isclose(c["fairness_gap_reduction"]["measured"], -0.1) and not c["fairness_gap_reduction"]["reproduced"]
    assert math.isclose(c["expert_agreement_gain"]["measured"], -0.05) and not c["expert_agreement_gain"]["reproduced"]
    md = claims_markdown(c)
    assert md.count("**no**") >= 3 and "+1.0 points on test_iid" in md


def test_a_method_that_helps_is_reported_as_reproducing():
    c = claims(study(0.90, 0.05, 0.48))
    assert c["accuracy_gain_points"]["reproduced"] and c["fairness_gap_reduction"]["reproduced"] and c["expert_agreement_gain"]["reproduced"]
    assert math.isclose(c["gap_closed"]["test_iid"], 0.625)
    it = c["iterations"]
    assert it["hard_gain_largest_at"] == "iter1" and it["reproduced"]["iter1_hard"]


def test_gap_closed_and_tables():
    assert gap_closed(0.9, 0.8, 1.0) == 0.5 and gap_closed(0.7, 0.8, 1.0) < 0
    s = study(0.9, 0.05, 0.48)
    assert main_arms(s) == ["oracle", "baseline", "debiased", "iter1", "iter2"]
    df = arm_table(s, metrics=("accuracy",))
    assert list(df.index) == main_arms(s) and df.loc["iter2", ("test_iid", "accuracy")] == 0.9
    assert table_markdown(df).splitlines()[0].startswith("| arm | test_iid accuracy")


def test_seed_table_mean_and_sd():
    s = study(0.9, 0.05, 0.48)
    s["arms"] |= {"iter2@seed0": arm(0.86, 0.05, 0.48), "iter2@seed1": arm(0.88, 0.05, 0.48), "iter2@seed2": arm(0.90, 0.05, 0.48)}
    t = seed_table(s)  # the replicates only: the plain `iter2` (0.9, the ensemble's number) is not a seed
    assert list(t.index) == ["iter2"] and math.isclose(t.loc["iter2", ("test_iid", "accuracy", "mean")], 0.88)
    assert math.isclose(t.loc["iter2", ("test_iid", "accuracy", "sd")], 0.02) and t.loc["iter2", ("", "", "n_seeds")] == 3
