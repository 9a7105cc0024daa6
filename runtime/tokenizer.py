"""Tokenizing prompts and rendering the bundle's chat template (tokenizers + jinja2, no transformers)."""
from __future__ import annotations

import json
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

    def encode_prompt(self, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
        """Token ids for a user prompt: chat-formatted (special tokens come from the template) or raw."""
        if not chat:
            return self.tokenizer.encode(prompt, add_special_tokens=True).ids
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.encode(self.render(messages), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.vocab_size], skip_special_tokens=True)

    def stream(self) -> "TextStream":
        return TextStream(self)


class TextStream:
    """Incremental detokenisation: text pieces as complete UTF-8 characters become available."""

    def __init__(self, tok: ChatTokenizer):
        self._tok = tok
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        if token_id >= self._tok.vocab_size:   # ids the model knows but the tokenizer does not
            return ""
        return self._stream.step(self._tok.tokenizer, token_id) or ""
