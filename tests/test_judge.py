"""Judge protocols, the JSON-ish reply parser, the simulated and HTTP backends (against a fake loopback server), the
crash-safe cache, debiased distillation, position-bias reports and the T2I reformulation."""
import base64
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dt2it_mrm.core import rng
from dt2it_mrm.data import PLACEHOLDER, PrefRecord, lf_dump, lf_parse, read_preferences, validate_pair, write_records
from dt2it_mrm.config import ConfigError
from dt2it_mrm.judge import (RUBRIC, load_rubric, HTTPBackend, Judge, JudgeRequestError, Reply, ResponseCache, _reply_text, _Retry,
                             agreement_report, as_choice, as_score, as_scores, distil_pairs, judge_from_params, loads_lenient, make_request,
                             normalise_json, pair_views, parse_reply, position_bias_report,
                             retry_after_seconds, score_lists, t2i_first_flags, t2i_pairs)
from dt2it_mrm.simulate import SimBackend, measure_distillation
from dt2it_mrm.world import SimJudge, WorldConfig, make_expert, make_split

KNOBS = {"position_bias": 0.2, "error_penalty": 2.0, "length_weight": 0.6, "noise": 0.6, "difficulty_noise": 0.9}
EXACT = {"position_bias": 0.0, "error_penalty": 2.0, "length_weight": 0.0, "noise": 0.0, "difficulty_noise": 0.0}
SECRET = "sk-test-DO-NOT-LEAK-4f9a1c77e2"


@pytest.fixture(scope="module")
def hard():
    return make_split(WorldConfig(n_train=10, n_test=120), "test_hard", 0, "img")[0]


def sim(records, **knobs):
    return SimBackend(SimJudge.from_records(records, {**KNOBS, **knobs}, seed=0))


# ---------------------------------------------------------------- parser

@pytest.mark.parametrize("text,want", [
    ('{"better": 1}', 1),
    ('{"better": 2, "reason": "Answer 2 has the right count."}', 2),
    ('```json\n{"better": 2}\n```', 2),
    ('```\n{"better": 1}\n```', 1),
    ('Looking at the image, the second answer is right.\n```json\n{"better": 2,}\n```\nLet me know!', 2),
    ('Verdict: {"better": "1"} (answer one).', 1),
    ("{'better': 2, 'reason': 'it's the one that's right'}", 2),
    ("{better: 1, reason: 'fine'}", 1),
    ('{"Better": "Answer 2"}', 2),
    ('{"winner": "Image 1"}', 1),
    ('{"better": "second"}', 2),
    ('{"better": "B"}', 2),
    ('{"better": 1.0}', 1),
    ('{"better": "tie"}', 0),
    ('{"better": 0}', 0),
    ('{"reason": "a {curly} remark", "better": 2}', 2),
    ('{"reason": "first object has no verdict"} then {"better": 1}', 1),
    ('```json\n{"better": 2}', 2),  # fence never closed (truncated reply)
    ('{"better": 2, "reason": "ok",\n}', 2),
    ('{\n  "better": 1,\n  "reason": "a line\nbreak inside"\n}', 1),
])
def test_parse_pairwise_accepts_messy_json(text, want):
    assert parse_reply(text, "pairwise") == {"status": "ok", "better": want}


@pytest.mark.parametrize("text,want", [
    ('{"score": 7}', 7.0), ('{"score": "7"}', 7.0), ('{"score": "7/10"}', 7.0), ('{"score": "Score: 8.5 out of 10"}', 8.5),
    ('{"rating": -1.25}', -1.25), ("{'score': '6',}", 6.0), ('Here you go: {"score": 3, "reason": "two errors"} Thanks', 3.0),
    ('{"SCORE": 10}', 10.0),
])
def test_parse_pointwise_scores(text, want):
    assert parse_reply(text, "pointwise") == {"status": "ok", "score": want}


@pytest.mark.parametrize("text,n,want", [
    ('{"scores": [7, 3.5, "2"]}', 3, [7.0, 3.5, 2.0]),
    ('{"scores": {"Answer 2": 4, "Answer 1": 9}}', 2, [9.0, 4.0]),
    ('{"scores": {"1": "8/10", "2": 1}}', 2, [8.0, 1.0]),
    ("```json\n{'scores': [1, 2,],}\n```", 2, [1.0, 2.0]),
])
def test_parse_listwise_scores(text, n, want):
    assert parse_reply(text, "listwise", n) == {"status": "ok", "scores": want}


