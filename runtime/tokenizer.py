"""Tokenizing prompts and rendering the bundle's chat template (tokenizers + jinja2, no transformers).

User and system text can never become control tokens: the template is rendered around sentinels,
its own text (role markers, ends) is encoded with special tokens recognised, and every message's
text with them encoded as plain text. Image/audio placeholder ids are inserted only for media the
request actually carries.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers.decoders import DecodeStream

from ..bundle import read_tokenizer
from ..errors import BundleError, RequestError

ROLES = ("system", "user", "assistant", "tool")
MAX_TEMPLATE_OUTPUT = 1 << 24   # characters; a template that renders more is broken or hostile


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str):
    raise TemplateError(message)


def _sentinel(i: int) -> str:
    # private-use code points: no tokenizer special token and no template filter produces them
    return f"\ue000{i}\ue001"


SENTINEL = re.compile("\ue000(\\d+)\ue001")


def _read(path: Path | None, what: str) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise BundleError(f"{path}: unreadable {what} ({e})") from None


class ChatTokenizer:
    """tokenizer.json plus the chat template and special tokens of tokenizer_config.json."""

    def __init__(self, tokenizer_json: Path, tokenizer_config: Path | None = None, chat_template: Path | None = None):
        if not tokenizer_json.is_file():
            raise BundleError(f"{tokenizer_json}: missing")
        # two instances: one parses special-token strings (template text), one never does (user text)
        self.tokenizer, self.plain = read_tokenizer(tokenizer_json), read_tokenizer(tokenizer_json)
        self.plain.encode_special_tokens = True
        self.wrap = self._added_by_post_processing()
        config = {}
        if (raw := _read(tokenizer_config, "tokenizer config")) is not None:
            try:
                config = json.loads(raw)
            except json.JSONDecodeError as e:
                raise BundleError(f"{tokenizer_config}: not valid JSON ({e})") from None
            if not isinstance(config, dict):
                raise BundleError(f"{tokenizer_config}: must be a JSON object")
        template = _read(chat_template, "chat template") or config.get("chat_template")
        if isinstance(template, list):   # named templates: use the default one
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        self.special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        source = chat_template if chat_template and chat_template.is_file() else tokenizer_config
        try:
            self.template = env.from_string(template) if isinstance(template, str) and template else None
        except TemplateError as e:
            raise BundleError(f"{source}: the chat template does not parse ({e})") from None
        self.template_source = source
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, folder: str | Path) -> ChatTokenizer:
        """A checkpoint's (or any folder's) tokenizer.json, tokenizer_config.json and chat_template.jinja."""
        folder = Path(folder)
        return cls(folder / "tokenizer.json", folder / "tokenizer_config.json", folder / "chat_template.jinja")

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            raise RequestError("this bundle has no chat template; pass --no-chat-template to send raw text")
        try:
            text = self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)
        except TemplateError as e:   # SecurityError (the sandbox refused something) included
            raise BundleError(f"{self.template_source}: the chat template failed ({type(e).__name__}: {e})") from None
        if len(text) > MAX_TEMPLATE_OUTPUT:
            raise BundleError(f"{self.template_source}: the chat template rendered {len(text)} characters")
        return text

    def token_id(self, token: str) -> int:
        """The id of a token of the vocabulary (a special token such as "<|end|>" included)."""
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise BundleError(f"the tokenizer has no token {token!r}")
        return found

    def encode_text(self, text: str) -> list[int]:
        """Plain text: special-token strings in it stay text."""
        return self.plain.encode(text, add_special_tokens=False).ids

    def encode_messages(self, messages: list[dict], media: dict[str, tuple[int, list[int]]] | None = None,
                        add_generation_prompt: bool = True) -> list[int]:
        """Token ids for a conversation ({"role", "content"} dicts, roles system/user/assistant/tool).

        media: {"image": (placeholder token id, [tokens per item]), ...}: each `<|image_N|>` in the
        messages becomes item N's count of placeholder ids; with no reference anywhere, the items'
        placeholders go before the text of the last user message.
        """
        check_messages(messages)
        contents = [m["content"] for m in messages]
        for kind, (_, counts) in (media or {}).items():
            contents = with_placeholders(contents, [m["role"] for m in messages], kind, len(counts))
        rendered = self.render([{**m, "content": _sentinel(i)} for i, m in enumerate(messages)], add_generation_prompt)
        found = [int(i) for i in SENTINEL.findall(rendered)]
        if sorted(found) != list(range(len(messages))):
            raise BundleError(f"{self.template_source}: the chat template does not place each message's content "
                              "exactly once, so phi4edge cannot keep user text apart from control tokens")
        ids: list[int] = []
        for i, part in enumerate(SENTINEL.split(rendered)):
            if i % 2 == 0:
                ids += self.tokenizer.encode(part, add_special_tokens=False).ids if part else []
            else:
                ids += self._content_ids(contents[int(part)], media)
        return ids

    def _content_ids(self, text: str, media: dict[str, tuple[int, list[int]]] | None) -> list[int]:
        if not media:
            return self.encode_text(text)
        pattern = re.compile(rf"<\|({'|'.join(media)})_(\d+)\|>")
        ids: list[int] = []
        pos = 0
        for m in pattern.finditer(text):
            ids += self.encode_text(text[pos:m.start()]) if m.start() > pos else []
            token_id, counts = media[m.group(1)]
            ids += [token_id] * counts[int(m.group(2)) - 1]
            pos = m.end()
        return ids + (self.encode_text(text[pos:]) if pos < len(text) else [])

    def encode_prompt(self, prompt: str, chat: bool = True, system: str | None = None,
                      media: dict[str, tuple[int, list[int]]] | None = None) -> list[int]:
        """Token ids for one user prompt: chat-formatted, or raw text (plain, with the tokenizer's
        own BOS/EOS post-processing; special-token strings stay text either way)."""
        if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
            bad = prompt if not isinstance(prompt, str) else system
            raise RequestError(f"the prompt must be text (str), not {type(bad).__name__}")
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return self.encode_messages(messages, media)
        contents = [prompt]
        for kind, (_, counts) in (media or {}).items():
            contents = with_placeholders(contents, ["user"], kind, len(counts))
        prefix, suffix = self.wrap
        return prefix + self._content_ids(contents[0], media) + suffix

    def _added_by_post_processing(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer's post-processor puts around a raw text (BOS/EOS, if it defines any)."""
        bare = self.plain.encode("x", add_special_tokens=False).ids
        full = self.plain.encode("x", add_special_tokens=True).ids
        at = next(i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare)
        return full[:at], full[at + len(bare):]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=True)

    def stream(self) -> TextStream:
        return TextStream(self)


