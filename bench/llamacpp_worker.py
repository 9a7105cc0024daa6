"""Runs inside llama-cpp-python's own venv, driven by bench/quality.py, bench/quant_peers.py
and bench/peers.py (no phi4edge import).

    PY llamacpp_worker.py convert LLAMA_CPP_DIR CKPT OUT.gguf TYPE [--pure]  # HF -> bf16 GGUF -> Q4_0 or Q4_K_M
    PY llamacpp_worker.py gguf LLAMA_CPP_DIR CKPT OUT.gguf OUTTYPE PRE    # HF -> GGUF of OUTTYPE (f32, f16, bf16)
    PY llamacpp_worker.py logits MODEL.gguf THREADS                       # every position's logits on request

`gguf` needs only torch and transformers (any venv that has them): it runs the sdist's
convert_hf_to_gguf.py with the BPE pre-tokenizer named PRE.
`logits` reads {"ids": IN.npy, "out": OUT.npy} per line: the window of token ids IN.npy is evaluated
from an empty KV cache (float32 K and V, as phi4edge's bundles keep them) and its [len, vocab]
logits written to OUT.npy; it answers {"done": OUT.npy}.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def to_gguf(llama_dir: str, checkpoint: str, out: str, outtype: str, pre: str) -> None:
    sys.path.insert(0, llama_dir)
    sys.path.insert(1, str(Path(llama_dir) / "gguf-py"))
    import conversion.base
    # The converter names a BPE pre-tokenizer by hashing its output on a test string and refuses
    # unknown hashes; a synthetic checkpoint's small tokenizer is unknown, so the caller names it.
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outfile", out, "--outtype", outtype]
    runpy.run_path(str(Path(llama_dir) / "convert_hf_to_gguf.py"), run_name="__main__")


def convert(llama_dir: str, checkpoint: str, out: str, ftype: str, pure: bool) -> None:
    bf16 = out + ".bf16"
    to_gguf(llama_dir, checkpoint, bf16, "bf16", "gpt-4o")   # Phi-4-mini's own pre-tokenizer
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.pure = pure   # pure: every matrix of TYPE, the tied embedding / LM head too (default: Q6_K for it)
    rc = llama_cpp.llama_model_quantize(bf16.encode(), out.encode(), params)
    if rc:
        raise SystemExit(f"llama_model_quantize failed ({rc})")
    Path(bf16).unlink()


def logits(model: str, threads: int) -> None:
    import llama_cpp
    import numpy as np
    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, type_k=f32, type_v=f32, verbose=False)
    print(json.dumps({"ready": True, "n_vocab": llm.n_vocab()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        ids = np.load(req["ids"])
        llm.reset()
        llm.eval([int(i) for i in ids])
        np.save(req["out"], llm.scores[:len(ids)])
        print(json.dumps({"done": req["out"]}), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "convert":
        convert(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], "--pure" in sys.argv)
    elif cmd == "gguf":
        to_gguf(*sys.argv[2:7])
    else:
        logits(sys.argv[2], int(sys.argv[3]))
