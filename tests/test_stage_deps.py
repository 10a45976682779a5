"""Every project module a stage runs must be among its `dvc.yaml` deps, or a change to it would not rerun the stage."""
import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = "dt2it_mrm"


def imported_modules(code: str) -> set[str]:
    "Project modules `code` imports, at any depth of the code (function-level imports included)."
    out = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split(".")[0])
            elif node.level == 1: out |= {a.name for a in node.names}
            elif node.module == PKG: out |= {a.name for a in node.names if (ROOT / PKG / f"{a.name}.py").exists()}
            elif node.module and node.module.startswith(PKG + "."): out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PKG + ".")}
    return out


def closure(mods: set[str]) -> set[str]:
    "`mods` and every project module they import, transitively."
    seen, todo = set(), list(mods)
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m); todo += imported_modules((ROOT / PKG / f"{m}.py").read_text(encoding="utf-8"))
    return seen


def notebook_code(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and not "".join(c["source"]).lstrip().startswith(("%", "!")))


def stages() -> dict:
    out = {}
    for name, s in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        s = s.get("do", s)
        nb = re.search(r"--nb (\S+)", s["cmd"])
        out[name] = (ROOT / (nb.group(1) if nb else f"nbs/stages/{name}.ipynb"), [d for d in s["deps"] if isinstance(d, str)])
    return out


def test_imports_are_found():
    "The import reader sees relative, absolute and function-level imports."
    assert imported_modules("from .core import x\nfrom dt2it_mrm.data import y\ndef f():\n    from dt2it_mrm.world import z\nimport dt2it_mrm.bias") == {"core", "data", "world", "bias"}
    assert {"core", "config"} <= closure({"data"}) | closure({"judge"})


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_module_a_stage_runs_is_a_dep(stage):
    "The stage's notebook, the runner (`core`, `repro`) and every module they import, transitively, are listed in the stage's deps."
    nb, deps = stages()[stage]
    assert str(nb.relative_to(ROOT)) in deps
    need = closure(imported_modules(notebook_code(nb)) | {"core", "repro"})
    missing = sorted(f"{PKG}/{m}.py" for m in need if f"{PKG}/{m}.py" not in deps)
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not list them as deps"


def test_no_private_names_cross_modules():
    "No module imports another module's private (`_`-prefixed) name: what crosses a module boundary is public and documented."
    bad = []
    for f in sorted((ROOT / PKG).glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PKG)):
                bad += [f"{f.name}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, bad


WORLD_ONLY = {"world", "simulate"}  # the synthetic world and its simulated judge
GENERAL = ("judge", "loop", "resample", "construct", "bias", "evaluate", "score", "reward_model", "data")


@pytest.mark.parametrize("mod", GENERAL)
def test_general_modules_never_import_the_world(mod):
    "A general module imports neither the world nor its simulator, directly, inside a function, or through another module."
    direct = imported_modules((ROOT / PKG / f"{mod}.py").read_text(encoding="utf-8"))
    assert not direct & WORLD_ONLY, f"{mod} imports {sorted(direct & WORLD_ONLY)}"
    reach = closure({mod}) - {mod}
    assert not reach & WORLD_ONLY, f"{mod} reaches {sorted(reach & WORLD_ONLY)} through {sorted(reach - WORLD_ONLY)}"
