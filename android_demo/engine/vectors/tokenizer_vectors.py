"""Shared tokenizer vectors for the Kotlin engine's BPE port (android_demo/engine, TokenizerTest).

    python android_demo/engine/vectors/tokenizer_vectors.py OUTDIR

writes OUTDIR/tokenizer/:
  embedded/tokenizer.json   the embedded model's tokenizer (ByteLevel pre-tokenizer, GPT-2 regex)
  o200k/tokenizer.json      one trained here in real Phi-4-mini's form: Sequence[Split(o200k-style
                            regex, Isolated), ByteLevel(use_regex=false)], special tokens added above
                            the model vocabulary, merges written as legacy "a b" strings
  vectors.json              for each: texts with their pre-tokenizer pieces, the ids `tokenizers` gives them as the Python runtime
                            encodes user text (ChatTokenizer.encode_text), the decode of those ids
                            (ChatTokenizer.decode) and the per-token streaming output
                            (ChatTokenizer.stream().step); id sequences (special tokens, ids out of
                            range, broken UTF-8) with their decode and stream; token ids by content.
  big/tokenizer.json        the o200k form at real Phi-4's size (200K tokens, made-up merges, [a, b]
                            pairs, a ByteLevel post-processor): for load time, speed and merge order.

Everything comes from the Python runtime's own ChatTokenizer, so the Kotlin port is held to what
phi4edge does, not to a reading of `tokenizers`.
"""
from __future__ import annotations

import json
import random
import sys
import unicodedata
from pathlib import Path

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from phi4edge.runtime.tokenizer import ChatTokenizer  # noqa: E402
from scripts.bpe import DEFAULT_TEXT, SPECIAL_TOKENS  # noqa: E402

EMBEDDED = REPO / "models" / "embedded" / "checkpoint" / "tokenizer.json"
SEED = 20240611

# Phi-4-mini's pre-tokenizer pattern (tiktoken o200k_base's, as Hugging Face writes it)
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = DEFAULT_TEXT + """
It's a small model, isn't it? We'll see; they've said you'd like it, and I'm sure they're right.
IT'S LOUD. WE'LL GO. THEY'VE LEFT. I'M HERE. YOU'D KNOW. THEY'RE OUT. DON'T STOP.
def encode(text: str) -> list[int]:
    return [vocab[t] for t in pretokenize(text)]  # 4 spaces, then code
for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }   // C-style loop
https://example.com/path/to/file.json?query=1&limit=200  user@example.org
Prices: $12.99, €7,50, £3 — 1,234,567.89 and 2025-06-11T10:34:00Z; 3.14159 2.71828 1e-9
Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Äpfel, Öl, Übung.
Le cœur a ses raisons que la raison ne connaît point. Où est la bibliothèque ? Ça va très bien.
El niño comió una manzana; ¿dónde está el baño? ¡Qué día más bonito! Mañana será otro día.
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела? Спасибо большое.
Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Καλημέρα σας.
快速的棕色狐狸跳过了懒狗。我们今天去公园散步吧。机器学习模型可以在手机上运行。
日本語のテキストも少し含めます。東京は晴れです。ひらがな、カタカナ、漢字。
한국어 문장도 포함합니다. 오늘 날씨가 좋네요. 감사합니다.
العربية لغة جميلة. مرحبا بالعالم. كيف حالك اليوم؟
עברית נכתבת מימין לשמאל. שלום עולם.
हिन्दी में भी कुछ पाठ है। नमस्ते दुनिया।
ภาษาไทยไม่มีช่องว่างระหว่างคำ สวัสดีครับ
Emoji: 😀 😃 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🎉✨ — and symbols ∑ ∫ √ ≤ ≥ ≠ → ⇒ ∀ ∃ ∈ ℝ ℕ
Tabs\tand\ttabs, CRLF lines\r\nand more\r\n, trailing spaces\x20\x20\x20
"""


