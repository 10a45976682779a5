"""Tests for dt2it_mrm.data: round trips for every format and one test per validation case, in both modes."""
import os
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

import json, struct, zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import dt2it_mrm.data as D
from dt2it_mrm.data import (ListRecord, PrefRecord, PreferenceDataError, FieldError, ImageError, check_image, from_trl_dataset,
                            lf_dump, lf_parse, list_to_pairs, load_image, read_preferences, read_records, to_trl_dataset, trl_dump,
                            write_records)


# ---------------------------------------------------------------- helpers

def img(root: Path, name: str, size=(8, 6), mode="RGB", color=None) -> Path:
    p = root / name; p.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 0 if color is None else color).save(p)
    return p

def png_header(w: int, h: int) -> bytes:
    "A PNG with a valid header claiming w x h pixels and no pixel data."
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")

def rec(i: int, **kw) -> PrefRecord:
    base = dict(id=f"r{i}", images=["img/a.png"], question=f"How many shapes in scene {i}?", chosen=f"There are {i} shapes.",
                rejected=f"There are {i + 10} shapes.")
    return PrefRecord(**{**base, **kw})

@pytest.fixture
def root(tmp_path):
    img(tmp_path, "img/a.png"); img(tmp_path, "img/b.png", size=(5, 5)); img(tmp_path, "img/c.png", mode="L")
    return tmp_path

RICH = [rec(1, source="world", group="dark", task="count", labels={"ann0": 1, "ann1": 0}, gold=1, strength=2.5, weight=0.75,
            meta={"system": "Judge fairly.", "nested": {"k": [1, 2]}, "ünï": "ç"}),
        rec(2, images=["img/a.png", "img/b.png"], question="Is <image> larger than <image>?", chosen="Yes, it is.", rejected="No."),
        rec(3, images=["img/a.png", "img/c.png"]),  # two images, both in front (canonical: no placeholder)
        rec(4, images=[], question="A text-only prompt?", gold=0, strength=-1)]


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt", ["jsonl", "llamafactory", "llamafactory_messages", "dt2it", "trl"])
def test_roundtrip_pairs(root, fmt):
    p = write_records(RICH, root / f"x.{fmt}.jsonl", fmt)
    got, rep = read_preferences(p, fmt, image_root=root)
    assert got == RICH
    assert (rep.read, rep.kept, rep.quarantined, rep.records, rep.images_checked) == (4, 4, 0, 4, 3)
    assert rep.converted == {"L": 1}

def test_jsonl_keys_are_field_names(root):
    row = json.loads(write_records(RICH[:1], root / "x.jsonl").read_text())
    assert list(row) == ["id", "images", "question", "chosen", "rejected", "source", "group", "task", "labels", "gold",
                         "strength", "weight", "meta"]

def test_llamafactory_row_shape():
    row = lf_dump(RICH[2])
    assert row["conversations"] == [{"from": "human", "value": "<image><image>How many shapes in scene 3?"}]
    assert row["chosen"] == {"from": "gpt", "value": "There are 3 shapes."} and row["images"] == ["img/a.png", "img/c.png"]
    assert lf_dump(RICH[0])["system"] == "Judge fairly." and "system" not in json.loads(lf_dump(RICH[0])["meta"])
    assert lf_dump(RICH[1])["conversations"][0]["value"] == "Is <image> larger than <image>?"

