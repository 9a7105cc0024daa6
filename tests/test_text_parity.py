"""fp32 bundles against transformers' Phi3ForCausalLM: greedy tokens exactly, logits to ~1e-4."""
from __future__ import annotations

import numpy as np
import pytest

from phi4edge import load

from .checkpoints import load_reference
from .compare import assert_greedy_matches, hf_greedy
from .conftest import SHAPES

LOGIT_TOL = 1e-4   # relative to the largest logit magnitude (at least 1)


def check(model, ref, prompt: list[int], max_new: int) -> tuple[float, int]:
    """Our teacher-forced logits along transformers' greedy answer within LOGIT_TOL at every step;
    our own greedy tokens equal through every step where transformers is confident."""
    expected, ref_logits = hf_greedy(ref, prompt, max_new, sorted(model.eos_token_ids))
    ours = model.score(prompt, expected)
    err = float(np.abs(ours - ref_logits).max() / max(1.0, np.abs(ref_logits).max()))
    assert err < LOGIT_TOL, f"max relative logit error {err:.2e}"
    compared = assert_greedy_matches(model.generate(prompt, max_new_tokens=max_new).token_ids, expected, ref_logits)
    return err, compared


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fp32_greedy_and_logits_match_transformers(shape, checkpoints, bundles):
    ref = load_reference(checkpoints[shape])
    model = load(bundles[shape, "fp32"])
    rng = np.random.default_rng(0)
    for length in (1, 7, 60):
        prompt = rng.integers(10, 390, size=length).tolist()
        err, n = check(model, ref, prompt, max_new=24)
        print(f"{shape} prompt={length}: greedy tokens equal over {n} confident steps, max relative logit error {err:.1e}")


def test_long_prompt_uses_long_rope_factors(checkpoints, bundles):
    """Past original_max_position_embeddings (4096) LongRoPE switches to the long factors: a
    4200-token prompt, and a 4090-token prompt whose answer crosses the boundary while decoding."""
    ref = load_reference(checkpoints["phi4mini"])
    model = load(bundles["phi4mini", "fp32"])
    rng = np.random.default_rng(1)
    for length in (4200, 4090):
        prompt = rng.integers(10, 390, size=length).tolist()
        err, n = check(model, ref, prompt, max_new=12)
        print(f"long prompt {length}: greedy tokens equal over {n} confident steps, max relative logit error {err:.1e}")


def test_chat_prompt_matches_transformers(checkpoints, bundles):
    """Text in, text out: our chat template rendering and tokenisation equal transformers'."""
    from transformers import AutoTokenizer
    ck = checkpoints["phi4mini"]
    hf_tok = AutoTokenizer.from_pretrained(ck)
    model = load(bundles["phi4mini", "fp32"])
    for system in (None, "You are terse."):
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": "Explain GQA in one paragraph."}]
        expected = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert model.encode("Explain GQA in one paragraph.", system=system) == list(expected)
    ref = load_reference(ck)
    ids = model.encode("Explain GQA in one paragraph.")
    result = model.generate("Explain GQA in one paragraph.", max_new_tokens=16)
    assert_greedy_matches(result.token_ids, *hf_greedy(ref, ids, 16, sorted(model.eos_token_ids)))
    assert result.text == hf_tok.decode([i for i in result.token_ids if i < len(hf_tok)], skip_special_tokens=True)
