"""Bad input, bad config, hostile paths and judge faults the library once mishandled: one test per kind, each asserting the exact outcome.

Every kind here failed on the code before the hardening (`benchmarks/bad_input_kinds.py` runs this file against an older
commit to show it); `test_bad_input_handled.py` holds the kinds that were handled well before."""
import json
import logging
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dt2it_mrm.config import ConfigError
from dt2it_mrm.core import atomic_write, write_jsonl
from dt2it_mrm.data import (ImageError, ListRecord, PreferenceDataError, load_image, read_preferences, read_records, resolve_image,
                            write_records)
from dt2it_mrm.judge import HTTPBackend, Judge, JudgeRequestError, ResponseCache, image_data_url, judge_from_params, make_request
from dt2it_mrm.resample import compute_weights
from dt2it_mrm.reward_model import RMConfig, base_fingerprint
from dt2it_mrm.score import read_scored, score_to_jsonl
from dt2it_mrm.vlm import world_texts
from dt2it_mrm.world import WorldConfig
from test_bad_input_handled import KEY_ENV, backend, case_file, expect_bad, keyed, ok, req, root, tiny, write_lines  # noqa: F401 (fixtures)
from test_data import bad, good_rows, img, rec
from test_judge import SECRET, Scripted


def good_lines(fmt="jsonl") -> list[bytes]:
    return [json.dumps(r).encode() for r in good_rows(fmt)]


# ---------------------------------------------------------------- text a JSON line can hold

def test_kind_lone_surrogate_in_text(root):
    "A `\\ud800` escape (half a UTF-16 pair) in an answer: bad_text on that field, at read time, not a crash when written or quarantined."
    line = bad(chosen="x").replace(b'"x"', b'"There are \\ud800 shapes."')
    expect_bad(root, case_file(root, line), "chosen", "bad_text",
               "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape that is not half of a pair): not Unicode text")


def test_kind_llamafactory_row_without_id_holding_a_surrogate(root):
    "A LLaMA-Factory row with no id and a lone surrogate: bad_text on `chosen.value`, instead of a crash while hashing an id."
    row = json.loads(bad("llamafactory")); row.pop("id", None); row["chosen"]["value"] = "\ud800"
    line = json.dumps(row).encode()  # json.dumps escapes the surrogate as \ud800
    expect_bad(root, case_file(root, line, "llamafactory"), "chosen.value", "bad_text",
               "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape that is not half of a pair): not Unicode text", fmt="llamafactory")


@pytest.mark.parametrize("ch", ["\u2028", "\u2029", "\x85"])
def test_kind_unicode_line_separators_survive_a_round_trip(root, ch, tmp_path):
    "U+2028, U+2029 and U+0085 in text: written escaped, read back as one line each (records, the tokenizer's text, scoring output)."
    r = rec(1, chosen=f"Two shapes.{ch}A red one.")
    p = write_records([r, rec(2)], root / "x.jsonl")
    assert p.read_bytes().count(b"\n") == 2 and ch.encode() not in p.read_bytes()
    assert read_records(p, image_root=root)[0][0] == r
    assert world_texts([p])[:3] == [r.question, r.chosen, r.rejected]  # the tokenizer's training text
    out = tmp_path / "scores.jsonl"
    write_jsonl(out, [{"image_path": "a.png", "question": "q", "answer": f"a{ch}b", "score": 0.5}])
    assert out.read_bytes().count(b"\n") == 1 and len(read_scored(out)) == 1


# ---------------------------------------------------------------- lines that used to abort the whole read

def test_kind_integer_beyond_float_range(root):
    "A 400-digit integer as `strength`: wrong_type on `strength` (not an OverflowError that aborts the read)."
    line = bad(strength=0).replace(b'"strength": 0', b'"strength": ' + b"9" * 400)
    expect_bad(root, case_file(root, line), "strength", "wrong_type", "expected a finite number or null, got int ", prefix=True)


def test_kind_integer_too_long_to_parse(root):
    "An integer of 5,000 digits (beyond Python's 4,300-digit limit): number_too_long on the line, the other lines kept."
    line = bad(strength=0).replace(b'"strength": 0', b'"strength": ' + b"9" * 5000)
    expect_bad(root, case_file(root, line), None, "number_too_long", "a number too long to read (", prefix=True)


def test_kind_nesting_too_deep(root):
    "JSON nested 100,000 deep: too_deep on the line (not a RecursionError that aborts the read)."
    expect_bad(root, case_file(root, b"[" * 100_000 + b"]" * 100_000), None, "too_deep", "JSON nested too deeply to read")