def check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RequestError(f"message {i}: expected {{'role': one of {', '.join(ROLES)}, 'content': text}}")


def with_placeholders(contents: list[str], roles: list[str], kind: str, count: int) -> list[str]:
    """Check the messages' `<|kind_N|>` references against `count` items; with none, put them
    before the last user message's text."""
    used = [int(n) for c in contents for n in re.findall(rf"<\|{kind}_(\d+)\|>", c)]
    if not used:
        last = max((i for i, r in enumerate(roles) if r == "user"), default=len(contents) - 1)
        refs = "".join(f"<|{kind}_{i}|>" for i in range(1, count + 1))
        return [refs + c if i == last else c for i, c in enumerate(contents)]
    if sorted(used) != list(range(1, count + 1)):
        raise RequestError(f"the prompt refers to {', '.join(f'<|{kind}_{n}|>' for n in used)} but {count} {kind}"
                           f"{'s were' if count != 1 else ' was'} given: use each of <|{kind}_1|>..<|{kind}_{count}|> once")
    return contents


class TextStream:
    """Incremental detokenisation: text pieces as complete UTF-8 characters become available."""

    def __init__(self, tok: ChatTokenizer):
        self._tok = tok
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        if not 0 <= token_id < self._tok.vocab_size:   # ids the model knows but the tokenizer does not
            return ""
        return self._stream.step(self._tok.tokenizer, token_id) or ""
