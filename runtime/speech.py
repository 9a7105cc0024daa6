"""Running the speech graph: log-mel features in, projected speech embeddings out."""
from __future__ import annotations

import math

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError
from ..format import SpeechNames
from .session import load_graph

CHUNK = 500   # the reference encodes longer inputs in chunks of 500 frames (after subsampling)


def key_bias(tokens: int) -> np.ndarray:
    """[chunks, 1, 1, L] additive bias per key; its shape tells the graph how to chunk.

    It is zero: for one audio the reference has no padding mask (its feature extractor returns
    none for a batch of one), so the zero frames padding the last chunk are attended like the rest.
    """
    chunks = max(1, math.ceil(tokens / CHUNK))
    return np.zeros((chunks, 1, 1, tokens if chunks == 1 else CHUNK), np.float32)


class SpeechEncoder:
    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None):
        if bundle.manifest.speech is None:
            raise BundleError(f"{bundle.path}: this bundle has no speech encoder")
        self.session = load_graph(bundle, "speech", threads, providers)

    def __call__(self, log_mel: np.ndarray, with_image: bool = False) -> np.ndarray:
        """[ceil(frames / 8), text_hidden] embeddings; the vision_speech projection when the same
        request has an image, else the speech one."""
        tokens = math.ceil(len(log_mel) / 8)
        name = SpeechNames.VISION_SPEECH_FEATURES if with_image else SpeechNames.SPEECH_FEATURES
        return self.session.run([name], {SpeechNames.AUDIO_FEATURES: log_mel[None].astype(np.float32),
                                         SpeechNames.KEY_BIAS: key_bias(tokens)})[0]
