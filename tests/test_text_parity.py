"""fp32 bundles against transformers' Phi3ForCausalLM: greedy tokens exactly, logits to ~1e-4."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phi4edge.runtime.generate import load

from .checkpoints import load_reference
from .conftest import SHAPES

LOGIT_TOL = 1e-4   # relative to the largest logit magnitude (at least 1)


def generate_recording_logits(model, prompt: list[int], max_new: int):
    """Our greedy answer plus the logits of every decoder call that chose a token."""
    rows, forward = [], model.decoder.forward
    model.decoder.forward = lambda ids, media=None: rows.append(forward(ids, media).copy()) or rows[-1]
    try:
        return model.generate(prompt, max_new_tokens=max_new), np.stack(rows)
    finally:
        del model.decoder.forward


def reference_steps(ref, prompt: list[int], max_new: int, eos: set[int]) -> tuple[list[int], np.ndarray]:
    """transformers' greedy tokens and the logits it chose them from (its own KV-cache loop)."""
    out = ref.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(eos),
                       pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                       output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits).numpy()


def check(model, ref, prompt: list[int], max_new: int) -> float:
    expected, ref_logits = reference_steps(ref, prompt, max_new, model.eos_token_ids)
    result, logits = generate_recording_logits(model, prompt, max_new)
    assert result.token_ids == expected
    err = float(np.abs(logits - ref_logits).max() / max(1.0, np.abs(ref_logits).max()))
    assert err < LOGIT_TOL, f"max relative logit error {err:.2e}"
    return err


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fp32_greedy_and_logits_match_transformers(shape, checkpoints, bundles):
    ref = load_reference(checkpoints[shape])
    model = load(bundles[shape, "fp32"])
    rng = np.random.default_rng(0)
    for length in (1, 7, 60):
        prompt = rng.integers(10, 390, size=length).tolist()
        err = check(model, ref, prompt, max_new=24)
        print(f"{shape} prompt={length}: greedy tokens equal, max relative logit error {err:.1e}")


def test_long_prompt_uses_long_rope_factors(checkpoints, bundles):
    """Past original_max_position_embeddings (4096) LongRoPE switches to the long factors: a
    4200-token prompt, and a 4090-token prompt whose answer crosses the boundary while decoding."""
    ref = load_reference(checkpoints["phi4mini"])
    model = load(bundles["phi4mini", "fp32"])
    rng = np.random.default_rng(1)
    for length in (4200, 4090):
        prompt = rng.integers(10, 390, size=length).tolist()
        err = check(model, ref, prompt, max_new=12)
        print(f"long prompt {length}: greedy tokens equal, max relative logit error {err:.1e}")


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
    assert result.token_ids == reference_steps(ref, ids, 16, model.eos_token_ids)[0]
    assert result.text == hf_tok.decode([i for i in result.token_ids if i < len(hf_tok)], skip_special_tokens=True)
