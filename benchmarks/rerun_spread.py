"""How far two runs of the default study lie apart: the `reports/metrics/study.json` of a git revision (`--ref`, e.g.
a run made with other CPU kernels) against the one in the working tree. For every arm and test set, the two
accuracies and their difference in points, with the interval width for scale; for every claim, both verdicts. The
question it answers: does a verdict depend on which machine (which kernels) ran the study? Writes
reports/bench/rerun_spread.json and .md.

    .venv/bin/python benchmarks/rerun_spread.py --ref REV [--what "why the runs differ"]
"""
import argparse, json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dt2it_mrm.core import atomic_write, write_json  # noqa: E402

STUDY = "reports/metrics/study.json"


def verdicts(study: dict) -> dict[str, str]:
    "Every verdict of the claims, by name."
    c, out = study["claims"], {}
    for k in ("accuracy", "fairness", "expert"): out[k] = c[k]["verdict"]
    for k in ("iter1_hard", "iter2_shift", "saturates"): out[f"iterations.{k}"] = c["iterations"][k]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="git revision whose study.json is the other run")
    ap.add_argument("--what", default="", help="what differs between the two runs (goes into the report)")
    ap.add_argument("--out", default="reports/bench/rerun_spread")
    a = ap.parse_args()
    ref = json.loads(subprocess.run(["git", "show", f"{a.ref}:{STUDY}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    new = json.loads((ROOT / STUDY).read_text())
    sets = new["test_sets"]
    rows = []
    for arm in new["summary"]:
        for s in sets:
            r, n = ref["summary"][arm][s], new["summary"][arm][s]
            rows.append({"arm": arm, "set": s, "ref": r["estimate"], "new": n["estimate"], "diff_points": 100 * (n["estimate"] - r["estimate"]),
                         "interval_width_points": 100 * (n["high"] - n["low"]), "worlds": n["n_worlds"]})
    vr, vn = verdicts(ref), verdicts(new)
    primary = [r for r in rows if r["set"] == sets[0]]
    out = {"ref": a.ref, "what": a.what, "primary_set": sets[0], "rows": rows,
           "max_abs_diff_points": max(abs(r["diff_points"]) for r in rows),
           "max_abs_diff_points_primary": max(abs(r["diff_points"]) for r in primary),
           "verdicts": {k: {"ref": vr[k], "new": vn[k]} for k in vn}, "same_verdicts": vr == vn}
    write_json(ROOT / f"{a.out}.json", out)
    md = [f"# Run-to-run spread of the default study\n", f"`python benchmarks/rerun_spread.py --ref {a.ref}`: the working tree's study "
          f"against {a.ref}'s. {a.what}\n", "| arm | set | other run | this run | difference (points) | this run's 95% interval width (points) |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['arm']} | {r['set']} | {r['ref']:.3f} | {r['new']:.3f} | {r['diff_points']:+.1f} | {r['interval_width_points']:.1f} |" for r in rows]
    md += ["", "| claim | other run | this run |", "| --- | --- | --- |"] + [f"| {k} | {v['ref']} | {v['new']} |" for k, v in out["verdicts"].items()]
    md += ["", f"Largest difference: {out['max_abs_diff_points']:.1f} points ({out['max_abs_diff_points_primary']:.1f} on {sets[0]}); "
           f"verdicts {'all the same' if out['same_verdicts'] else 'NOT all the same'}."]
    atomic_write(ROOT / f"{a.out}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