def test_kind_image_path_too_long(root):
    "An image path of 5,000 characters: bad_path on images[0] (not an OSError ENAMETOOLONG that aborts the read)."
    e = expect_bad(root, case_file(root, bad(images=["a" * 5000 + ".png"])), "images[0]", "bad_path", "", prefix=True)
    assert "too long" in e["message"]


def test_kind_jsonl_whose_first_line_is_an_array(root):
    "A JSON Lines file whose first line is `[1, 2]`: that line quarantined as wrong_type, the rest read (not the whole file refused)."
    p = write_lines(root / "case.jsonl", [b"[1, 2]", *good_lines()])
    got, rep = read_records(p, image_root=root, on_error="quarantine")
    (row,) = [json.loads(x) for x in Path(rep.quarantine_path).read_text().splitlines()]
    assert (row["line"], row["field"], row["reason"]) == (1, None, "wrong_type") and [r.id for r in got] == ["r1", "r2"]
    assert (rep.read, rep.kept, rep.quarantined) == (3, 2, 1)


def test_kind_duplicate_json_keys(root):
    "An object naming `chosen` twice: duplicate_key on `chosen` (a JSON reader would silently keep one of the two)."
    line = bad().replace(b'"chosen": ', b'"chosen": "There are 1 shape.", "chosen": ', 1)
    expect_bad(root, case_file(root, line), "chosen", "duplicate_key", "key 'chosen' appears twice in one object (JSON readers keep either value)")


# ---------------------------------------------------------------- records that would crash later or say nothing

def test_kind_placeholder_inside_an_answer(root):
    "`<image>` inside an answer: placeholder_in_response on `chosen` at read time, not a model crash (image tokens mismatch) later."
    expect_bad(root, case_file(root, bad(chosen="It is <image> a circle.")), "chosen", "placeholder_in_response",
               "a response holds <image>: the model would look for an image there")


def test_kind_pair_and_its_exact_swap(root):
    "A pair and the same pair with chosen and rejected swapped: contradicting_pair on the second, naming the first's line."
    r1 = rec(1)
    swapped = rec(3, question=r1.question, chosen=r1.rejected, rejected=r1.chosen)
    expect_bad(root, case_file(root, json.dumps(swapped.to_dict()).encode()), "chosen", "contradicting_pair",
               "the same pair with chosen and rejected swapped is on line 1: the labels contradict")


def test_kind_empty_file(root):
    "An empty (or blank-only) file: a PreferenceDataError empty_file in both modes, not zero records with no reason."
    for content in (b"", b"\n  \n"):
        p = root / "empty.jsonl"; p.write_bytes(content)
        for mode in ("raise", "quarantine"):
            with pytest.raises(PreferenceDataError) as ei: read_records(p, on_error=mode)
            assert str(ei.value) == f"{p}:0: no records: the file is empty or holds only blank lines" and ei.value.reason == "empty_file"


def test_kind_listwise_rows_that_give_no_pairs(root):
    "Listwise rows with no scores or all scores tied: counted by reason in `no_pairs` and warned, not silently expanded to nothing."
    lists = [ListRecord("l1", ["img/a.png"], "Q?", ["a", "b"], [2.0, 1.0]), ListRecord("l2", ["img/a.png"], "Q2?", ["a", "b"], [3.0, 3.0]),
             ListRecord("l3", ["img/a.png"], "Q3?", ["a", "b"], None)]
    p = write_records(lists, root / "l.jsonl", "listwise")
    with pytest.warns(UserWarning) as w: pairs, rep = read_preferences(p, "listwise", image_root=root)
    assert len(pairs) == 1 and rep.no_pairs == {"all scores tied": 1, "unscored": 1}
    assert sorted(str(x.message) for x in w) == [f"{p}: 1 list(s) give no preference pair (all scores tied)", f"{p}: 1 list(s) give no preference pair (unscored)"]


def test_kind_quarantine_path_is_the_input(root):
    "quarantine_path equal to the input file: refused up front, the input left as it was (not replaced by the quarantine rows)."
    p = case_file(root, b"not json"); before = p.read_bytes()
    with pytest.raises(ValueError, match="is the input file"): read_records(p, image_root=root, on_error="quarantine", quarantine_path=p)
    with pytest.raises(ValueError, match="is the input file"):
        read_records(p, image_root=root, on_error="quarantine", quarantine_path=root / "sub" / ".." / p.name)
    assert p.read_bytes() == before


