"""`phi4edge eval`: held-out sets through any bundle: image answer accuracy, speech word error rate,
text perplexity; optionally with no adapter or the swapped adapter, to show the skills live in
the adapters (and to catch routing bugs).

A set is a folder of JSON-lines files: `image.jsonl` / `speech.jsonl` ({"file", "prompt",
"answer"}, files relative to the folder) and `text.jsonl` ({"prompt", "answer"}).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import jiwer
import numpy as np

from ..errors import BundleError
from .generate import NO_ADAPTER, Model, logprob

MODES = ("routed", "none", "swapped")   # adapter per request: as routed, base model, the other one
SWAP = {"image": "speech", "speech": "vision"}


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def read_set(folder: Path, name: str, limit: int | None) -> list[dict]:
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        return []
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            item = json.loads(line)
            missing = [k for k in ("prompt", "answer") + (("file",) if name != "text" else ()) if k not in item]
        except json.JSONDecodeError as e:
            raise BundleError(f"{path}:{n}: not JSON ({e})") from None
        if missing:
            raise BundleError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        if "file" in item:
            item["file"] = str(folder / item["file"])
        items.append(item)
    return items[:limit]


def adapter_for(kind: str, mode: str) -> str | None:
    """The adapter argument for generate(): None routes by input, NO_ADAPTER forces the base model."""
    return {"routed": None, "none": NO_ADAPTER, "swapped": SWAP[kind]}[mode]


def answers(model: Model, kind: str, items: list[dict], mode: str, tick: Callable[[], None]) -> list[str]:
    out = []
    for item in items:
        media = [item["file"]]
        out.append(model.generate(item["prompt"], max_new_tokens=16, adapter=adapter_for(kind, mode),
                                  images=media if kind == "image" else (), audios=media if kind == "speech" else ()).text)
        tick()
    return out


def perplexity(model: Model, items: list[dict], tick: Callable[[], None]) -> float:
    """exp(mean negative log-likelihood) of each answer (and its end token) after its chat prompt,
    with the base model, teacher-forced one token at a time (the graph returns last-position logits)."""
    end = model.tokenizer.token_id("<|end|>")
    nll, count = 0.0, 0
    for item in items:
        target = model.tokenizer.encode_text(item["answer"]) + [end]
        for row, token in zip(model.score(model.encode(item["prompt"]), target), target):
            nll -= logprob(row, token)
            count += 1
        tick()
    return math.exp(nll / max(count, 1))


def evaluate(model: Model, folder: Path, modes: tuple[str, ...] = ("routed",), limit: int | None = None,
             progress: Callable[[int], Callable[[], None]] | None = None) -> dict:
    """Scores by set and adapter mode. `progress(total)` returns a per-item callback."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such evaluation folder")
    sets = {name: read_set(folder, name, limit) for name in ("image", "speech", "text")}
    if not any(sets.values()):
        raise BundleError(f"{folder}: no image.jsonl, speech.jsonl or text.jsonl")
    manifest = model.bundle.manifest
    runnable = {"image": manifest.vision is not None, "speech": manifest.speech is not None}
    total = sum(len(sets[k]) * len(modes) for k in runnable if runnable[k]) + len(sets["text"])
    tick = progress(total) if progress else (lambda: None)
    # "answers": each item's greedy answer by mode and set, to hold two bundles' answers side by side
    report: dict = {"set": str(folder), "items": {k: len(v) for k, v in sets.items()}, "answers": {}}
    for mode in modes:
        scores = {}
        said = report["answers"][mode] = {}
        if sets["image"] and runnable["image"]:
            got = said["image"] = answers(model, "image", sets["image"], mode, tick)
            right = [normalise(g) == normalise(i["answer"]) for g, i in zip(got, sets["image"])]
            scores["image_accuracy"] = float(np.mean(right))
        if sets["speech"] and runnable["speech"]:
            got = said["speech"] = answers(model, "speech", sets["speech"], mode, tick)
            refs = [normalise(i["answer"]) for i in sets["speech"]]
            hyps = [normalise(g) for g in got]
            scores["speech_wer"] = float(jiwer.wer(refs, hyps))
            scores["speech_word_accuracy"] = max(0.0, 1.0 - scores["speech_wer"])
            scores["speech_exact"] = float(np.mean([r == h for r, h in zip(refs, hyps)]))
        report[mode] = scores
    if sets["text"]:
        report["text_perplexity"] = perplexity(model, sets["text"], tick)
    return report