@pytest.mark.parametrize("text,protocol,n", [
    ('{"score": NaN}', "pointwise", 1), ('{"score": Infinity}', "pointwise", 1), ('{"score": true}', "pointwise", 1),
    ('{"score": "excellent"}', "pointwise", 1), ('{"reason": "no score"}', "pointwise", 1), ('{"score": null}', "pointwise", 1),
    ('{"better": 3}', "pairwise", 2), ('{"better": "1 or 2"}', "pairwise", 2), ('{"better": [1]}', "pairwise", 2),
    ('The first answer is better.', "pairwise", 2), ("", "pairwise", 2), ("   ", "pointwise", 1), ('[1, 2]', "pairwise", 2),
    ('{"scores": [1, 2]}', "listwise", 3), ('{"scores": [1, null]}', "listwise", 2), ('{"scores": {"a": 1, "b": 2}}', "listwise", 2),
    ('{"better": 1', "pairwise", 2), ('{"better": }', "pairwise", 2),
])
def test_parse_unparseable_is_recorded_with_raw_text(text, protocol, n):
    got = parse_reply(text, protocol, n)
    assert got["status"] == "unparseable" and got["raw"] == text and got["error"]


def test_parse_none_and_missing_field_messages():
    assert parse_reply(None, "pairwise") == {"status": "unparseable", "error": "empty reply", "raw": None}
    assert "no field 'score'" in parse_reply('{"grade_text": "A"}', "pointwise")["error"]
    assert "unusable value" in parse_reply('{"better": 7}', "pairwise")["error"]


def test_parser_never_raises_on_garbage():
    r = rng(0, "fuzz")
    alphabet = list('{}[]:,"\'` \n\\abcTrueNone0123456789.-+eE')
    for _ in range(2000):
        text = "".join(r.choice(alphabet, size=int(r.integers(0, 40))))
        for proto in ("pointwise", "pairwise", "listwise"):
            assert parse_reply(text, proto, 2)["status"] in ("ok", "unparseable")


def test_normalise_json_exact():
    assert normalise_json("{'a': 'b', c: True, d: None, e: [1, 2,],}") == '{"a": "b", "c": true, "d": null, "e": [1, 2]}'
    assert normalise_json("{'q': 'say \"hi\"'}") == '{"q": "say \\"hi\\""}'
    assert normalise_json('{"keep": "it\'s, fine,}"}') == '{"keep": "it\'s, fine,}"}'  # double-quoted strings untouched
    assert loads_lenient("{'n': 'l\\'apostrophe'}") == {"n": "l'apostrophe"}
    with pytest.raises(ValueError, match="not JSON"): loads_lenient("{'a': }")


def test_field_coercions():
    assert [as_score(v) for v in (3, 2.5, "4/10", "x", True, float("nan"), None)] == [3.0, 2.5, 4.0, None, None, None, None]
    assert [as_choice(v) for v in (1, 2, "Answer 2", "response 1", "first", "A", "equal", 3, "1 vs 2", False)] == [1, 2, 2, 1, 1, 1, 0, None, None, None]
    assert as_scores([1, "2"], 2) == [1.0, 2.0] and as_scores([1], 2) is None and as_scores({"x1": 5, "x2": 6}, 2) == [5.0, 6.0]


# ---------------------------------------------------------------- requests and the simulated backend

def test_request_key_is_stable_and_order_sensitive():
    a = make_request("pairwise", ["i.png"], "Q?", ["one", "two"])
    assert a.key == make_request("pairwise", ["i.png"], "Q?", ["one", "two"]).key
    assert a.key != make_request("pairwise", ["i.png"], "Q?", ["two", "one"]).key != make_request("pairwise", ["j.png"], "Q?", ["one", "two"]).key
    text = a.messages[1]["content"][1]["text"]
    assert text.index("Answer 1:\none") < text.index("Answer 2:\ntwo") and "length" in a.messages[0]["content"].lower()
    with pytest.raises(ValueError, match="pairwise shows 2"): make_request("pairwise", ["i.png"], "Q?", ["only"])


def test_request_places_images_at_placeholders():
    q = f"Image 1: {PLACEHOLDER}\nImage 2: {PLACEHOLDER}\nWhich is better?"
    parts = make_request("pointwise", ["a.png", "b.png"], q, ["Image 1 is better than Image 2."]).messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert [p["path"] for p in parts if p["type"] == "image"] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="placeholder"): make_request("pointwise", ["a.png"], q, ["x"])


def test_sim_backend_speaks_the_text_protocol(hard):
    b = sim(hard)
    seen_wraps = set()
    for rec in hard[:40]:
        img, q, c, r = rec["images"][0], rec["question"], rec["chosen"], rec["rejected"]
        req = make_request("pairwise", [img], q, [r, c])
        text = b.complete(req)
        seen_wraps.add(("```" in text, text.startswith("Here"), "'" in text))
        assert parse_reply(text, "pairwise")["better"] == b.judge.pairwise(img, q, r, c) + 1
        pt = parse_reply(b.complete(make_request("pointwise", [img], q, [c])), "pointwise")
        assert pt["score"] == round(b.judge.pointwise(img, q, c), 3)
        assert b.complete(req) == text  # same request, same reply
    assert len(seen_wraps) == 4  # plain, fenced, prose-wrapped and Python-quoted replies all occur