# ---------------------------------------------------------------- image paths that leave image_root

def test_kind_path_traversal_out_of_image_root(root):
    "`../../../../etc/passwd` with an image_root: outside_root on images[0]; the file is never opened."
    e = expect_bad(root, case_file(root, bad(images=["../../../../etc/passwd"])), "images[0]", "outside_root", "", prefix=True)
    assert "outside image_root" in e["message"]


def test_kind_absolute_path_out_of_image_root(root, tmp_path_factory):
    "An absolute path outside image_root: outside_root; inside it, or with allow_outside_root, accepted."
    other = img(tmp_path_factory.mktemp("elsewhere"), "x.png")
    expect_bad(root, case_file(root, bad(images=[str(other)])), "images[0]", "outside_root", "", prefix=True)
    got, rep = read_records(case_file(root, bad(images=[str(root / "img/a.png")])), image_root=root)
    assert rep.kept == 3
    got, rep = read_records(case_file(root, bad(images=[str(other)])), image_root=root, allow_outside_root=True)
    assert rep.kept == 3


def test_kind_symlink_leaving_image_root(root, tmp_path_factory):
    "A symlink inside image_root pointing outside it: outside_root (resolved before the check), also for `load_image`."
    other = img(tmp_path_factory.mktemp("elsewhere"), "secret.png")
    (root / "img" / "link.png").symlink_to(other)
    expect_bad(root, case_file(root, bad(images=["img/link.png"])), "images[0]", "outside_root", "", prefix=True)
    with pytest.raises(ImageError, match="outside image_root"): load_image("img/link.png", root)
    assert load_image("img/link.png", root, allow_outside_root=True).size == (8, 6)
    assert resolve_image("img/a.png", root) == root / "img/a.png"


def test_kind_judge_request_with_an_image_outside_image_root(keyed, tiny, root, tmp_path_factory):
    "An HTTP judge request whose image path leaves image_root: the request fails before anything is sent; the server sees nothing."
    srv = tiny([ok])
    b = backend(srv.url, image_root=str(root))
    with pytest.raises(ImageError, match="outside image_root"): image_data_url("/etc/passwd", root)
    r = Judge(b).ask([make_request("pointwise", ["../../../../etc/passwd"], "q1", ["an answer"])])[0]
    assert r.status == "failed" and "outside image_root" in r.error and srv.log == []
    other = img(tmp_path_factory.mktemp("elsewhere"), "x.png")  # the opt-out sends it
    r = Judge(backend(srv.url, image_root=str(root), allow_outside_root=True)).ask([make_request("pointwise", [str(other)], "q1", ["an answer"])])[0]
    assert r.status == "ok" and len(srv.log) == 1


# ---------------------------------------------------------------- images converted with loss

def test_kind_animated_gif(root):
    "An animated GIF: its first frame is used, and the read warns with the count (`lossy`), not silently."
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "img" / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match=r"1 image\(s\) converted with loss \(animation: first frame only\)"):
        got, rep = read_records(case_file(root, bad(images=["img/anim.gif"])), image_root=root)
    assert rep.lossy == {"animation: first frame only": 1}


def test_kind_float_image_in_0_1(root):
    "A float TIFF with values in 0..1: scaled to 0..255 (mid-grey stays mid-grey), not clipped to black."
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(root / "f.tif")
    assert np.asarray(load_image("f.tif", root)).max() == 128


def test_kind_32bit_image_holding_8bit_values(root):
    "A 32-bit integer image whose values are 0..255: kept as they are, not divided into near-black."
    Image.fromarray(np.full((4, 4), 200, np.int32), "I").save(root / "i.tif")
    assert np.asarray(load_image("i.tif", root)).max() == 200
    Image.fromarray(np.full((4, 4), 200 * 257, np.int32), "I").save(root / "i16.tif")
    assert np.asarray(load_image("i16.tif", root)).max() == 200  # 16-bit values still scaled by 1/257


# ---------------------------------------------------------------- configs: type, range, unknown keys

@pytest.mark.parametrize("key,value,says", [
    ("lr", "2e-3", "got str '2e-3'; expected a number > 0"), ("lora_r", "16", "got str '16'; expected a whole number >= 1"),
    ("batch_size", 0, "got int 0; expected a whole number >= 1"), ("grad_accum", 0, "got int 0; expected a whole number >= 1"),
    ("epochs", -1, "got int -1; expected a number > 0"), ("blank_image", "no", "got str 'no'; expected true or false")])
