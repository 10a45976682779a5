"""Where the default study's time goes: the duration of every executed stage notebook (papermill's own record in
reports/stages/**/*.ipynb, one per world for a stage fanned out over the replicate worlds), their sum, and the span
from the first start to the last end. Worlds run in parallel processes, so the sum can exceed the span. Writes
reports/bench/study_time.json.

The sum is the study's compute on this machine; a whole `dvc repro` adds DVC's hashing and each stage's process start
(a few seconds a stage). When every stage ran in one `dvc repro`, the span is that run's wall time. `wall_s` replays
the recorded durations on `--workers` processes (a stage's worlds handed out in order, stages one after another):
the wall time of one uninterrupted `dvc repro`, even when the study was run in several pieces.

`floor_s` is the least wall time the recorded work could take on `--cpus` cores: every stage's core-seconds (a world's
duration times the cores its process had: its threads, or the machine's cores shared among the worlds that ran at
once), summed and spread over every core with no core ever idle and no start-up between stages. `floor_by_kind_s`
splits it by kind of stage: where one kind's floor alone passes a time budget, no scheduling can meet that budget,
only less work of that kind.

    .venv/bin/python benchmarks/study_time.py
"""
import argparse, json, os
from datetime import datetime
from pathlib import Path

from dt2it_mrm.core import load_params, write_json


def replay(durations: list[float], workers: int) -> float:
    "Wall time of jobs handed out in order to `workers` processes, each taking the next job when free."
    free = [0.0] * max(1, workers)
    for d in durations: i = free.index(min(free)); free[i] += d
    return max(free)


def stage_kind(stage: str) -> str:
    "`train`, `evaluate` or `curate` for any arm or iteration of them; other stages by their own name."
    return stage.split("_")[0] if stage.startswith(("train_", "evaluate_", "curate_")) else stage


def core_seconds(durations: list[float], workers: int, cpus: int, threads: int) -> float:
    "Core-seconds of one stage's runs: each had its `threads`, or its share of `cpus` among the min(`workers`, runs) that ran at once."
    share = min(threads, cpus / min(max(1, workers), len(durations)))
    return sum(durations) * share


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="reports/stages"); ap.add_argument("--out", default="reports/bench/study_time.json")
    ap.add_argument("--workers", type=int, default=load_params("params.yaml")["base"]["workers"],
                    help="parallel world processes of a fanned-out stage (default: params base.workers)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="cores of the machine that ran the study (default: this one's)")
    a = ap.parse_args()
    repro = load_params("params.yaml")["base"].get("repro") or {}
    rows = {}
    for p in sorted(Path(a.stages).glob("**/*.ipynb")):
        pm = json.loads(p.read_text(encoding="utf-8"))["metadata"].get("papermill", {})
        if pm.get("duration") is None: raise ValueError(f"{p}: no papermill duration (was it executed by dt2it-stage?)")
        rows[p.relative_to(a.stages).with_suffix("").as_posix()] = {"s": pm["duration"], "start": pm["start_time"], "end": pm["end_time"]}
    t = lambda s: datetime.fromisoformat(s)
    span = (max(t(r["end"]) for r in rows.values()) - min(t(r["start"]) for r in rows.values())).total_seconds()
    by_kind = {}
    for name, r in rows.items():
        k = stage_kind(name.split("/")[0]); by_kind[k] = by_kind.get(k, 0.0) + r["s"]
    by_stage: dict[str, list[float]] = {}
    for name, r in rows.items(): by_stage.setdefault(name.split("/")[0], []).append(r["s"])
    wall = sum(replay(d, a.workers) for d in by_stage.values())
    floor_by_kind: dict[str, float] = {}
    for k, d in by_stage.items():
        threads = repro.get("threads", 1) if len(d) > 1 else repro.get("solo_threads", repro.get("threads", 1))
        floor_by_kind[stage_kind(k)] = floor_by_kind.get(stage_kind(k), 0.0) + core_seconds(d, a.workers, a.cpus, threads) / a.cpus
    out = {"stages": len(rows), "sum_s": sum(r["s"] for r in rows.values()), "span_s": span, "wall_s": wall, "workers": a.workers, "by_kind_s": by_kind,
           "cpus": a.cpus, "floor_s": sum(floor_by_kind.values()), "floor_by_kind_s": floor_by_kind, "per_stage": rows}
    write_json(a.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "per_stage"}, indent=1))


if __name__ == "__main__":
    main()
