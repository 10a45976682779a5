"""Run the whole study on the example in a copy of the project: build the example, serve its judge on loopback, put its params
in place, `dvc repro report`. Used by `tests/test_byod.py` and `benchmarks/byod_run.py`."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fake_judge import serve  # noqa: E402
from make_example import make_example  # noqa: E402


def digest(folder: Path) -> dict:
    "sha256 of every file under `folder`, by relative path."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_example(project: str | Path,     # a copy of the project (its params.yaml is replaced by the example's)
                out: str = "userdata",   # the example's folder inside it
                timeout: int = 1800,
                venv_bin: str | Path = Path(sys.executable).parent, # where dvc and dt2it-stage are
               ) -> dict:
    "Build the example in `project`, run `dvc repro report` there with the judge served, and return what happened."
    project = Path(project).resolve(); here = Path.cwd()
    server = serve(0); url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        os.chdir(project)
        made = make_example(out, url)
        (project / "params.yaml").write_text((project / out / "params.yaml").read_text())
        before = digest(project / out)
        env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(project.parent), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
               "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
        t0 = time.perf_counter()
        r = subprocess.run([str(Path(venv_bin) / "dvc"), "repro", "report"], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
    finally:
        server.shutdown(); os.chdir(here)
    ran = [line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage '")]
    return {"made": {s: len(v) for s, v in made.items()}, "rows": made, "returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
            "ran": ran, "seconds": seconds, "untouched": digest(project / out) == before, "run": lambda *a: subprocess.run(
                [str(Path(venv_bin) / "dvc"), *a], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)}
