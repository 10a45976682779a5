"""Bad input the library already handles: one test per kind, each asserting the exact outcome.

Preference files: the exception (type, and a message naming file, line and field) in raise mode, and the quarantine row
(reason, field, line) with reconciling counts in quarantine mode. Judge HTTP client: retries, give-ups, refused
redirects and key redaction against loopback servers; the judge cache and the scoring output after a torn write."""
import json
import logging
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from dt2it_mrm.data import PreferenceDataError, read_preferences, read_records, write_records
from dt2it_mrm.judge import HTTPBackend, Judge, JudgeRequestError, ResponseCache, make_request
from test_data import LISTS, _truncated, bad, good_rows, img, png_header, rec
from test_judge import SECRET, Scripted, server_factory  # noqa: F401  (server_factory: the fake chat-completions server)

KEY_ENV = "JUDGE_TEST_KEY"


# ---------------------------------------------------------------- helpers: preference files

@pytest.fixture
def root(tmp_path):
    img(tmp_path, "img/a.png"); img(tmp_path, "img/b.png", size=(5, 5))
    return tmp_path


def write_lines(p: Path, lines: list[bytes]) -> Path:
    p.write_bytes(b"".join(l + b"\n" for l in lines))
    return p


def case_file(root: Path, line: bytes, fmt: str = "jsonl") -> Path:
    "Two good rows of `fmt` (lines 1 and 2), then `line` (line 3)."
    return write_lines(root / "case.jsonl", [json.dumps(r).encode() for r in good_rows(fmt)] + [line])


def expect_bad(root, p, field, reason, detail, fmt="jsonl", line=3, read=3, prefix=False, **kw) -> dict:
    """Raise mode: a `PreferenceDataError` reading exactly `{p}:{line}: field '{field}': {detail}` (or starting so, with
    `prefix`). Quarantine mode: that one row quarantined with its reason, field and line; the counts reconcile."""
    head = f"{p}:{line}: " + (f"field {field!r}: " if field else "")
    with pytest.raises(PreferenceDataError) as ei:
        read_records(p, fmt, image_root=root, **kw)
    e, msg = ei.value, str(ei.value)
    assert msg.startswith(head + detail) if prefix else msg == head + detail, msg
    assert (e.file, e.line, e.field, e.reason) == (str(p), line, field, reason)
    q = root / "quarantine" / "q.jsonl"
    got, rep = read_records(p, fmt, image_root=root, on_error="quarantine", quarantine_path=q, **kw)
    (row,) = [json.loads(x) for x in q.read_text().splitlines()]
    assert (row["file"], row["line"], row["field"], row["reason"], row["message"]) == (str(p), line, field, reason, msg)
    assert (rep.read, rep.kept, rep.quarantined, rep.by_reason) == (read, read - 1, 1, {reason: 1})
    assert rep.read == rep.kept + rep.quarantined and len(got) == rep.kept and rep.quarantine_path == str(q)
    return row


# ---------------------------------------------------------------- file-level and line-level faults

def test_kind_malformed_json(root):
    "A line that is not valid JSON: malformed_json on line 3, no field, JSON's message and column."
    p = case_file(root, b'{"id": "r3", images: []}')
    row = expect_bad(root, p, None, "malformed_json", "malformed JSON: Expecting property name enclosed in double quotes at column 14")
    assert row["raw"] == '{"id": "r3", images: []}'


def test_kind_not_utf8(root):
    "Bytes that are not UTF-8: not_utf8 on line 3 naming the byte offset and the byte; the raw line kept backslash-escaped."
    line = b'{"id": "r3", "question": "caf\xe9"}'
    p, at = case_file(root, line), line.index(b"\xe9") + 1
    row = expect_bad(root, p, None, "not_utf8", f"bytes that are not UTF-8 at byte {at} of the line: b'\\xe9'")
    assert row["raw"] == '{"id": "r3", "question": "caf\\xe9"}'


def test_kind_utf8_bom_accepted(root):
    "A UTF-8 BOM before the first line is accepted: every record read, nothing quarantined."
    p = root / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\n" for r in good_rows("jsonl")))
    got, rep = read_records(p, image_root=root, on_error="quarantine")
    assert [r.id for r in got] == ["r1", "r2"] and (rep.read, rep.kept, rep.quarantined, rep.by_reason) == (2, 2, 0, {})
    assert Path(rep.quarantine_path).read_text() == ""


