"""Bring your own data: a tiny dataset and checkpoint laid out as a user's would be, and the params that run the study on them.

    .venv/bin/python examples/byod/make_example.py --out userdata --judge-url http://127.0.0.1:8000/v1

writes, under `--out`:
- `images/`: real JPEG and PNG files (RGB, RGBA, greyscale) of several sizes;
- `train.json`, `dev.json`, `test.json`: LLaMA-Factory pairwise files (sharegpt style: `conversations`, `chosen`, `rejected`,
  `images`, some with a `system` prompt, some with two images); the training labels are single, noisy and length-biased, with
  no annotator votes; dev and test labels are right;
- `checkpoint/`: a tiny random Qwen2-VL in the Hugging Face layout (config, safetensors, tokenizer, `chat_template.json`,
  `preprocessor_config.json` with its own min/max pixels);
- `params.yaml`: the project's `params.yaml` with the `data` group pointed at these files, the arms, judges and settings a real
  dataset needs (no oracle, HTTP judges at `--judge-url`, no world truth).

Copy that `params.yaml` over the project's and run `dvc repro report` (`examples/byod/fake_judge.py` serves a judge on loopback).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30), "purple": (140, 50, 170),
           "orange": (245, 140, 20)}
SHAPES = ("circle", "square")
SIZES = ((96, 64), (128, 96), (160, 120), (64, 64), (112, 84))
KINDS = ("jpeg", "png_rgba", "png_grey")  # the group of a record: the kind of its first image
SYSTEM = "You are a helpful assistant that answers questions about images."
PADDING = (" Looking at the picture carefully, I am confident about this.", " The rest of the image is a plain background.")


def draw(colour: str, shape: str, size: tuple[int, int], r: random.Random) -> Image.Image:
    "A plain light background with one shape of `colour`."
    W, H = size; bg = tuple(r.randint(215, 250) for _ in range(3))
    im = Image.new("RGB", size, bg); d = ImageDraw.Draw(im)
    s = min(W, H) // 2; x, y = r.randint(0, W - s), r.randint(0, H - s)
    (d.ellipse if shape == "circle" else d.rectangle)([x, y, x + s, y + s], fill=COLOURS[colour])
    return im


def save(im: Image.Image, kind: str, path_stem: Path) -> str:
    "Write `im` as `kind` and return the file name."
    if kind == "jpeg": p = path_stem.with_suffix(".jpg"); im.save(p, quality=90)
    elif kind == "png_rgba": p = path_stem.with_suffix(".png"); im.convert("RGBA").save(p)
    else: p = path_stem.with_suffix(".png"); im.convert("L").save(p)
    return p.name


def answer(colour: str, shape: str, long: bool) -> str:
    "An answer naming `colour`, short or padded (the same fact either way)."
    a = f"The {shape} is {colour}."
    return a + "".join(PADDING) if long else a


def one_image_row(i: int, split: str, out: Path, r: random.Random) -> tuple[dict, bool]:
    "A one-image question (the shape's colour; its form on a greyscale image): (row, whether the better answer is the longer one)."
    colour, shape, kind = r.choice(list(COLOURS)), r.choice(SHAPES), KINDS[i % len(KINDS)]
    name = save(draw(colour, shape, r.choice(SIZES), r), kind, out / "images" / f"{split}_{i:03d}")
    good_long = r.random() < 0.5
    if kind == "png_grey":
        other = next(s for s in SHAPES if s != shape)
        q, good, bad = "<image>What shape is in the image?", f"It is a {shape}.", f"It is a {other}."
        good, bad = (good + "".join(PADDING), bad) if good_long else (good, bad + "".join(PADDING))
    else:
        wrong = r.choice([c for c in COLOURS if c != colour])
        q, good, bad = "<image>What colour is the shape?", answer(colour, shape, good_long), answer(wrong, shape, not good_long)
    row = {"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": good},
           "rejected": {"from": "gpt", "value": bad}, "images": [f"images/{name}"], "group": kind}
    if i % 3 == 0: row["system"] = SYSTEM
    return row, good_long


def two_image_row(i: int, split: str, out: Path, r: random.Random) -> tuple[dict, bool]:
    "A two-image question: which image shows a shape of a named colour."
    a, b = r.sample(list(COLOURS), 2); shape, kind = r.choice(SHAPES), KINDS[i % 2]  # colour images only
    names = [save(draw(c, shape, r.choice(SIZES), r), kind, out / "images" / f"{split}_{i:03d}_{k}") for k, c in enumerate((a, b))]
    first = r.random() < 0.5; target = a if first else b
    good, bad = ("The first image.", "The second image.") if first else ("The second image.", "The first image.")
    row = {"conversations": [{"from": "human", "value": f"<image><image>Which image shows a {target} {shape}?"}],
           "chosen": {"from": "gpt", "value": good}, "rejected": {"from": "gpt", "value": bad},
           "images": [f"images/{n}" for n in names], "group": kind, "system": SYSTEM}
    return row, False


def make_split(split: str, n: int, out: Path, seed: int, noisy: bool) -> list[dict]:
    "`n` rows; with `noisy`, one length-biased annotator's labels: right 90% of the time when the better answer is the longer, 55% when it is the shorter, 80% on two-image rows."
    r, rows = random.Random(f"{seed}-{split}"), []
    for i in range(n):
        two = i % 6 == 5
        row, good_long = (two_image_row if two else one_image_row)(i, split, out, r)
        if noisy and r.random() >= (0.8 if two else 0.9 if good_long else 0.55):
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        rows.append(row)
    return rows


def make_checkpoint(texts: list[str], path: Path, seed: int = 0) -> Path:
    "A tiny random Qwen2-VL checkpoint folder with a processor that resizes images to 56² to 112² pixels."
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from dt2it_mrm.vlm import build_base, save_base, train_tokenizer
    tok = train_tokenizer(texts, vocab_size=400)
    model, proc = build_base("qwen2_vl", tok, seed=seed, hidden=32, layers=2, heads=2, vision_hidden=32, vision_layers=1)
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2)
    return save_base(model, type(proc)(ip, proc.tokenizer, chat_template=proc.chat_template), path)


def example_params(params: dict, out: str, judge_url: str) -> dict:
    "The project's params with every input pointed at the example under `out` and the settings real data needs."
    p = json.loads(json.dumps(params))
    p["base"] |= {"worlds": [0], "model": f"{out}/checkpoint"}
    p["data"] = {"root": out, "format": "llamafactory", "image_root": out, "train": f"{out}/train.json", "oracle": None,
                 "dev": f"{out}/dev.json", "test_sets": {"test": f"{out}/test.json"}, "expert_set": None, "bon_set": None, "world_dir": None}
    http = p["construct"]["distil"]["http"] | {"base_url": judge_url, "model": "fake-judge", "api_key_env": None, "timeout_s": 10, "max_retries": 2,
                                               "backoff_base_s": 0.1, "backoff_max_s": 1}
    p["bias_audit"] |= {"folds": 3}
    p["construct"] |= {"labels": "judge", "distil": p["construct"]["distil"] | {"backend": "http", "http": http, "concurrency": 2},
                       "strategies": {"group": {"power": 1.0}, "length": {"strata": "group"}, "shortcut": {"strength": 0.5}},
                       "counterfactual": ["other_image"]}  # as the study's default: named here so that the example keeps showing the twins on a user's images
    # images of several sizes take other token counts than the blank image, which the implicit reward's blank reference
    # is fed in place of theirs: the reference sees the row's own image instead (or set min_pixels = max_pixels)
    p["train"]["rm"] |= {"lora_r": 4, "epochs": 2, "batch_size": 8, "warmup": 2, "lm_reference": "image"}
    arm = {"blank_image": False, "crossfit": False, "worlds": "all"}
    p["train"]["arms"] = {"baseline": arm | {"data": "train", "dep": out, "ensemble": 1},
                          "debiased": arm | {"data": "data/construct/{world}/train.jsonl", "dep": "data/construct", "ensemble": 3, "crossfit": True},
                          "iter1": arm | {"data": "data/curate/iter1/{world}/train.jsonl", "dep": "data/curate/iter1", "ensemble": 1}}
    p["curate"] |= {"iterations": {"iter1": {"prev": "debiased", "train_in": "data/construct/{world}/train.jsonl", "dep": "data/construct", "ablate": False}},
                    "truth": None, "nuisance_phrases": [], "augment": [], "curve": False,
                    "judges": [{"backend": "http", "http": http, "seed": 1}, {"backend": "http", "http": http, "seed": 2}],
                    "loop": p["curate"]["loop"] | {"judge_budget": 40}}
    p["evaluate"] |= {"blank_sets": ["test"], "benchmarks": {}, "benchmark_images": {}}
    p["report"] |= {"primary_set": "test", "hard_set": None, "shift_set": None, "n_boot": 200}
    return p


def make_example(out: str | Path,                  # the example's folder (relative to the project root, as params name it)
                 judge_url: str = "http://127.0.0.1:8000/v1",
                 params_in: str | Path = "params.yaml", # the project's params, the starting point
                 sizes: tuple[int, int, int] = (48, 16, 24), # train, dev and test rows
                 seed: int = 0) -> dict:
    "Write the example's data, checkpoint and params; returns {split: rows}."
    out = Path(out); (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {s: make_split(s, n, out, seed, noisy=s == "train") for s, n in zip(("train", "dev", "test"), sizes)}
    for s, rows in splits.items(): (out / f"{s}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    texts = [t for rows in splits.values() for r in rows for t in (r["conversations"][0]["value"], r["chosen"]["value"], r["rejected"]["value"])]
    make_checkpoint(texts + [SYSTEM], out / "checkpoint", seed)
    params = example_params(yaml.safe_load(Path(params_in).read_text()), out.as_posix(), judge_url)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return splits


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="userdata", help="the example's folder, relative to the project root")
    ap.add_argument("--judge-url", default="http://127.0.0.1:8000/v1", help="the OpenAI-compatible judge server")
    ap.add_argument("--params", default="params.yaml", help="the project's params file to start from")
    a = ap.parse_args()
    made = make_example(a.out, a.judge_url, a.params)
    print({s: len(r) for s, r in made.items()}, f"-> {a.out}/ (data, checkpoint/, params.yaml)")