# ---------------------------------------------------------------- distillation

def test_pairwise_both_orders_annotation(hard):
    before = json.dumps(hard[:30])
    ann = distil_pairs(hard[:30], sim(hard), "pairwise", both_orders=True)
    assert json.dumps(hard[:30]) == before  # inputs untouched
    for a, r in zip(ann, hard[:30]):
        j = a["meta"]["judge"]
        assert [v["shown"] for v in j["views"]] == [[0, 1], [1, 0]] and len(j["votes"]) == 2
        assert j["decisive"] == (j["votes"][0] == j["votes"][1])
        assert j["verdict"] == ("undecided" if not j["decisive"] else "chosen" if j["votes"][0] else "rejected")
        assert a["strength"] == j["strength"] == (0.0 if not j["decisive"] else 1.0 if j["votes"][0] else -1.0)
        assert {k: v for k, v in a.items() if k not in ("meta", "strength")} == {k: v for k, v in r.items() if k not in ("meta", "strength")}
        PrefRecord.from_dict(a)  # still a valid record


def test_blind_first_judge_is_never_decisive(hard):
    ann = distil_pairs(hard, sim(hard, position_bias=1.0), "pairwise")
    pb, ag = position_bias_report(ann), agreement_report(ann)
    assert (pb["first_position_win_rate"], pb["position_bias"], pb["flip_rate"]) == (1.0, 1.0, 1.0)
    assert ag["coverage"] == 0.0 and ag["accuracy_strict"] == 0.0
    assert [s["accuracy"] for s in ag["single_view"]] == [1.0, 0.0]  # chosen-first view "always right", swapped "always wrong"


def test_exact_judge_is_always_decisive_and_right(hard):
    b = SimBackend(SimJudge.from_records(hard, EXACT, seed=0))
    for proto in ("pairwise", "pointwise", "listwise"):
        ann = distil_pairs(hard, b, proto)
        ag = agreement_report(ann)
        assert (ag["coverage"], ag["accuracy_decisive"]) == (1.0, 1.0), proto
        if proto != "pointwise": assert position_bias_report(ann)["flip_rate"] == 0.0
        if proto != "pairwise":  # score = 7 - 2·errors exactly, mapped back from the shown order
            assert all(a["meta"]["judge"]["scores"] == [7 - 2 * e for e in a["meta"]["errors"]] for a in ann)
            assert all(a["strength"] == 2 * a["meta"]["gap"] for a in ann)


def test_position_bias_is_measured_back(hard):
    big = make_split(WorldConfig(n_train=10, n_test=600), "test_iid", 1, "img")[0]
    for knob in (0.0, 0.4):
        pb = position_bias_report(distil_pairs(big, sim(big, position_bias=knob), "pairwise"))
        assert abs(pb["position_bias"] - knob) < 4 * pb["position_bias_se"], (knob, pb)


def test_single_order_is_seeded_random_half(hard):
    views = [pair_views("pairwise", r["id"], 2, False, seed=0)[0] for r in hard]
    assert 0.35 < np.mean([v == (0, 1) for v in views]) < 0.65
    assert views == [pair_views("pairwise", r["id"], 2, False, seed=0)[0] for r in hard]
    assert views != [pair_views("pairwise", r["id"], 2, False, seed=1)[0] for r in hard]
    ann = distil_pairs(hard[:20], sim(hard), "pairwise", both_orders=False)
    assert all(len(a["meta"]["judge"]["views"]) == 1 for a in ann)
    lw = pair_views("listwise", "x", 4, True, seed=0)
    assert sorted(lw[0]) == [0, 1, 2, 3] and lw[1] == lw[0][::-1]


def test_pointwise_strength_is_the_score_difference(hard):
    b = sim(hard)
    ann = distil_pairs(hard[:25], b, "pointwise")
    for a in ann:
        img, q = a["images"][0], a["question"]
        sc, sr = (round(b.judge.pointwise(img, q, x), 3) for x in (a["chosen"], a["rejected"]))
        assert a["meta"]["judge"]["scores"] == [sc, sr] and a["strength"] == pytest.approx(sc - sr)
        assert a["meta"]["judge"]["verdict"] == ("chosen" if sc > sr else "rejected")
    margin = distil_pairs(hard[:25], b, "pointwise", min_margin=1.0)
    assert all(m["meta"]["judge"]["decisive"] == (abs(m["strength"]) > 1.0) for m in margin)