def test_llamafactory_openai_style_rows(root):
    "LLaMA-Factory's role/content `messages` (its `tags`): a leading system message is the system prompt; dumped back the same way."
    row = {"messages": [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "<image>What colour?"}],
           "chosen": {"role": "assistant", "content": "Red."}, "rejected": {"role": "assistant", "content": "Blue."}, "images": ["img/a.png"]}
    (root / "m.jsonl").write_text(json.dumps(row) + "\n")
    (r,), _ = read_preferences(root / "m.jsonl", "llamafactory", image_root=root)
    assert (r.question, r.chosen, r.meta["system"]) == ("What colour?", "Red.", "Be strict.")
    assert {k: v for k, v in lf_dump(r, "openai").items() if k in row} == row
    multi = {**row, "messages": row["messages"] + [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}
    with pytest.raises(FieldError, match=r"expected one user turn, got \['system', 'user', 'assistant', 'user'\] \(multi-turn"): lf_parse(multi)

def test_dt2it_rows(root):
    "DT2IT-MRM's own pairwise JSONL: `image_path` (one path or several), `question`, `chosen`, `rejected`."
    (root / "d.jsonl").write_text(json.dumps({"image_path": "img/a.png", "question": "Q?", "chosen": "A.", "rejected": "B."}) + "\n"
                                  + json.dumps({"image_path": ["img/a.png", "img/b.png"], "question": "Q2?", "chosen": "C.", "rejected": "D.", "id": "x"}) + "\n")
    recs, rep = read_preferences(root / "d.jsonl", "dt2it", image_root=root)
    assert [r.images for r in recs] == [["img/a.png"], ["img/a.png", "img/b.png"]] and recs[1].id == "x" and rep.kept == 2
    assert D.FORMATS["dt2it"].dump(recs[0])["image_path"] == "img/a.png"

def test_llamafactory_foreign_row_keeps_extra_columns(root):
    foreign = {"conversations": [{"from": "human", "value": "<image>What colour?"}], "chosen": {"from": "gpt", "value": "Red."},
               "rejected": {"from": "gpt", "value": "Blue."}, "images": ["img/a.png"], "score_model": "judge-7", "margin": 3}
    (root / "f.jsonl").write_text(json.dumps(foreign) + "\n")
    (r,), _ = read_preferences(root / "f.jsonl", "llamafactory", image_root=root)
    assert r.question == "What colour?" and r.meta == {"extra": {"score_model": "judge-7", "margin": 3}} and r.id.startswith("h")
    back = json.loads(write_records([r], root / "g.jsonl", "llamafactory").read_text())
    assert back["score_model"] == "judge-7" and back["margin"] == 3 and back["conversations"] == foreign["conversations"]
    assert read_preferences(root / "g.jsonl", "llamafactory", image_root=root)[0] == [r]

def test_llamafactory_json_array(root):
    rows = [lf_dump(r) for r in RICH]
    (root / "a.json").write_text(json.dumps(rows, indent=2))
    assert read_preferences(root / "a.json", "llamafactory", image_root=root)[0] == RICH
    rows[2]["chosen"]["value"] = ""
    (root / "a.json").write_text(json.dumps(rows, indent=2))
    with pytest.raises(PreferenceDataError, match=r"a\.json:item 3: field 'chosen': empty response"):
        read_preferences(root / "a.json", "llamafactory", image_root=root)

def test_trl_row_shape_and_standard_format(root):
    row = trl_dump(RICH[1])
    assert row["prompt"] == [{"role": "user", "content": [{"type": "text", "text": "Is "}, {"type": "image"},
                             {"type": "text", "text": " larger than "}, {"type": "image"}, {"type": "text", "text": "?"}]}]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "Yes, it is."}]}]
    assert trl_dump(RICH[0])["prompt"][0] == {"role": "system", "content": [{"type": "text", "text": "Judge fairly."}]}
    std = {"id": "s1", "prompt": "<image>Colour?", "chosen": "Red.", "rejected": "Blue.", "images": ["img/a.png"]}
    (root / "s.jsonl").write_text(json.dumps(std) + "\n")
    assert read_preferences(root / "s.jsonl", "trl", image_root=root)[0] == [PrefRecord("s1", ["img/a.png"], "Colour?", "Red.", "Blue.")]

def test_roundtrip_trl_dataset_embeds_image_bytes(root, tmp_path):
    from datasets import Dataset
    ds = to_trl_dataset(RICH, image_root=root)
    assert len(ds) == 4 and [im.size for im in ds[1]["images"]] == [(8, 6), (5, 5)] and ds[3]["images"] == []
    assert from_trl_dataset(ds) == RICH
    ds.to_parquet(str(tmp_path / "t.parquet"))
    for f in (root / "img").iterdir(): f.unlink()  # the pixels must travel inside the dataset
    back = Dataset.from_parquet(str(tmp_path / "t.parquet"))
    assert from_trl_dataset(back) == RICH and back[2]["images"][1].mode == "L" and back[2]["images"][1].size == (8, 6)

def test_from_trl_dataset_reports_bad_row(root):
    ds = to_trl_dataset([RICH[0], rec(9, chosen=" ")], image_root=root)  # the builder trusts its input; the reader checks
    with pytest.raises(PreferenceDataError, match=r"<dataset>:row 2: field 'chosen': whitespace-only response"):
        from_trl_dataset(ds)

LISTS = [ListRecord("l1", ["img/a.png"], "Describe.", ["A red circle.", "A blue square.", "Nothing.", "A circle."], [8, 5, 1, None],
                    group="plain", meta={"judge": "sim"}),
         ListRecord("l2", ["img/b.png"], "Count?", ["two", "three"], [4.5, 4.5]),
         ListRecord("l3", [], "Hi?", ["hello", "bye"], None)]

