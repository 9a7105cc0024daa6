"""Tokenizing prompts and rendering the bundle's chat template (tokenizers + jinja2, no transformers)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from ..models.errors import BundleError


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str):
    raise TemplateError(message)


class ChatTokenizer:
    """tokenizer.json plus the chat template and special tokens of tokenizer_config.json."""

    def __init__(self, bundle_dir: Path):
        path = Path(bundle_dir) / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        self.tokenizer = Tokenizer.from_file(str(path))
        config_path = Path(bundle_dir) / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_file = Path(bundle_dir) / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if isinstance(template, list):   # named templates: use the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(template) if template else None
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            raise BundleError("this bundle has no chat template; pass --no-chat-template to send raw text")
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)

    def encode_prompt(self, prompt: str, chat: bool = True, system: str | None = None,
                      media: dict[str, tuple[int, list[int]]] | None = None) -> list[int]:
        """Token ids for a user prompt: chat-formatted (special tokens come from the template) or raw.

        media: {"image": (placeholder token id, [tokens per item]), ...}: each `<|image_N|>` in the
        prompt becomes item N's count of placeholder ids; with no `<|image_N|>` in the prompt, the
        items' placeholders are put before the text.
        """
        for kind, (_, counts) in (media or {}).items():
            prompt = with_placeholders(prompt, kind, len(counts))
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            prompt = self.render(messages)
        for kind, (token_id, counts) in (media or {}).items():
            token = self.tokenizer.id_to_token(token_id)
            if token is None:
                raise BundleError(f"the tokenizer has no token for {kind} placeholder id {token_id}")
            prompt = re.sub(rf"<\|{kind}_(\d+)\|>", lambda m, t=token, c=counts: t * c[int(m.group(1)) - 1], prompt)
        return self.tokenizer.encode(prompt, add_special_tokens=not chat).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.vocab_size], skip_special_tokens=True)

    def stream(self) -> "TextStream":
        return TextStream(self)


def with_placeholders(prompt: str, kind: str, count: int) -> str:
    """Check the prompt's `<|kind_N|>` references against `count` items, adding them when absent."""
    used = [int(n) for n in re.findall(rf"<\|{kind}_(\d+)\|>", prompt)]
    if not used:
        return "".join(f"<|{kind}_{i}|>" for i in range(1, count + 1)) + prompt
    if sorted(used) != list(range(1, count + 1)):
        raise BundleError(f"the prompt refers to {', '.join(f'<|{kind}_{n}|>' for n in used)} but {count} {kind}"
                          f"{'s were' if count != 1 else ' was'} given: use each of <|{kind}_1|>..<|{kind}_{count}|> once")
    return prompt


class TextStream:
    """Incremental detokenisation: text pieces as complete UTF-8 characters become available."""

    def __init__(self, tok: ChatTokenizer):
        self._tok = tok
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        if token_id >= self._tok.vocab_size:   # ids the model knows but the tokenizer does not
            return ""
        return self._stream.step(self._tok.tokenizer, token_id) or ""