class Scripted:
    "A backend that answers from a function of the request, counting calls."
    fingerprint = "scripted"

    def __init__(self, fn): self.fn, self.calls = fn, []

    def complete(self, req):
        self.calls.append(req.key)
        return self.fn(req)


def test_unparseable_and_failed_replies_are_recorded_not_fatal(hard):
    def fn(req):
        first = req.sim["answers"][0]
        if len(first) % 3 == 0: raise JudgeRequestError("server gone")
        if len(first) % 3 == 1: return "I refuse to answer in JSON."
        return '{"better": 1}'
    ann = distil_pairs(hard[:40], Scripted(fn), "pairwise")
    statuses = [v["status"] for a in ann for v in a["meta"]["judge"]["views"]]
    assert {"ok", "unparseable", "failed"} <= set(statuses) and len(statuses) == 80
    for a in ann:
        for v in a["meta"]["judge"]["views"]:
            if v["status"] == "unparseable": assert v["raw"] == "I refuse to answer in JSON." and v["winner"] is None
            if v["status"] == "failed": assert v["error"] == "server gone" and "raw" not in v
        if "ok" not in {v["status"] for v in a["meta"]["judge"]["views"]} or any(v["status"] != "ok" for v in a["meta"]["judge"]["views"]):
            assert a["meta"]["judge"]["verdict"] == "undecided"
    rep = position_bias_report(ann)
    assert rep["unparseable"] == statuses.count("unparseable") and rep["failed"] == statuses.count("failed")


def test_identical_requests_are_asked_once(hard):
    b = Scripted(lambda req: '{"score": 5}')
    recs = [dict(hard[0], id=f"copy{i}") for i in range(5)]
    ann = distil_pairs(recs, b, "pointwise")
    assert len(b.calls) == 2 and all(a["strength"] == 0.0 and not a["meta"]["judge"]["decisive"] for a in ann)


def test_score_lists_maps_shuffled_scores_back():
    ex = make_expert(WorldConfig(n_expert=12), 0, "img")[0]
    b = SimBackend(SimJudge.from_records(ex, EXACT, seed=0))
    got = score_lists(ex, b)
    for r in got:
        assert r["scores"] == [7.0 - 2 * e for e in r["meta"]["errors"]]
        assert sorted(r["meta"]["judge"]["views"][0]["shown"]) == list(range(4))


# ---------------------------------------------------------------- the cache

def test_cache_torn_last_line_is_ignored_and_redone(tmp_path, hard):
    path, b = tmp_path / "c.jsonl", sim(hard)
    reqs = [make_request("pointwise", r["images"], r["question"], [r["chosen"]]) for r in hard[:6]]
    Judge(b, cache=path).ask(reqs[:4])
    full = path.read_bytes()
    path.write_bytes(full + b'{"key": "abc", "status": "ok", "te')  # crash mid-write
    c = ResponseCache(path)
    assert (len(c), c.torn, path.read_bytes()) == (4, 1, full)
    j = Judge(b, cache=path)
    replies = j.ask(reqs)
    assert j.sent == 2 and [r.cached for r in replies] == [True] * 4 + [False] * 2
    assert all(json.loads(line)["status"] == "ok" for line in path.read_text().splitlines())
    assert [r.text for r in replies] == [b.complete(q) for q in reqs]


def test_cache_resumes_after_a_crash_and_asks_nothing_twice(tmp_path, hard):
    base, asked = sim(hard), []

    class Crashy:
        fingerprint = base.fingerprint

        def __init__(self, crash_after): self.crash_after = crash_after

        def complete(self, req):
            if len(asked) == self.crash_after: raise KeyboardInterrupt
            asked.append(req.key); return base.complete(req)

    reqs = [make_request("pointwise", r["images"], r["question"], [r["rejected"]]) for r in hard[:10]]
    with pytest.raises(KeyboardInterrupt): Judge(Crashy(4), cache=tmp_path / "c.jsonl").ask(reqs)
    replies = Judge(Crashy(-1), cache=tmp_path / "c.jsonl").ask(reqs)
    assert len(asked) == len(set(asked)) == 10 and all(r.status == "ok" for r in replies)
    never = Scripted(lambda q: 1 / 0); never.fingerprint = base.fingerprint
    assert [r.cached for r in Judge(never, cache=tmp_path / "c.jsonl").ask(reqs)] == [True] * 10 and not never.calls


