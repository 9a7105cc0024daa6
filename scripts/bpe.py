"""A small byte-level BPE tokenizer with Phi-4's special tokens and chat template.

Real Phi-4 tokenizers cannot be downloaded here, so tiny test checkpoints, synthetic benchmark
checkpoints and the embedded model use this one. It is a real `tokenizers` BPE (byte-level, so any
text encodes), trained deterministically on the text given.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Phi-4-mini's chat format (its tokenizer_config.json chat_template, tools branch omitted).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>",
                  "<|/tool|>", "<|endoftext10|>", "<|endoftext11|>"]
DEFAULT_TEXT = """The quick brown fox jumps over the lazy dog. Phi-4 runs offline on laptops and phones.
Explain grouped query attention in one paragraph. What is in this picture? Transcribe the audio.
zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 red green blue circle square
A language model predicts the next token. Quantisation stores weights in four bits with a scale per block.
"""


def train_tokenizer(vocab_size: int = 512, text: str = DEFAULT_TEXT) -> Tokenizer:
    """Byte-level BPE with the Phi-4 special tokens at ids 0..len(SPECIAL_TOKENS)-1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines() * 4, trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int = 131072) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json as transformers does; returns special ids."""
    out_dir = Path(out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
        "add_eos_token": False, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
        "model_max_length": model_max_length,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
