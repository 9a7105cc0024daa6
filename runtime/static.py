"""Running the decoder of a static-shapes bundle (docs/bundle-format.md, "Static-shapes bundles").

The runtime owns the KV cache: one [1, kv_heads, C - 1, head_dim] array per layer and kind. A
prompt goes through the prefill graph `prefill_chunk` rows at a time, then each token through the
one-row decoder graph; every call returns the keys and values of its rows, which are written into
the cache here. A call's rows are right-aligned (padding first), so the graph's last row, whose
logits it returns, is always the newest token.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..errors import BundleError
from ..format import MASK_VALUE, WEBGPU_DECODER, DecoderNames, StaticDecoderNames
from .adapters import AdapterSet
from .plain_decoder import PlainDecoder
from .session import DecoderSession, load_graph

NAMES = StaticDecoderNames


def open_decoder(bundle: Bundle, threads: int | None = None, providers: list[str] | None = None) -> DecoderSession:
    """The bundle's decoder: a StaticDecoder for static-shapes bundles, a PlainDecoder for the
    WebGPU form, else a DecoderSession."""
    m = bundle.manifest
    cls = StaticDecoder if m.static is not None else PlainDecoder if WEBGPU_DECODER in m.requires else DecoderSession
    return cls(bundle, threads, providers)


class PaddedAdapters(AdapterSet):
    """LoRA adapters for graphs whose A/B inputs are plain inputs of one fixed rank R: an adapter's
    tensors are zero-padded to R when first used (the padding adds nothing to x @ A @ B), and the
    decoder feeds them with every call; no adapter feeds zeros (the base model)."""

    def __init__(self, bundle: Bundle, session: ort.InferenceSession):
        super().__init__(bundle, session)   # adapter files and names; the LoRA inputs are plain inputs here
        self.inputs = {i.name: i for i in session.get_inputs() if i.name.startswith("lora.")}
        self.zeros = {name: np.zeros(i.shape, np.float32) for name, i in self.inputs.items()}

    def load(self, name: str) -> dict[str, np.ndarray]:   # type: ignore[override]
        if name in self._loaded:
            return self._loaded[name]   # type: ignore[return-value]
        _, arrays = self.read(name)
        padded = dict(self.zeros)
        for pname, value in arrays.items():
            want = self.inputs[pname].shape if pname in self.inputs else None
            if want is None or value.ndim != 2 or value.dtype.kind != "f":
                raise BundleError(f"adapter '{name}': tensor '{pname}' matches no LoRA input of this decoder")
            a = pname.endswith(".A")
            if value.shape[0 if a else 1] != want[0 if a else 1] or value.shape[1 if a else 0] > want[1 if a else 0]:
                raise BundleError(f"adapter '{name}': '{pname}' has shape {list(value.shape)}; this bundle takes "
                                  f"{list(want)} (rank at most {want[1 if a else 0]}: the static LoRA rank it was exported with)")
            padded[pname] = np.zeros(want, np.float32)
            padded[pname][:value.shape[0], :value.shape[1]] = value
        self._loaded[name] = padded   # type: ignore[assignment]   # copies, in the inputs' fixed shapes
        return padded

    def feeds(self, name: str | None) -> dict[str, np.ndarray]:
        """The LoRA input values for adapter `name` (None: zeros, the base model)."""
        if name is not None and not self.inputs:
            raise BundleError(f"{self.bundle.path}: exported without LoRA inputs, so adapter '{name}' cannot run")
        return self.zeros if name is None else self.load(name)


class StaticDecoder(DecoderSession):
    """The decoder of a static-shapes bundle, with DecoderSession's interface (Model drives either)."""

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None):
        m = bundle.manifest
        assert m.static is not None
        cfg = m.model.config
        self.num_layers, self.vocab_size, self.hidden = cfg.num_layers, cfg.vocab_size, cfg.hidden_size
        self.max_position = self.capacity = self.context = m.static.context
        self.chunk = m.static.prefill_chunk
        # LongRoPE past its switch point: the graphs' rotary tables hold the long set C rows on
        self.switch = cfg.original_max_position if cfg.rope_kind == "longrope" and \
            0 < cfg.original_max_position < self.context else None
        self.session = load_graph(bundle, "decoder", threads, providers)
        self.prefill = load_graph(bundle, "prefill", threads, providers)
        # the window's last position is never attended to by a later token, so C - 1 slots hold the cache
        self.kv = {(i, kind): np.zeros((1, cfg.num_kv_heads, self.context - 1, cfg.head_dim), np.float32)
                   for i in range(cfg.num_layers) for kind in ("key", "value")}
        self.length = 0
        self.media = m.decoder.media   # feature input name -> placeholder token id
        self.adapters = PaddedAdapters(bundle, self.session)
        self.lora = self.adapters.feeds(None)

    def sessions(self) -> dict[str, ort.InferenceSession]:
        return {"decoder": self.session, "prefill": self.prefill}

    def use_adapter(self, name: str | None) -> None:
        self.lora = self.adapters.feeds(name)   # type: ignore[attr-defined]

    def load_adapter(self, name: str) -> None:
        self.adapters.load(name)

    def reserve(self, capacity: int) -> None:
        if capacity > self.context:
            raise BundleError(f"sequence of {capacity} tokens exceeds this bundle's static context of {self.context}")
        self.reset()

    def forward(self, ids: np.ndarray, media: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run `ids` after the cached tokens (prefill chunks while the cache leaves room for a
        whole chunk, single rows after); returns the last token's logits."""
        n = len(ids)
        if self.length + n > self.context:
            raise BundleError(f"sequence of {self.length + n} tokens exceeds this bundle's static context of {self.context}")
        rows = self._media_rows(ids, media)
        long = self.switch is not None and self.length + n > self.switch
        done = 0
        while done < n:
            chunked = n - done > 1 and self.length <= self.context - self.chunk
            take = min(self.chunk, n - done) if chunked else 1
            logits = self._call(self.prefill if chunked else self.session, self.chunk if chunked else 1,
                                ids[done:done + take], rows[done:done + take] if rows is not None else None, long)
            done += take
        return logits

    def _media_rows(self, ids: np.ndarray, media: dict[str, np.ndarray] | None) -> np.ndarray | None:
        """[n, hidden] feature rows in prompt order, NaN on text rows; None without media inputs."""
        if not self.media:
            return None
        rows = np.full((len(ids), self.hidden), np.nan, np.float32)
        for name, token_id in self.media.items():
            where = np.flatnonzero(ids == token_id)
            if len(where):
                rows[where] = (media or {})[name]
        return rows

    def _call(self, session: ort.InferenceSession, size: int, ids: np.ndarray, rows: np.ndarray | None,
              long: bool) -> np.ndarray:
        """One graph call on `ids` (at most `size`), right-aligned after `size - len(ids)` padding rows."""
        n, pad, start, past = len(ids), size - len(ids), self.length, self.context - size
        feeds: dict[str, np.ndarray] = {NAMES.INPUT_IDS: np.zeros((1, size), np.int64),
                                        NAMES.POSITION_IDS: np.zeros((1, size), np.int64)}
        feeds[NAMES.INPUT_IDS][0, pad:] = ids
        feeds[NAMES.POSITION_IDS][0, pad:] = np.arange(start, start + n) + (self.context if long else 0)
        # keys: columns [0, past) are cache slots (the first `start` filled), [past, C) this call's rows
        bias = np.full((1, 1, size, self.context), MASK_VALUE, np.float32)
        for r in range(size):
            if r < pad:
                bias[0, 0, r, past + r] = 0                    # a padding row sees itself only
            else:
                bias[0, 0, r, :start] = 0                      # the cache
                bias[0, 0, r, past + pad:past + r + 1] = 0     # and this call's tokens up to its own
        feeds[NAMES.ATTENTION_BIAS] = bias
        if self.media:
            mask, features = np.ones((1, size, 1), np.float32), np.zeros((1, size, self.hidden), np.float32)
            if rows is not None:
                media_rows = ~np.isnan(rows[:, 0])
                mask[0, pad:, 0] = ~media_rows
                features[0, pad:][media_rows] = rows[media_rows]
            feeds[NAMES.TEXT_MASK], feeds[NAMES.MEDIA_FEATURES] = mask, features
        for (i, kind), cache in self.kv.items():
            feeds[DecoderNames.past(i, kind)] = cache if past == cache.shape[2] else np.ascontiguousarray(cache[:, :, :past])
        logits, *new = session.run([NAMES.LOGITS] + [NAMES.new(i, kind) for i, kind in self.kv], feeds | self.lora)
        keep = min(n, self.context - 1 - start)   # the window's last token needs no slot
        for cache, added in zip(self.kv.values(), new):
            cache[:, :, start:start + keep] = added[:, :, pad:pad + keep]
        self.length = start + n
        return logits[0, 0]
