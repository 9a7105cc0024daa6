"""Weight quantisation for export: numpy weights in, MatMulNBits' packed arrays out.

A method is one module exposing `quantize(w [N, K], bits, block_size, hessian | diagonal | None) ->
QuantizedWeight`, registered in METHODS by name; `QuantConfig` picks one for the linears, a
precision and block size for the tied embedding / LM head table, and carries the settings the
manifest records. Methods measured on real pretrained weights: bench/RESULTS.md, docs/quantization.md.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import Phi4EdgeError
from . import gptq, hqq, imatrix, int4, mixed, screen
from .blocks import QuantizedWeight, symmetric

# (weight [N, K], bits, block size, the inputs' second moments: Hessian [K, K], its diagonal [K] or None)
Quantizer = Callable[[np.ndarray, int, int, "np.ndarray | None"], QuantizedWeight]


def _rtn(w: np.ndarray, bits: int, block_size: int, hessian: np.ndarray | None = None) -> QuantizedWeight:
    """Round to nearest, symmetric (int4 packed by onnxruntime's own routine, as before)."""
    if bits != 4:
        return symmetric(w, bits, block_size)
    packed, scales = int4.quantize_int4(w, block_size)
    return QuantizedWeight(packed, scales, None, bits, block_size)


METHODS: dict[str, Quantizer] = {
    "rtn": _rtn,            # round to nearest, symmetric
    "hqq": hqq.quantize,    # fitted scale and integer zero point per block, calibration-free
    "gptq": gptq.quantize,  # error feedback with calibration Hessians, grids fitted as hqq
    "imatrix": imatrix.quantize,   # symmetric, scales searched against calibration-weighted error
}
CALIBRATED = {"gptq", "imatrix"}
ZERO_POINTS = {"hqq", "gptq"}   # methods whose blocks store integer zero points
SCREENED = "int8-screened"   # int8 table in two int4 halves, the LM head screened by the high ones (quant/screen.py)
HEADS = ("int4", "int8", SCREENED)
# What `phi4edge export` uses: gptq at block 64 with an int8 table (block 64 too). On the permuted SmolLM2
# (bench/quality.py) +11.8% / +12.2% perplexity over fp32 on the two texts at 5.396 bits/weight, every matrix
# counted, where the previous default (rtn, block 32, int4 table) lost +40.0% / +34.3% at 5.000; at 32 layers
# full width it decodes 1.00x / 1.11x that default (2 / 1 threads). Block 64 is what makes the int8 table
# affordable: MatMulNBits streams block 64 at 75% of the bandwidth ceiling, block 32 at 65% (bench/RESULTS.md).
# A bits budget of 5.5 (mixed precision, quant/mixed.py) adds 2% of bytes: +11.2% / +11.0% there, and
# on the embedded model's held-out sets speech WER 4.10% (fp32's) where it was 4.71% without.
DEFAULT_METHOD = "gptq"
DEFAULT_HEAD = "int8"
DEFAULT_BLOCK = 64
BITS_BUDGET = 5.5   # the budget mixed precision fills by default (export/calibrate.py default_budget)
DEFAULT_BITS_BUDGET: float | None = None   # None: BITS_BUDGET with a calibrated method where it leaves room
# The vision/speech encoders' linears: int4 by a calibration-free method (they have no calibration pass),
# int8 or fp32. Measured on the embedded model's held-out sets and feature error: bench/RESULTS.md.
ENCODER_CHOICES = ("hqq", "rtn", "int8", "fp32")
DEFAULT_ENCODER = "hqq"
DEFAULT_ENCODER_BLOCK = 32   # measured there at 32; 0 would follow the decoder's block


def _check_block(option: str, block_size: int) -> None:
    if not 16 <= block_size <= 256 or block_size & (block_size - 1):
        raise Phi4EdgeError(f"{option} {block_size}: must be a power of two from 16 to 256")


@dataclass(frozen=True)
class QuantConfig:
    """Quantisation settings. accuracy_level 4 = int8 compute on CPU (fast path).

    head: precision of the vocabulary table (the tied embedding/LM head, or each of an untied
    pair), symmetric so one tensor serves GatherBlockQuantized and MatMulNBits; head_block_size 0
    means block_size. encoder: the vision/speech encoders' linears (ENCODER_CHOICES),
    encoder_block_size 0 means block_size. bits_budget: bits per weight over every decoder matrix
    that mixed precision may fill (0: none); int8: (graph name, block size) of the decoder linears it
    stores in int8 (quant/mixed.py). calibration: the export's calibration pass
    (export.calibrate.Calibrated: the linears it quantised, not recorded); without one, calibrated
    methods fall back to their calibration-free form.
    """

    method: str = DEFAULT_METHOD
    bits: int = 4
    block_size: int = DEFAULT_BLOCK
    accuracy_level: int = 4
    head: str = DEFAULT_HEAD
    head_block_size: int = 0
    encoder: str = DEFAULT_ENCODER
    encoder_block_size: int = DEFAULT_ENCODER_BLOCK
    bits_budget: float = 0.0
    int8: tuple[tuple[str, int], ...] = ()
    calibration: object | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise Phi4EdgeError(f"--quant {self.method!r}: choose one of {', '.join(sorted(METHODS))}")
        _check_block("--block-size", self.block_size)
        if self.head_block_size:
            _check_block("--head-block-size", self.head_block_size)
        if self.head not in HEADS:
            raise Phi4EdgeError(f"--head {self.head!r}: choose one of {', '.join(HEADS)}")
        if self.encoder not in ENCODER_CHOICES:
            raise Phi4EdgeError(f"--encoder-quant {self.encoder!r}: choose one of {', '.join(ENCODER_CHOICES)}")
        if self.encoder_block_size:
            _check_block("--encoder-block-size", self.encoder_block_size)
        if self.bits_budget and not 4 < self.bits_budget <= 16:
            raise Phi4EdgeError(f"--bits-budget {self.bits_budget}: give bits per weight above 4 (0: no mixed precision)")
        if self.bits not in (4, 8):
            raise Phi4EdgeError(f"only 4- and 8-bit weights are supported, got bits={self.bits}")

    @property
    def table(self) -> QuantConfig:
        """Settings of the vocabulary table (symmetric: GatherBlockQuantized reads it without zero points).
        A calibrated method keeps the calibration: the table's scales are weighted by the LM head's inputs."""
        return replace(self, bits=4 if self.head == "int4" else 8, block_size=self.head_block_size or self.block_size,
                       bits_budget=0.0, int8=())

    @property
    def encoders(self) -> QuantConfig | None:
        """Settings of the vision/speech encoder linears; None keeps them fp32."""
        if self.encoder == "fp32":
            return None
        int8 = self.encoder == "int8"
        return replace(self, method="rtn" if int8 else self.encoder, bits=8 if int8 else 4,
                       block_size=self.encoder_block_size or self.block_size, calibration=None, bits_budget=0.0, int8=())

    def weight(self, w: np.ndarray, name: str = "") -> QuantizedWeight:
        """Quantise one linear's [out, in] weight; `name` (the graph's, e.g. layers.3.qkv_proj) finds
        its result from the calibration pass, or, for one mixed precision stores in int8, its inputs'
        mean squares (a calibrated method's int8 uses that diagonal: gptq's int8 is hqq weighted by it)."""
        cal = self.calibration
        int8 = dict(self.int8)
        if name in int8:
            hint = cal.diagonal(name) if cal is not None and self.method in CALIBRATED else None  # type: ignore[attr-defined]
            return METHODS[self.method](w, 8, int8[name], hint)
        done = cal.weight(name) if cal is not None else None  # type: ignore[attr-defined]
        return done if done is not None else METHODS[self.method](w, self.bits, self.block_size, None)

    @property
    def zero_points(self) -> bool:
        """Whether the linears' int4 blocks store zero points (counted by mixed precision's budget)."""
        return self.method in ZERO_POINTS

    @property
    def screened(self) -> bool:
        """Whether the vocabulary table is stored screened (quant/screen.py)."""
        return self.head == SCREENED

    def table_bits(self, vocab: int, hidden: int) -> int:
        """Bits one stored vocabulary table takes (symmetric: no zero points)."""
        t = self.table   # a screened table stores the int8 one's bytes
        return mixed.stored_bits(vocab, hidden, t.bits, t.block_size, False)

    def quantize(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric (packed, scales) for table rows: round to nearest for method rtn (today's bytes); for a
        calibrated method, imatrix's search weighted by the LM head's inputs on the calibration text
        (every table, an untied embedding too: SmolLM2's int4 table b16 +20.1% -> +15.5% perplexity
        on licenses, bench/RESULTS.md); least-squares scales otherwise."""
        if self.method == "rtn":
            q = _rtn(w, self.bits, self.block_size)
        elif self.method in CALIBRATED and self.calibration is not None:
            head = self.calibration.head_importance()  # type: ignore[attr-defined]
            q = imatrix.quantize_rows(w, self.bits, self.block_size, head)
        else:
            q = hqq.quantize_symmetric(w, self.bits, self.block_size)
        return q.packed, q.scales

    def describe_table(self) -> str:
        t = self.table
        if self.screened:
            return (f"one int8 table (block {t.block_size}) in two int4 halves for embedding and LM head, "
                    f"the head screened by the high halves, its top {screen.SCREEN_TOP} exact")
        return f"one int{t.bits} tensor (block {t.block_size}) for embedding and LM head"

    def describe_encoders(self) -> str:
        e = self.encoders
        return "fp32" if e is None else f"int{e.bits} {e.method} (block {e.block_size})"

    def to_json(self) -> dict:
        """The manifest's fields (the table's settings go in its tied_embeddings note)."""
        out: dict = {"method": self.method, "bits": self.bits, "block_size": self.block_size,
                     "accuracy_level": self.accuracy_level}
        if self.bits_budget:
            out["bits_budget"] = self.bits_budget
            out["overrides"] = {name: {"bits": 8, "block_size": block} for name, block in self.int8}
        return out


__all__ = ["BITS_BUDGET", "CALIBRATED", "DEFAULT_BITS_BUDGET", "DEFAULT_BLOCK", "DEFAULT_ENCODER", "DEFAULT_ENCODER_BLOCK",
           "DEFAULT_HEAD", "DEFAULT_METHOD", "ENCODER_CHOICES", "HEADS", "METHODS", "SCREENED", "ZERO_POINTS", "QuantConfig",
           "QuantizedWeight", "Quantizer"]
