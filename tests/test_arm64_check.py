"""`make arm64-check`'s verdict (scripts/arm64_check.py compare), on made-up results: a token that
differs where x86 was confident fails the check, one that differs where it was not is reported and
passes. (The check itself runs under qemu, outside `make test`.)"""
from __future__ import annotations

import json

import numpy as np

from scripts.arm64_check import compare


def write(work, arch: str, tokens: dict[str, list[int]], logits: dict[str, np.ndarray]) -> None:
    results = [{"key": key, "precision": key.split("/")[0], "format": key.split("/")[1], "kind": "text",
                "item": 0, "tokens": toks, "text": "", "adapter": None} for key, toks in tokens.items()]
    meta = {"arch": arch, "python": "3.11", "onnxruntime": "1.32.0", "seconds": 1.0, "threads": 2, "cpu": ""}
    (work / f"results-{arch}.json").write_text(json.dumps({"meta": meta, "results": results}))
    np.savez(work / f"results-{arch}.npz", **logits)


def rows(*leads: float) -> np.ndarray:
    """Logits whose argmax is token 1 at every step, leading token 2 by `lead`."""
    out = np.zeros((len(leads), 5), np.float32)
    out[:, 1] = 10.0
    out[:, 2] = 10.0 - np.asarray(leads, np.float32)
    return out


def test_confident_mismatch_fails_unconfident_flip_passes(tmp_path, capsys):
    x86 = {"fp32/onnx/0": rows(5.0, 5.0), "fp32/ort/0": rows(5.0, 1e-5)}
    write(tmp_path, "x86_64", {k: [1, 1] for k in x86}, x86)
    # ARM: the same logits, but the second token differs: confident in onnx (a failure), not in ort
    write(tmp_path, "aarch64", {k: [1, 2] for k in x86}, x86)
    assert compare(tmp_path) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "fp32/onnx/0" in out and "fp32/ort/0" not in out.split("FAILED")[1]
    write(tmp_path, "aarch64", {"fp32/onnx/0": [1, 1], "fp32/ort/0": [1, 2]}, x86)
    assert compare(tmp_path) == 0
    assert "OK: no token differs where the x86 logits were confident" in capsys.readouterr().out
