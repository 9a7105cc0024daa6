"""One conversation turn on a Model: the server and the terminal chat both run this.

Every turn goes through `Model.stream(messages=..., reuse_prefix=True)`, so a turn that extends
the previous one prefills only its new tokens, and images and audio already in the KV cache are
not encoded again. Stop strings, a grammar constraint and a stop check (client gone, time limit,
Ctrl-C) are applied between tokens.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...bundle import TOKENIZER
from ..generate import Model
from ..sampling import SamplingParams
from .grammar import Grammars, JsonConstraint


@dataclass(frozen=True)
class Turn:
    """A conversation to answer: {"role", "content"} messages whose text refers to the media as
    <|image_N|> / <|audio_N|>, the media in that numbering (paths, bytes or prepared items)."""

    messages: list[dict]
    images: tuple = ()
    audios: tuple = ()
    max_tokens: int = 512
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    constraint: JsonConstraint | None = None
    adapter: str | None = None     # None: routed by modality; "none": the base model


@dataclass(frozen=True)
class Delta:
    """Text of the answer, in order."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of an answer: why, and the token counts."""

    finish_reason: str             # "stop" (end token or stop string), "length" (max_tokens, context, time limit)
    prompt_tokens: int
    cached_tokens: int             # prompt tokens the KV cache already held (not prefilled again)
    completion_tokens: int
    adapter: str | None
    timings: dict = field(default_factory=dict)
    stopped_by: str | None = None  # what the stop check said, if it ended the answer


class StopText:
    """Cuts streamed text at the first of some stop strings, holding back a tail that might be
    the start of one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class Engine:
    """A model and what every turn shares: the grammar compiler and the context cap."""

    def __init__(self, model: Model, max_context: int | None = None, prompt_lookup: int = 0):
        self.model = model
        self.prompt_lookup = prompt_lookup   # drafts per step for greedy turns (Model.stream)
        model.check_prompt_lookup(prompt_lookup)   # refused at start, not at the first greedy turn
        if max_context:   # a cap bounds the KV cache's memory (it grows with the conversation)
            model.context_length = min(model.context_length, max_context)
        self.grammars = Grammars(model.bundle.file(TOKENIZER), model.bundle.manifest.model.config.vocab_size,
                                 model.eos_token_ids)

    def run(self, turn: Turn, should_stop: Callable[[], str | None] = lambda: None) -> Iterator[Delta | Finished]:
        """Answer the turn: Deltas, then one Finished. `should_stop()` is asked after every
        token; a reason it returns ends the answer (finish_reason "length")."""
        info: dict = {}
        stream = self.model.stream(None, turn.max_tokens, turn.sampling, adapter=turn.adapter, images=turn.images,
                                   audios=turn.audios, request=info, logprobs=False, reuse_prefix=True,
                                   logits_processor=turn.constraint, messages=turn.messages,
                                   prompt_lookup=self.prompt_lookup)
        stops = StopText(turn.stop)
        finish, count, stopped_by = "length", 0, None
        try:
            for step in stream:
                count += 1
                text, hit = stops.feed(step.text)
                if text:
                    yield Delta(text)
                if hit:
                    finish = "stop"
                    break
                finish = step.finish_reason or finish
                if step.finish_reason is None and (stopped_by := should_stop()):
                    break
            else:
                if tail := stops.flush():
                    yield Delta(tail)
        finally:
            stream.close()   # releases the model for the next turn
        t = info.get("timings", {})
        yield Finished(finish, len(info["prompt_token_ids"]), t.get("cached_tokens", 0), count, info["adapter"], t,
                       stopped_by)


def load_engine(bundle: str | Path, threads: int | None = None, providers: list[str] | None = None,
                max_context: int | None = None, prompt_lookup: int = 0) -> Engine:
    """Load a bundle for serving or chatting."""
    return Engine(Model(bundle, threads, providers), max_context, prompt_lookup)
