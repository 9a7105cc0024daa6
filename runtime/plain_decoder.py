"""Running the decoder of a bundle that requires "webgpu-decoder" (docs/bundle-format.md): its
attention is plain operators whose KV cache grows by Concat, so every call returns the whole cache
as new tensors. Each call's `present` values become the next call's `past`, kept as onnxruntime
allocated them (no copy); one buffer is never bound to both, as DecoderSession does for
GroupQueryAttention. LoRA inputs have no defaults: AdapterSet feeds rank-1 zeros for the base model.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..errors import BundleError
from ..format import DecoderNames
from .session import DecoderSession


class PlainDecoder(DecoderSession):
    """DecoderSession's interface (Model drives either) for the WebGPU form's decoder."""

    own_sessions = False   # each call binds its KV values to the one session's binding

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None):
        super().__init__(bundle, threads, providers)
        self.layers = [(i, kind) for i in range(self.num_layers) for kind in ("key", "value")]
        empty = np.zeros((1, self.kv_shape[0], 0, self.kv_shape[1]), np.float32)
        self.none = ort.OrtValue.ortvalue_from_numpy(empty)
        self.past: list[ort.OrtValue] = [self.none] * len(self.layers)
        self.held = 0   # tokens in self.past; more than `length` after a rewind, cut on the next call
        self.use_adapter(None)   # the LoRA inputs have no defaults: bind the zeros now

    def reserve(self, capacity: int) -> None:
        """Start a new sequence of up to `capacity` tokens (the cache grows as it goes)."""
        self.reset()
        self.capacity = max(self.capacity, capacity)

    def _cut(self, value: ort.OrtValue) -> ort.OrtValue:
        """The first `length` positions of a cached key or value (a rewind to a shared prefix)."""
        if self.length == 0:
            return self.none
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.numpy()[:, :, :self.length]))

    def forward(self, ids: np.ndarray, media: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run `ids` ([n] int64, contiguous) after the cached tokens; returns last-position logits."""
        n = ids.shape[0]
        total = self.length + n
        if total > self.capacity:
            raise BundleError(f"sequence of {total} tokens exceeds the reserved {self.capacity}")
        if self.held != self.length:
            self.past, self.held = [self._cut(v) for v in self.past], self.length
        self.bind_media(media)
        mask = np.ones((1, total), np.int64)   # the binding points into these arrays: keep them alive
        self._step = (ids, mask)
        self.binding.bind_input(DecoderNames.INPUT_IDS, "cpu", 0, np.int64, [1, n], ids.ctypes.data)
        self.binding.bind_input(DecoderNames.ATTENTION_MASK, "cpu", 0, np.int64, [1, total], mask.ctypes.data)
        for (i, kind), value in zip(self.layers, self.past):
            self.binding.bind_ortvalue_input(DecoderNames.past(i, kind), value)
            self.binding.bind_output(DecoderNames.present(i, kind), "cpu")   # onnxruntime allocates it
        self.session.run_with_iobinding(self.binding)
        # outputs come in the order first bound: the logits (DecoderSession), then the presents
        self.past = self.binding.get_outputs()[1:]
        self.length = self.held = total
        return self.logits[0, 0]