def test_roundtrip_listwise_and_expansion(root):
    p = write_records(LISTS, root / "l.jsonl", "listwise")
    assert read_records(p, "listwise", image_root=root)[0] == LISTS
    pairs, rep = read_preferences(p, "listwise", image_root=root)
    assert (rep.read, rep.kept, rep.records) == (3, 3, 3)  # l1 gives 3 pairs, the tie and the unscored list none
    assert [(x.id, x.chosen, x.rejected, x.strength) for x in pairs] == [
        ("l1:0>1", "A red circle.", "A blue square.", 3.0), ("l1:0>2", "A red circle.", "Nothing.", 7.0), ("l1:1>2", "A blue square.", "Nothing.", 4.0)]
    assert pairs[0].group == "plain" and pairs[0].meta == {"judge": "sim", "list_id": "l1", "chosen_idx": 0, "rejected_idx": 1}

def test_list_to_pairs_higher_score_chosen_either_order():
    (p,) = list_to_pairs(ListRecord("q", [], "Q", ["worse", "better"], [1, 3.5]))
    assert (p.chosen, p.rejected, p.strength, p.id) == ("better", "worse", 2.5, "q:1>0")


# ---------------------------------------------------------------- validation cases
# Each case writes two good lines, then the bad line (line 3), and says which reason and field must be reported.

def good_rows(fmt):
    if fmt == "listwise": return [r.to_dict() for r in LISTS[:2]]
    return [D.FORMATS[fmt].dump(r) for r in (rec(1), rec(2, images=["img/b.png"]))]

def bad(fmt="jsonl", **changes):
    "A case line: good row 3 with `changes` (None deletes a key)."
    row = (LISTS[2].to_dict() if fmt == "listwise" else D.FORMATS[fmt].dump(rec(3)))
    for k, v in changes.items():
        if v is None: row.pop(k)
        else: row[k] = v
    return json.dumps(row).encode()

def with_image(make):
    "A case whose third record points at an image file that `make(path)` writes."
    def line(root):
        make(root / "img/bad.png")
        return bad(images=["img/bad.png"])
    return line

def _truncated(p):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:300])

CASES = {  # name -> (fmt, line or root -> line, reason, field, read kwargs)
    "malformed_json": ("jsonl", b'{"id": "r3", "images": [', "malformed_json", None, {}),
    "not_an_object": ("jsonl", b'"just a string"', "wrong_type", None, {}),
    "not_utf8": ("jsonl", b'{"id": "r3", "question": "caf\xe9"}', "not_utf8", None, {}),
    "missing_field": ("jsonl", bad(chosen=None), "missing_field", "chosen", {}),
    "unknown_field": ("jsonl", bad(choosen="x"), "unknown_field", "choosen", {}),
    "wrong_type_images": ("jsonl", bad(images="img/a.png"), "wrong_type", "images", {}),
    "wrong_type_label": ("jsonl", bad(labels={"ann0": 2}), "wrong_type", "labels", {}),
    "wrong_type_weight": ("jsonl", bad(weight=-1), "wrong_type", "weight", {}),
    "empty_response": ("jsonl", bad(chosen=""), "empty_response", "chosen", {}),
    "whitespace_response": ("jsonl", bad(rejected=" \n\t"), "empty_response", "rejected", {}),
    "identical_responses": ("jsonl", bad(chosen="Two  circles.", rejected=" Two circles.\n"), "identical_responses", "rejected", {}),
    "duplicate_pair": ("jsonl", json.dumps({**rec(1).to_dict(), "id": "other"}).encode(), "duplicate_pair", None, {}),
    "duplicate_id": ("jsonl", bad(id="r1"), "duplicate_id", "id", {}),
    "missing_image": ("jsonl", bad(images=["img/a.png", "img/nope.png"]), "missing_image", "images[1]", {}),
    "zero_byte_image": ("jsonl", with_image(lambda p: p.write_bytes(b"")), "empty_image", "images[0]", {}),
    "corrupt_image": ("jsonl", with_image(lambda p: p.write_bytes(b"this is not a png at all")), "corrupt_image", "images[0]", {}),
    "truncated_image": ("jsonl", with_image(_truncated), "corrupt_image", "images[0]", {}),
    "bomb_header": ("jsonl", with_image(lambda p: p.write_bytes(png_header(5000, 5000))), "image_too_large", "images[0]", {"max_pixels": 1_000_000}),
    "bomb_pil_error": ("jsonl", with_image(lambda p: p.write_bytes(png_header(100_000, 100_000))), "image_too_large", "images[0]", {"max_pixels": None}),
    "placeholder_jsonl": ("jsonl", bad(question="Compare <image> with <image>."), "placeholder_mismatch", "question", {}),
    "placeholder_lf_missing": ("llamafactory", bad("llamafactory", conversations=[{"from": "human", "value": "No placeholder?"}]),
                               "placeholder_mismatch", "conversations", {}),
    "placeholder_lf_extra": ("llamafactory", bad("llamafactory", conversations=[{"from": "human", "value": "<image><image>Two?"}]),
                             "placeholder_mismatch", "conversations", {}),
    "lf_multiturn": ("llamafactory", bad("llamafactory", conversations=[{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"},
                                                                       {"from": "human", "value": "c"}]), "bad_value", "conversations", {}),
    "lf_empty_response": ("llamafactory", bad("llamafactory", rejected={"from": "gpt", "value": "  "}), "empty_response", "rejected", {}),
    "lf_wrong_type": ("llamafactory", bad("llamafactory", chosen="plain string"), "wrong_type", "chosen", {}),
    "placeholder_trl": ("trl", bad("trl", prompt=[{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}]),
                        "placeholder_mismatch", "prompt", {}),
    "trl_missing_prompt": ("trl", bad("trl", prompt=None), "missing_field", "prompt", {}),
    "trl_identical": ("trl", bad("trl", rejected=trl_dump(rec(3))["chosen"]), "identical_responses", "rejected", {}),
    "list_scores_length": ("listwise", bad("listwise", scores=[1]), "bad_value", "scores", {}),
    "list_identical_answers": ("listwise", bad("listwise", answers=["hello", " hello "]), "identical_responses", "answers[1]", {}),
}

def write_case(root, name):
    fmt, line, reason, fld, kw = CASES[name]
    line = line(root) if callable(line) else line
    p = root / f"{name}.jsonl"
    p.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good_rows(fmt)) + line + b"\n")
    return p, fmt, line, reason, fld, kw