def corpus() -> list[str]:
    """Training lines: the text above plus the docstrings of some standard modules (deterministic)."""
    import collections
    import json as json_module
    import pathlib
    import re
    import string
    import textwrap
    lines = CORPUS.splitlines() * 6
    for module in (collections, json_module, pathlib, re, string, textwrap, random, unicodedata):
        lines += (module.__doc__ or "").splitlines()
    return [line for line in lines if line]


def train_o200k(vocab_size: int = 3000) -> str:
    """A byte-level BPE in Phi-4-mini's form; returns its tokenizer.json text (legacy merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    # like Phi-4: the special tokens live above the model's vocabulary
    tok.add_special_tokens(SPECIAL_TOKENS + ["<|endofprompt|>", "<|tool_call|>", "<|/tool_call|>"])
    data = json.loads(tok.to_str())
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    return json.dumps(data, ensure_ascii=False, indent=2)


def synthetic_big(vocab_size: int = 200_000) -> str:
    """Real Phi-4's size: 200K tokens and ~200K merges in the o200k form, made up (seeded) rather
    than trained: prefixes of the corpus's words first, then random joins of existing tokens."""
    rng = random.Random(SEED + 1)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges: list[list[str]] = []

    def add(a: str, b: str) -> None:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append([a, b])

    words = [w for line in corpus() for w, _ in pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]).pre_tokenize_str(line)]
    for w in words:
        for n in range(2, min(len(w), 12) + 1):
            add(w[:n - 1], w[n - 1])
    weighted = [c for w in words for c in w]   # characters as often as the corpus has them
    tokens = list(vocab)
    while len(vocab) < vocab_size:
        a = rng.choice(tokens)
        b = rng.choice(weighted) if rng.random() < 0.7 else rng.choice(tokens)
        if len(a) + len(b) <= 10 and a + b not in vocab:
            add(a, b)
            tokens.append(a + b)
    rng.shuffle(merges)   # ranks unrelated to lengths: merge order matters
    merges.sort(key=lambda m: len(m[0]) + len(m[1]) + rng.random() * 6)
    data = json.loads(Tokenizer(models.BPE()).to_str())
    data["model"]["vocab"] = vocab
    data["model"]["merges"] = merges
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": O200K}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    names = SPECIAL_TOKENS + [f"<|dummy_{i}|>" for i in range(40)]
    data["added_tokens"] = [{"id": len(vocab) + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, t in enumerate(names)]
    return json.dumps(data, ensure_ascii=False)


def stable_random_char(rng: random.Random) -> str:
    """A code point whose general category is the same in Unicode 3.2 and in this Python's Unicode:
    stable across the Unicode versions of onig, the JVM and Android's ICU."""
    while True:
        cp = rng.choice((rng.randrange(0x20, 0x800), rng.randrange(0x800, 0x10000), rng.randrange(0x10000, 0x30000)))
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat not in ("Cn", "Cs") and unicodedata.ucd_3_2_0.category(c) == cat:
            return c


def texts() -> list[str]:
    out = [
        "", " ", "  ", "a", "Hello", "Hello world", " Hello world", "Hello world ", "Hello  world", "Hello   world  ",
        "The quick brown fox jumps over the lazy dog.", "Explain grouped query attention in one paragraph.",
        "What is in this picture?", "Transcribe the audio.", "zero one two three four five six seven eight nine ten",
        # contractions, both cases and mixed, and lookalikes
        "it's", "It's", "IT'S", "it'S", "It'S", "don't", "DON'T", "Don'T", "we're", "WE'RE", "We'Re", "they've",
        "THEY'VE", "I'm", "I'M", "we'll", "WE'LL", "We'Ll", "you'd", "YOU'D", "'s", "'S", "'t", "'re", "'ll", "'d",
        "'m", "'ve", "''s", "'sa", "'Sa", "'x", "' s", "a's b'S c'T d'RE e'VE f'M g'LL h'D", "rock'n'roll",
        "o'clock", "O'CLOCK", "l'homme", "L'HOMME", "dogſ", "it'ſ", "IT'ſ", "it'K", "it\u2019s", "IT\u2019S",
        "it'ﬅ", "ABC'S", "abcDEF'sghi", "camelCaseWord", "HTTPServerError", "XMLHttpRequest", "iPhone'S", "ÅNGSTRÖM'S",
        # digits
        "1", "12", "123", "1234", "12345", "123456789", "3.14159", "1,234,567.89", "2025-06-11", "v1.2.3",
        "a1b2c3", "x123456y", "٣٤٥", "१२३४५", "①②③", "Ⅻ", "½ ¾", "𝟘𝟙𝟚𝟛𝟜",
        # whitespace
        "\n", "\n\n", "\r\n", "\r\n\r\n", "\t", "\t\t", "a\tb", "a\nb", "a\r\nb", "a \n b", "a  \n\n  b", "a\n\n\nb",
        "line one\nline two\n", "trailing   ", "   leading", "  both  ", "a \t b", " \t\n \r\n ", "\r", "a\rb",
        "\u00a0", "a\u00a0b", "a\u3000b", "a\u2028b", "a\u2029b", "a\u0085b", "a\u1680b", "a\u2003b", "a\u200bb",
        "a\u202fb", "a\u205fb", "a\ufeffb", "a\u180eb", "a\x0bb", "a\x0cb", "a\x1cb", "a\x1fb", "  \u00a0 x",
        "x\u3000\u3000", "\u3000 \n", "    def f():\n        return 1\n",
        # punctuation, code, urls
        "Hello, world!", "What?!", "...", "--", "->", "=>", "a/b/c", "path/to/file\n/next", "!!!\n\n", "(x)",
        "[1, 2, 3]", "{\"key\": \"value\"}", "x = y + z * 2", "if (a && b || !c) { return; }", "#include <stdio.h>",
        "https://example.com/a?b=1&c=2", "user@example.org", "$12.99", "€7,50", "100%", "@@@###$$$", "a_b_c",
        "snake_case_name", "__init__", "<html><body></body></html>",
        # unicode
        "Größe", "Straße", "café", "cafe\u0301", "e\u0301\u0301", "\u0301", "a\u0300\u0301\u0302b", "naïve", "Ω≈ç√∫",
        "Привет мир", "ПРИВЕТ Мир", "Καλημέρα", "ΣΊΣΥΦΟΣ", "中文测试", "我们今天去公园", "日本語とカタカナ",
        "한국어 텍스트", "مرحبا بالعالم", "שלום עולם", "mixed עברית and English", "العربية 123 English",
        "हिन्दी", "नमस्ते दुनिया", "ภาษาไทย", "ᚠᚢᚦᚨᚱᚲ", "ʕ•ᴥ•ʔ", "ǅungla ǈubljana ǋegoš", "ﬁ ﬂ ﬀ", "ℌℑℜ",
        "😀", "😀😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "❤️", "a😀b", " 😀 ", "🎉✨🚀", "𝐀𝐁𝐂 𝑎𝑏𝑐", "𓀀𓀁", "\U0001f600x",
        "\ue000", "\ue0000\ue001", "\uffff", "\ufffd", "\ufffd\ufffd", "a\ufffd", "\x00", "a\x00b", "\x7f",
        # special-token strings are plain text here
        "<|user|>", "<|end|>", "<|endoftext|>", "<|assistant|>", "<|system|>hi<|end|>", "<|image_1|>",
        "<|endoftext10|>", "<|tool|>x<|/tool|>", "hello <|end|> world", "<|user|><|user|>", "<|", "|>", "<|end",
        "<|endofprompt|>", "<|tool_call|>",
        CORPUS,
    ]
    # which characters the regexes' \s takes (a run of punctuation stops at whitespace)
    spaces = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u180e" + "".join(map(chr, range(0x2000, 0x200c))) + \
        "\u2028\u2029\u202f\u205f\u3000\ufeff"
    out += [f"!{c}!" for c in spaces] + [f"a{c}{c}b {c}" for c in spaces]
    rng = random.Random(SEED)
    pieces = ["a", "b", "Z", "é", "ß", "Ω", "中", "😀", "'", "'s", "'LL", " ", "  ", "\n", "\r\n", "\t", "1", "22",
              "333", ".", ",", "!", "?", "/", "-", "_", "\u00a0", "\u0301", "<|", "|>", "end", "The", "the", "IT"]
    for _ in range(120):   # shuffles of troublesome pieces
        out.append("".join(rng.choice(pieces) for _ in range(rng.randrange(1, 16))))
    for _ in range(120):   # random code points
        out.append("".join(stable_random_char(rng) for _ in range(rng.randrange(1, 12))))
    words = CORPUS.split()
    for _ in range(40):    # random prose
        out.append(" ".join(rng.choice(words) for _ in range(rng.randrange(2, 30))))
    return out


def stream(tok: ChatTokenizer, ids: list[int]) -> list[str]:
    s = tok.stream()
    return [s.step(i) for i in ids]


def id_sequences(tok: ChatTokenizer, rng: random.Random) -> list[list[int]]:
    """Ids the model may generate: special tokens, ids past the tokenizer, byte pieces of broken UTF-8."""
    n = tok.vocab_size
    specials = [tok.token_id(t) for t in SPECIAL_TOKENS]
    byte_tokens = [i for i in range(n) if len(tok.tokenizer.id_to_token(i) or "") == 1]
    seqs = [[], specials, [n, n + 1, 200063, -1], specials[:2] + [n + 5] + specials[2:],
            tok.encode_text("héllo 😀 wörld 中文") + [specials[4]] + tok.encode_text(" after"),
            [x for i in tok.encode_text("😀中") for x in (i, specials[0])]]
    for _ in range(150):
        pool = rng.choice([byte_tokens, list(range(n)), byte_tokens + specials + [n, n + 3]])
        seqs.append([rng.choice(pool) for _ in range(rng.randrange(1, 20))])
    return seqs


def vectors(tok: ChatTokenizer, rng: random.Random) -> dict:
    cases = []
    for text in texts():
        ids = tok.encode_text(text)
        pieces = [p for p, _ in tok.plain.pre_tokenizer.pre_tokenize_str(text)]
        cases.append({"text": text, "pieces": pieces, "ids": ids, "decoded": tok.decode(ids), "stream": stream(tok, ids)})
    decodes = [{"ids": ids, "decoded": tok.decode(ids), "stream": stream(tok, ids)} for ids in id_sequences(tok, rng)]
    added = {t.content: i for i, t in tok.tokenizer.get_added_tokens_decoder().items()}
    some = {t: tok.token_id(t) for t in ("a", "Ġ", "Ċ", "the", "Ġthe") if tok.tokenizer.token_to_id(t) is not None}
    return {"vocab_size": tok.vocab_size, "token_ids": added | some, "cases": cases, "decodes": decodes}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} OUTDIR")
    out = Path(argv[1]) / "tokenizer"
    rng = random.Random(SEED)
    sources = {"embedded": EMBEDDED.read_text(encoding="utf-8"), "o200k": train_o200k(), "big": synthetic_big()}
    result = {"tokenizers_version": tokenizers.__version__, "tokenizers": {}}
    for name, text in sources.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "tokenizer.json").write_text(text, encoding="utf-8")
        tok = ChatTokenizer(out / name / "tokenizer.json")
        result["tokenizers"][name] = vectors(tok, rng)
    (out / "vectors.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    for name, v in result["tokenizers"].items():
        tokens = sum(len(c["ids"]) for c in v["cases"])
        print(f"{name}: {len(v['cases'])} texts ({tokens} tokens), {len(v['decodes'])} id sequences, "
              f"vocab {v['vocab_size']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
