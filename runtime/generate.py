"""Prompt in, tokens out: prefill, then decode one token at a time, streaming text as it comes."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..models.errors import BundleError
from .audio import PreparedAudio, load_audio, log_mel
from .bundle import Bundle, open_bundle
from .image import ImageSettings, PreparedImage, load_image, preprocess
from .sampling import Sampler, SamplingParams
from .session import DecoderSession
from .speech import SpeechEncoder
from .tokenizer import ChatTokenizer
from .vision import VisionEncoder

NO_ADAPTER = "none"   # generate(adapter=NO_ADAPTER): the base model even for image/audio requests


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str                 # "stop" (an end token), "length" (max_new_tokens or context)
    timings: dict = field(default_factory=dict)
    adapter: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


class Model:
    """A loaded bundle. `generate` for a whole answer, `stream` for tokens as they come."""

    def __init__(self, bundle: str | Path | Bundle, threads: int | None = None, providers: list[str] | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        self.tokenizer = ChatTokenizer(self.bundle.path)
        self.decoder = DecoderSession(self.bundle, threads, providers)
        self._threads, self._providers, self._vision, self._speech = threads, providers, None, None
        self.eos_token_ids = self.bundle.eos_token_ids
        self.context_length = self.decoder.max_position
        cfg = self.bundle.config
        # LongRoPE: the cache holds keys rotated with the short factors until the sequence outgrows
        # the original context; then transformers recomputes it once with the long factors.
        self.rope_switch = cfg["original_max_position"] if cfg["rope_kind"] == "longrope" else None

    def encode(self, prompt: str, chat_template: bool = True, system: str | None = None,
               images: list[PreparedImage] = (), audios: list[PreparedAudio] = ()) -> list[int]:
        """Prompt ids, with each image's and audio's placeholder tokens."""
        media = {}
        if images:
            media["image"] = (self.image_token_id, [i.num_tokens for i in images])
        if audios:
            media["audio"] = (self.bundle.manifest["speech"]["config"]["audio_token_id"],
                              [a.num_tokens for a in audios])
        return self.tokenizer.encode_prompt(prompt, chat_template, system, media or None)

    def prepare_audio(self, audio) -> PreparedAudio:
        """A path, bytes, mono 16 kHz float waveform or prepared audio, as log-mel features."""
        if isinstance(audio, PreparedAudio):
            return audio
        if "speech" not in self.bundle.manifest:
            raise BundleError(f"{self.bundle.path}: this bundle has no speech encoder, so it cannot take audio")
        return PreparedAudio(log_mel(audio if isinstance(audio, np.ndarray) else load_audio(audio)))

    def audio_features(self, audios: list[PreparedAudio], with_image: bool) -> np.ndarray:
        """Speech embeddings (the vision_speech projection when the request also has an image)."""
        if self._speech is None:
            self._speech = SpeechEncoder(self.bundle, self._threads, self._providers)
        return np.concatenate([self._speech(a.features, with_image) for a in audios])

    @property
    def image_token_id(self) -> int:
        return self.bundle.manifest["vision"]["config"]["image_token_id"]

    def prepare_image(self, image) -> PreparedImage:
        """A path, bytes, PIL image or an already prepared image, ready for the vision encoder."""
        if isinstance(image, PreparedImage):
            return image
        if "vision" not in self.bundle.manifest:
            raise BundleError(f"{self.bundle.path}: this bundle has no vision encoder, so it cannot take images")
        cfg = self.bundle.manifest["vision"]["config"]
        return preprocess(load_image(image), ImageSettings(crop_size=cfg["crop_size"], patch_size=cfg["patch_size"],
                                                             dynamic_hd=self.bundle.manifest["vision"].get("dynamic_hd", 36)))

    def image_features(self, images: list[PreparedImage]) -> np.ndarray:
        """Run the vision encoder (loaded on first use) over the images, in prompt order."""
        if self._vision is None:
            self._vision = VisionEncoder(self.bundle, self._threads, self._providers)
        return np.concatenate([self._vision(i) for i in images])

    @property
    def adapters(self) -> list[str]:
        return self.decoder.adapters.names

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Register an .onnx_adapter file from outside the bundle (checked against this base at first use)."""
        self.decoder.adapters.add(name, path)

    def stream(self, prompt_ids: list[int], max_new_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
               timings: dict | None = None, adapter: str | None = None,
               media: dict[str, np.ndarray] | None = None) -> Iterator[int]:
        """Yield generated token ids (the end token included, as transformers does), with the
        LoRA `adapter` active (None: the base model) and `media` features for the prompt's
        image/audio placeholder tokens."""
        n = len(prompt_ids)
        if n == 0:
            raise BundleError("the prompt is empty")
        if n >= self.context_length:
            raise BundleError(f"the prompt is {n} tokens; this model's context is {self.context_length} "
                              f"tokens, so at most {self.context_length - 1} fit with room to answer")
        budget = min(max_new_tokens, self.context_length - n)
        if budget <= 0:
            return
        sample = Sampler(sampling)
        self.decoder.use_adapter(adapter)
        self.decoder.reserve(n + budget)
        start = time.perf_counter()
        logits = self.decoder.forward(np.asarray(prompt_ids, np.int64), media)
        token = np.zeros(1, np.int64)
        token[0] = sample(logits)
        first = time.perf_counter()
        if timings is not None:
            timings.update(prefill_ms=(first - start) * 1e3, prompt_tokens=n)
        sequence = list(prompt_ids)
        generated = 0
        while True:
            generated += 1
            sequence.append(int(token[0]))
            yield int(token[0])
            if int(token[0]) in self.eos_token_ids or generated >= budget:
                break
            if self.decoder.length == self.rope_switch:
                self.decoder.reset()
                logits = self.decoder.forward(np.asarray(sequence, np.int64), media)
            else:
                logits = self.decoder.forward(token)
            token[0] = sample(logits)
        if timings is not None:
            decode_s = time.perf_counter() - first
            timings.update(decode_tokens=generated - 1,
                           decode_tokens_per_s=(generated - 1) / decode_s if generated > 1 and decode_s > 0 else None)

    def generate(self, prompt: str | list[int], max_new_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
                 chat_template: bool = True, system: str | None = None, adapter: str | None = None,
                 images: list = (), audios: list = (),
                 on_text: Callable[[str], None] | None = None) -> GenerationResult:
        """Answer one prompt. `images` (paths, bytes, PIL images) and `audios` (paths, bytes, 16 kHz
        waveforms) go where the prompt says `<|image_1|>`, `<|audio_1|>`, ... (or before the text).
        Routing, unless `adapter` names one (or is NO_ADAPTER, "none": the base model): images ->
        the `vision` adapter (audio then through the vision_speech projection); audio alone -> the
        `speech` adapter; text -> none."""
        prepared = [self.prepare_image(i) for i in images]
        mels = [self.prepare_audio(a) for a in audios]
        if isinstance(prompt, str):
            prompt_ids = self.encode(prompt, chat_template, system, prepared, mels)
        else:
            prompt_ids = list(prompt)
        timings: dict = {}
        media = {}
        if prepared:
            start = time.perf_counter()
            media["image_features"] = self.image_features(prepared)
            timings["image_encode_ms"] = (time.perf_counter() - start) * 1e3
        if mels:
            start = time.perf_counter()
            media["audio_features"] = self.audio_features(mels, with_image=bool(prepared))
            timings["audio_encode_ms"] = (time.perf_counter() - start) * 1e3
        if adapter is None and media:
            wanted = "vision" if prepared else "speech"
            adapter = wanted if wanted in self.adapters else None
        elif adapter == NO_ADAPTER:
            adapter = None
        text_stream = self.tokenizer.stream()
        ids: list[int] = []
        for token in self.stream(prompt_ids, max_new_tokens, sampling, timings, adapter, media or None):
            ids.append(token)
            if on_text is not None and (piece := text_stream.step(token)):
                on_text(piece)
        finish = "stop" if ids and ids[-1] in self.eos_token_ids else "length"
        return GenerationResult(self.tokenizer.decode(ids), ids, prompt_ids, finish, timings, adapter)


def load(bundle: str | Path, threads: int | None = None, providers: list[str] | None = None) -> Model:
    return Model(bundle, threads, providers)
