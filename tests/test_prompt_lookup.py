"""Prompt-lookup decoding: drafted tokens checked in one decoder call give the plain greedy answer
(fp32 and int4, through end tokens, the budget, the LongRoPE switch and a reused prompt cache)."""
from __future__ import annotations

import numpy as np
import pytest

from phi4edge import load
from phi4edge.errors import RequestError
from phi4edge.runtime.prompt_lookup import PromptLookup
from phi4edge.runtime.sampling import SamplingParams
from phi4edge.runtime.serve.engine import Delta, Turn, load_engine

from .checkpoints import load_reference
from .compare import FP32_MARGIN, assert_greedy_matches, hf_greedy

# The tiny model loops over number words: its answers repeat, so drafts are found, and some are wrong
PROMPTS = ["Count from three to seven.", "three four five six seven three four five six seven three four"]


def test_draft_takes_the_newest_match_of_the_longest_suffix():
    lookup = PromptLookup(np.array([5, 6, 7, 1, 5, 6, 8, 9, 2, 5, 6]), 20, tokens=3)
    assert lookup.draft(10).tolist() == [8, 9, 2]   # "5 6" last seen before 8 9 2 (the older match: 7 1 5)
    assert lookup.draft(2).tolist() == [8, 9]       # at most the limit
    lookup.append(8)                                # "5 6 8" is a 3-gram match now
    assert lookup.draft(10).tolist() == [9, 2, 5]
    lookup.append(4)                                # nothing ends in 4 earlier: no draft
    assert lookup.draft(10).size == 0
    assert PromptLookup(np.array([3, 9, 7, 3]), 8, tokens=4).draft(4).size == 0   # one-token matches are not used
    guarded = PromptLookup(np.array([3, 4, 9, 7, 3, 4]), 8, tokens=4, never={7})
    assert guarded.draft(4).tolist() == [9]         # a media placeholder id is never drafted
    guarded.update(4, 1)                            # a draft not fully kept: the next is one shorter
    assert guarded.size == 3
    guarded.update(3, 3)
    assert guarded.size == 4                        # +2 after a fully kept one, up to `tokens`


# A checked row's arithmetic differs from a one-row step's only in attention's summation order
# (~1e-7 relative). In fp32 that stays ~1e-7 at the logits; with int4's int8 activations (accuracy
# level 4) a rounding step can flip and grow it, as chunked prefill already does: 2.2e-3 of the
# largest logit measured on this fixture, 2.9% on the 30-layer SmolLM2 (docs/prompt-lookup.md). So
# tokens must agree wherever the plain answer's lead exceeds 10x the fixture's figure.
MARGIN = {"fp32": FP32_MARGIN, "int4": 0.02}


def check(model, precision: str, prompt, max_new: int, k: int, **kwargs) -> tuple[int, dict]:
    """Prompt lookup with k drafts against the plain greedy answer, through every step whose lead
    exceeds the precision's bound; returns (tokens compared, timings)."""
    rows: list[np.ndarray] = []
    plain = [s.token_id for s in model.stream(prompt, max_new, logits_processor=lambda _, x: rows.append(x.copy()) or x,
                                              **kwargs)]
    fast = model.generate(prompt, max_new, prompt_lookup=k, **kwargs)
    return assert_greedy_matches(fast.token_ids, plain, np.array(rows), MARGIN[precision]), fast.timings


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_prompt_lookup_answers_as_plain_greedy_decoding(bundles, precision):
    model = load(bundles["phi4mini", precision])
    drafted = accepted = compared = 0
    for prompt in PROMPTS:
        for stop in (None, set()):   # to its end token, and through 60 tokens of repetition
            for k in (1, 4, 8):
                n, timings = check(model, precision, prompt, 60, k, stop_token_ids=stop)
                compared += n
                drafted += timings["drafted_tokens"]
                accepted += timings["accepted_tokens"]
    print(f"{precision}: {accepted} of {drafted} drafted tokens accepted; {compared} tokens compared")
    assert 0 < accepted < drafted   # both the kept drafts and the rewind past rejected ones ran
    assert compared >= 60   # not vacuous: at least one whole answer's worth of confident steps


