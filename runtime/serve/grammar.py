"""Grammar-constrained decoding for `response_format` (json_object, json_schema) with llguidance.

llguidance rather than xgrammar or outlines-core: its wheels on PyPI are abi3 (one per platform
for every Python >= 3.10: manylinux x86-64 and aarch64, macOS arm64, Windows) and need nothing
else, while xgrammar's require torch and transformers, which the runtime must not need, and
outlines-core builds one wheel per Python version and a whole-vocabulary index per schema before
the first token. llguidance reads the bundle's tokenizer.json itself and computes each step's
token mask lazily (0.13 ms for a small schema over the embedded model's vocabulary).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import RequestError

try:
    import llguidance
except ImportError:   # the serve extra is optional
    llguidance = None  # type: ignore[assignment]


def _need() -> None:
    if llguidance is None:
        raise RequestError("response_format needs llguidance: pip install 'phi4edge[serve]'")


class Grammars:
    """Compiles response formats for one tokenizer (read once, at the first constrained request)."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, end_ids: set[int]):
        self._args = (str(tokenizer_json), vocab_size, sorted(end_ids))
        self._tokenizer = None
        self.vocab_size = vocab_size

    @property
    def tokenizer(self):
        _need()
        if self._tokenizer is None:
            path, vocab, ends = self._args
            self._tokenizer = llguidance.LLTokenizer(path, n_vocab=vocab, eos_token=ends)
        return self._tokenizer

    def compile(self, schema: dict) -> JsonConstraint:
        """A fresh constraint for one request; a schema llguidance cannot take is a RequestError."""
        _need()
        try:
            # compact separators and no free whitespace: an untrained model cannot pad forever
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_flexible": False})
        except ValueError as e:
            raise RequestError(f"response_format: the JSON schema is not usable ({e})") from None
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise RequestError(f"response_format: the JSON schema is not supported ({matcher.get_error()[:300]})")
        return JsonConstraint(matcher, self.vocab_size)


class JsonConstraint:
    """A logits processor for Model.stream: only tokens the grammar allows keep their logits; the
    end tokens become allowed once the JSON is complete, and then alone."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.consumed = 0

    def __call__(self, generated: list[int], logits: np.ndarray) -> np.ndarray:
        for token in generated[self.consumed:]:
            if not self.matcher.consume_token(token):
                raise RequestError(f"response_format: token {token} broke the grammar ({self.matcher.get_error()[:200]})")
        self.consumed = len(generated)
        bits = np.frombuffer(self.matcher.compute_bitmask(), np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool)
        return np.where(allowed, logits, -np.inf).astype(np.float32)
