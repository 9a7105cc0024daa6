"""Peer quantisations of a checkpoint for bench/quality.py: onnxruntime's quantizers and llama.cpp's.

    python bench/quant_peers.py CKPT FP32_BUNDLE OUT_DIR --llama-cpp-dir DIR --llama-bin DIR

Every artifact comes from the same float32 weights (CKPT, e.g. bench/real_weights.py's permuted
SmolLM2) and lands in OUT_DIR; existing ones are kept, so a rerun builds only what is missing.

onnxruntime (`ort-*` folders, scored like bundles): FP32_BUNDLE's decoder with its 120 layer
linears quantised by `onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`
(the configs in ORT_CONFIGS; MatMulNBits nodes at accuracy level 4, as phi4edge's). The quantizer
handles MatMul nodes only and has no way to store a tied embedding / LM head once, so the
vocabulary table is taken from a phi4edge `rtn` export: onnxruntime's own symmetric packer
(quant/int4.py calls it), one table read by the lookup and the head, int4 or int8 at block 32.

llama.cpp, all through its own tools (vendor/llama.cpp of the llama-cpp-python sdist, built with
cmake; see bench/RESULTS.md): `convert_hf_to_gguf.py` to f32 and f16 GGUF, `llama-imatrix` on the
f32 GGUF over phi4edge's calibration text (quant/calibration.txt, never an evaluation text), then
`llama-quantize` to each type in GGUF_TYPES, without and with that importance matrix.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("llamacpp_worker.py")
CALIBRATION = ROOT / "quant" / "calibration.txt"
ACCURACY_LEVEL = 4   # int8 compute on CPU, as phi4edge's MatMulNBits
GGUF_TYPES = {"q4_0": ["Q4_0"], "q4_0-pure": ["--pure", "Q4_0"], "q4_k_m": ["Q4_K_M"]}


def ort_configs() -> dict[str, Callable[[onnx.ModelProto], object]]:
    """name -> a MatMulNBitsQuantizer for the model (its `process()` quantises in place)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as m

    def default(block: int, sym: bool) -> Callable[[onnx.ModelProto], object]:
        return lambda model: m.MatMulNBitsQuantizer(model, algo_config=m.DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=sym, accuracy_level=ACCURACY_LEVEL))

    def hqq(block: int) -> Callable[[onnx.ModelProto], object]:
        return lambda model: m.MatMulNBitsQuantizer(model, algo_config=m.HQQWeightOnlyQuantConfig(block_size=block))

    def kquant(block: int) -> Callable[[onnx.ModelProto], object]:
        return lambda model: m.MatMulNBitsQuantizer(model, block_size=block, accuracy_level=ACCURACY_LEVEL,
                                                    algo_config=m.KQuantWeightOnlyQuantConfig())

    return {
        "default-asym-b128": default(128, False),   # the quantizer's own defaults
        "default-sym-b32": default(32, True),
        "default-asym-b32": default(32, False),
        "hqq-b32": hqq(32), "hqq-b64": hqq(64), "hqq-b128": hqq(128),
        "kquant-b32": kquant(32), "kquant-b64": kquant(64),
    }


def graft(quantized: onnx.ModelProto, table: onnx.ModelProto) -> onnx.ModelProto:
    """`table` (a phi4edge bundle's decoder) with each layer linear replaced by `quantized`'s node
    that writes the same output (both graphs name a linear's output after the linear), with that
    node's initializers."""
    by_output = {n.output[0]: n for n in quantized.graph.node if n.op_type == "MatMulNBits"}
    q_inits = {t.name: t for t in quantized.graph.initializer}
    g = table.graph
    dropped: set[str] = set()
    for i, node in enumerate(g.node):
        if node.op_type != "MatMulNBits" or not node.name.startswith("layers."):
            continue
        new = by_output.get(node.output[0])
        if new is None:
            raise SystemExit(f"onnxruntime's quantizer left {node.name} ({node.output[0]}) unquantised")
        dropped.update(node.input[1:])
        new.input[0] = node.input[0]   # the same activation, named by the other graph's numbering
        for a in new.attribute:
            if a.name == "accuracy_level":
                a.i = ACCURACY_LEVEL
        if not any(a.name == "accuracy_level" for a in new.attribute):
            new.attribute.append(onnx.helper.make_attribute("accuracy_level", ACCURACY_LEVEL))
        g.node[i].CopyFrom(new)
        g.initializer.extend(q_inits[name] for name in new.input[1:] if name)
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept)
    return table