def test_kind_reward_model_config_wrong_type_or_range(key, value, says):
    "A reward-model setting YAML read as a string, or out of range: a ConfigError naming `train.rm.<key>` before any work."
    with pytest.raises(ConfigError) as ei: RMConfig.from_params({key: value})
    assert str(ei.value) == f"params key 'train.rm.{key}': {says}" and ei.value.key == f"train.rm.{key}"


@pytest.mark.parametrize("change,key", [({"n_train": "8"}, "n_train"), ({"image_size": 0}, "image_size"), ({"length_bias": 1.7}, "length_bias"),
                                        ({"train_group_shares": {"plain": 1.2, "dark": -0.2}}, "train_group_shares.plain")])
def test_kind_world_config_wrong_type_or_range(change, key):
    "A world knob of the wrong type or out of range (shares, probabilities, sizes): a ConfigError naming `generate.world.<key>`."
    with pytest.raises(ConfigError) as ei: WorldConfig.from_params(change)
    assert ei.value.key == f"generate.world.{key}"


@pytest.mark.parametrize("change,key,says", [
    ({"timeout_s": "60"}, "timeout_s", "expected a number > 0"), ({"backoff_max_s": -1}, "backoff_max_s", "expected a number >= 0"),
    ({"max_retries": -1}, "max_retries", "expected a whole number >= 0"), ({"timeout": 60}, "timeout", "did you mean 'timeout_s'?")])
