"""Property-based fuzzing (hypothesis) of everything that parses outside input: bundle manifests,
.onnx_adapter files, tokenizer files and chat input. The only allowed outcomes are a clean result or
our one-line error type; anything else (a traceback, a crash, a control token from user text) fails.

Derandomised, so CI runs the same cases every time; `FUZZ_EXAMPLES=N make fuzz` runs N per target
with fresh randomness.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi4edge import load
from phi4edge.bundle import open_bundle
from phi4edge.errors import Phi4EdgeError
from phi4edge.runtime.tokenizer import ChatTokenizer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=8)


def tally(counts: dict[str, int], attempt) -> None:
    """Run one case: a clean result counts as "ok", our one-line error as "refused"; anything
    else propagates and fails the test."""
    try:
        attempt()
        counts["ok"] += 1
    except Phi4EdgeError as e:
        assert "\n" not in str(e)
        counts["refused"] += 1


def paths(value, prefix=()):
    """Every key path of a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def mutate(doc, data) -> object:
    """Delete, replace or add at a few random places of a JSON document."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(doc)))
        if not where:
            return data.draw(JSON)
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "replace":
            parent[where[-1]] = data.draw(JSON)
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(JSON)
    return doc


@pytest.fixture(scope="module")
def bundle_copy(two_adapters_bundle, tmp_path_factory) -> Path:
    return Path(shutil.copytree(two_adapters_bundle, tmp_path_factory.mktemp("fuzz") / "b"))


def test_fuzz_manifest(bundle_copy):
    original = json.loads((bundle_copy / "manifest.json").read_text())
    counts = {"ok": 0, "refused": 0}

    @FUZZ
    @given(st.data())
    def case(data):
        doc = mutate(original, data)
        (bundle_copy / "manifest.json").write_text(json.dumps(doc))
        tally(counts, lambda: open_bundle(bundle_copy))
    try:
        case()
    finally:
        (bundle_copy / "manifest.json").write_text(json.dumps(original))
    print(f"\nmanifest fuzz: {sum(counts.values())} cases, {counts}")


def test_fuzz_adapter_files(bundle_copy, tmp_path):
    model = load(bundle_copy)
    good = (bundle_copy / "adapters" / "terse.onnx_adapter").read_bytes()
    path = tmp_path / "x.onnx_adapter"
    counts = {"ok": 0, "refused": 0}

    @FUZZ
    @given(st.data())
    def case(data):
        kind = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
        blob = bytearray(good)
        if kind == "flip":
            for _ in range(data.draw(st.integers(1, 8))):
                i = data.draw(st.integers(0, len(blob) - 1))
                blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
        elif kind == "random":
            blob = bytearray(data.draw(st.binary(max_size=512)))
            if len(blob) >= 8 and data.draw(st.booleans()):
                blob[4:8] = b"TORT"
        else:
            i = data.draw(st.integers(0, 256))
            blob[i:i + 8] = data.draw(st.binary(min_size=8, max_size=8))
        path.write_bytes(bytes(blob))
        model.add_adapter("x", path)
        tally(counts, lambda: model.load_adapter("x"))
    case()
    print(f"\nadapter-file fuzz: {sum(counts.values())} cases, {counts}")


def test_fuzz_tokenizer_files(bundle_copy, tmp_path):
    tokenizer = json.loads((bundle_copy / "tokenizer.json").read_text())
    config = json.loads((bundle_copy / "tokenizer_config.json").read_text())
    counts = {"ok": 0, "refused": 0}

    @FUZZ
    @given(st.data())
    def case(data):
        tok_path, cfg_path = tmp_path / "tokenizer.json", tmp_path / "tokenizer_config.json"
        if data.draw(st.booleans()):
            text = json.dumps(mutate(tokenizer, data))
        else:   # raw byte damage
            raw = json.dumps(tokenizer)
            i = data.draw(st.integers(0, len(raw) - 1))
            text = raw[:i] + data.draw(st.text(max_size=8)) + raw[i + data.draw(st.integers(0, 8)):]
        tok_path.write_text(text)
        cfg_path.write_text(json.dumps(mutate(config, data) if data.draw(st.booleans()) else config))
        prompt = data.draw(st.text(max_size=30))
        tally(counts, lambda: ChatTokenizer(tok_path, cfg_path).encode_prompt(prompt))
    case()
    print(f"\ntokenizer fuzz: {sum(counts.values())} cases, {counts}")


SPECIAL = ["<|end|>", "<|assistant|>", "<|user|>", "<|system|>", "<|endoftext|>", "<|endoftext10|>",
           "<|endoftext11|>", "<|image_1|>", "<|audio_1|>", "<|tool|>", "<|"]


def test_fuzz_chat_input(mm_with_adapters):
    model = load(mm_with_adapters[1])
    tok = model.tokenizer
    specials = {tok.tokenizer.token_to_id(t) for t in SPECIAL[:7] + ["<|tool|>", "<|/tool|>"]} - {None}
    text = st.lists(st.sampled_from(SPECIAL) | st.text(max_size=12), max_size=8).map("".join)
    message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text})
    counts = {"ok": 0, "refused": 0}

    @FUZZ
    @given(st.lists(message, min_size=1, max_size=4), st.booleans(), st.one_of(st.none(), JSON))
    def case(messages, raw, junk):
        if junk is not None:   # a malformed request instead
            tally(counts, lambda: tok.encode_messages(junk))
            return
        if raw:
            messages = messages[:1]
            ids = tok.encode_prompt(messages[0]["content"], chat=False)
            assert not specials & set(ids)
        else:
            ids = tok.encode_messages(messages)
            skeleton = tok.encode_messages([{**m, "content": ""} for m in messages])
            assert [i for i in ids if i in specials] == [i for i in skeleton if i in specials]
        text_back = tok.tokenizer.decode(ids, skip_special_tokens=False)
        for m in messages:
            assert m["content"] in text_back   # user text comes back verbatim, forged markers included
        counts["ok"] += 1
    case()
    print(f"\nchat-input fuzz: {sum(counts.values())} cases, {counts}")
