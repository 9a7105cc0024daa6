"""The Hugging Face path as a peer for bench/peers.py: optimum-onnx's exporter, then onnxruntime's own
int4 quantizer (MatMulNBitsQuantizer: symmetric, blocks of 32, accuracy level 4, as phi4edge's
default), loaded by `ORTModelForCausalLM`. Runs in a venv of its own (optimum-onnx pins an older
transformers; no phi4edge import):

    python3 -m venv /tmp/optimum/venv
    /tmp/optimum/venv/bin/pip install torch==2.13.0
    /tmp/optimum/venv/bin/pip install "optimum-onnx[onnxruntime]==0.1.0" transformers==4.57.6 onnxruntime==1.32.0
    /tmp/optimum/venv/bin/python bench/optimum_build.py CKPT OUT
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    fp32 = out.with_name(out.name + "-fp32")
    if not (fp32 / "model.onnx").exists():
        from optimum.exporters.onnx import main_export
        main_export(str(ckpt), output=str(fp32), task="text-generation-with-past", device="cpu", no_post_process=True)
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32 / "model.onnx")), algo_config=config)
    quantizer.process()
    out.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
    for f in fp32.iterdir():    # config, generation config, tokenizer: what from_pretrained reads
        if f.suffix != ".onnx" and not f.name.startswith("model.onnx"):
            shutil.copy(f, out / f.name)


if __name__ == "__main__":
    main()