def test_kind_http_config_wrong_type_range_or_key(change, key, says):
    "An HTTP judge setting of the wrong type, out of range or misspelt: a ConfigError naming `construct.distil.http.<key>`."
    with pytest.raises(ConfigError, match=says) as ei:
        HTTPBackend.from_params({"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None, **change}, "construct.distil.http")
    assert ei.value.key == f"construct.distil.http.{key}"


def test_kind_max_retries_minus_one_never_caches_an_empty_answer(tmp_path):
    "`max_retries: -1` is refused; and a cache row of status ok with no text (as it once wrote) is never a cache hit."
    with pytest.raises(ConfigError, match="max_retries"): HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, max_retries=-1)
    q = req(); j = Judge(Scripted(lambda r: '{"score": 5}'), cache=tmp_path / "c.jsonl")
    (tmp_path / "c.jsonl").write_text(json.dumps({"key": j.cache_key(q), "status": "ok", "text": None}) + "\n")
    j = Judge(Scripted(lambda r: '{"score": 5}'), cache=tmp_path / "c.jsonl")
    assert len(j.cache) == 0 and j.ask([q])[0].text == '{"score": 5}' and j.sent == 1


def test_kind_backend_answers_nothing(tmp_path):
    "A backend returning an empty or None answer: the reply is failed, not an ok answer cached for good."
    for answer in ("", "   ", None):
        j = Judge(Scripted(lambda r: answer), cache=tmp_path / f"c{answer!r}.jsonl")
        r = j.ask([req()])[0]
        assert r.status == "failed" and "gave no answer" in r.error and len(ResponseCache(tmp_path / f"c{answer!r}.jsonl")) == 0


@pytest.mark.parametrize("group,key,says", [({"cahce": "c.jsonl"}, "cahce", "did you mean 'cache'"),
                                            ({"concurency": 4}, "concurency", "did you mean 'concurrency'"),
                                            ({"cache": True}, "cache", "expected a string, or null")])
def test_kind_judge_group_unknown_key_or_bad_value(group, key, says):
    "A misspelt judge setting or `cache: true`: a ConfigError naming `construct.distil.<key>` (not ignored: no cache, concurrency 1)."
    with pytest.raises(ConfigError, match=says) as ei: judge_from_params({"backend": "sim", **group}, sim_backend=object(), where="construct.distil")
    assert ei.value.key == f"construct.distil.{key}"


def test_kind_weighting_unknown_option_or_bad_value():
    "A misspelt strategy option or a clip bound that cannot bracket the mean: a ConfigError naming it (not a TypeError deep inside)."
    recs = [rec(i).to_dict() for i in range(4)]
    with pytest.raises(ConfigError, match="did you mean 'power'") as ei: compute_weights(recs, {"group": {"pwer": 1.0}})
    assert ei.value.key == "strategies.group.pwer"
    with pytest.raises(ConfigError, match="expected a number >= 1, or null"): compute_weights(recs, {"group": {}}, clip={"max_weight": 0.5})


# ---------------------------------------------------------------- the judge client

def test_kind_judge_reply_with_a_lone_surrogate(tmp_path):
    "A judge reply holding `\\ud800`: stored with U+FFFD, and the cache reads back on every rerun (not a UnicodeEncodeError forever)."
    j = Judge(Scripted(lambda r: '{"score": 5, "reason": "bad \ud800 byte"}'), cache=tmp_path / "c.jsonl")
    assert j.ask([req()])[0].text == '{"score": 5, "reason": "bad \ufffd byte"}'
    again = Judge(Scripted(lambda r: "never asked"), cache=tmp_path / "c.jsonl")
    r = again.ask([req()])[0]
    assert r.cached and r.text.endswith('bad \ufffd byte"}') and again.sent == 0


def trickle(h):
    "Send the headers, then the body one byte per 0.2 s."
    body = json.dumps({"choices": [{"message": {"content": '{"score": 5}'}}]}).encode()
    h.send_response(200); h.send_header("Content-Length", str(len(body))); h.end_headers()
    for b in body:
        try: h.wfile.write(bytes([b])); h.wfile.flush(); time.sleep(0.2)
        except OSError: return


def test_kind_server_trickling_its_body(keyed, tiny):
    "A server that trickles its body: the attempt ends at timeout_s (1 s) overall, not after the whole slow body (~10 s)."
    b = backend(tiny([trickle]).url, max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(JudgeRequestError, match="timed out after 1.0 s"): b.complete(req())
    assert time.monotonic() - t0 < 2.5


def test_kind_retry_after_longer_than_the_cap(keyed, tiny, caplog):
    "Retry-After: 3600 above backoff_max_s: capped, and the log says so."
    def slow_down(h):
        h.send_response(429); h.send_header("Retry-After", "3600"); h.send_header("Content-Length", "0"); h.end_headers()
    b = backend(tiny([slow_down, ok]).url, backoff_max_s=0.05)
    caplog.set_level(logging.WARNING)
    assert b.complete(req()) == '{"score": 5}'
    assert "asked to wait 3600 s (Retry-After); waiting backoff_max_s = 0 s instead" in caplog.text


def test_kind_api_key_too_short_to_redact(monkeypatch):
    "A 1-character API key: refused with a clear error (redacting it would mangle every reply holding that character)."
    monkeypatch.setenv(KEY_ENV, "a")
    with pytest.raises(ValueError, match=f"the judge API key in {KEY_ENV} is 1 characters long"):
        HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV).redact(f"x {SECRET} y") == "x *** y"


# ---------------------------------------------------------------- outputs: provenance and durability

class Named:
    "A scorer with an identity."
    def __init__(self, fingerprint, value): self.fingerprint, self.value = fingerprint, value
    def __call__(self, items): return np.full(len(items), self.value)


def test_kind_scoring_into_an_output_of_another_scorer(tmp_path):
    "Scoring into an output another scorer wrote: a clear error (not the old scores returned as `skipped`); same scorer resumes."
    items = [{"image": None, "question": "q", "answer": f"a{i}"} for i in range(3)]
    out = tmp_path / "s.jsonl"
    assert score_to_jsonl(items, out, Named("model-A", 1.0), progress=False)["scored"] == 3
    with pytest.raises(ValueError, match=r"holds scores of another scorer \(model-A, not model-B"): score_to_jsonl(items, out, Named("model-B", 2.0), progress=False)
    assert score_to_jsonl(items, out, Named("model-A", 1.0), progress=False)["skipped"] == 3
    foreign = tmp_path / "f.jsonl"; foreign.write_text(out.read_text())
    with pytest.raises(ValueError, match="unknown scorer"): score_to_jsonl(items, foreign, Named("model-A", 1.0), progress=False)
    with pytest.raises(ValueError, match="needs the scorer's identity"): score_to_jsonl(items, tmp_path / "n.jsonl", lambda xs: np.zeros(len(xs)), progress=False)


def test_kind_base_processor_changed(tmp_path):
    "A base whose processor config changed (max_pixels): a different base fingerprint, so a reward model or scoring output on it is refused."
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (tmp_path / "preprocessor_config.json").write_text('{"max_pixels": 12845056}')
    before = base_fingerprint(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"max_pixels": 200704}')
    assert base_fingerprint(tmp_path) != before


def test_kind_atomic_write_mode_and_fsync(tmp_path, monkeypatch):
    "An atomically written file: the mode the umask allows (not always 0600), and its data fsynced before the rename."
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    old = os.umask(0o022)
    try: p = atomic_write(tmp_path / "a.json", "{}")
    finally: os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644 and synced
