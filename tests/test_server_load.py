"""The bounded load test on loopback (scripts/serve_load.py; `make serve-load` runs the same with
its own server): 8 clients x 20 mixed requests, every answer the one the request gets alone and no
5xx; then a burst past the queue bound answered with clean 429s, and the server still answering."""
from __future__ import annotations

import json

from scripts.serve_load import burst, cases, expected_answers, request, run_clients

from .serving import Server, embedded_bundle  # noqa: F401


def test_eight_clients_then_a_burst_past_the_queue(embedded_bundle, tmp_path):  # noqa: F811
    server = Server(embedded_bundle, tmp_path / "serve.log", "--max-queue", "8")
    try:
        model = server.healthy()["model"]
        all_cases = cases(items=4)
        expected = expected_answers(server.url, model, all_cases)
        load = run_clients(server.url, model, all_cases, expected, clients=8, per_client=20)
        print(json.dumps(load))
        assert load["statuses"] == {200: 160} and not load["wrong"], load
        flood = burst(server.url, model, 32)
        print(json.dumps(flood))
        statuses = flood["statuses"]
        assert set(statuses) <= {200, 429} and statuses.get(429, 0) >= 32 - 9 - 2, flood   # 1 running + 8 waiting
        assert flood["valid_answers"] == statuses.get(200) and set(flood["error_codes"]) == {"queue_full"}
        status, text, _ = request(server.url, all_cases[0].body(model))
        assert status == 200 and text == expected[0]
    finally:
        server.stop()
