"""`phi4edge serve` on the embedded model, driven by the official openai client and by raw HTTP:
the answers `phi4edge run` gives, streamed or not; JSON-schema output that validates every time;
the prompt cache's counts on a second turn; OpenAI-shaped refusals of hostile requests; a client
that leaves mid-answer cancels it; time limits; the API key."""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest
from click.testing import CliRunner

from phi4edge.cli import main

from .serving import (
    AUDIO,
    IMAGE,
    SPEC,
    TEXT_ANSWER,
    TEXT_PROMPT,
    Server,
    audio_part,
    embedded_bundle,  # noqa: F401
    image_part,
    post,
)

SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["shape", "colour", "count", "sure", "words", "note"],
          "properties": {"shape": {"enum": ["circle", "square", "triangle", "diamond"]},
                         "colour": {"type": "string", "enum": ["red", "green", "blue"]},
                         "count": {"type": "integer", "minimum": -5, "maximum": 120},
                         "sure": {"type": "boolean"},
                         "words": {"type": "array", "items": {"enum": ["one", "two", "three"]}, "minItems": 1, "maxItems": 3},
                         "note": {"type": "string", "maxLength": 12, "pattern": "^[a-z ]*$"}}}
LONG = {"type": "array", "items": {"enum": ["one", "two"]}, "minItems": 3000, "maxItems": 3000}   # ~15000 tokens


@pytest.fixture(scope="module")
def server(embedded_bundle, tmp_path_factory):  # noqa: F811
    s = Server(embedded_bundle, tmp_path_factory.mktemp("serve") / "serve.log", "--max-body-mb", "1",
               "--max-context", "16384")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def model_id(server, adapter: str | None = None) -> str:
    name = server.healthy()["model"]
    return f"{name}:{adapter}" if adapter else name


def long_body(server) -> bytes:
    return json.dumps({"model": model_id(server), "messages": [{"role": "user", "content": TEXT_PROMPT}], "stream": True,
                       "max_tokens": 16000, "response_format": {"type": "json_schema", "json_schema": {
                           "name": "long", "schema": LONG}}}).encode()


KINDS = {"text": ([], TEXT_PROMPT, TEXT_ANSWER),
         "image": (["image"], SPEC["image"]["prompt"], SPEC["image"]["answer"]),
         "audio": (["audio"], SPEC["audio"]["prompt"], SPEC["audio"]["answer"]),
         "image+audio": (["image", "audio"], SPEC["image"]["prompt"], None)}


@pytest.mark.parametrize("kind", KINDS)
def test_answers_are_phi4edge_runs_streamed_or_not(server, client, embedded_bundle, kind):  # noqa: F811
    media, prompt, answer = KINDS[kind]
    args = [a for m in media for a in (f"--{m}", str(IMAGE if m == "image" else AUDIO))]
    ran = CliRunner().invoke(main, ["run", str(embedded_bundle), "--prompt", prompt, "--json", *args])
    assert ran.exit_code == 0, ran.output
    expected = json.loads(ran.output)
    assert answer is None or expected["text"] == answer
    parts = [image_part() if m == "image" else audio_part() for m in media] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": parts if media else prompt}]
    reply = client.chat.completions.create(model=model_id(server), messages=messages, max_tokens=256)
    assert reply.choices[0].message.content == expected["text"]
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == len(expected["prompt_token_ids"])
    assert reply.usage.completion_tokens == len(expected["token_ids"])
    chunks = list(client.chat.completions.create(model=model_id(server), messages=messages, max_tokens=256, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(expected["token_ids"])
    body = json.dumps({"model": model_id(server), "messages": messages}).encode()
    status, raw = post(f"{server.url}/v1/chat/completions", body)
    assert status == 200 and raw["choices"][0]["message"]["content"] == expected["text"]


def test_json_schema_output_validates_every_time(server, client):
    seen = set()
    for seed in range(12):   # sampled at temperature 1: different answers, each valid
        reply = client.chat.completions.create(
            model=model_id(server), messages=[{"role": "user", "content": TEXT_PROMPT}], temperature=1.0, seed=seed,
            max_tokens=200, response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}})
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(value := json.loads(reply.choices[0].message.content), SCHEMA)
        seen.add(json.dumps(value))
    assert len(seen) > 3
    body = dict(model=model_id(server), messages=[{"role": "user", "content": SPEC["image"]["prompt"]}], seed=3,
                temperature=1.0, max_tokens=64, response_format={"type": "json_object"})
    whole = client.chat.completions.create(**body).choices[0].message.content
    assert isinstance(json.loads(whole), dict)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True))
    assert streamed == whole   # the same seed samples the same tokens


