"""Vision and speech graphs of fixed shapes (static-shapes bundles) behind the dynamic graphs' `run`
interface, so that runtime/vision.py and runtime/speech.py drive either: a request is padded to the
graph's shapes and the outputs cut back to the request's rows.

Images: the graph takes the global image and a fixed number of crops; an image with fewer has its
crops padded with fully masked ones, and its token_index (whose separator rows follow the pooled
rows of all the graph's crops) shifted past them. Audio: the graph takes a fixed number of log-mel
frames; shorter clips are padded and key_bias masks the padding's tokens.
"""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort

from ..errors import RequestError
from ..format import MASK_VALUE, SpeechNames, VisionNames


class StaticEncoderSession(ort.InferenceSession):
    """An onnxruntime session of a fixed-shape vision or speech graph (see the module docstring)."""

    def run(self, output_names, input_feed, run_options=None):   # type: ignore[override]
        shapes = {i.name: i.shape for i in self.get_inputs()}
        fit = self._vision if VisionNames.TOKEN_INDEX in shapes else self._speech
        feeds, rows = fit(dict(input_feed), shapes)
        return [out[:rows] for out in super().run(output_names, feeds, run_options)]

    @staticmethod
    def _speech(feeds: dict, shapes: dict) -> tuple[dict, int]:
        mel = feeds[SpeechNames.AUDIO_FEATURES]
        frames = shapes[SpeechNames.AUDIO_FEATURES][1]
        if mel.shape[1] > frames:
            raise RequestError(f"the audio is {mel.shape[1]} feature frames ({(mel.shape[1] - 1) / 100:.1f} s); "
                               f"this bundle's speech graph takes at most {frames} ({(frames - 1) / 100:.1f} s)")
        rows = math.ceil(mel.shape[1] / 8)
        padded = np.zeros(shapes[SpeechNames.AUDIO_FEATURES], np.float32)
        padded[:, :mel.shape[1]] = mel
        bias = np.full(shapes[SpeechNames.KEY_BIAS], MASK_VALUE, np.float32)
        bias[..., :rows] = 0
        return {SpeechNames.AUDIO_FEATURES: padded, SpeechNames.KEY_BIAS: bias}, rows

    @staticmethod
    def _vision(feeds: dict, shapes: dict) -> tuple[dict, int]:
        index = feeds[VisionNames.TOKEN_INDEX]
        have, crops = len(feeds[VisionNames.PIXEL_VALUES]), shapes[VisionNames.PIXEL_VALUES][0]
        if have > crops:
            raise RequestError(f"the image has {have - 1} crops; this bundle's vision graph takes at most {crops - 1}")
        per_crop = shapes[VisionNames.POSITION_IDS][1] // 4   # pooled 2x2
        out = {name: np.zeros(shapes[name], feeds[name].dtype) for name in
               (VisionNames.PIXEL_VALUES, VisionNames.POSITION_IDS, VisionNames.TOKEN_INDEX)}
        for name in (VisionNames.PIXEL_VALUES, VisionNames.POSITION_IDS):
            out[name][:have] = feeds[name]
        out[VisionNames.ATTENTION_BIAS] = np.full(shapes[VisionNames.ATTENTION_BIAS], MASK_VALUE, np.float32)
        out[VisionNames.ATTENTION_BIAS][:have] = np.maximum(feeds[VisionNames.ATTENTION_BIAS], MASK_VALUE)
        out[VisionNames.TOKEN_INDEX][:len(index)] = np.where(index >= have * per_crop, index + (crops - have) * per_crop, index)
        return out, len(index)