def test_failed_requests_are_retried_on_the_next_run(tmp_path):
    reqs = [make_request("pointwise", [], f"q{i}", ["a"]) for i in range(4)]
    state = {"up": False}

    def fn(req):
        if not state["up"] and req.sim["question"] in ("q1", "q3"): raise JudgeRequestError("down")
        return '{"score": 1}'
    b = Scripted(fn)
    first = Judge(b, cache=tmp_path / "c.jsonl").ask(reqs)
    assert [r.status for r in first] == ["ok", "failed", "ok", "failed"]
    state["up"] = True
    j = Judge(b, cache=tmp_path / "c.jsonl")
    second = j.ask(reqs)
    assert j.sent == 2 and [r.status for r in second] == ["ok"] * 4 and len(b.calls) == 6


def test_cache_is_per_backend_fingerprint(tmp_path):
    reqs = [make_request("pointwise", [], "q", ["a"])]
    a, b = Scripted(lambda q: '{"score": 1}'), Scripted(lambda q: '{"score": 2}')
    b.fingerprint = "other"
    Judge(a, cache=tmp_path / "c.jsonl").ask(reqs)
    assert Judge(b, cache=tmp_path / "c.jsonl").ask(reqs)[0].text == '{"score": 2}'


# ---------------------------------------------------------------- the HTTP client against a fake server

class FakeJudgeServer:
    """A real HTTP server on loopback speaking chat completions, with faults scripted per question id.

    It stops by itself after `max_requests` requests or `deadline_s` seconds."""

    def __init__(self, script, reply=lambda qid: '{"score": 5}', max_requests=200, deadline_s=30.0):
        self.script, self.reply, self.max_requests, self.deadline = script, reply, max_requests, time.time() + deadline_s
        self.log, self.lock, self.handled = [], threading.Lock(), 0
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = "".join(p.get("text", "") for m in body["messages"] if isinstance(m["content"], list) for p in m["content"])
                qid = re.search(r"Question: (q\d+)", text).group(1)
                with srv.lock:
                    n = sum(e["qid"] == qid for e in srv.log)
                    srv.log.append({"qid": qid, "t": time.time(), "auth": self.headers.get("Authorization"), "body": body, "path": self.path})
                plan = srv.script.get(qid, ["ok"])
                action = plan[min(n, len(plan) - 1)]
                try: self.act(action, qid)
                except (BrokenPipeError, ConnectionResetError): pass

            def send(self, code, payload: bytes, headers=()):
                self.send_response(code)
                for k, v in headers: self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload))); self.end_headers(); self.wfile.write(payload)

            def act(self, action, qid):
                if action == "ok":
                    self.send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": srv.reply(qid)}}]}).encode())
                elif action == "429": self.send(429, b'{"error": "slow down"}', [("Retry-After", "0.2")])
                elif action == "500": self.send(500, b"internal error")
                elif action == "400": self.send(400, b'{"error": "bad request"}')
                elif action == "sleep": time.sleep(2.0); self.send(200, b"{}")
                elif action == "malformed": self.send(200, b'{"choices": [{"message": ')
                elif action == "echo_key": self.send(200, f"<html>{self.headers.get('Authorization')}</html>".encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.timeout = 0.05
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True); self.thread.start()

    def serve(self):
        while not self.stop and self.handled < self.max_requests and time.time() < self.deadline:
            self.server.handle_request(); self.handled = len(self.log)
        self.server.server_close()

    def count(self, qid=None): return sum(qid is None or e["qid"] == qid for e in self.log)

    def close(self): self.stop = True; self.thread.join(5)


@pytest.fixture
def server_factory():
    made = []

    def make(*a, **kw):
        made.append(FakeJudgeServer(*a, **kw)); return made[-1]
    yield make
    for s in made: s.close()


def http_backend(url, tmp_path, **kw):
    return HTTPBackend(url, "fake-judge", api_key_env="JUDGE_TEST_KEY", timeout_s=1.0, max_retries=3, backoff_base_s=0.01,
                       backoff_max_s=0.3, image_root=tmp_path, **kw)


SCRIPT = {"q1": ["429", "ok"], "q2": ["500", "500", "ok"], "q3": ["sleep", "ok"], "q4": ["malformed", "ok"],
          "q5": ["echo_key", "ok"], "q6": ["500"], "q7": ["400"], "q8": ["429", "500", "malformed", "ok"], "q9": ["ok"]}