def test_second_turn_prefills_only_its_new_tokens(server, client):
    first = [{"role": "user", "content": [image_part(), {"type": "text", "text": SPEC["image"]["prompt"]}]}]
    one = client.chat.completions.create(model=model_id(server), messages=first)
    assert one.choices[0].message.content == SPEC["image"]["answer"]
    second = first + [{"role": "assistant", "content": one.choices[0].message.content},
                      {"role": "user", "content": "Repeat after me: one two three."}]
    two = client.chat.completions.create(model=model_id(server), messages=second)
    cached = two.usage.prompt_tokens_details.cached_tokens
    # the cache holds turn 1's prompt and answer but the answer's end token (sampled, never fed)
    assert cached == one.usage.prompt_tokens + one.usage.completion_tokens - 1
    print(f"turn 1: {one.usage.prompt_tokens} prompt tokens; turn 2: {two.usage.prompt_tokens}, "
          f"prefilled {two.usage.prompt_tokens - cached} (cached {cached})")
    assert two.usage.prompt_tokens - cached <= 16


def test_sampling_stop_strings_lengths_and_adapters(server, client):
    ask = lambda **kw: client.chat.completions.create(model=model_id(server), messages=[
        {"role": "user", "content": kw.pop("content", TEXT_PROMPT)}], **kw).choices[0]
    assert ask(stop=[" five"]).message.content == "three four" and ask(stop="six").finish_reason == "stop"
    short = ask(max_completion_tokens=2)
    assert short.finish_reason == "length" and short.message.content == "three four"
    sampled = [ask(temperature=1.5, seed=s, top_p=0.99).message.content for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]
    image = [image_part(), {"type": "text", "text": SPEC["image"]["prompt"]}]
    routed = client.chat.completions.create(model=model_id(server), messages=[{"role": "user", "content": image}])
    base = client.chat.completions.create(model=model_id(server, "none"), messages=[{"role": "user", "content": image}])
    assert routed.choices[0].message.content == SPEC["image"]["answer"]
    assert base.choices[0].message.content == "I cannot see an image."   # the skill lives in the adapter
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == model_id(server) and {model_id(server, a) for a in ("vision", "speech", "none")} <= set(ids)


def _refused(server, body: bytes, status: int, words: str, headers: dict | None = None) -> None:
    got, reply = post(f"{server.url}/v1/chat/completions", body, headers)
    assert got == status and words in reply["error"]["message"], (got, reply)
    assert set(reply["error"]) == {"message", "type", "param", "code"}


