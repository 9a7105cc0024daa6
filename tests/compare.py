"""Comparisons that hold on every CPU: greedy tokens equal only where the reference is confident,
int4 judged by measured statistics (shared by the parity, adapter, vision and speech tests)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

# fp32 against transformers differs by ~1e-6 relative (measured; kernels differ by ISA) and the
# parity tests hold it under 1e-4. A flip needs half the lead on two logits, so greedy equality is
# asserted through every step whose top-1 leads by at least twice that bound.
FP32_MARGIN = 2e-4


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row."""
    top2 = np.partition(np.asarray(logits, np.float64), -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def confident_steps(ref_logits: np.ndarray, relative: float = FP32_MARGIN) -> int:
    """Leading steps whose reference choice no rounding difference can flip."""
    ref_logits = np.atleast_2d(ref_logits)
    low = np.flatnonzero(margins(ref_logits) < relative * max(1.0, float(np.abs(ref_logits).max())))
    return int(low[0]) if low.size else len(ref_logits)


def assert_greedy_matches(got: list[int], expected: list[int], ref_logits: np.ndarray,
                          relative: float = FP32_MARGIN) -> int:
    """Tokens equal through every confident step (and the first unconfident step's prefix);
    returns how many were compared."""
    n = min(confident_steps(ref_logits, relative), len(expected))
    assert list(got[:n]) == list(expected[:n]), f"greedy tokens differ within the {n} confident steps"
    if n == len(expected):
        assert list(got) == list(expected)
    return n


def hf_greedy(model, ids: list[int], max_new: int, eos: list[int] = (0, 4), **inputs) -> tuple[list[int], np.ndarray]:
    """transformers' (or peft's) greedy tokens and the logits it chose each from."""
    import torch
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos), pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True, **inputs)
    return out.sequences[0, len(ids):].tolist(), torch.cat(out.logits).float().numpy()


def int4_vs_fp32(fp32, int4, items: list, features: Callable, prompt: str, media: str) -> tuple[float, float]:
    """(first-token agreement, mean relative feature error) over prepared images or audios.
    features(model, item) gives the encoder output; media is generate()'s keyword, images or audios."""
    agree, err = [], []
    for item in items:
        a, b = features(fp32, item), features(int4, item)
        err.append(np.linalg.norm(a - b) / np.linalg.norm(a))
        first = [m.generate(prompt, max_new_tokens=1, **{media: [item]}).token_ids[0] for m in (fp32, int4)]
        agree.append(first[0] == first[1])
    return float(np.mean(agree)), float(np.mean(err))