def test_http_client_retries_records_and_resumes(tmp_path, monkeypatch, caplog, capsys, server_factory):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    png = tmp_path / "img.png"; Image.new("RGB", (4, 4), (200, 10, 10)).save(png)
    srv = server_factory(SCRIPT, reply=lambda qid: f'```json\n{{"score": "{qid[1:]}/10"}}\n```')
    reqs = [make_request("pointwise", ["img.png"], f"q{i}", [f"answer {i}"]) for i in range(12)]
    caplog.set_level(logging.DEBUG)
    judge = Judge(http_backend(srv.url, tmp_path), cache=tmp_path / "judge" / "cache.jsonl", concurrency=4)
    t0 = time.time(); replies = judge.ask(reqs); took = time.time() - t0

    failed = {f"q{i}" for i, r in enumerate(replies) if r.status == "failed"}
    assert failed == {"q6", "q7"} and len(replies) == 12 and took < 10
    assert all(parse_reply(r.text, "pointwise") == {"status": "ok", "score": float(i)} for i, r in enumerate(replies) if r.status == "ok")
    assert srv.count("q6") == 4 and srv.count("q7") == 1 and srv.count("q8") == 4 and srv.count("q0") == 1  # 1 + max_retries; 400 not retried
    assert [srv.count(f"q{i}") for i in range(1, 6)] == [2, 3, 2, 2, 2]
    assert all(s in caplog.text for s in ("HTTP 429", "HTTP 500", "timed out", "malformed response body"))
    assert "gave up after 4 attempts" in replies[6].error and "HTTP 400" in replies[7].error
    t429 = [e["t"] for e in srv.log if e["qid"] == "q1"]
    assert t429[1] - t429[0] >= 0.19  # Retry-After honoured
    assert all(e["auth"] == f"Bearer {SECRET}" and e["path"] == "/v1/chat/completions" for e in srv.log)
    part = srv.log[0]["body"]["messages"][1]["content"][0]
    assert part["type"] == "image_url" and base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == png.read_bytes()
    assert srv.log[0]["body"]["model"] == "fake-judge" and srv.log[0]["body"]["temperature"] == 0.0

    rows = [json.loads(l) for l in (tmp_path / "judge" / "cache.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == ["failed"] * 2 + ["ok"] * 10

    before = {f"q{i}": srv.count(f"q{i}") for i in range(12)}
    again = Judge(http_backend(srv.url, tmp_path), cache=tmp_path / "judge" / "cache.jsonl", concurrency=4).ask(reqs)
    new = {q: srv.count(q) - n for q, n in before.items()}
    assert {q: k for q, k in new.items() if k} == {"q6": 4, "q7": 1}  # only the failed ones are asked again
    assert [r.text for r in again if r.status == "ok"] == [r.text for r in replies if r.status == "ok"]

    assert "***" in caplog.text  # the echoed key was scrubbed from the retry log
    out = capsys.readouterr()
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks and SECRET not in caplog.text and SECRET not in out.out + out.err
    assert all(SECRET not in (r.error or "") + (r.text or "") for r in replies + again)
    assert SECRET not in repr(judge.backend) and SECRET not in json.dumps(judge.backend.__dict__, default=str)


def test_http_distillation_end_to_end_exposes_a_first_position_judge(tmp_path, monkeypatch, server_factory):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    srv = server_factory({}, reply=lambda qid: "Answer 1 looks right to me.\n{\"better\": 1, \"reason\": \"first\"}")
    png = tmp_path / "i.png"; Image.new("RGB", (4, 4)).save(png)
    recs = [PrefRecord(f"r{i}", ["i.png"], f"q{i}", f"good {i}", f"bad {i}", gold=1).to_dict() for i in range(8)]
    ann = distil_pairs(recs, Judge(http_backend(srv.url, tmp_path), concurrency=3), "pairwise")
    assert srv.count() == 16 and position_bias_report(ann)["first_position_win_rate"] == 1.0
    assert all(a["meta"]["judge"]["verdict"] == "undecided" for a in ann) and agreement_report(ann)["coverage"] == 0.0


def test_http_backend_needs_its_key_variable(monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="JUDGE_TEST_KEY is not set"): HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env="JUDGE_TEST_KEY")
    b = HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env=None)
    assert b._key() is None and b.fingerprint.startswith("http:m:")
    h = HTTPBackend.from_params({"base_url": "http://x/v1/", "model": "m", "api_key_env": None, "timeout_s": 2})
    assert (h.base_url, h.timeout_s) == ("http://x/v1", 2)


def test_judge_from_params(tmp_path, monkeypatch, hard):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    p = {"backend": "http", "concurrency": 3, "cache": str(tmp_path / "c.jsonl"), "protocol": "pairwise",
         "http": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "JUDGE_TEST_KEY", "max_retries": 2}}
    j = judge_from_params(p, progress=False)
    assert isinstance(j.backend, HTTPBackend) and (j.concurrency, j.backend.max_retries) == (3, 2) and isinstance(j.cache, ResponseCache)
    s = judge_from_params({"backend": "sim", "cache": None}, sim_backend=sim(hard), progress=False)
    assert isinstance(s.backend, SimBackend) and s.cache is None
    with pytest.raises(ValueError, match="pass the simulated judge's backend as sim_backend"): judge_from_params({"backend": "sim"})
    with pytest.raises(TypeError, match="must be a judge backend"): judge_from_params({"backend": "sim"}, sim_backend=sim(hard).judge)
    with pytest.raises(ValueError, match="judge.backend.*one of .sim., .http."): judge_from_params({"backend": "gpt"})


