"""What the decoder's KV cache holds, so that the next turn of a conversation prefills only its
new tokens and does not encode its earlier images and audio again.

Each cached position has a key: its token id, or for an image/audio placeholder the digest of the
media item whose feature row it holds and the row's index (the decoder scatters the k-th row of
features into the k-th placeholder). Two prompts share a cached prefix exactly as far as their keys
agree, under the same adapter (LoRA changes the keys and values) and the same rotary factors.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Key = int | tuple[str, int]   # a token id, or (media item digest, row) at a placeholder


def digest(*arrays: np.ndarray, salt: bytes = b"") -> str:
    """A content digest of a media item's prepared arrays (shapes and dtypes included)."""
    h = hashlib.blake2b(salt, digest_size=16)
    for a in arrays:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def position_keys(ids: Sequence[int], items: Mapping[int, Sequence[tuple[str, int]]]) -> list[Key]:
    """One key per prompt position. `items`: placeholder token id -> its media items in feature
    order, each (digest, rows); the prompt's placeholder counts must match the rows (check_prompt)."""
    rows = {token: iter([(d, r) for d, n in its for r in range(n)]) for token, its in items.items()}
    return [next(rows[t]) if t in rows else t for t in ids]


@dataclass(frozen=True)
class CachedPrefix:
    """The keys of the positions in the KV cache, the adapter they ran under, and whether the
    rotary factors were LongRoPE's long ones."""

    keys: tuple[Key, ...]
    adapter: str | None
    long_rope: bool

    def shared(self, keys: Sequence[Key], adapter: str | None, long_rope: bool) -> int:
        """How many leading positions of a prompt with these keys the cache already holds; at
        least the last prompt token is always fed again, for its logits."""
        if adapter != self.adapter or long_rope != self.long_rope:
            return 0
        n = 0
        for a, b in zip(self.keys, keys[:-1]):
            if a != b:
                break
            n += 1
        return n