def test_kind_blank_lines_skipped(root):
    "Blank and whitespace-only lines are skipped, not counted, and a later bad line keeps its physical line number (6)."
    g1, g2 = (json.dumps(r).encode() for r in good_rows("jsonl"))
    p = write_lines(root / "case.jsonl", [b"", g1, b"   \t", g2, b"\r", bad(chosen="")])
    expect_bad(root, p, "chosen", "empty_response", "empty response", line=6, read=3)


def test_kind_line_not_an_object(root):
    "A JSON array and a number on lines 2 and 3 of a file whose first line is an object: wrong_type, no field, each quarantined."
    g1 = json.dumps(good_rows("jsonl")[0]).encode()
    p = write_lines(root / "case.jsonl", [g1, b"[1, 2]", b"42"])
    with pytest.raises(PreferenceDataError) as ei: read_records(p, image_root=root)
    assert str(ei.value) == f"{p}:2: expected a JSON object, got list" and ei.value.reason == "wrong_type"
    got, rep = read_records(p, image_root=root, on_error="quarantine")
    rows = [json.loads(x) for x in Path(rep.quarantine_path).read_text().splitlines()]
    assert [(r["line"], r["field"], r["reason"], r["message"]) for r in rows] == [
        (2, None, "wrong_type", f"{p}:2: expected a JSON object, got list"), (3, None, "wrong_type", f"{p}:3: expected a JSON object, got int")]
    assert (rep.read, rep.kept, rep.quarantined, rep.by_reason) == (3, 1, 2, {"wrong_type": 2}) and [r.id for r in got] == ["r1"]


# ---------------------------------------------------------------- schema faults

def test_kind_missing_field(root):
    "A required field left out: missing_field on field 'chosen'."
    expect_bad(root, case_file(root, bad(chosen=None)), "chosen", "missing_field", "missing")


def test_kind_wrong_type(root):
    "`chosen` a number: wrong_type on 'chosen', saying what was expected and what came."
    expect_bad(root, case_file(root, bad(chosen=5)), "chosen", "wrong_type", "expected a string, got int 5")


def test_kind_unknown_field(root):
    "A misspelt field: unknown_field on the unknown name, listing the known fields."
    expect_bad(root, case_file(root, bad(choosen="x")), "choosen", "unknown_field",
               "unknown field (known: id, images, question, chosen, rejected, source, group, task, labels, gold, strength, weight, meta)")