@pytest.mark.parametrize("name", CASES)
def test_case_raise(root, name):
    p, fmt, line, reason, fld, kw = write_case(root, name)
    with pytest.raises(PreferenceDataError) as ei: read_preferences(p, fmt, image_root=root, **kw)
    e = ei.value
    assert (e.file, e.line, e.field, e.reason) == (str(p), 3, fld, reason)
    assert str(e).startswith(f"{p}:3: " + (f"field '{fld}': " if fld else ""))
    assert "Traceback" not in str(e) and "codec" not in str(e)

@pytest.mark.parametrize("name", CASES)
def test_case_quarantine(root, name):
    p, fmt, line, reason, fld, kw = write_case(root, name)
    q = root / "q" / "bad.jsonl"
    got, rep = read_records(p, fmt, image_root=root, on_error="quarantine", quarantine_path=q, **kw)
    assert (rep.read, rep.kept, rep.quarantined, rep.by_reason) == (3, 2, 1, {reason: 1})
    assert [r.to_dict() if fmt == "listwise" else D.FORMATS[fmt].dump(r) for r in got] == good_rows(fmt)
    (row,) = [json.loads(x) for x in q.read_text().splitlines()]
    assert (row["file"], row["line"], row["field"], row["reason"]) == (str(p), 3, fld, reason)
    assert row["raw"] == line.decode("utf-8", "backslashreplace") and row["message"].startswith(f"{p}:3: ")

def test_not_utf8_message_names_the_byte(root):
    p, *_ = write_case(root, "not_utf8")
    with pytest.raises(PreferenceDataError, match=r":3: bytes that are not UTF-8 at byte \d+ of the line: b'\\xe9"):
        read_preferences(p, image_root=root)

def test_pil_bomb_warning_is_handled(root, monkeypatch):
    img(root, "img/w.png", size=(40, 40))  # 1600 px: over PIL's warning limit, under its error limit (2x)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError) as ei: check_image(root / "img/w.png", max_pixels=None)
    assert ei.value.reason == "image_too_large" and "1600 pixels" in str(ei.value)

def test_bomb_refused_from_header_without_decoding(root, monkeypatch):
    (root / "img/h.png").write_bytes(png_header(5000, 5000))  # decoding would fail: no pixel data at all
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageError, match="25000000 pixels > max_pixels=1000000"): check_image(root / "img/h.png", max_pixels=1_000_000)
    with pytest.raises(ImageError, match="5000x5000"): load_image(root / "img/h.png", max_pixels=1_000_000)


# ---------------------------------------------------------------- images: modes and caching

