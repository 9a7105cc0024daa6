"""int4 bundles against fp32 bundles of the same checkpoint: measured agreement and error."""
from __future__ import annotations

import numpy as np
import pytest

from phi4edge import load

from .checkpoints import WORDS
from .compare import margins
from .conftest import SHAPES

# int4 (with int8 compute on CPU, whose kernels differ by ISA) moved these fixtures' logits by at
# most 0.86 (measured on AMD AVX-512 VNNI: phi4mini 0.71, phi3mini 0.57, gqa4 0.86). A flip needs
# an error of half the fp32 lead, so with errors held under INT4_SAFE_MARGIN / 2 every token fp32
# leads by more than INT4_SAFE_MARGIN survives quantisation on any CPU.
INT4_SAFE_MARGIN = 3.0


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_int4_agreement_with_fp32(shape, bundles):
    fp32, int4 = load(bundles[shape, "fp32"]), load(bundles[shape, "int4"])
    agree, abs_err, rel_err, confident_agree = [], [], [], []
    for word in WORDS[:8]:
        prompt = fp32.encode(f"Count from {word}.")
        answer = fp32.generate(prompt, max_new_tokens=16).token_ids
        a, b = fp32.score(prompt, answer), int4.score(prompt, answer)
        agree.append(np.argmax(a, -1) == np.argmax(b, -1))
        confident_agree.append(agree[-1][margins(a) > INT4_SAFE_MARGIN])
        abs_err.append(np.abs(a - b).max())
        rel_err.append(np.linalg.norm(a - b, axis=-1).mean() / np.linalg.norm(a, axis=-1).mean())
    agreement = float(np.concatenate(agree).mean())
    confident = np.concatenate(confident_agree)
    print(f"\n{shape} int4 vs fp32 over {np.concatenate(agree).size} teacher-forced steps: top-1 agreement "
          f"{agreement:.1%}, max |logit error| {max(abs_err):.3f}, mean relative L2 error {np.mean(rel_err):.3f}; "
          f"{confident.size} steps with an fp32 lead > {INT4_SAFE_MARGIN}")
    assert confident.size >= 32 and confident.all(), "int4 flipped a token fp32 was sure of"
    assert max(abs_err) < INT4_SAFE_MARGIN / 2, "int4 logit error beyond what the margin rule assumes"
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