@pytest.mark.parametrize("value,shown", [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")])
def test_kind_non_finite_strength(root, value, shown):
    "NaN / Infinity `strength` (JSON extensions Python accepts): wrong_type on 'strength', not a silent non-finite label."
    expect_bad(root, case_file(root, bad(strength=value)), "strength", "wrong_type", f"expected a finite number or null, got float {shown}")


def test_kind_negative_weight(root):
    "A negative loss weight: wrong_type on 'weight'."
    expect_bad(root, case_file(root, bad(weight=-1)), "weight", "wrong_type", "expected a finite non-negative number, got int -1")


def test_kind_bool_where_int_expected(root):
    "`gold: true` (a bool is not the int 1): wrong_type on 'gold'."
    expect_bad(root, case_file(root, bad(gold=True)), "gold", "wrong_type", "expected 0, 1 or null, got bool true")


# ---------------------------------------------------------------- content faults

def test_kind_empty_response(root):
    "An empty `chosen`: empty_response on 'chosen'."
    expect_bad(root, case_file(root, bad(chosen="")), "chosen", "empty_response", "empty response")


def test_kind_whitespace_only_response(root):
    "A whitespace-only `rejected`: empty_response on 'rejected', worded as whitespace-only."
    expect_bad(root, case_file(root, bad(rejected=" \n\t")), "rejected", "empty_response", "whitespace-only response")


def test_kind_identical_responses_after_normalisation(root):
    "`chosen` and `rejected` equal once whitespace is normalised: identical_responses on 'rejected'."
    expect_bad(root, case_file(root, bad(chosen="Two  circles.", rejected=" Two circles.\n")), "rejected", "identical_responses",
               "identical to 'chosen' after whitespace normalisation")


def test_kind_duplicate_id(root):
    "An id already used on line 1: duplicate_id on 'id', naming the first line."
    expect_bad(root, case_file(root, bad(id="r1")), "id", "duplicate_id", "id 'r1' already used on line 1")


def test_kind_duplicate_pair(root):
    "The same images, question and responses as line 1 under another id: duplicate_pair, no field, naming line 1."
    expect_bad(root, case_file(root, json.dumps({**rec(1).to_dict(), "id": "other"}).encode()), None, "duplicate_pair",
               "duplicate pair: same images, question and responses as line 1")


def test_kind_placeholder_count_mismatch(root):
    "Two `<image>` placeholders in the question for one image: placeholder_mismatch on 'question'."
    expect_bad(root, case_file(root, bad(question="Compare <image> with <image>.")), "question", "placeholder_mismatch",
               "2 <image> placeholder(s) for 1 image(s)")


# ---------------------------------------------------------------- image faults

def test_kind_missing_image_file(root):
    "The second image does not exist: missing_image on 'images[1]', naming the resolved path."
    expect_bad(root, case_file(root, bad(images=["img/a.png", "img/nope.png"])), "images[1]", "missing_image",
               f"no image file {root / 'img/nope.png'}")


def test_kind_zero_byte_image(root):
    "A zero-byte image file: empty_image on 'images[0]'."
    (root / "img/bad.png").write_bytes(b"")
    expect_bad(root, case_file(root, bad(images=["img/bad.png"])), "images[0]", "empty_image", f"zero-byte image file {root / 'img/bad.png'}")


def test_kind_corrupt_image_bytes(root):
    "Bytes that are no image format: corrupt_image on 'images[0]', 'not a readable image' with PIL's reason."
    (root / "img/bad.png").write_bytes(b"this is not a png at all")
    row = expect_bad(root, case_file(root, bad(images=["img/bad.png"])), "images[0]", "corrupt_image",
                     f"{root / 'img/bad.png'}: not a readable image (cannot identify image file", prefix=True)
    assert row["message"].endswith(")")


def test_kind_truncated_image(root):
    "A PNG with a valid header and a cut body: corrupt_image on 'images[0]', found by a full decode ('cannot decode')."
    _truncated(root / "img/bad.png")
    expect_bad(root, case_file(root, bad(images=["img/bad.png"])), "images[0]", "corrupt_image",
               f"{root / 'img/bad.png'}: cannot decode (", prefix=True)


def test_kind_decompression_bomb(root):
    "A header claiming 5000x5000 px over max_pixels, and 10^10 px with no limit set: image_too_large on 'images[0]' both times."
    (root / "img/bad.png").write_bytes(png_header(5000, 5000))
    p = case_file(root, bad(images=["img/bad.png"]))
    expect_bad(root, p, "images[0]", "image_too_large", f"{root / 'img/bad.png'}: 5000x5000 = 25000000 pixels > max_pixels=1000000",
               max_pixels=1_000_000)
    (root / "img/bad.png").write_bytes(png_header(100_000, 100_000))  # PIL's own bomb error
    expect_bad(root, p, "images[0]", "image_too_large", f"{root / 'img/bad.png'}: Image size (10000000000 pixels) exceeds limit",
               prefix=True, max_pixels=None)


# ---------------------------------------------------------------- format-specific faults

def test_kind_listwise_scores_length_mismatch(root):
    "One score for two answers in a listwise record: bad_value on 'scores'."
    p = case_file(root, bad("listwise", scores=[1]), "listwise")
    expect_bad(root, p, "scores", "bad_value", "1 scores for 2 answers", fmt="listwise")
    pairs, rep = read_preferences(p, "listwise", image_root=root, on_error="quarantine")
    assert rep.records == len(pairs) == 3 and (rep.kept, rep.quarantined) == (2, 1)  # the kept lists expand: 3 pairs + 0 (a tie)


def test_kind_llamafactory_multi_turn_refused(root):
    "A LLaMA-Factory row with three turns: bad_value on 'conversations' (multi-turn is not supported)."
    conv = [{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}]
    expect_bad(root, case_file(root, bad("llamafactory", conversations=conv), "llamafactory"), "conversations", "bad_value",
               "expected one human turn, got ['human', 'gpt', 'human'] (multi-turn is not supported)", fmt="llamafactory")


def test_kind_trl_wrong_roles(root):
    "A TRL row whose `chosen` message is a user turn, or whose prompt starts with the assistant: bad_value naming the field and roles."
    expect_bad(root, case_file(root, bad("trl", chosen=[{"role": "user", "content": "x"}]), "trl"), "chosen", "bad_value",
               "expected roles ['assistant'] (first optional), got ['user']", fmt="trl")
    prompt = [{"role": "assistant", "content": "hi"}, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    expect_bad(root, case_file(root, bad("trl", prompt=prompt), "trl"), "prompt", "bad_value",
               "expected roles ['system', 'user'] (first optional), got ['assistant', 'user']", fmt="trl")


# ---------------------------------------------------------------- the HTTP judge client

def backend(url, **kw) -> HTTPBackend:
    "A fast-retrying HTTP backend for loopback servers (keyed by KEY_ENV unless overridden)."
    return HTTPBackend(url, "fake-judge", **{**dict(api_key_env=KEY_ENV, timeout_s=1.0, max_retries=3, backoff_base_s=0.01,
                                                    backoff_max_s=0.3), **kw})


def recording_waits(b: HTTPBackend) -> list:
    "Record the waits `b` chooses between attempts (it still sleeps them)."
    waits, orig = [], b.wait_s
    b.wait_s = lambda attempt, retry_after=None: waits.append(orig(attempt, retry_after)) or waits[-1]
    return waits


def req(qid="q1"):
    return make_request("pointwise", [], qid, ["an answer"])


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


class TinyServer:
    "A loopback HTTP server whose n-th request is handled by actions[min(n, last)]; it logs (path, Authorization)."

    def __init__(self, actions):
        self.log, srv = [], self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                srv.log.append((self.path, self.headers.get("Authorization")))
                actions[min(len(srv.log), len(actions)) - 1](self)
            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self): self.server.shutdown(); self.server.server_close()


@pytest.fixture
def tiny():
    made = []
    yield lambda actions: made.append(TinyServer(actions)) or made[-1]
    for s in made: s.close()


def ok(h):
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": '{"score": 5}'}}]}).encode()
    h.send_response(200); h.send_header("Content-Length", str(len(body))); h.end_headers(); h.wfile.write(body)


def reset(h):
    "Drop the connection with a TCP reset instead of answering."
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close(); h.wfile, h.close_connection = BytesIO(), True


def test_kind_http_429_then_success(keyed, server_factory, caplog):
    "HTTP 429 with Retry-After 0.2 s: retried once after exactly Retry-After (under the cap), then the reply; a cap below it wins."
    caplog.set_level(logging.WARNING, "dt2it_mrm.judge")
    srv = server_factory({"q1": ["429", "ok"], "q2": ["429", "ok"]})
    b = backend(srv.url); waits = recording_waits(b)
    assert b.complete(req("q1")) == '{"score": 5}'
    t = [e["t"] for e in srv.log if e["qid"] == "q1"]
    assert waits == [0.2] and len(t) == 2 and t[1] - t[0] >= 0.19
    assert 'HTTP 429 Too Many Requests: {"error": "slow down"}; retry 1/3 in 0.20 s' in caplog.text
    capped = backend(srv.url, backoff_max_s=0.05); cwaits = recording_waits(capped)
    assert capped.complete(req("q2")) == '{"score": 5}' and cwaits == [0.05] and srv.count("q2") == 2


def test_kind_http_500_then_success(keyed, server_factory, caplog):
    "HTTP 500 twice then 200: retried with backoff (no Retry-After) and answered on the third attempt."
    caplog.set_level(logging.WARNING, "dt2it_mrm.judge")
    srv = server_factory({"q1": ["500", "500", "ok"]})
    b = backend(srv.url); waits = recording_waits(b)
    r = Judge(b).ask([req()])[0]
    assert (r.status, r.text, srv.count("q1")) == ("ok", '{"score": 5}', 3)
    assert len(waits) == 2 and 0.005 <= waits[0] <= 0.01 and 0.01 <= waits[1] <= 0.02
    assert caplog.text.count("HTTP 500 Internal Server Error: internal error; retry") == 2


def test_kind_http_4xx_fatal_without_retry(keyed, server_factory, tiny, caplog):
    "HTTP 400 or 401: JudgeRequestError at once (one attempt, no retry log), the status and body in the message."
    caplog.set_level(logging.WARNING, "dt2it_mrm.judge")
    srv = server_factory({"q1": ["400"]})
    q = req()
    with pytest.raises(JudgeRequestError) as ei: backend(srv.url).complete(q)
    assert str(ei.value) == f'request {q.key}: HTTP 400 Bad Request: {{"error": "bad request"}}'
    assert srv.count("q1") == 1

    def unauthorized(h):
        h.send_response(401); h.send_header("Content-Length", "13"); h.end_headers(); h.wfile.write(b"invalid key\r\n")
    other = tiny([unauthorized, ok])
    with pytest.raises(JudgeRequestError) as ei: backend(other.url).complete(q)
    assert str(ei.value) == f"request {q.key}: HTTP 401 Unauthorized: invalid key\r\n" and len(other.log) == 1
    assert "retry" not in caplog.text


def test_kind_http_connection_reset_retried(keyed, tiny, caplog):
    "The server resets the connection: logged as a connection error and retried; the second attempt answers."
    caplog.set_level(logging.WARNING, "dt2it_mrm.judge")
    srv = tiny([reset, ok])
    assert backend(srv.url).complete(req()) == '{"score": 5}' and len(srv.log) == 2
    (warn,) = [r.getMessage() for r in caplog.records if r.name == "dt2it_mrm.judge"]
    assert re.fullmatch(r"judge request \w+: connection error: (ConnectionResetError: \[Errno 104\] Connection reset by peer"
                        r"|RemoteDisconnected: Remote end closed connection without response); retry 1/3 in 0\.0\d s", warn), warn


def test_kind_http_timeout_retried_then_gives_up(keyed, server_factory):
    "A server slower than the per-attempt timeout: every attempt times out, then JudgeRequestError 'gave up after 2 attempts'."
    srv = server_factory({"q1": ["sleep"]})
    q = req()
    t0 = time.time()
    with pytest.raises(JudgeRequestError) as ei: backend(srv.url, timeout_s=0.2, max_retries=1).complete(q)
    assert str(ei.value) == f"request {q.key}: gave up after 2 attempts; last: timed out after 0.2 s"
    assert srv.count("q1") == 2 and time.time() - t0 < 3  # the server answers after 2 s: each attempt stopped at 0.2 s


def test_kind_http_malformed_body_retried(keyed, server_factory, caplog):
    "A 200 whose body is cut-off JSON: 'malformed response body' logged, retried, then the reply."
    caplog.set_level(logging.WARNING, "dt2it_mrm.judge")
    srv = server_factory({"q1": ["malformed", "ok"]})
    assert backend(srv.url).complete(req()) == '{"score": 5}' and srv.count("q1") == 2
    assert """malformed response body (JSONDecodeError): b'{"choices": [{"message": '; retry 1/3""" in caplog.text


def test_kind_http_redirect_refused(keyed, tiny):
    "A 302 to another address: refused as a fatal HTTP 302 (no retry); the other address never sees a request or the key."
    other = tiny([ok])

    def redirect(h):
        h.send_response(302); h.send_header("Location", other.url + "/chat/completions"); h.send_header("Content-Length", "0"); h.end_headers()
    srv, q = tiny([redirect]), req()
    with pytest.raises(JudgeRequestError) as ei: backend(srv.url).complete(q)
    assert str(ei.value) == f"request {q.key}: HTTP 302 Found: "
    assert srv.log == [("/v1/chat/completions", f"Bearer {SECRET}")] and other.log == []


def test_kind_api_key_env_missing(monkeypatch):
    "The key's environment variable unset: ValueError naming the variable, before any request."
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError) as ei: backend("http://127.0.0.1:9/v1")
    assert str(ei.value) == (f"the judge API key variable {KEY_ENV} is not set in the environment; "
                             "set it, or set api_key_env to null for a server without authentication")


def test_kind_api_key_redacted(keyed, server_factory, tmp_path, caplog, capsys):
    "A server echoing the Authorization header: the key shows as *** in the error, the retry log and the cache, never in clear."
    caplog.set_level(logging.DEBUG)
    srv = server_factory({"q1": ["echo_key"]})
    q, b = req(), backend(srv.url, max_retries=1)
    with pytest.raises(JudgeRequestError) as ei: b.complete(q)
    assert str(ei.value) == f"request {q.key}: gave up after 2 attempts; last: malformed response body (JSONDecodeError): b'<html>Bearer ***</html>'"
    r = Judge(b, cache=tmp_path / "cache.jsonl").ask([q])[0]
    assert r.status == "failed" and r.error == str(ei.value) and srv.count("q1") == 4
    (row,) = [json.loads(x) for x in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert row["status"] == "failed" and row["error"] == str(ei.value)
    out = capsys.readouterr()
    assert "Bearer ***" in caplog.text and SECRET not in caplog.text + out.out + out.err + repr(b)
    assert SECRET.encode() not in (tmp_path / "cache.jsonl").read_bytes()


# ---------------------------------------------------------------- the judge cache

def test_kind_cache_torn_last_line(tmp_path):
    "A judge cache whose last line was cut mid-write: the torn line is cut off (torn=1) and only its request is asked again."
    reqs = [req(f"q{i}") for i in range(3)]
    b = Scripted(lambda q: '{"score": 1}')
    Judge(b, cache=tmp_path / "c.jsonl").ask(reqs)
    full = (tmp_path / "c.jsonl").read_bytes()
    two = full[:full.rstrip(b"\n").rfind(b"\n") + 1]
    (tmp_path / "c.jsonl").write_bytes(full[:-10])  # crash while writing the third row
    c = ResponseCache(tmp_path / "c.jsonl")
    assert (len(c), c.torn, c.bad_lines, (tmp_path / "c.jsonl").read_bytes()) == (2, 1, 0, two)
    b.calls.clear()
    j = Judge(b, cache=c)
    replies = j.ask(reqs)
    assert j.sent == 1 and b.calls == [reqs[2].key] and [r.cached for r in replies] == [True, True, False]
    assert (tmp_path / "c.jsonl").read_bytes().count(b"\n") == 3


def test_kind_failed_requests_not_cached_as_hits(tmp_path):
    "A failed request is written to the cache as status 'failed' but is no hit: the next run asks it (and only it) again."
    down = {"q1"}

    def fn(q):
        if q.sim["question"] in down: raise JudgeRequestError("server down")
        return '{"score": 1}'
    b, reqs = Scripted(fn), [req("q0"), req("q1")]
    assert [r.status for r in Judge(b, cache=tmp_path / "c.jsonl").ask(reqs)] == ["ok", "failed"]
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert sorted((r["status"], r.get("error")) for r in rows) == [("failed", "server down"), ("ok", None)]
    assert len(ResponseCache(tmp_path / "c.jsonl")) == 1
    down.clear(); b.calls.clear()
    j = Judge(b, cache=tmp_path / "c.jsonl")
    replies = j.ask(reqs)
    assert j.sent == 1 and b.calls == [reqs[1].key] and [(r.status, r.cached) for r in replies] == [("ok", True), ("ok", False)]


# ---------------------------------------------------------------- scoring output

def test_kind_scorer_resume_after_torn_output(tmp_path):
    "A scoring run killed after 2 of 5 items, mid-write: the torn line is cut off, only the 3 unscored items are scored, the output equals a clean run's."
    from dt2it_mrm.score import score_to_jsonl
    items = [{"image": f"img/{i % 2}.png", "question": f"q{i}", "answer": "x" * (i + 1)} for i in range(5)]
    seen, kill_after = [], [None]

    def scorer(batch):
        if kill_after[0] is not None and len(seen) == kill_after[0]: raise KeyboardInterrupt
        seen.extend(it["question"] for it in batch)
        return np.array([len(it["answer"]) / 2 for it in batch])
    scorer.fingerprint = "len-scorer"  # the scorer's identity, for outputs that record which scorer wrote them
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    assert score_to_jsonl(items, ref, scorer, chunk=1, progress=False)["scored"] == 5
    seen.clear(); kill_after[0] = 2
    with pytest.raises(KeyboardInterrupt): score_to_jsonl(items, out, scorer, chunk=1, progress=False)
    assert out.read_bytes().count(b"\n") == 2
    with open(out, "ab") as f: f.write(b'{"image_path": "img/0.png", "quest')  # as if killed mid-write
    seen.clear(); kill_after[0] = None
    rep = score_to_jsonl(items, out, scorer, chunk=1, progress=False)
    assert (rep["items"], rep["scored"], rep["skipped"]) == (5, 3, 2) and seen == ["q2", "q3", "q4"]
    assert out.read_bytes() == ref.read_bytes()
