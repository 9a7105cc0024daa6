"""Prompt in, tokens out: prefill, then decode one token at a time, streaming text as it comes."""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import CHAT_TEMPLATE, TOKENIZER, TOKENIZER_CONFIG, Bundle, open_bundle
from ..errors import BundleError, RequestError
from ..format import SpeechNames, VisionNames
from ..providers import node_counts
from .audio import SAMPLE_RATE, AudioSettings, PreparedAudio, load_audio, log_mel, num_audio_tokens
from .image import ImageSettings, PreparedImage, load_image, preprocess
from .prompt_cache import CachedPrefix, digest, position_keys
from .prompt_lookup import PromptLookup
from .sampling import Sampler, SamplingParams
from .speech import SpeechEncoder
from .static import open_decoder
from .tokenizer import ChatTokenizer
from .vision import VisionEncoder

# No BPE token of the Phi-4 tokenizer spans more than a few dozen characters; a prompt longer than
# this many characters per context token cannot fit and is refused before tokenising it.
MAX_CHARS_PER_TOKEN = 64
NO_ADAPTER = "none"   # generate(adapter=NO_ADAPTER): the base model even for image/audio requests
# stream(logits_processor=f): f(generated ids so far, logits) -> the logits to sample from
LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Step:
    """One generated token, as `Model.stream` yields it."""

    token_id: int
    text: str                          # text this token completes ("" inside a multi-byte character)
    logprob: float | None              # log-probability under the model (before temperature/top-k/top-p);
                                       # None when the stream was asked for none
    finish_reason: str | None = None   # on the last step: "stop" (an end token) or "length"


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
    """A loaded bundle. `generate` for a whole answer, `stream` for tokens as they come.

    Safe to share between threads: requests run one at a time (the decoder's KV cache and bound
    adapter are per model), each giving the answer it would give alone. For parallel requests,
    load one Model per thread.
    """

    def __init__(self, bundle: str | Path | Bundle, threads: int | None = None, providers: list[str] | None = None,
                 verify: bool = False):
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=verify)
        b = self.bundle
        self.tokenizer = ChatTokenizer(b.file(TOKENIZER), b.optional_file(TOKENIZER_CONFIG),
                                       b.optional_file(CHAT_TEMPLATE))
        self.lock = threading.RLock()   # one request at a time: see the class docstring
        self.decoder = open_decoder(self.bundle, threads, providers)
        self._threads, self._providers = threads, providers
        self._vision: VisionEncoder | None = None   # encoders load on first use
        self._speech: SpeechEncoder | None = None
        self.eos_token_ids = self.bundle.manifest.eos_token_ids
        self.context_length = self.decoder.max_position
        cfg = self.bundle.manifest.model.config
        # LongRoPE: the cache holds keys rotated with the short factors until the sequence outgrows
        # the original context; then transformers recomputes it once with the long factors.
        self.rope_switch = cfg.original_max_position if cfg.rope_kind == "longrope" else None
        self.cached: CachedPrefix | None = None   # what the KV cache holds, for stream(reuse_prefix=True)

    def encode(self, prompt: str, chat_template: bool = True, system: str | None = None,
               images: Sequence[PreparedImage] = (), audios: Sequence[PreparedAudio] = ()) -> list[int]:
        """Prompt ids, with each image's and audio's placeholder tokens."""
        chars = len(prompt) + len(system or "") if isinstance(prompt, str) and isinstance(system, (str, type(None))) else 0
        return self.tokenizer.encode_prompt(prompt, chat_template, system, self._placeholders("prompt", chars, images, audios))

    def _placeholders(self, what: str, chars: int, images: Sequence[PreparedImage],
                      audios: Sequence[PreparedAudio]) -> dict[str, tuple[int, list[int]]] | None:
        """Each media kind's placeholder id and tokens per item, for the tokenizer; a text of `chars`
        characters far beyond the context is refused first."""
        if chars > MAX_CHARS_PER_TOKEN * self.context_length:
            raise RequestError(f"the {what} is {chars} characters: far more than this model's context of "
                               f"{self.context_length} tokens holds (refused before tokenising, to bound memory)")
        media: dict[str, tuple[int, list[int]]] = {}
        if images and self.image_token_id is not None:
            media["image"] = (self.image_token_id, [i.num_tokens for i in images])
        if audios and self.audio_token_id is not None:
            media["audio"] = (self.audio_token_id, [a.num_tokens for a in audios])
        return media or None

    @property
    def audio_token_id(self) -> int | None:
        speech = self.bundle.manifest.speech
        return speech.config.audio_token_id if speech else None

    def max_audio_samples(self) -> int:
        """The longest 16 kHz waveform whose tokens fit the context (checked before encoding)."""
        s = AudioSettings()
        frames = (self.context_length - 1) * s.compression_rate * s.downsample_rate
        return (frames - 1) * s.hop_length + s.win_length

    def prepare_audio(self, audio) -> PreparedAudio:
        """A path, bytes, mono 16 kHz float waveform or prepared audio, as log-mel features."""
        if isinstance(audio, PreparedAudio):
            return audio
        if self.bundle.manifest.speech is None:
            raise BundleError(f"{self.bundle.path}: this bundle has no speech encoder, so it cannot take audio")
        limit = self.max_audio_samples()
        if isinstance(audio, np.ndarray):
            if audio.ndim != 1 or audio.dtype.kind != "f":
                raise RequestError("an audio array must be a 1-D float waveform at 16 kHz, "
                                   f"got {audio.dtype} {list(audio.shape)}")
            if not np.isfinite(audio).all():
                raise RequestError("the audio array contains NaN or infinite samples")
            wave = audio
        elif isinstance(audio, (str, Path, bytes)):
            wave = load_audio(audio, max_seconds=limit / SAMPLE_RATE)
        else:
            raise RequestError(f"audio must be a path, bytes or a float waveform, not {type(audio).__name__}")
        if len(wave) > limit:
            s = AudioSettings()
            tokens = num_audio_tokens((len(wave) - s.win_length) // s.hop_length + 1)
            raise RequestError(f"{len(wave) / SAMPLE_RATE:.1f} s of audio is {tokens} "
                               f"tokens; this model's context is {self.context_length} tokens "
                               f"(at most {limit / SAMPLE_RATE:.1f} s of audio)")
        return PreparedAudio(log_mel(wave))

    def audio_features(self, audios: list[PreparedAudio], with_image: bool) -> np.ndarray:
        """Speech embeddings (the vision_speech projection when the request also has an image)."""
        if self._speech is None:
            self._speech = SpeechEncoder(self.bundle, self._threads, self._providers)
        encoder = self._speech
        return np.concatenate([encoder(a.features, with_image) for a in audios])

    @property
    def image_token_id(self) -> int | None:
        vision = self.bundle.manifest.vision
        return vision.config.image_token_id if vision else None

    def prepare_image(self, image) -> PreparedImage:
        """A path, bytes, PIL image or an already prepared image, ready for the vision encoder."""
        if isinstance(image, PreparedImage):
            return image
        vision = self.bundle.manifest.vision
        if vision is None:
            raise BundleError(f"{self.bundle.path}: this bundle has no vision encoder, so it cannot take images")
        return preprocess(load_image(image), ImageSettings(crop_size=vision.config.crop_size,
                                                           patch_size=vision.config.patch_size,
                                                           dynamic_hd=vision.dynamic_hd))

    def image_features(self, images: list[PreparedImage]) -> np.ndarray:
        """Run the vision encoder (loaded on first use) over the images, in prompt order."""
        if self._vision is None:
            self._vision = VisionEncoder(self.bundle, self._threads, self._providers)
        encoder = self._vision
        return np.concatenate([encoder(i) for i in images])

    def node_counts(self) -> dict[str, dict[str, int]]:
        """{graph kind: {execution provider: nodes it runs}} for the graphs loaded so far."""
        encoders = {kind: e.session for kind, e in (("vision", self._vision), ("speech", self._speech)) if e is not None}
        return {kind: node_counts(s) for kind, s in (self.decoder.sessions() | encoders).items()}

    @property
    def adapters(self) -> list[str]:
        return self.decoder.adapters.names

    @property
    def loaded_adapters(self) -> list[str]:
        """Adapters whose files have been mapped so far (each is loaded on first use)."""
        return self.decoder.adapters.loaded

    def load_adapter(self, name: str) -> None:
        """Map, check and prepare an adapter now rather than at its first request."""
        with self.lock:
            self.decoder.load_adapter(name)

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Register an .onnx_adapter file from outside the bundle (checked against this base at first use)."""
        self.decoder.adapters.add(name, path)

    def check_prompt(self, prompt_ids: object, media: Mapping[str, Sized] | None = None) -> np.ndarray:
        """The prompt as int64 ids, refused unless every id is in the vocabulary and each media
        placeholder id has exactly one row of features (placeholders never reach the decoder bare)."""
        if isinstance(prompt_ids, (str, bytes)) or not hasattr(prompt_ids, "__len__"):
            raise RequestError(f"prompt ids must be a list of ints, not {type(prompt_ids).__name__}")
        try:
            ids = np.asarray(prompt_ids)
        except (ValueError, TypeError):
            ids = np.asarray([], object)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise RequestError("prompt ids must be a flat list of ints")
        ids = ids.astype(np.int64)
        if ids.size == 0:
            raise RequestError("the prompt is empty")
        vocab = self.bundle.manifest.model.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise RequestError(f"token id {bad} is outside this model's vocabulary (0..{vocab - 1})")
        for name, token_id in self.bundle.manifest.decoder.media.items():
            rows = len((media or {}).get(name, ()))
            placeholders = int((ids == token_id).sum())
            if placeholders != rows:
                kind = name.split("_")[0]
                raise RequestError(f"the prompt has {placeholders} {kind} placeholder tokens (id {token_id}) but "
                                   f"{rows} rows of {kind} features were given")
        return ids

    def _logits(self, ids: np.ndarray, media: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self._finite(self.decoder.forward(ids, media))

    def _finite(self, logits: np.ndarray) -> np.ndarray:
        if not np.isfinite(logits.max()):   # one pass over the rows: NaN or +inf anywhere shows here
            raise BundleError(f"{self.bundle.path}: the decoder produced non-finite logits; its weights are "
                              "corrupt or the graph is broken (check with 'phi4edge inspect')")
        return logits

    def _advance(self, last: np.ndarray, sequence: list[int], media: dict[str, np.ndarray] | None) -> np.ndarray:
        """Logits after feeding `last` ([1] int64, the newest token of `sequence`). At the LongRoPE
        switch the cache is dropped and the whole sequence runs again with the long factors."""
        if self.decoder.length == self.rope_switch:
            self.decoder.reset()
            return self._logits(np.asarray(sequence, np.int64), media)
        return self._logits(last)

    def _step(self, sequence: list[int], generated: list[int], sample: Sampler, media: dict[str, np.ndarray] | None,
              processor: LogitsProcessor | None, lookup: PromptLookup | None,
              budget: int) -> list[tuple[int, np.ndarray]]:
        """The next (token, logits row) pairs after feeding sequence[-1]: one, or with prompt lookup
        the drafted tokens the model agrees with and the token after them."""
        last = np.asarray(sequence[-1:], np.int64)
        room = budget - len(generated) - 1   # drafts beyond the budget would never be answered
        length = self.decoder.length
        if self.rope_switch is not None and length <= self.rope_switch:
            room = min(room, self.rope_switch - length - 1)   # every checked row before the LongRoPE switch
        drafts = lookup.draft(room) if lookup and self.decoder.rows_logits and room > 0 else None
        if lookup is None or drafts is None or not drafts.size:
            logits = self._advance(last, sequence, media)
            return [(sample(processor(generated, logits) if processor else logits), logits)]
        rows = self._finite(self.decoder.forward_rows(np.concatenate([last, drafts])))
        steps = []
        for i, row in enumerate(rows):
            token = int(np.argmax(row))
            steps.append((token, row))
            if i == len(drafts) or token != drafts[i]:
                break
        lookup.update(len(drafts), len(steps) - 1)
        self.decoder.length = length + len(steps)   # rows after the first miss hold rejected drafts' keys
        return steps

    def _budget(self, n: int, max_new_tokens: int) -> int:
        if n >= self.context_length:
            raise RequestError(f"the prompt is {n} tokens; this model's context is {self.context_length} "
                               f"tokens, so at most {self.context_length - 1} fit with room to answer")
        return min(max_new_tokens, self.context_length - n)

    def _tokens(self, prompt: np.ndarray, budget: int, sampling: SamplingParams, timings: dict,
                adapter: str | None, media: Inputs, stop: set[int], logprobs: bool,
                processor: LogitsProcessor | None = None,
                prompt_lookup: int = 0) -> Generator[tuple[int, float | None], None, None]:
        """(token id, log-probability) pairs, the end token included (as transformers does).
        Prefills prompt[media.keep:] after the cached prefix; self.cached says what the KV cache
        holds whenever this stops (finished, closed or failed)."""
        n, keep = len(prompt), media.keep
        sample = Sampler(sampling)
        self.decoder.use_adapter(adapter)
        if not keep:
            self.decoder.reserve(media.capacity or n + budget)
        self.decoder.length = keep   # a rewind to the shared prefix: later positions are overwritten
        start = time.perf_counter()
        sequence = prompt.tolist()
        generated: list[int] = []
        # drafts are checked by argmax: greedy requests only, and only without a logits processor
        lookup = PromptLookup(prompt, n + budget, prompt_lookup, self.bundle.manifest.decoder.media.values()) \
            if prompt_lookup and sampling.temperature == 0 and processor is None else None
        try:
            logits = self._logits(prompt[keep:], media.fed)
            steps = [(sample(processor(generated, logits) if processor else logits), logits)]
            first = time.perf_counter()
            timings.update(prefill_ms=(first - start) * 1e3, prompt_tokens=n, cached_tokens=keep)
            done = False
            while not done:
                for token, row in steps:   # rows are views into the decoder's outputs: read before the next call
                    generated.append(token)
                    sequence.append(token)
                    if lookup:
                        lookup.append(token)
                    yield token, logprob(row, token) if logprobs else None
                    done = token in stop or len(generated) >= budget
                    if done:
                        break
                if not done:
                    steps = self._step(sequence, generated, sample, media.all, processor, lookup, budget)
            decode_s = time.perf_counter() - first
            timings.update(decode_tokens=len(generated) - 1,
                           decode_tokens_per_s=(len(generated) - 1) / decode_s if len(generated) > 1 and decode_s > 0
                           else None)
            if lookup:
                timings.update(drafted_tokens=lookup.drafted, accepted_tokens=lookup.accepted)
        finally:
            held = self.decoder.length   # positions < length are valid even after a failed step
            keys = media.keys + generated if media.keys is not None else None
            self.cached = None if keys is None else CachedPrefix(
                tuple(keys[:held]), adapter, self.rope_switch is not None and held > self.rope_switch)

    def score(self, prompt_ids: list[int], continuation: list[int], adapter: str | None = None,
              media: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Teacher-forced logits [len(continuation), vocab]: row i scores continuation[i] after the
        prompt and continuation[:i]."""
        with self.lock:
            self.cached = None   # score() rewrites the KV cache without keys
            prompt = self.check_prompt(prompt_ids, media)
            rest = self.check_prompt(list(continuation)) if len(continuation) else np.zeros(0, np.int64)
            if len(prompt) + len(rest) > self.context_length:
                raise RequestError(f"{len(prompt) + len(rest)} tokens exceed this model's context of {self.context_length}")
            self.decoder.use_adapter(adapter)
            self.decoder.reserve(len(prompt) + len(rest))
            rows = [self._logits(prompt, media).copy()]
            sequence, last = prompt.tolist(), np.zeros(1, np.int64)
            for token in rest[:-1].tolist():
                sequence.append(token)
                last[0] = token
                rows.append(self._advance(last, sequence, media).copy())
            return np.stack(rows)

    def stream(self, prompt: str | list[int] | None, max_new_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
               chat_template: bool = True, system: str | None = None, adapter: str | None = None,
               images: Sequence = (), audios: Sequence = (), stop_token_ids: set[int] | None = None,
               request: dict | None = None, logprobs: bool = True, reuse_prefix: bool = False,
               logits_processor: LogitsProcessor | None = None,
               messages: list[dict] | None = None, prompt_lookup: int = 0) -> Generator[Step, None, None]:
        """Answer one prompt step by step (see `generate` for the arguments). `stop_token_ids`
        replaces the bundle's end ids (an empty set: run to max_new_tokens). `request`, if given, is
        filled with prompt_token_ids, adapter and timings (prompt_tokens, cached_tokens: how many of
        them were not prefilled again). `logprobs=False` skips the one pass over the vocabulary each
        step costs (1.2% of decode at 4 layers). `messages` ({"role", "content"} dicts; prompt None)
        replace `prompt` and `system` with a whole conversation. `reuse_prefix`: keep the positions the KV
        cache already holds from the previous request where this prompt starts with them (same
        adapter; images and audio identified by content) and prefill only the rest; the answer is
        the one a fresh prefill gives. `logits_processor(generated ids, logits)` returns the logits
        to sample from (constrained decoding); log-probabilities stay the model's. `prompt_lookup`:
        draft up to that many tokens per step from the sequence itself and check them in one decoder
        call (runtime/prompt_lookup.py); greedy requests without a logits processor only, the answer
        unchanged; timings then count drafted_tokens and accepted_tokens. Holds the model's lock
        until the stream ends or is closed."""
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(sampling, SamplingParams):
            raise RequestError(f"sampling must be SamplingParams, not {type(sampling).__name__}")
        self.check_prompt_lookup(prompt_lookup)
        stop = self.eos_token_ids if stop_token_ids is None else set(stop_token_ids)
        info = request if request is not None else {}
        with self.lock:
            timings = info.setdefault("timings", {})
            ids, adapter, media = self._prepare(prompt, chat_template, system, adapter, list(images), list(audios),
                                                messages, reuse_prefix, max_new_tokens, timings)
            info.update(prompt_token_ids=ids.tolist(), adapter=adapter)
            text = self.tokenizer.stream()
            pending = None
            tokens = self._tokens(ids, self._budget(len(ids), max_new_tokens), sampling, timings, adapter, media, stop,
                                  logprobs, logits_processor, prompt_lookup)
            try:
                for token, lp in tokens:
                    if pending is not None:
                        yield pending
                    pending = Step(token, text.step(token), lp)
            finally:
                tokens.close()   # records what the KV cache holds before the lock is released
            if pending is not None:
                yield Step(pending.token_id, pending.text, pending.logprob,
                           "stop" if pending.token_id in stop else "length")

    def check_prompt_lookup(self, tokens: int) -> None:
        """Refuse a prompt_lookup setting this model cannot run (see `stream`)."""
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise RequestError(f"prompt_lookup must be a non-negative integer, got {tokens!r}")
        if tokens and not self.decoder.rows_logits:
            raise BundleError(f"{self.bundle.path}: its decoder returns the last position's logits only; re-export "
                              "it with this phi4edge (CPU form) for prompt-lookup decoding")

    def _prepare(self, prompt, chat_template: bool, system: str | None, adapter: str | None, images: list,
                 audios: list, messages: list[dict] | None, reuse: bool, max_new_tokens: int,
                 timings: dict) -> tuple[np.ndarray, str | None, Inputs]:
        """Checked prompt ids, the adapter to run (routed by modality unless named) and the media
        features the prefill needs (none for media inside a reused prefix)."""
        prepared = [self.prepare_image(i) for i in images]
        mels = [self.prepare_audio(a) for a in audios]
        if messages is not None:
            prompt_ids = self.encode_messages(messages, prepared, mels)
        elif isinstance(prompt, str):
            prompt_ids = self.encode(prompt, chat_template, system, prepared, mels)
        elif isinstance(prompt, bytes) or not hasattr(prompt, "__len__"):
            raise RequestError(f"the prompt must be text (str) or a list of token ids, not {type(prompt).__name__}")
        else:
            prompt_ids = list(prompt)
        if adapter is None and (prepared or mels):
            wanted = "vision" if prepared else "speech"
            adapter = wanted if wanted in self.adapters else None
        elif adapter == NO_ADAPTER:
            adapter = None
        items: dict[str, list] = {}
        if prepared:
            items[VisionNames.IMAGE_FEATURES] = prepared
        if mels:
            items[SpeechNames.DECODER_INPUT] = mels
        ids = self.check_prompt(prompt_ids, {name: range(sum(i.num_tokens for i in its)) for name, its in items.items()})
        budget = self._budget(len(ids), max_new_tokens)
        inputs = Inputs()
        if reuse:
            with_image = bool(prepared).to_bytes(1, "little")
            digests = {name: [digest(*((i.pixel_values, i.patch_mask) if isinstance(i, PreparedImage) else (i.features,)),
                                     salt=with_image) for i in its] for name, its in items.items()}
            keys = position_keys(ids.tolist(), {self.bundle.manifest.decoder.media[name]: list(zip(
                digests[name], [i.num_tokens for i in its])) for name, its in items.items()})
            long_rope = self.rope_switch is not None and len(ids) > self.rope_switch
            keep = self.cached.shared(keys, adapter, long_rope) if self.cached else 0
            # grown geometrically, so that the next turns fit without a new (empty) cache
            capacity = self.decoder.capacity if keep and len(ids) + budget <= self.decoder.capacity else \
                min(self.context_length, 2 * (len(ids) + budget))
            inputs = Inputs(keep if capacity == self.decoder.capacity else 0, keys, capacity)
        # every item is encoded when the LongRoPE switch may run the whole sequence again
        switch = self.rope_switch is not None and len(ids) <= self.rope_switch < len(ids) + budget
        inputs.fed, inputs.all = self._features(items, ids, inputs.keep, switch, timings)
        return ids, adapter, inputs

    def encode_messages(self, messages: list[dict], images: Sequence[PreparedImage] = (),
                        audios: Sequence[PreparedAudio] = ()) -> list[int]:
        """Prompt ids for a conversation, with each image's and audio's placeholder tokens."""
        chars = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)) \
            if isinstance(messages, list) else 0   # the tokenizer refuses anything else, naming it
        return self.tokenizer.encode_messages(messages, self._placeholders("conversation", chars, images, audios))

    def _features(self, items: dict[str, list], ids: np.ndarray, keep: int, everything: bool,
                  timings: dict) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
        """Features for the placeholders in ids[keep:] (only the items they need are encoded), and
        for all of them when `everything` (else None)."""
        fed: dict[str, np.ndarray] = {}
        full: dict[str, np.ndarray] = {}
        with_image = VisionNames.IMAGE_FEATURES in items
        for name, its in items.items():
            cached_rows = int((ids[:keep] == self.bundle.manifest.decoder.media[name]).sum())
            ends = np.cumsum([i.num_tokens for i in its])
            first = 0 if everything else int(np.searchsorted(ends, cached_rows, side="right"))
            if first == len(its):
                continue
            start = time.perf_counter()
            encoded = self.image_features(its[first:]) if name == VisionNames.IMAGE_FEATURES else \
                self.audio_features(its[first:], with_image)
            timings[f"{name.split('_')[0]}_encode_ms"] = (time.perf_counter() - start) * 1e3
            skip = cached_rows - (int(ends[first - 1]) if first else 0)
            fed[name] = encoded[skip:]
            if everything:
                full[name] = encoded
        return fed or None, (full or None) if everything else None

    def generate(self, prompt: str | list[int], max_new_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
                 chat_template: bool = True, system: str | None = None, adapter: str | None = None,
                 images: Sequence = (), audios: Sequence = (), on_text: Callable[[str], None] | None = None,
                 stop_token_ids: set[int] | None = None, prompt_lookup: int = 0) -> GenerationResult:
        """Answer one prompt. `images` (paths, bytes, PIL images) and `audios` (paths, bytes, 16 kHz
        waveforms) go where the prompt says `<|image_1|>`, `<|audio_1|>`, ... (or before the text).
        Routing, unless `adapter` names one (or is NO_ADAPTER, "none": the base model): images ->
        the `vision` adapter (audio then through the vision_speech projection); audio alone -> the
        `speech` adapter; text -> none. Text is never parsed for control tokens: pass ids for that.
        `prompt_lookup`: see `stream`."""
        request: dict = {}
        steps = []
        for step in self.stream(prompt, max_new_tokens, sampling, chat_template, system, adapter, images, audios,
                                stop_token_ids, request, logprobs=False, prompt_lookup=prompt_lookup):
            steps.append(step)
            if on_text is not None and step.text:
                on_text(step.text)
        ids = [s.token_id for s in steps]
        return GenerationResult(self.tokenizer.decode(ids), ids, request["prompt_token_ids"],
                                steps[-1].finish_reason or "length", request["timings"], request["adapter"])


@dataclass
class Inputs:
    """What a request prefills: the cached positions it keeps, every position's key (None: the
    request records none), the KV capacity to reserve, and the media features for the fed
    positions and (when the LongRoPE switch may rerun the sequence) for all of them."""

    keep: int = 0
    keys: list | None = None
    capacity: int | None = None
    fed: dict[str, np.ndarray] | None = None
    all: dict[str, np.ndarray] | None = None


def logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token]: exponentials in float32 (all <= 1), summed in float64; one pass
    over the vocabulary, about 0.1 ms at 200K entries."""
    top = logits.max()
    return float(logits[token] - top) - math.log(float(np.exp(logits - top).sum(dtype=np.float64)))