@pytest.mark.parametrize("mode,ext,color,expect", [
    ("L", "png", 7, (7, 7, 7)), ("P", "png", 0, (0, 0, 0)), ("RGBA", "png", (255, 0, 0, 0), (255, 255, 255)),
    ("RGBA", "png", (255, 0, 0, 255), (255, 0, 0)), ("LA", "png", (9, 0), (255, 255, 255)), ("LA", "png", (9, 255), (9, 9, 9)),
    ("CMYK", "tif", (0, 255, 255, 0), (255, 0, 0)), ("I;16", "png", 32896, (128, 128, 128)), ("I;16", "png", 65535, (255, 255, 255))])
def test_load_image_converts_to_rgb(tmp_path, mode, ext, color, expect):
    im = load_image(img(tmp_path, f"x.{ext}", size=(3, 2), mode=mode, color=color))
    assert (im.mode, im.size, im.getpixel((0, 0))) == ("RGB", (3, 2), expect)

def test_palette_transparency_composited_on_white(tmp_path):
    p = tmp_path / "t.png"
    im = Image.new("P", (2, 2), 1); im.putpalette([0, 0, 0, 200, 10, 10]); im.save(p, transparency=1)
    assert load_image(p).getpixel((0, 0)) == (255, 255, 255)

def test_report_counts_conversions(root):
    img(root, "img/rgba.png", mode="RGBA"); img(root, "img/cmyk.tif", mode="CMYK")
    recs = [rec(1, images=["img/c.png"]), rec(2, images=["img/c.png", "img/rgba.png"]), rec(3, images=["img/cmyk.tif", "img/a.png"])]
    _, rep = read_preferences(write_records(recs, root / "x.jsonl"), image_root=root)
    assert rep.converted == {"L": 1, "RGBA": 1, "CMYK": 1} and rep.images_checked == 4

def test_each_image_checked_once(root, monkeypatch):
    calls = []
    real = D.check_image
    monkeypatch.setattr(D, "check_image", lambda p, m: calls.append(Path(p).name) or real(p, m))
    recs = [rec(i, images=["img/a.png", "img/gone.png" if i % 2 else "img/b.png"]) for i in range(6)]
    lines = "".join(json.dumps(r.to_dict()) + "\n" for r in recs)
    (root / "x.jsonl").write_text(lines)
    got, rep = read_records(root / "x.jsonl", image_root=root, on_error="quarantine")
    assert sorted(calls) == ["a.png", "b.png", "gone.png"] and rep.images_checked == 3
    assert [r.id for r in got] == ["r0", "r2", "r4"] and rep.by_reason == {"missing_image": 3}

def test_check_images_false_skips_files(root):
    (root / "x.jsonl").write_text(json.dumps(rec(1, images=["img/none.png"]).to_dict()) + "\n")
    got, rep = read_preferences(root / "x.jsonl", image_root=root, check_images=False)
    assert len(got) == 1 and rep.images_checked == 0


# ---------------------------------------------------------------- reader details

def test_blank_lines_bom_and_crlf(root):
    body = "\r\n".join(json.dumps(r.to_dict()) for r in RICH[:2])
    (root / "x.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\r\n\r\n  \n")
    got, rep = read_preferences(root / "x.jsonl", image_root=root)
    assert got == RICH[:2] and rep.read == 2

def test_default_quarantine_path_written_even_when_clean(root):
    p = write_records(RICH, root / "d.jsonl")
    _, rep = read_preferences(p, image_root=root, on_error="quarantine")
    assert rep.quarantine_path == str(root / "d.jsonl.quarantine.jsonl") and Path(rep.quarantine_path).read_text() == ""

def test_many_errors_reconcile(root):
    lines = [json.dumps(r.to_dict()) for r in RICH] + ["{", json.dumps(rec(8, chosen="").to_dict()), json.dumps(RICH[0].to_dict()),
                                                        json.dumps(rec(9, images=["img/x.png"]).to_dict())]
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    got, rep = read_preferences(root / "m.jsonl", image_root=root, on_error="quarantine")
    assert got == RICH and (rep.read, rep.kept, rep.quarantined) == (8, 4, 4)
    assert rep.by_reason == {"malformed_json": 1, "empty_response": 1, "duplicate_pair": 1, "missing_image": 1}
    assert [json.loads(x)["line"] for x in Path(rep.quarantine_path).read_text().splitlines()] == [5, 6, 7, 8]

def test_bad_arguments(root):
    with pytest.raises(ValueError, match="on_error"): read_preferences(root / "x.jsonl", on_error="skip")
    with pytest.raises(ValueError, match="unknown format"): read_preferences(root / "x.jsonl", fmt="csv")

def test_writer_refuses_invalid_records(root):
    with pytest.raises(FieldError, match="identical"): write_records([rec(1, rejected="There are 1 shapes.")], root / "w.jsonl")
    assert not (root / "w.jsonl").exists()
