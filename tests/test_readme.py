"""The README's results are the report stage's, not hand-typed: every line of its results block is in reports/results.md."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def test_readme_results_block_is_copied_from_the_report():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert START in readme and END in readme, "README has no results block"
    block = readme.split(START, 1)[1].split(END, 1)[0]
    table = [l for l in block.splitlines() if l.startswith("|")]
    assert len(table) >= 6, "the results block holds no table"
    results = set((ROOT / "reports/results.md").read_text(encoding="utf-8").splitlines())
    stale = [l for l in table if l not in results]
    assert not stale, f"README lines not in reports/results.md (rerun `make readme`): {stale[:3]}"