def test_prompt_lookup_matches_transformers(checkpoints, bundles):
    """fp32 with drafts against transformers' own greedy answer, through its confident steps."""
    model = load(bundles["phi4mini", "fp32"])
    ids = model.encode(PROMPTS[1])
    ours = model.generate(ids, max_new_tokens=40, stop_token_ids=set(), prompt_lookup=6)
    expected, logits = hf_greedy(load_reference(checkpoints["phi4mini"]), ids, 40, [])
    assert ours.timings["accepted_tokens"] > 0
    assert_greedy_matches(ours.token_ids, expected, logits)


def test_budget_sampling_and_prompt_cache(bundles):
    model = load(bundles["phi4mini", "fp32"])
    for budget in (1, 2, 3):   # drafts never run past max_new_tokens
        n, _ = check(model, "fp32", PROMPTS[1], budget, 8, stop_token_ids=set())
        assert n == budget
    sampled = SamplingParams(temperature=0.8, seed=3)   # sampling decodes plainly: same seeded answer
    a = model.generate(PROMPTS[1], 30, sampled, prompt_lookup=4)
    assert a.token_ids == model.generate(PROMPTS[1], 30, sampled).token_ids and "drafted_tokens" not in a.timings
    # the KV positions of rejected drafts are not claimed by the prompt cache: a follow-up turn that
    # reuses the first answer's prefix answers as a fresh prefill does
    first = list(model.stream(PROMPTS[1], 40, reuse_prefix=True, stop_token_ids=set(), prompt_lookup=8))
    follow = model.encode(PROMPTS[1]) + [s.token_id for s in first] + model.encode("Count from three to seven.")
    request: dict = {}
    reused = [s.token_id for s in model.stream(follow, 20, chat_template=False, reuse_prefix=True, request=request,
                                                prompt_lookup=8)]
    assert request["timings"]["cached_tokens"] > 0
    rows: list[np.ndarray] = []
    fresh = [s.token_id for s in model.stream(follow, 20, chat_template=False,
                                              logits_processor=lambda _, x: rows.append(x.copy()) or x)]
    assert_greedy_matches(reused, fresh, np.array(rows))
    with pytest.raises(RequestError, match="prompt_lookup must be a non-negative integer"):
        model.generate(PROMPTS[0], 4, prompt_lookup=-1)


def test_prompt_lookup_across_the_long_rope_switch(bundles):
    """Drafts stop before original_max_position (4096); the switch re-runs the sequence as before."""
    model = load(bundles["phi4mini", "fp32"])
    prompt = np.tile(np.random.default_rng(1).integers(10, 390, size=45), 91)[:4090].tolist()   # repeats: drafts
    n, timings = check(model, "fp32", prompt, 14, 5, chat_template=False, stop_token_ids=set())
    assert timings["accepted_tokens"] > 0 and n > 6


def test_chat_engine_with_prompt_lookup(bundles):
    """`serve`/`chat --prompt-lookup N`: greedy turns draft (the same answer), sampled turns do not."""
    engine = load_engine(bundles["phi4mini", "fp32"], prompt_lookup=4)
    plain = load_engine(bundles["phi4mini", "fp32"])
    turn = Turn([{"role": "user", "content": PROMPTS[1]}], max_tokens=40)

    def answer(e, t: Turn) -> tuple[str, dict]:
        events = list(e.run(t))
        return "".join(x.text for x in events if isinstance(x, Delta)), events[-1].timings

    (text, timings), (expected, _) = answer(engine, turn), answer(plain, turn)
    assert text == expected and "drafted_tokens" in timings   # the engine drafted (this answer is short)
    sampled = Turn(turn.messages, max_tokens=20, sampling=SamplingParams(temperature=0.7, seed=1))
    assert "drafted_tokens" not in answer(engine, sampled)[1]
