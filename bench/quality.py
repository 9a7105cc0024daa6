"""Score the quality of quantised bundles against an fp32 bundle of the same checkpoint.

    python bench/quality.py MODEL [MODEL ...] --reference FP32_BUNDLE [--text FILE] [--json OUT]
        [--llama-python PY]

A MODEL is a bundle, a folder holding a decoder.onnx of the bundle's graph (bench/quant_peers.py's
onnxruntime-quantised peers), or a llama.cpp GGUF file: its logits come from llama-cpp-python in
its own venv (PY), fed the same token ids (bench/llamacpp_worker.py `logits`).

For each model: perplexity on the text (teacher-forced, windows of 512 tokens, each window's first
token not scored), its change against the reference, top-1 agreement with the reference
(share of positions whose most likely next token is the same), mean KL(reference || bundle) in
nats, and bits per weight counted honestly: every byte stored for a matrix (packed weights, scales,
zero points, the embedding and the LM head, both if the bundle stores two copies of a tied table;
for a GGUF the bytes of every tensor of two or more dimensions in the file, block scales, mins and
super-block scales included) over the checkpoint's matrix parameters (a tied table counted once).
Norm weights and rotary caches are left out (0.01% and 0.1% of SmolLM2-135M's bytes).

The decoder graph outputs the last position's logits only; this script rewires a copy of the graph
to output every position (the Slice before the LM head is bypassed), so one window costs one
prefill. bench/texts/ holds the texts (see its README); bench/real_weights.py builds the model.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tokenizers import Tokenizer

TEXTS = Path(__file__).parent / "texts"
WORKER = Path(__file__).with_name("llamacpp_worker.py")
WINDOW = 512
MATRIX_OPS = {"MatMulNBits": (1, 2, 3), "GatherBlockQuantized": (0, 2, 3), "MatMul": (1,), "Gemm": (1,), "Gather": (0,)}


@dataclass(frozen=True)
class Score:
    bundle: str
    ppl: float
    ppl_change: float        # relative to the reference, +0.05 = 5% worse
    top1_agreement: float
    kl: float                # mean KL(reference || bundle), nats per token
    bits_per_weight: float   # every matrix, embedding and head included
    bits_linears: float      # the per-layer linears only
    matrix_mb: float


def all_positions_session(bundle: Path, threads: int | None) -> ort.InferenceSession:
    """The bundle's decoder with logits for every position (a copy of the graph; weights shared)."""
    model = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False)
    g = model.graph
    opts = ort.SessionOptions()
    opts.log_severity_level = 3   # the bypassed Slice leaves unused constants: not worth a warning
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(bundle.resolve()))
    if threads:
        opts.intra_op_num_threads = threads
    last = next((n for n in g.node if n.op_type == "Slice" and "last_start" in n.input), None)
    if last is not None:   # else the graph takes logits_to_keep, which window_logits feeds
        for node in g.node:
            node.input[:] = [last.input[0] if i == last.output[0] else i for i in node.input]
        g.node.remove(last)
        logits = next(o for o in g.output if o.name == "logits")
        logits.type.tensor_type.shape.dim[1].dim_param = "seq"
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def window_logits(sess: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    """[len(ids), vocab] logits of one window, from an empty KV cache."""
    feeds: dict[str, np.ndarray] = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64)}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    if "logits_to_keep" in {i.name for i in sess.get_overridable_initializers()}:
        feeds["logits_to_keep"] = np.array([len(ids)], np.int64)
    out = sess.run(["logits"], feeds)[0]
    return out.reshape(len(ids), -1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class GgufLogits:
    """A GGUF's logits for every position of a window, from a llamacpp_worker.py `logits` process."""

    def __init__(self, gguf: Path, python: str, threads: int | None):
        self.dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen([python, str(WORKER), "logits", str(gguf), str(threads or 2)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if not json.loads(self.stdout.readline()).get("ready"):
            raise SystemExit(f"{gguf}: the llama.cpp worker did not start")

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        src, out = Path(self.dir.name) / "ids.npy", Path(self.dir.name) / "logits.npy"
        np.save(src, ids)
        self.stdin.write(json.dumps({"ids": str(src), "out": str(out)}) + "\n")
        self.stdin.flush()
        json.loads(self.stdout.readline())
        return np.load(out)

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait()
        self.dir.cleanup()


def matrix_params(cfg: dict) -> tuple[int, int]:
    """(matrix parameters of the checkpoint, a tied table counted once; those of the layer linears)."""
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim, ffn = hidden // heads, cfg["intermediate_size"]
    per_layer = hidden * (hidden + 2 * kv * head_dim) + hidden * hidden + 3 * hidden * ffn
    linear_params = per_layer * cfg["num_hidden_layers"]
    return linear_params + vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2), linear_params


def gguf_bits(path: Path, cfg: dict) -> tuple[float, float, float]:
    """matrix_bits of a GGUF file: the bytes of its tensors of two or more dimensions."""
    import gguf

    tensors = [t for t in gguf.GGUFReader(path).tensors if len(t.shape) >= 2]
    total = sum(int(t.n_bytes) for t in tensors)
    linears = sum(int(t.n_bytes) for t in tensors if t.name.startswith("blk."))
    params, linear_params = matrix_params(cfg)
    return 8 * total / params, 8 * linears / linear_params, total / 1e6


def matrix_bits(bundle: Path) -> tuple[float, float, float]:
    """(bits per weight over every matrix, bits per weight over the layer linears, matrix MB)."""
    model = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False)
    cfg = json.loads((bundle / "config.json").read_text())
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    total = linears = 0
    for node in model.graph.node:
        for slot in MATRIX_OPS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name in inits and name not in seen and len(inits[name].dims) >= 1 and "cache" not in name:
                seen.add(name)
                nbytes = math.prod(inits[name].dims) * numpy_helper.helper.tensor_dtype_to_np_dtype(
                    inits[name].data_type).itemsize
                total += nbytes
                linears += nbytes if node.name.startswith("layers.") else 0
    params, linear_params = matrix_params(cfg)
    return 8 * total / params, 8 * linears / linear_params, total / 1e6


def score(models: list[Path], reference: Path, text: Path, tokens: int, threads: int | None,
          llama_python: str | None = None) -> list[Score]:
    tok = Tokenizer.from_file(str(reference / "tokenizer.json"))
    ids = np.array(tok.encode(text.read_text()).ids[:tokens], np.int64)
    ref = all_positions_session(reference, threads)
    sessions: dict[Path, Callable[[np.ndarray], np.ndarray]] = {reference: lambda w: window_logits(ref, w)}
    for m in models:
        if m.suffix == ".gguf":
            if not llama_python:
                raise SystemExit(f"{m}: a GGUF needs --llama-python (a venv with llama-cpp-python)")
            sessions[m] = GgufLogits(m, llama_python, threads)
        else:
            sessions[m] = lambda w, s=all_positions_session(m, threads): window_logits(s, w)
    try:
        return _score(sessions, reference, ids)
    finally:
        for f in sessions.values():
            if isinstance(f, GgufLogits):
                f.close()


def _score(sessions: dict[Path, Callable[[np.ndarray], np.ndarray]], reference: Path, ids: np.ndarray) -> list[Score]:
    cfg = json.loads((reference / "config.json").read_text())
    nll = {b: 0.0 for b in sessions}
    agree = {b: 0 for b in sessions}
    kl = {b: 0.0 for b in sessions}
    count = 0
    for lo in range(0, len(ids) - 1, WINDOW):
        window = ids[lo:lo + WINDOW]
        target = window[1:]
        ref_lp = log_softmax(sessions[reference](window)[:-1])
        ref_top = ref_lp.argmax(-1)
        count += len(target)
        for b, sess in sessions.items():
            lp = ref_lp if b == reference else log_softmax(sess(window)[:-1])
            nll[b] -= float(lp[np.arange(len(target)), target].sum())
            agree[b] += int((lp.argmax(-1) == ref_top).sum())
            kl[b] += float((np.exp(ref_lp) * (ref_lp - lp)).sum())
    ref_ppl = math.exp(nll[reference] / count)
    out = []
    for b in sessions:
        ppl = math.exp(nll[b] / count)
        bpw, bpw_lin, mb = gguf_bits(b, cfg) if b.suffix == ".gguf" else matrix_bits(b)
        out.append(Score(str(b), ppl, ppl / ref_ppl - 1, agree[b] / count, kl[b] / count, bpw, bpw_lin, mb))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="bundles, ONNX model folders, GGUF files")
    ap.add_argument("--reference", type=Path, required=True, help="fp32 bundle of the same checkpoint")
    ap.add_argument("--text", type=Path, default=TEXTS / "licenses.txt")
    ap.add_argument("--tokens", type=int, default=19456, help="score the first N tokens of the text")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python (for GGUF files)")
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args()
    scores = score(args.models, args.reference, args.text, args.tokens, args.threads, args.llama_python)
    print(f"{'bundle':40} {'ppl':>8} {'vs fp32':>8} {'top-1':>7} {'KL':>7} {'bpw':>6} {'bpw lin':>7} {'MB':>7}")
    for s in scores:
        print(f"{Path(s.bundle).name:40} {s.ppl:8.3f} {s.ppl_change:+8.1%} {s.top1_agreement:7.1%} {s.kl:7.4f} "
              f"{s.bits_per_weight:6.3f} {s.bits_linears:7.3f} {s.matrix_mb:7.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2))


if __name__ == "__main__":
    main()
