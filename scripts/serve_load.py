"""Load test of `phi4edge serve` on loopback: concurrent clients sending mixed requests (text,
streamed text, image, audio, JSON schema), every answer checked against the model's answer to the
same request alone; latency percentiles and throughput; then a burst past the queue bound, which
must be refused cleanly (429), and the server answering after it.

    python -m scripts.serve_load [--bundle B] [--clients 8] [--requests 20] [--burst 48]   # `make serve-load`

The embedded model's int4 bundle is exported to a temporary folder unless --bundle names one.
Requests go to 127.0.0.1 only, bounded in number; the server is started and stopped here.
"""
from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDED = Path(__file__).resolve().parents[1] / "models" / "embedded"
# A small schema whose every answer is complete within a few tokens (bounded enum, integer range).
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["circle", "square", "triangle", "diamond"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 9},
                                           "sure": {"type": "boolean"}},
          "required": ["answer", "count", "sure"], "additionalProperties": False}


def _data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@dataclass(frozen=True)
class Case:
    """One request body (without the model id) and whether to stream it."""

    kind: str
    messages: list
    stream: bool = False
    schema: dict | None = None

    def body(self, model: str, max_tokens: int = 32) -> dict:
        body = {"model": model, "messages": self.messages, "max_tokens": max_tokens, "stream": self.stream}
        if self.schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": self.schema}}
        return body


def cases(items: int = 4) -> list[Case]:
    """Mixed requests from the embedded model's held-out sets: `items` of each kind."""
    texts = [json.loads(line) for line in (EMBEDDED / "eval" / "text.jsonl").read_text().splitlines()[:items]]
    images = [json.loads(line) for line in (EMBEDDED / "eval" / "image.jsonl").read_text().splitlines()[:items]]
    audios = [json.loads(line) for line in (EMBEDDED / "eval" / "speech.jsonl").read_text().splitlines()[:items]]
    out = []
    folder = EMBEDDED / "eval"
    for i in range(items):
        text = [{"role": "user", "content": texts[i]["prompt"]}]
        out += [Case("text", text), Case("stream", text, stream=True), Case("json", text, schema=SCHEMA),
                Case("image", [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + _data(folder / images[i]["file"])}},
                    {"type": "text", "text": images[i]["prompt"]}]}]),
                Case("audio", [{"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": _data(folder / audios[i]["file"]), "format": "ogg"}},
                    {"type": "text", "text": audios[i]["prompt"]}]}])]
    return out


def request(url: str, body: dict, timeout: float = 120) -> tuple[int, str, dict]:
    """POST a chat completion: (status, answer text, the last JSON object: response, usage chunk or error)."""
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if not body.get("stream"):
                reply = json.loads(r.read())
                return r.status, reply["choices"][0]["message"]["content"], reply
            text, last = "", {}
            for line in r:
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    last = json.loads(line[6:])
                    for choice in last.get("choices", []):
                        text += choice["delta"].get("content") or ""
            return r.status, text, last
    except urllib.error.HTTPError as e:
        return e.code, "", json.loads(e.read() or b"{}")


def expected_answers(url: str, model: str, all_cases: list[Case]) -> list[str]:
    """Each request's answer when it is alone on the server (the reference for the load)."""
    answers = []
    for case in all_cases:
        status, text, reply = request(url, case.body(model))
        if status != 200:
            raise RuntimeError(f"{case.kind}: {status} {reply}")
        answers.append(text)
    return answers


def run_clients(url: str, model: str, all_cases: list[Case], expected: list[str], clients: int,
                per_client: int) -> dict:
    """`clients` threads, each sending `per_client` requests back to back (client c, request i:
    case (c * 7 + i) mod len, so the kinds interleave). Answers are compared with `expected`."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    wrong: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(per_client):
            k = (c * 7 + i) % len(all_cases)
            start = time.perf_counter()
            status, text, _ = request(url, all_cases[k].body(model))
            with lock:
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
                if status != 200 or text != expected[k]:
                    wrong.append(f"{all_cases[k].kind} #{k}: {status} {text!r} (expected {expected[k]!r})")

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "requests": len(latencies), "statuses": dict(statuses), "wrong": wrong,
            "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "latency_ms": {p: round(float(np.percentile(ms, int(p[1:]))), 1) for p in ("p50", "p90", "p99")} |
                          {"max": round(float(ms.max()), 1)}}


def burst(url: str, model: str, n: int, items: int = 120) -> dict:
    """`n` requests at once, each a JSON array of `items` strings (a few hundred tokens): past the
    queue bound the server must refuse, not fail. Statuses and the accepted answers' validity."""
    schema = {"type": "array", "items": {"enum": ["one", "two"]}, "minItems": items, "maxItems": items}
    body = Case("burst", [{"role": "user", "content": "Count from three to seven."}], schema=schema).body(model, 8 * items)
    results: list[tuple[int, str, dict]] = []
    lock = threading.Lock()
    gate = threading.Barrier(n)

    def one() -> None:
        gate.wait()
        result = request(url, body)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    valid = sum(1 for status, text, reply in results if status == 200 and reply["choices"][0]["finish_reason"] == "stop"
                and len(json.loads(text)) == items)
    codes = [reply.get("error", {}).get("code") for status, _, reply in results if status != 200]
    return {"sent": n, "statuses": dict(Counter(s for s, _, _ in results)), "valid_answers": valid,
            "error_codes": dict(Counter(codes))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20, help="per client")
    ap.add_argument("--items", type=int, default=4, help="held-out items of each kind")
    ap.add_argument("--burst", type=int, default=48)
    ap.add_argument("--max-queue", type=int, default=8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from phi4edge.export import export_model
            bundle = export_model(EMBEDDED / "checkpoint", Path(tmp) / "embedded-int4", show_progress=False)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "phi4edge.cli", "serve", str(bundle), "--port", str(port),
                                   "--max-queue", str(args.max_queue)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            model = Path(bundle).name
            all_cases = cases(args.items)
            expected = expected_answers(url, model, all_cases)
            report = {"load": run_clients(url, model, all_cases, expected, args.clients, args.requests),
                      "burst": burst(url, model, args.burst)}
            after = request(url, all_cases[0].body(model))
            report["after_burst"] = {"status": after[0], "correct": after[1] == expected[0]}
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    print(json.dumps(report, indent=1))
    ok = not report["load"]["wrong"] and report["after_burst"]["correct"] and \
        set(report["burst"]["statuses"]) <= {200, 429}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
