"""int4 bundles against fp32 bundles of the same checkpoint: measured agreement and error."""
from __future__ import annotations

import numpy as np
import pytest

from phi4edge.runtime.generate import load

from .checkpoints import WORDS
from .conftest import SHAPES


def forced_logits(model, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """Logits at each step with the given tokens fed in (teacher forcing through the KV cache)."""
    dec = model.decoder
    dec.reserve(len(prompt) + len(continuation))
    rows = [dec.forward(np.asarray(prompt, np.int64)).copy()]
    rows += [dec.forward(np.asarray([t], np.int64)).copy() for t in continuation[:-1]]
    return np.stack(rows)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_int4_agreement_with_fp32(shape, bundles):
    fp32, int4 = load(bundles[shape, "fp32"]), load(bundles[shape, "int4"])
    agree, abs_err, rel_err = [], [], []
    for word in WORDS[:8]:
        prompt = fp32.encode(f"Count from {word}.")
        answer = fp32.generate(prompt, max_new_tokens=16).token_ids
        a, b = forced_logits(fp32, prompt, answer), forced_logits(int4, prompt, answer)
        agree.append(np.argmax(a, -1) == np.argmax(b, -1))
        abs_err.append(np.abs(a - b).max())
        rel_err.append(np.linalg.norm(a - b, axis=-1).mean() / np.linalg.norm(a, axis=-1).mean())
    agreement = float(np.concatenate(agree).mean())
    print(f"\n{shape} int4 vs fp32 over {np.concatenate(agree).size} teacher-forced steps: top-1 agreement "
          f"{agreement:.1%}, max |logit error| {max(abs_err):.3f}, mean relative L2 error {np.mean(rel_err):.3f}")
    # The fixed prompt's first generated token must survive quantisation.
    prompt = fp32.encode("Count from three.")
    assert int4.generate(prompt, max_new_tokens=1).token_ids == fp32.generate(prompt, max_new_tokens=1).token_ids
    assert agreement > 0.8, "int4 disagrees with fp32 too often: quantisation is broken, not merely lossy"


def test_int4_bundle_is_smaller_and_ties_embeddings(bundles):
    """Tied embedding and LM head are one int4 tensor: no fp32 vocabulary matrix in the bundle."""
    import onnx
    for precision in ("fp32", "int4"):
        model = onnx.load(bundles["phi4mini", precision] / "decoder.onnx", load_external_data=False)
        names = {t.name for t in model.graph.initializer}
        if precision == "int4":
            assert "embed_tokens.qweight" in names and "lm_head.qweight" not in names
            ops = {n.op_type for n in model.graph.node}
            assert {"MatMulNBits", "GatherBlockQuantized", "GroupQueryAttention",
                    "SkipSimplifiedLayerNormalization"} <= ops and "MatMul" not in ops
    def weight_bytes(precision: str) -> int:   # rotary caches excluded: they dominate tiny models
        model = onnx.load(bundles["phi4mini", precision] / "decoder.onnx", load_external_data=False)
        return sum(int(next(e.value for e in t.external_data if e.key == "length"))
                   for t in model.graph.initializer if t.external_data and "_cache" not in t.name)
    assert weight_bytes("int4") < weight_bytes("fp32") / 4
