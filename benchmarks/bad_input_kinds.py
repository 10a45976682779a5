"""The bad-input suite, kind by kind: every `test_kind_*` test of tests/test_bad_input.py (kinds the hardening fixed) and
tests/test_bad_input_handled.py (kinds handled before), run against the working tree and against an older commit
(`--ref`, default: the commit before the hardening). For each kind: what it asserts (its docstring), and whether it
passes now and at the reference. The claim it checks: every kind in test_bad_input.py fails at the reference and
passes now; every kind in test_bad_input_handled.py passes at both. Writes reports/bench/bad_input.json and .md.

The reference commit is checked out in a temporary git worktree, the two suites are copied into its tests/ (they use its
own test helpers) and run there, so that its package is the one imported; today's `dt2it_mrm/config.py` is copied
into it too so that the suites import (no module of the older code uses it).

    .venv/bin/python benchmarks/bad_input_kinds.py [--ref 93ba316]
"""
import argparse, ast, json, os, shutil, subprocess, sys, tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dt2it_mrm.core import atomic_write, write_json  # noqa: E402

FILES = {"fixed": "tests/test_bad_input.py", "handled": "tests/test_bad_input_handled.py"}


def kinds(path: Path) -> dict[str, str]:
    "test name -> its docstring, for every `test_kind_*` function of `path`."
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {f.name: (ast.get_docstring(f) or "").strip() for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_kind_")}


def run(tree: Path) -> dict[str, bool]:
    "test name -> passed (every parametrised case), running the two suites in checkout `tree` (its package, its test helpers)."
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "r.xml"
        probe = subprocess.run([sys.executable, "-c", "import dt2it_mrm; print(dt2it_mrm.__file__)"], cwd=tree, env=env, capture_output=True, text=True)
        assert probe.stdout.strip().startswith(str(tree)), f"the package imported in {tree} is {probe.stdout.strip()}"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", f"--junitxml={xml}", *FILES.values()],
                       cwd=tree, env=env, capture_output=True, text=True)
        out: dict[str, bool] = {}
        if not xml.exists(): return out
        for tc in ET.parse(xml).getroot().iter("testcase"):
            name = tc.get("name").split("[")[0]
            ok = not any(c.tag in ("failure", "error") for c in tc)
            out[name] = out.get(name, True) and ok
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="93ba316", help="the older commit to run the suites against")
    ap.add_argument("--out", default="reports/bench/bad_input")
    a = ap.parse_args()
    now = run(ROOT)
    wt = Path(tempfile.mkdtemp(prefix="bad_input_ref_")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(wt), a.ref], cwd=ROOT, check=True)
    try:
        shutil.copy(ROOT / "dt2it_mrm" / "config.py", wt / "dt2it_mrm" / "config.py")
        for f in FILES.values(): shutil.copy(ROOT / f, wt / f)
        then = run(wt)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=True)
    rows = []
    for suite, f in FILES.items():
        for name, doc in kinds(ROOT / f).items():
            rows.append({"suite": suite, "kind": name.removeprefix("test_kind_"), "test": f"{f}::{name}", "asserts": doc,
                         "passes_now": now.get(name, False), "passes_at_ref": then.get(name, False)})
    fixed = [r for r in rows if r["suite"] == "fixed"]; handled = [r for r in rows if r["suite"] == "handled"]
    summary = {"ref": a.ref, "kinds": len(rows), "fixed_kinds": len(fixed), "handled_kinds": len(handled),
               "fixed_fail_at_ref": sum(not r["passes_at_ref"] for r in fixed), "fixed_pass_now": sum(r["passes_now"] for r in fixed),
               "handled_pass_at_ref": sum(r["passes_at_ref"] for r in handled), "handled_pass_now": sum(r["passes_now"] for r in handled)}
    write_json(ROOT / f"{a.out}.json", {"summary": summary, "kinds": rows})
    mark = lambda b: "pass" if b else "**fail**"
    md = [f"# Bad-input suite, kind by kind (`python benchmarks/bad_input_kinds.py --ref {a.ref}`)", "",
          f"{summary['kinds']} kinds: {summary['fixed_kinds']} fixed by the hardening, {summary['handled_kinds']} handled before.", "",
          f"- Fixed kinds failing at `{a.ref}`: {summary['fixed_fail_at_ref']} of {summary['fixed_kinds']}; passing now: {summary['fixed_pass_now']} of {summary['fixed_kinds']}.",
          f"- Handled kinds passing at `{a.ref}`: {summary['handled_pass_at_ref']} of {summary['handled_kinds']}; passing now: {summary['handled_pass_now']} of {summary['handled_kinds']}.", "",
          f"| suite | kind | outcome asserted | at `{a.ref}` | now |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {r['suite']} | `{r['kind']}` | {r['asserts'].replace('|', '/')} | {mark(r['passes_at_ref'])} | {mark(r['passes_now'])} |" for r in rows]
    atomic_write(ROOT / f"{a.out}.md", "\n".join(md) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