def ort_peer(fp32: Path, table_bundle: Path, out: Path, make: Callable[[onnx.ModelProto], object]) -> None:
    model = onnx.load(str(fp32 / "decoder.onnx"))
    quantizer = make(model)
    quantizer.process()   # type: ignore[attr-defined]
    quantized = quantizer.model.model   # type: ignore[attr-defined]
    merged = graft(quantized, onnx.load(str(table_bundle / "decoder.onnx")))
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(table_bundle / name, tmp / name)
    onnx.save(merged, str(tmp / "decoder.onnx"), save_as_external_data=True, location="decoder.onnx.data")
    tmp.rename(out)


def phi4edge_table_bundle(ckpt: Path, out: Path, head: str) -> Path:
    """A phi4edge rtn export whose vocabulary table (block 32) the onnxruntime peers reuse."""
    if not (out / "decoder.onnx").is_file():
        subprocess.run([sys.executable, "-m", "phi4edge.cli", "export", str(ckpt), "-o", str(out), "--quant", "rtn",
                        "--head", head, "--block-size", "32", "--force"], check=True)
    return out


def llama_checkpoint(ckpt: Path, out: Path) -> Path:
    """CKPT as llama.cpp's Phi-3 converter reads it: the same weight file (linked), plus the two
    fields its Phi-3 path requires: tokenizer_class (else it looks for a sentencepiece model) and
    original_max_position_embeddings (no rope scaling: it changes nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json") and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.setdefault("original_max_position_embeddings", cfg["max_position_embeddings"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = json.loads((ckpt / "tokenizer_config.json").read_text())
    tok.setdefault("tokenizer_class", "GPT2Tokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    return out


def built(path: Path, make: Callable[[Path], None]) -> None:
    """make(a .part file), then the rename: an interrupted tool leaves no file that looks finished."""
    if not path.is_file():
        part = path.with_name(f"{path.stem}.part{path.suffix}")   # llama-imatrix picks its format by suffix
        make(part)
        part.rename(path)


def llama_peers(ckpt: Path, out: Path, llama_dir: Path, bin_dir: Path, pre: str, threads: int) -> None:
    src = llama_checkpoint(ckpt, out / "llama-ckpt")
    run = lambda *cmd: subprocess.run([str(c) for c in cmd], check=True)
    f32, imatrix = out / "f32.gguf", out / "imatrix.gguf"
    for outtype in ("f32", "f16"):   # the converter needs torch + transformers: phi4edge's venv has both
        built(out / f"{outtype}.gguf", lambda p, t=outtype: run(sys.executable, WORKER, "gguf", llama_dir, src, p, t, pre))
    built(imatrix, lambda p: run(bin_dir / "llama-imatrix", "-m", f32, "-f", CALIBRATION, "-o", p, "-c", 512, "-t", threads))
    for name, args in GGUF_TYPES.items():
        for suffix, extra in (("", []), ("-imat", ["--imatrix", imatrix])):
            built(out / f"{name}{suffix}.gguf",
                  lambda p, e=extra, a=args: run(bin_dir / "llama-quantize", *e, *a[:-1], f32, p, a[-1], threads))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("fp32", type=Path, help="phi4edge fp32 bundle of the checkpoint")
    ap.add_argument("out", type=Path)
    ap.add_argument("--llama-cpp-dir", type=Path, help="vendor/llama.cpp of the llama-cpp-python sdist")
    ap.add_argument("--llama-bin", type=Path, help="folder with its llama-quantize and llama-imatrix")
    ap.add_argument("--pre", default="smollm", help="llama.cpp's name of the checkpoint's BPE pre-tokenizer")
    ap.add_argument("--only", nargs="*", help="onnxruntime configs to build (default: all)")
    ap.add_argument("--heads", nargs="*", default=["int4", "int8"], choices=["int4", "int8"],
                    help="vocabulary tables to pair with each onnxruntime config")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)   # one INFO line per node otherwise
    a.out.mkdir(parents=True, exist_ok=True)
    tables = {head: phi4edge_table_bundle(a.checkpoint, a.out / f"table-rtn32-{head}", head) for head in a.heads}
    configs = ort_configs()
    for name in a.only if a.only is not None else configs:
        for head, table in tables.items():
            out = a.out / f"ort-{name}-{head}"
            if not (out / "decoder.onnx").is_file():
                print(f"onnxruntime {name}, {head} table -> {out}", flush=True)
                ort_peer(a.fp32, table, out, configs[name])
    if a.llama_cpp_dir and a.llama_bin:
        llama_peers(a.checkpoint, a.out, a.llama_cpp_dir, a.llama_bin, a.pre, a.threads)


if __name__ == "__main__":
    main()
