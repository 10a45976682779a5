"""A stand-in for an MLLM judge on loopback: an OpenAI-compatible `/v1/chat/completions` server that looks at the images.

    .venv/bin/python examples/byod/fake_judge.py --port 8000

It reads the example's images (the data URLs the project's HTTP judge sends), finds the shape's colour and form, and prefers the
answer that names them; when it cannot tell the answers apart it says "1", like a judge with a position bias. It is for the
example and the tests: a real run points `http.base_url` at a served judge model instead.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from make_example import COLOURS, SHAPES


def shape_of(url: str) -> tuple[str, str]:
    "(colour, form) of the one shape in a data-URL image: the pixels far from the corner's background colour."
    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), float)
    ink = np.abs(im - im[0, 0]).sum(-1) > 60
    if not ink.any(): return "", ""
    ys, xs = np.nonzero(ink)
    fill = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean()
    rgb = im[ink].mean(0)
    colour = min(COLOURS, key=lambda c: ((np.array(COLOURS[c]) - rgb) ** 2).sum())
    return colour, "square" if fill > 0.9 else "circle"


def right_answer(question: str, images: list[tuple[str, str]], answer: str) -> bool:
    "Whether `answer` states what the images show, for the example's three kinds of question."
    a = answer.lower()
    if m := re.search(r"which image shows a (\w+) (\w+)", question.lower()):
        hits = [k for k, (c, _) in enumerate(images) if c == m.group(1)]
        return bool(hits) and ("first" if hits[0] == 0 else "second") in a
    colour, form = images[0] if images else ("", "")
    if "what shape" in question.lower(): return form in a and not any(s in a for s in SHAPES if s != form)
    return colour in a and not any(c in a for c in COLOURS if c != colour)


def reply(body: dict) -> str:
    "The judge's reply (JSON text) to one chat-completions request of the project's judge protocol."
    parts = next(m for m in body["messages"] if m["role"] == "user")["content"]
    images = [shape_of(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
    text = "".join(p["text"] for p in parts if p["type"] == "text")
    question = text.split("Question:", 1)[-1].split("\n\nAnswer", 1)[0].strip()
    answers = re.findall(r"Answer(?: \d+)?:\n(.*?)(?=\n\nAnswer \d+:|\n\n(?:Rate|Which))", text, re.S)
    right = [right_answer(question, images, a) for a in answers]
    if "Rate every answer" in text: return json.dumps({"scores": [10 if x else 2 for x in right], "reason": "checked each answer"})
    if "Rate the answer" in text: return json.dumps({"score": 10 if right[0] else 2, "reason": "checked the answer"})
    better = 2 if right[1] and not right[0] else 1  # undecided: the first, as a position-biased judge would
    return json.dumps({"better": better, "reason": "the other answer misstates the image"})


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = json.dumps({"id": "fake", "object": "chat.completion", "model": body.get("model"),
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": reply(body)}, "finish_reason": "stop"}]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(out)))
        self.end_headers(); self.wfile.write(out)

    def log_message(self, *a): pass


def serve(port: int = 0) -> ThreadingHTTPServer:
    "Start the judge on 127.0.0.1:`port` (0: any free port) in a daemon thread; `server.server_address[1]` is its port."
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8000)
    s = serve(ap.parse_args().port)
    print(f"fake judge on http://127.0.0.1:{s.server_address[1]}/v1"); threading.Event().wait()
