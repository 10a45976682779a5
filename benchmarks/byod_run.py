"""The bring-your-own-data example end to end, as a user would run it: a copy of the committed project (`git archive HEAD`), the
example's data, checkpoint and params, its loopback judge, `dvc repro report`; writes reports/bench/byod.{json,md}."""
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "project"; d.mkdir()
        tarfile.open(fileobj=BytesIO(subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout)).extractall(d)
        subprocess.run(["git", "init", "-q"], cwd=d, check=True)
        sys.path.insert(0, str(d / "examples/byod"))
        from run_example import run_example
        res = run_example(d)
        if res["returncode"]: sys.exit(res["stdout"][-4000:] + res["stderr"][-4000:])
        con = json.loads((d / "reports/construct/w0/construct.json").read_text())
        study = json.loads((d / "reports/metrics/study.json").read_text())
        log = json.loads((d / "reports/curate/iter1/w0/curate.json").read_text())
    out = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
           "rows": res["made"], "stages_run": res["ran"], "seconds": round(res["seconds"], 1), "user_folder_untouched": res["untouched"],
           "construct_counts": con["counts"], "curate": {"n_in": log["n_in"], "judge_requests_sent": log["judge_requests_sent"], "size": log["merge"]["size"]},
           "test_accuracy": {a: s["test"] for a, s in study["summary"].items()}, "claims": {k: v.get("verdict") for k, v in study["claims"].items() if isinstance(v, dict) and "verdict" in v}}
    (ROOT / "reports/bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "reports/bench/byod.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [f"# The bring-your-own-data example end to end (commit {out['commit']})", "",
          f"`dvc repro report` on the example ({out['rows']} rows) ran {len(out['stages_run'])} stages in {out['seconds']} s: "
          f"{', '.join(out['stages_run'])}. The user's folder is untouched: {out['user_folder_untouched']}.", "",
          f"Construction (no votes, the judge on every pair): {out['construct_counts']}.", "",
          f"Curation: {out['curate']}.", "", "| arm | test accuracy [95% interval] |", "| --- | --- |",
          *[f"| {a} | {v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}] |" for a, v in out["test_accuracy"].items()], "",
          f"Claims: {out['claims']}.", ""]
    (ROOT / "reports/bench/byod.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
