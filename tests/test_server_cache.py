"""The prompt cache under Model.stream(reuse_prefix=True), on the embedded model: the next turn
of a conversation prefills only its new tokens, earlier images and audio are not encoded again,
and every answer is the one a fresh prefill gives."""
from __future__ import annotations

import pytest

from phi4edge import load
from phi4edge.runtime.serve.engine import StopText

from .serving import AUDIO, IMAGE, SPEC, TEXT_ANSWER, TEXT_PROMPT, embedded_bundle  # noqa: F401

FOLLOW_UP = "Repeat after me: one two three."


def ask(model, messages, images=(), audios=(), reuse=True, adapter=None):
    info: dict = {}
    steps = list(model.stream(None, 24, messages=messages, images=images, audios=audios, reuse_prefix=reuse,
                              request=info, adapter=adapter, logprobs=False))
    return model.tokenizer.decode([s.token_id for s in steps]), [s.token_id for s in steps], info


CASES = {"text": ((), (), TEXT_PROMPT, TEXT_ANSWER),
         "image": ((IMAGE,), (), SPEC["image"]["prompt"], SPEC["image"]["answer"]),
         "audio": ((), (AUDIO,), SPEC["audio"]["prompt"], SPEC["audio"]["answer"]),
         "image+audio": ((IMAGE,), (AUDIO,), SPEC["image"]["prompt"], SPEC["image"]["answer"])}


@pytest.mark.parametrize("case", CASES)
def test_second_turn_prefills_only_its_new_tokens(embedded_bundle, case):  # noqa: F811
    images, audios, prompt, answer = CASES[case]
    model = load(embedded_bundle)
    refs = "".join(f"<|image_{i + 1}|>" for i in range(len(images))) + "".join(f"<|audio_{i + 1}|>" for i in range(len(audios)))
    first = [{"role": "user", "content": refs + prompt}]
    text1, ids1, info1 = ask(model, first, images, audios)
    assert text1 == answer and info1["timings"]["cached_tokens"] == 0
    second = first + [{"role": "assistant", "content": text1}, {"role": "user", "content": FOLLOW_UP}]
    text2, _, info2 = ask(model, second, images, audios)
    n1, n2 = len(info1["prompt_token_ids"]), len(info2["prompt_token_ids"])
    cached = info2["timings"]["cached_tokens"]
    # the KV cache holds the first prompt and the answer but its end token (sampled, never fed)
    assert cached == n1 + len(ids1) - 1, (n1, len(ids1), n2, cached)
    print(f"{case}: turn 1 prefilled {n1} tokens; turn 2 has {n2}, prefilled {n2 - cached} (cached {cached})")
    assert "image_encode_ms" not in info2["timings"] and "audio_encode_ms" not in info2["timings"]
    fresh, _, info3 = ask(model, second, images, audios, reuse=False)
    assert fresh == text2 and info3["timings"]["cached_tokens"] == 0


def test_cache_is_keyed_by_content_adapter_and_position(embedded_bundle):  # noqa: F811
    model = load(embedded_bundle)
    other = sorted((IMAGE.parent.parent / "eval" / "images").glob("*.jpg"))[1]
    question = [{"role": "user", "content": "<|image_1|>" + SPEC["image"]["prompt"]}]
    ask(model, question, (IMAGE,))
    # another image at the same place: only the token before it (<|user|>) is reused
    _, _, swapped = ask(model, question, (other,))
    assert swapped["timings"]["cached_tokens"] == 1
    assert "image_encode_ms" in swapped["timings"]
    # the same prompt under another adapter: LoRA changes every key and value, nothing is reused
    _, _, base = ask(model, question, (other,), adapter="none")
    assert base["timings"]["cached_tokens"] == 0
    # the same request again reuses all but the last token
    _, _, again = ask(model, question, (other,), adapter="none")
    assert again["timings"]["cached_tokens"] == len(again["prompt_token_ids"]) - 1


def test_a_closed_stream_leaves_a_usable_cache(embedded_bundle):  # noqa: F811
    model = load(embedded_bundle)
    messages = [{"role": "user", "content": TEXT_PROMPT}]
    stream = model.stream(None, 24, messages=messages, reuse_prefix=True, logprobs=False)
    next(stream), next(stream)
    stream.close()   # as the server does when a client disconnects
    text, _, info = ask(model, messages)
    assert text == TEXT_ANSWER and info["timings"]["cached_tokens"] == len(info["prompt_token_ids"]) - 1
    model.score(info["prompt_token_ids"], [1])   # score() rewrites the cache: nothing may be reused after it
    assert ask(model, messages)[2]["timings"]["cached_tokens"] == 0


def test_stop_strings_hold_back_only_what_may_start_one():
    stops = StopText(("</a>", "zz"))
    assert stops.feed("one <") == ("one ", False)
    assert stops.feed("/b> z") == ("</b> ", False)
    assert stops.feed("y") == ("zy", False)
    assert stops.feed("two </") == ("two ", False)
    assert stops.feed("a> three") == ("", True)
    assert StopText(()).feed("x") == ("x", False)
    tail = StopText(("END",))
    assert tail.feed("fin E") == ("fin ", False) and tail.flush() == "E"
