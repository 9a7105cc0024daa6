"""int4 against fp32 bundles on the same media prompts (shared by the vision and speech tests)."""
from __future__ import annotations

from typing import Callable

import numpy as np


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
