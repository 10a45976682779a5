"""What the reward-model benchmarks share: the study's params, the first world's dev split and test sets, and one reward model
trained and measured. Every choice a benchmark makes (a sweep's best setting) is made on `dev`; test sets are only reported."""
import tempfile, time
from pathlib import Path

from dt2it_mrm.core import for_world, load_params, set_offline, world_name
from dt2it_mrm.data import read_preferences
from dt2it_mrm.evaluate import accuracy, group_accuracy, pair_margins
from dt2it_mrm.reward_model import RMConfig, train_reward_model
from dt2it_mrm.score import RewardScorer


def read_pairs(path) -> list[dict]:
    "Preference records of `path` as dicts (bad lines raise)."
    return [r.to_dict() for r in read_preferences(path, on_error="raise")[0]]


def upscaled(records: list[dict], side: int, folder: Path) -> list[dict]:
    "`records` with every image resized (bicubic) to `side` x `side` pixels and saved under `folder`: the study's 84-pixel images at a real VLM's image size."
    from PIL import Image
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True); done = {}
    def big(path: str) -> str:
        if path not in done:
            done[path] = str(folder / f"{len(done):05d}.png")
            with Image.open(path) as im: im.convert("RGB").resize((side, side), Image.BICUBIC).save(done[path])
        return done[path]
    return [r | {"images": [big(p) for p in r["images"]]} for r in records]


def world_dir(params: dict, world: int | None = None) -> Path:
    "The folder of world `world` (default: the study's first world)."
    return Path(for_world(params["generate"]["out_dir"], world_name(params["base"]["worlds"][0] if world is None else world)))


def study_setup(world: int | None = None) -> tuple[dict, str, dict]:
    "Offline mode on; the study's params, its base model, and the dev split then the test sets of one world, by name."
    set_offline(); params = load_params(); d = world_dir(params, world)
    tests = {k: read_pairs(d / f"{k}.jsonl") for k in ["dev", *params["data"]["test_sets"]]}
    return params, params["base"]["model"], tests


def train_and_measure(train: list[dict], base: str, cfg: RMConfig, tests: dict) -> dict:
    "Train one reward model with `cfg` on `train`; its wall time and, per test set, accuracy and worst-group accuracy."
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter(); train_reward_model(train, base, cfg, out_dir=Path(tmp) / "rm", progress=False)
        row = {"train_s": round(time.perf_counter() - t0, 1)}
        sc = RewardScorer.load(Path(tmp) / "rm")
        for name, recs in tests.items():
            m = pair_margins(recs, sc)
            row[name] = accuracy(m); row[f"{name}_worst_group"] = group_accuracy(m, [r["group"] for r in recs])["worst"]
    return row