def test_hostile_requests_get_clean_errors(server, client):
    good = {"model": model_id(server), "messages": [{"role": "user", "content": TEXT_PROMPT}]}
    with_part = lambda part: json.dumps({**good, "messages": [{"role": "user", "content": [part]}]}).encode()
    _refused(server, b'{"model": "x", "messages": [', 400, "not valid JSON")
    _refused(server, b"[" * 100000 + b"]" * 100000, 400, "not valid JSON")
    _refused(server, b'"just a string"', 400, "must be a JSON object")
    _refused(server, json.dumps({**good, "tools": []}).encode(), 400, "unrecognized request argument: 'tools'")
    _refused(server, json.dumps({**good, "n": 2}).encode(), 400, "'n' is not supported")
    _refused(server, json.dumps({**good, "temperature": "hot"}).encode(), 400, "'temperature' must be a number")
    _refused(server, json.dumps({**good, "max_tokens": -1}).encode(), 400, "at least 1")
    _refused(server, json.dumps({**good, "model": "gpt-4o"}).encode(), 404, "does not exist")
    _refused(server, with_part({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}), 400,
             "messages[0].content[0].image_url: not valid base64")
    _refused(server, with_part({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}), 400,
             "messages[0].content[0]: <bytes>")   # valid base64, not an image
    _refused(server, with_part({"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}}), 400,
             "not a readable audio file")
    _refused(server, with_part({"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "aiff"}}), 400,
             "format must be one of")
    _refused(server, with_part({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), 400,
             "fetches nothing")
    _refused(server, with_part({"type": "image_url", "image_url": {"url": str(IMAGE)}}), 400, "--allow-local-files")
    _refused(server, with_part({"type": "video_url"}), 400, "content part type")
    _refused(server, json.dumps({**good, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"type": "nonsense"}}}}).encode(), 400, "not a valid JSON schema")
    _refused(server, json.dumps(good).encode(), 415, "application/json", {"Content-Type": "text/plain"})
    _refused(server, json.dumps({**good, "messages": [{"role": "user", "content": "one " * 20000}]}).encode(), 400,
             "context")
    # a body announced as too large is refused before it is read (the client may still be sending),
    # and a chunked one, which announces nothing, once it passes the limit
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    conn.send(b"{" + b" " * 1000)
    response = conn.getresponse()
    assert response.status == 413 and "at most 1048576" in json.loads(response.read())["error"]["message"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(3):
        conn.send(b"80000\r\n" + b" " * 0x80000 + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413 and "over 1048576" in json.loads(response.read())["error"]["message"]
    conn.close()
    status, reply = post(f"{server.url}/v1/no/such/route", b"{}")
    assert status == 404 and reply["error"]["code"] == "not_found"
    with pytest.raises(urllib.error.HTTPError) as wrong_method:
        urllib.request.urlopen(f"{server.url}/v1/chat/completions", timeout=10)
    assert wrong_method.value.code == 405 and "error" in json.loads(wrong_method.value.read())
    assert client.chat.completions.create(**good).choices[0].message.content == TEXT_ANSWER   # unharmed


def _stream_then_leave(server, chunks: int) -> float:
    """Start a long streamed answer over a raw socket, read `chunks` events, hang up; the time it took."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    body = long_body(server)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    start, seen = time.monotonic(), b""
    while seen.count(b"data: ") < chunks:
        seen += sock.recv(65536)
    sock.close()
    return time.monotonic() - start


def _idle_within(server, seconds: float) -> float:
    start = time.monotonic()
    while server.healthy()["running"]:
        assert time.monotonic() - start < seconds, "the answer went on after its client left"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_client_leaving_mid_stream_cancels_its_answer(server, client):
    reply = client.chat.completions.create(model=model_id(server), messages=[{"role": "user", "content": TEXT_PROMPT}],
                                           max_tokens=300, response_format={"type": "json_schema", "json_schema": {
                                               "name": "n", "schema": {**LONG, "minItems": 60, "maxItems": 60}}})
    per_token = reply.usage.completion_tokens   # ~5 tokens per item; the long schema's answer takes 50x longer
    assert per_token > 100
    read = _stream_then_leave(server, chunks=5)
    stopped = _idle_within(server, 3.0)
    print(f"left after {read:.2f} s; the worker was idle {stopped:.2f} s later")
    # non-streaming: the client gives up waiting
    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=0.5).chat.completions.create(
            model=model_id(server), messages=[{"role": "user", "content": TEXT_PROMPT}], max_tokens=16000,
            response_format={"type": "json_schema", "json_schema": {"name": "long", "schema": LONG}})
    _idle_within(server, 3.0)
    assert client.chat.completions.create(model=model_id(server), messages=[
        {"role": "user", "content": TEXT_PROMPT}]).choices[0].message.content == TEXT_ANSWER


def test_time_limit_cuts_answers_and_refuses_stale_requests(embedded_bundle, tmp_path):  # noqa: F811
    server = Server(embedded_bundle, tmp_path / "serve.log", "--timeout", "1", "--queue-timeout", "0.5")
    try:
        import threading
        results: dict = {}
        first = threading.Thread(target=lambda: results.update(first=post(
            f"{server.url}/v1/chat/completions", long_body(server).replace(b'"stream": true', b'"stream": false'))))
        first.start()
        time.sleep(0.2)
        results["second"] = post(f"{server.url}/v1/chat/completions", long_body(server))
        first.join()
        status, reply = results["first"]
        assert status == 200 and reply["choices"][0]["finish_reason"] == "length"
        assert reply["phi4edge"]["stopped_by"] == "time limit"
        status, reply = results["second"]   # waited behind it past its own limit
        assert status == 503 and reply["error"]["code"] == "timeout"
    finally:
        server.stop()


def test_api_key_and_default_address(embedded_bundle, tmp_path):  # noqa: F811
    server = Server(embedded_bundle, tmp_path / "serve.log", "--api-key", "s3cret")
    try:
        messages = [{"role": "user", "content": TEXT_PROMPT}]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model=model_id(server), messages=messages)
        status, reply = post(f"{server.url}/v1/chat/completions", json.dumps({"model": model_id(server),
                                                                              "messages": messages}).encode())
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        assert server.healthy()["status"] == "ok"   # the health check needs no key
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=model_id(server), messages=messages).choices[0].message.content == TEXT_ANSWER
    finally:
        log = server.stop()
    assert "http://127.0.0.1:" in log   # bound to loopback unless --host says otherwise
