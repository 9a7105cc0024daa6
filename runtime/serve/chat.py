"""`phi4edge chat`: a multi-turn conversation in the terminal, on the server's engine.

Each turn prefills only its new tokens (the KV cache keeps the conversation); /image and /audio
attach media to the next message; Ctrl-C stops the answer being written, not the program; when
the conversation outgrows the context, the oldest turns are dropped, with a message saying so.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import TextIO

from ...errors import Phi4EdgeError
from ..generate import NO_ADAPTER
from ..sampling import SamplingParams
from .engine import Delta, Engine, Finished, Turn

HELP = """commands:
  /image PATH     attach an image to your next message
  /audio PATH     attach an audio clip (wav, flac, ogg, mp3) to your next message
  /adapter [NAME] show the adapter, or choose one: a name, 'auto' (by modality) or 'none'
  /json [SCHEMA]  answer in JSON: 'object', a JSON schema file, or 'off'
  /reset          start a new conversation
  /save PATH      write the conversation as JSON
  /quit           leave (or Ctrl-D); Ctrl-C stops an answer"""
REFERENCE = re.compile(r"<\|(image|audio)_(\d+)\|>")


class Chat:
    """The conversation and its media; `loop` reads lines until /quit or end of input."""

    def __init__(self, engine: Engine, system: str | None = None, adapter: str | None = None, max_tokens: int = 512,
                 sampling: SamplingParams = SamplingParams(), out: TextIO = sys.stdout):
        self.engine, self.system, self.adapter = engine, system, adapter
        self.schema: dict | None = None
        self.max_tokens, self.sampling, self.out = max_tokens, sampling, out
        self.interrupted = False
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.media: dict[str, list[tuple[str, object]]] = {"image": [], "audio": []}   # (path, prepared item)
        self.pending = ""   # media references for the next user message

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def loop(self) -> None:
        model = self.engine.model
        self.say(f"phi4edge chat: {model.bundle.path.name} ({model.context_length} tokens of context). "
                 "/help for commands, Ctrl-D to leave.")
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                self.say("")
                return
            except KeyboardInterrupt:
                self.say("^C (Ctrl-D or /quit to leave)")
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
            elif line:
                self.ask(line)

    def command(self, line: str) -> bool:
        """Run a /command; False to leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/help":
                self.say(HELP)
            elif name in ("/image", "/audio") and arg:
                self.attach(name[1:], arg)
            elif name == "/adapter":
                self.choose_adapter(arg)
            elif name == "/json" and arg:
                self.choose_format(arg)
            elif name == "/reset":
                self.reset()
                self.say("[new conversation]")
            elif name == "/save" and arg:
                self.save(Path(arg))
            else:
                self.say(f"unknown command or missing argument: {line} (/help lists them)")
        except (Phi4EdgeError, OSError) as e:
            self.say(f"error: {e}")
        return True

    def attach(self, kind: str, path: str) -> None:
        model = self.engine.model
        item = model.prepare_image(path) if kind == "image" else model.prepare_audio(path)
        self.media[kind].append((str(Path(path).resolve()), item))
        self.pending += f"<|{kind}_{len(self.media[kind])}|>"
        self.say(f"[{kind} {len(self.media[kind])} attached: {item.num_tokens} tokens; it goes with your next message]")

    def choose_adapter(self, name: str) -> None:
        names = self.engine.model.adapters
        if name:
            if name not in (*names, "auto", NO_ADAPTER):
                raise Phi4EdgeError(f"no adapter '{name}' (this bundle has: {', '.join(names) or 'none'}; or auto, none)")
            self.adapter = None if name == "auto" else name
        self.say(f"[adapter: {self.adapter or 'auto (by modality)'}; available: {', '.join(names) or 'none'}]")

    def choose_format(self, arg: str) -> None:
        if arg == "off":
            self.schema = None
        elif arg == "object":
            self.schema = {"type": "object"}
        else:
            try:
                schema = json.loads(Path(arg).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise Phi4EdgeError(f"{arg}: not a JSON schema file ({e})") from None
            self.engine.grammars.compile(schema)   # refused now rather than at the next answer
            self.schema = schema
        self.say(f"[answers: {'text' if self.schema is None else 'JSON'}]")

    def save(self, path: Path) -> None:
        record = {"bundle": str(self.engine.model.bundle.path), "adapter": self.adapter, "messages": self.messages,
                  "images": [p for p, _ in self.media["image"]], "audios": [p for p, _ in self.media["audio"]]}
        part = path.with_name(path.name + ".part")   # written whole, then renamed: never half a file
        part.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(part, path)
        self.say(f"[saved {len(self.messages)} messages to {path}]")

    def ask(self, text: str) -> None:
        self.messages.append({"role": "user", "content": self.pending + text})
        self.pending = ""
        try:
            self.fit()
            self.answer()
        except Phi4EdgeError as e:
            gone = self.messages.pop()
            for kind, _ in REFERENCE.findall(gone["content"]):   # its media are the newest items
                self.media[kind].pop()
            self.say(f"error: {e}")

    def fit(self) -> None:
        """Drop the oldest turns (and their media) until the conversation and room for an answer fit."""
        model = self.engine.model
        room = min(self.max_tokens, model.context_length // 2)
        first = 1 if self.system else 0
        dropped = 0
        while True:
            n = len(model.encode_messages(self.messages, self._items("image"), self._items("audio")))
            if n + room <= model.context_length:
                break
            if len(self.messages) - first <= 1:
                raise Phi4EdgeError(f"this message is {n} tokens; with room for an answer the context "
                                    f"({model.context_length} tokens) cannot hold it")
            self._drop(first)   # a user message and the answers to it: the history stays user-first
            dropped += 1
            while len(self.messages) - first > 1 and self.messages[first]["role"] != "user":
                self._drop(first)
                dropped += 1
        if dropped:
            self.say(f"[context full: dropped the {dropped} oldest message{'s' * (dropped > 1)} to fit "
                     f"{model.context_length} tokens]")

    def _drop(self, index: int) -> None:
        """Remove one message and the media it refers to, renumbering the later references."""
        gone = self.messages.pop(index)
        counts = {kind: len({n for k, n in REFERENCE.findall(gone["content"]) if k == kind}) for kind in self.media}
        for kind, count in counts.items():
            del self.media[kind][:count]   # references are numbered in order, so they are the first items
        renumber = lambda m: f"<|{m.group(1)}_{int(m.group(2)) - counts[m.group(1)]}|>"
        for message in self.messages:
            message["content"] = REFERENCE.sub(renumber, message["content"])
        self.pending = REFERENCE.sub(renumber, self.pending)

    def _items(self, kind: str) -> tuple:
        return tuple(item for _, item in self.media[kind])

    def answer(self) -> None:
        constraint = None if self.schema is None else self.engine.grammars.compile(self.schema)
        turn = Turn(list(self.messages), self._items("image"), self._items("audio"), self.max_tokens, self.sampling,
                    constraint=constraint, adapter=self.adapter)
        self.interrupted = False
        previous = signal.signal(signal.SIGINT, self._interrupt)   # Ctrl-C: stop after the current token
        pieces: list[str] = []
        done: Finished | None = None
        try:
            for event in self.engine.run(turn, lambda: "interrupted" if self.interrupted else None):
                if isinstance(event, Delta):
                    pieces.append(event.text)
                    self.out.write(event.text)
                    self.out.flush()
                elif isinstance(event, Finished):
                    done = event
        finally:
            signal.signal(signal.SIGINT, previous)
        assert done is not None   # the engine always ends with Finished
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        t = done.timings
        speed = f", {t['decode_tokens_per_s']:.0f} tok/s" if t.get("decode_tokens_per_s") else ""
        end = "stopped" if done.stopped_by else done.finish_reason
        self.say(f"\n[{done.completion_tokens} tokens, {end}; prefilled {done.prompt_tokens - done.cached_tokens} new "
                 f"of {done.prompt_tokens} prompt tokens{speed}; adapter {done.adapter or 'none'}]")

    def _interrupt(self, signum, frame) -> None:
        self.interrupted = True
