"""`phi4edge chat` in a real terminal (a pty, through pexpect): multi-turn answers with images and
audio, only the new turn prefilled, Ctrl-C stopping an answer and not the program, the context
filling up, /adapter, /json, /save, /reset, bad input."""
from __future__ import annotations

import json
import re
import time

import pexpect
import pytest

from phi4edge import load

from .conftest import PYTHON, sigint_default
from .serving import AUDIO, IMAGE, SPEC, TEXT_ANSWER, TEXT_PROMPT, embedded_bundle  # noqa: F401

PREFILL = re.compile(r"\[(\d+) tokens, (\w+); prefilled (\d+) new of (\d+) prompt tokens")


def spawn(bundle, *args: str) -> pexpect.spawn:
    chat = pexpect.spawn(PYTHON[0], [*PYTHON[1:], "-m", "phi4edge.cli", "chat", str(bundle), *args],
                         encoding="utf-8", timeout=60, dimensions=(40, 200), preexec_fn=sigint_default)
    chat.expect("/help for commands")
    chat.expect("> ")
    return chat


def say(chat: pexpect.spawn, line: str) -> str:
    """Type a line; what the program printed before its next prompt."""
    chat.sendline(line)
    chat.expect(r"\r\n> ")
    return chat.before.split("\r\n", 1)[1] if "\r\n" in chat.before else ""


def answer(chat: pexpect.spawn, line: str) -> tuple[str, list[int]]:
    """(the answer, [completion tokens, prefilled, prompt tokens]) of one turn."""
    out = say(chat, line)
    found = PREFILL.search(out)
    assert found, out
    return out[:found.start()].strip(), [int(found.group(i)) for i in (1, 3, 4)]


@pytest.fixture
def chat(embedded_bundle):  # noqa: F811
    c = spawn(embedded_bundle)
    yield c
    c.sendeof()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


def alone(bundle, messages: list[dict], images=()) -> str:
    """The answer to a conversation from a freshly loaded model (no cache)."""
    model = load(bundle)
    return model.tokenizer.decode([s.token_id for s in model.stream(None, 512, messages=messages, images=images)])


def test_turns_with_media_prefill_only_what_is_new(chat, embedded_bundle):  # noqa: F811
    text, (tokens, prefilled, prompt) = answer(chat, TEXT_PROMPT)
    assert text == TEXT_ANSWER and prefilled == prompt
    follow = "Repeat after me: one two three."
    text, (_, prefilled2, prompt2) = answer(chat, follow)
    assert text == alone(embedded_bundle, [{"role": "user", "content": TEXT_PROMPT},
                                           {"role": "assistant", "content": TEXT_ANSWER}, {"role": "user", "content": follow}])
    assert prefilled2 == prompt2 - (prompt + tokens - 1)   # all but turn 1's prompt and answer (less its end token)
    assert "[new conversation]" in say(chat, "/reset")
    assert "image 1 attached" in say(chat, f"/image {IMAGE}")
    text, (tokens, prefilled, prompt) = answer(chat, SPEC["image"]["prompt"])
    assert text == SPEC["image"]["answer"] and prefilled == prompt
    text, (_, prefilled2, prompt2) = answer(chat, "What color is the shape?")
    assert prefilled2 == prompt2 - (prompt + tokens - 1) and prefilled2 < 20   # the image is not encoded again
    say(chat, "/reset")
    say(chat, f"/audio {AUDIO}")
    assert answer(chat, SPEC["audio"]["prompt"])[0] == SPEC["audio"]["answer"]


def test_ctrl_c_stops_the_answer_not_the_program(chat, tmp_path):
    schema = tmp_path / "long.json"
    schema.write_text(json.dumps({"type": "array", "items": {"enum": ["one", "two"]}, "minItems": 3000, "maxItems": 3000}))
    assert "[answers: JSON]" in say(chat, f"/json {schema}")
    chat.sendline(TEXT_PROMPT)
    chat.expect(r'\["')   # the answer has begun; it would take ~15000 tokens
    start = time.monotonic()
    chat.sendintr()
    chat.expect(r"\[(\d+) tokens, stopped;")
    chat.expect("> ")
    assert time.monotonic() - start < 5
    say(chat, "/json off")
    say(chat, "/reset")
    assert answer(chat, TEXT_PROMPT)[0] == TEXT_ANSWER
    chat.sendintr()   # at the prompt: a hint, not an exit
    chat.expect("Ctrl-D or /quit to leave")


def test_commands_and_bad_input(chat, tmp_path):
    assert "error:" in say(chat, "/image /no/such/file.png")
    assert "error:" in say(chat, f"/audio {IMAGE}")
    assert "no adapter 'nope'" in say(chat, "/adapter nope")
    assert "adapter: none" in say(chat, "/adapter none")
    say(chat, f"/image {IMAGE}")
    assert answer(chat, SPEC["image"]["prompt"])[0] == "I cannot see an image."   # the base model has no eyes
    assert "adapter: auto" in say(chat, "/adapter auto")
    assert "unknown command" in say(chat, "/frobnicate")
    saved = tmp_path / "chat.json"
    assert "saved 2 messages" in say(chat, f"/save {saved}")
    record = json.loads(saved.read_text())
    assert record["messages"][0]["content"] == "<|image_1|>" + SPEC["image"]["prompt"] and record["images"] == [str(IMAGE)]
    assert list(tmp_path.iterdir()) == [saved]   # no partial file left beside it


def test_a_full_context_drops_the_oldest_turns_visibly(embedded_bundle, tmp_path):  # noqa: F811
    chat = spawn(embedded_bundle, "--max-context", "120", "--max-tokens", "16")
    say(chat, f"/image {IMAGE}")   # 125 tokens: more than this context holds
    assert "cannot hold it" in say(chat, SPEC["image"]["prompt"])
    turns = 0
    while "context full" not in (out := say(chat, TEXT_PROMPT)) and turns < 12:
        turns += 1
    found = re.search(r"^\[context full: dropped the (\d+) oldest messages to fit 120 tokens\]", out)
    assert turns > 2 and found, out
    say(chat, f"/save {tmp_path / 'chat.json'}")
    kept = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert kept[0]["role"] == "user" and kept[-2]["content"] == TEXT_PROMPT
    assert len(kept) == 2 * (turns + 1) - int(found.group(1))   # the image question was refused, not kept
    assert kept[-1]["content"] == alone(embedded_bundle, kept[:-1])   # the answer to the history that was kept
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
