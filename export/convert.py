"""`phi4edge export`: a Hugging Face checkpoint folder in, a bundle folder out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from tqdm import tqdm
from tokenizers import Tokenizer

from importlib.metadata import version
from ..models.checkpoint import Checkpoint
from ..models.config import DecoderConfig, load_config
from ..models.errors import CheckpointError
from ..models.phi3 import Phi3Weights
from ..quant import QuantConfig
from .bundle import staging, write_manifest
from .decoder import DecoderBuilder, DecoderOptions
from .graph import Graph, WeightFile

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")
STOP_TOKENS = ("<|end|>", "<|endoftext|>")


def stop_token_ids(model_dir: Path, cfg: DecoderConfig, tokenizer: Tokenizer) -> list[int]:
    """Every id that ends generation: config, generation_config, and the chat end tokens."""
    ids = set(cfg.eos_token_ids)
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else eos or [])
    ids.update(i for t in STOP_TOKENS if (i := tokenizer.token_to_id(t)) is not None)
    return sorted(i for i in ids if i is not None)


def export_model(model_dir: str | Path, out_dir: str | Path, precision: str = "int4",
                 block_size: int = 32, force: bool = False, show_progress: bool = True) -> Path:
    """Export a Phi-3-family checkpoint to a bundle; returns the bundle path."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if precision not in ("int4", "fp32"):
        raise CheckpointError(f"--precision {precision!r}: choose int4 or fp32")
    quant = QuantConfig(block_size=block_size) if precision == "int4" else None
    cfg = load_config(model_dir)
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path}: not found (phi4edge needs the fast tokenizer file)")
    tokenizer = Tokenizer.from_file(str(tok_path))
    weights = Phi3Weights(Checkpoint(model_dir), cfg)
    weights.check()   # every tensor present and shaped right before anything is written

    with staging(out_dir, force) as tmp:
        data = WeightFile(tmp / "decoder.onnx.data")
        graph = Graph("phi3_decoder", data)
        with tqdm(total=cfg.num_layers, desc="export decoder", unit="layer", disable=not show_progress) as bar:
            DecoderBuilder(graph, cfg, weights, DecoderOptions(quant=quant)).build(lambda _: bar.update())
        data.close()
        onnx.save_model(graph.model(), tmp / "decoder.onnx")
        for name in TOKENIZER_FILES + ("config.json",):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        write_manifest(tmp, {
            "created_by": f"phi4edge {version('phi4edge')}",
            "model": {"family": "phi3", "source": model_dir.resolve().name, "config": cfg.to_json()},
            "quantization": {"precision": precision, **(quant.to_json() if quant else {}),
                             "tied_embeddings": "one int4 tensor for embedding and LM head"
                             if quant and cfg.tie_word_embeddings else None},
            "decoder": {"graph": "decoder.onnx", "inputs": "input_ids", "logits": "last_position"},
            "generation": {"eos_token_ids": stop_token_ids(model_dir, cfg, tokenizer)},
        })
    return out_dir