def test_missing_image_fails_the_request_only(tmp_path):
    b = HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, image_root=tmp_path)
    r = Judge(b).ask([make_request("pointwise", ["nope.png"], "q0", ["a"])])[0]
    assert r.status == "failed" and "cannot send an image" in r.error and "nope.png" in r.error


def test_connection_refused_is_retried_then_failed(monkeypatch):
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()  # nothing listens here
    b = HTTPBackend(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, timeout_s=0.2, max_retries=2, backoff_base_s=0.001)
    r = Judge(b).ask([make_request("pointwise", [], "q0", ["a"])])[0]
    assert r.status == "failed" and "gave up after 3 attempts" in r.error and "connection" in r.error


def test_backoff_and_retry_after():
    b = HTTPBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, backoff_base_s=1.0, backoff_max_s=5.0)
    waits = [b.wait_s(a) for a in range(5)]
    assert all(0.5 * 2 ** a <= w <= 2 ** a for a, w in enumerate(waits[:3])) and max(waits) == 5.0
    assert b.wait_s(0, retry_after=3.0) == 3.0 and b.wait_s(0, retry_after=100.0) == 5.0
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("0.5") == 0.5 and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_seconds("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds(future) <= 31


def test_reply_text_from_bodies():
    assert _reply_text(b'{"choices": [{"message": {"content": "hi"}}]}') == "hi"
    assert _reply_text(b'{"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}') == "ab"
    for bad in (b"", b"<html>", b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}'):
        with pytest.raises(_Retry, match="malformed"): _reply_text(bad)


# ---------------------------------------------------------------- T2I reformulation

def items(n):
    return [{"caption": f"two red circles {i}", "chosen_image": f"good/{i}.png", "rejected_image": f"bad/{i}.png", "group": "t2i", "gold": 1}
            for i in range(n)]


@pytest.mark.parametrize("n", [2, 10, 64, 1000])
def test_t2i_chosen_first_in_exactly_half(n):
    recs = t2i_pairs(items(n), seed=3)
    assert sum(r.meta["t2i"]["chosen_first"] for r in recs) == n // 2
    assert sum(r.images[0].startswith("good") for r in recs) == n // 2


def test_t2i_odd_and_deterministic():
    for n in (1, 7, 101):
        assert sum(t2i_first_flags(n, 0)) in (n // 2, n // 2 + 1)
    assert (t2i_first_flags(100, 5) == t2i_first_flags(100, 5)).all() and not (t2i_first_flags(100, 5) == t2i_first_flags(100, 6)).all()
    assert [r.to_dict() for r in t2i_pairs(items(20), seed=1)] == [r.to_dict() for r in t2i_pairs(items(20), seed=1)]


def test_t2i_records_are_well_formed(tmp_path):
    recs = t2i_pairs(items(12), seed=0)
    for r, it in zip(recs, items(12)):
        k = int(re.match(r"Image (\d) is better than Image (\d)\.", r.chosen).group(1))
        assert r.images[k - 1] == it["chosen_image"] and r.images[2 - k] == it["rejected_image"]
        assert r.rejected == f"Image {3 - k} is better than Image {k}." and r.question.count(PLACEHOLDER) == 2 == len(r.images)
        assert it["caption"] in r.question and "Image 1 or Image 2" in r.question and r.gold == 1 and r.task == "t2i"
        validate_pair(r)
        assert lf_dump(r)["conversations"][0]["value"] == r.question and lf_parse(lf_dump(r)) == r
    write_records(recs, tmp_path / "t2i.jsonl", "llamafactory")
    back, rep = read_preferences(tmp_path / "t2i.jsonl", "llamafactory", check_images=False)
    assert back == recs and rep.kept == 12


# ---------------------------------------------------------------- measurement

def test_measure_distillation_on_a_small_world():
    cfg = WorldConfig(n_train=10, n_test=300)
    world = {s: make_split(cfg, s, 0, "img")[0] for s in ("test_iid", "test_hard")}
    m = measure_distillation(world, cfg, seed=0)
    assert m["position_bias"]["ok"] and m["position_bias"]["knob"] == 0.2
    for s in ("test_iid", "test_hard"):
        pw = m["splits"][s]["pairwise"]
        assert pw["accuracy_decisive"] > pw["single_view_accuracy"] and 0.4 < pw["coverage"] < 1
    assert m["splits"]["test_iid"]["pointwise"]["strength_vs_gap"]["spearman"] > 0.3
    assert np.isnan(m["splits"]["test_hard"]["pointwise"]["strength_vs_gap"]["spearman"])  # one gap only
    assert list(m["splits"]["test_hard"]["pointwise"]["strength_vs_gap"]["mean_strength_by_gap"]) == [1]
    assert m["splits"]["test_hard"]["pointwise"]["accuracy_decisive"] < m["splits"]["test_iid"]["pointwise"]["accuracy_decisive"]


# ---------------------------------------------------------------- the rubric

def test_default_prompt_and_request_key_are_pinned():
    "The default rubric is the system message, and a request's key (part of every cache key) is what it always was."
    r = make_request("pairwise", ["a.png"], "How many?", ["x", "y"])
    assert r.messages[0] == {"role": "system", "content": RUBRIC} and r.key == "1a70ab5fd436551c"  # computed with the code before the rubric became a setting
    assert Judge(Scripted(str)).request("pairwise", ["a.png"], "How many?", ["x", "y"]).key == r.key


def test_custom_rubric_reaches_a_fake_backend(hard):
    seen = []
    class Recording(Scripted):
        def complete(self, req): seen.append(req); return '{"better": 1}'
    distil_pairs(hard[:2], Judge(Recording(None), rubric="Prefer the shorter answer."), "pairwise")
    assert len(seen) == 4 and all(q.messages[0] == {"role": "system", "content": "Prefer the shorter answer."} for q in seen)
    seen.clear()
    score_lists([{"id": "l", "images": ["a.png"], "question": "q?", "answers": ["a", "b", "c"]}], Judge(Recording(None), rubric="R", system=False))
    assert all(len(q.messages) == 1 and q.messages[0]["content"][0] == {"type": "text", "text": "R\n\n"} for q in seen)


def test_rubric_from_params_reaches_the_http_body(tmp_path, monkeypatch, server_factory):
    "A rubric file of the project and `system: false` from the params group, seen in the body a real HTTP server receives."
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    srv = server_factory({}, reply=lambda qid: '{"better": 1}')
    (tmp_path / "prompts").mkdir(); (tmp_path / "prompts" / "rubric.txt").write_text("Judge helpfulness, not length.\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "i.png")
    recs = [PrefRecord("r1", ["i.png"], "q1", "good", "bad", gold=1).to_dict()]
    http = {"base_url": srv.url, "model": "fake-judge", "api_key_env": "JUDGE_TEST_KEY", "max_retries": 0, "image_root": str(tmp_path)}
    j = judge_from_params({"backend": "http", "http": http, "rubric": "prompts/rubric.txt"}, progress=False, root=tmp_path)
    distil_pairs(recs, j, "pairwise")
    assert [e["body"]["messages"][0] for e in srv.log] == [{"role": "system", "content": "Judge helpfulness, not length."}] * 2
    j = judge_from_params({"backend": "http", "http": http, "rubric": "Only the colours count.", "system": False}, progress=False, root=tmp_path)
    distil_pairs(recs, j, "pairwise")
    body = srv.log[-1]["body"]
    assert [m["role"] for m in body["messages"]] == ["user"] and body["messages"][0]["content"][0] == {"type": "text", "text": "Only the colours count.\n\n"}
    # default settings: today's prompt, today's cache keys
    d = judge_from_params({"backend": "http", "http": http}, progress=False, root=tmp_path)
    req = make_request("pairwise", ["i.png"], "q1", ["good", "bad"])
    assert d.request("pairwise", ["i.png"], "q1", ["good", "bad"]).messages == req.messages
    assert d.cache_key(d.request("pairwise", ["i.png"], "q1", ["good", "bad"])) == Judge(d.backend).cache_key(req)


def test_rubric_setting_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    assert load_rubric(None) == RUBRIC and load_rubric("Judge by the rules in rubric.txt", tmp_path) == "Judge by the rules in rubric.txt"
    with pytest.raises(ConfigError, match="no such rubric file") as ei: load_rubric("missing.txt", tmp_path, "construct.distil.rubric")
    assert ei.value.key == "construct.distil.rubric"
    with pytest.raises(ConfigError, match="must lie inside the project"): load_rubric("../outside.txt", tmp_path)
    with pytest.raises(ConfigError, match="is empty"): load_rubric("empty.txt", tmp_path)
    with pytest.raises(ConfigError, match="expected rubric text"): load_rubric("   ", tmp_path)
    with pytest.raises(ConfigError, match="construct.distil.system"): judge_from_params({"backend": "sim", "system": "no"}, where="construct.distil")
