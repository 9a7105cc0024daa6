"""Write a random checkpoint in the real Phi-4-mini layout (config.json, bf16 safetensors shards with
model.safetensors.index.json, tokenizer), at full width or tiny, without downloading anything.

    python bench/synthetic_checkpoint.py --preset phi4-mini -o /tmp/phi4-mini-synthetic
    python bench/synthetic_checkpoint.py --preset phi4-mini --layers 8 -o /tmp/phi4-mini-8l

Tensors are generated and written one shard at a time, so memory stays near one shard's size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from phi4edge.models.tokenizer import save_tokenizer, train_tokenizer

PRESETS = {
    # Phi-4-mini-instruct's config.json values (transformers 4.x spelling, as published).
    "phi4-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=24,
                      num_key_value_heads=8, vocab_size=200064, max_position_embeddings=131072,
                      original_max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=520, max_position_embeddings=16384,
                 original_max_position_embeddings=4096),
}


def config(preset: str, layers: int | None) -> dict:
    p = dict(PRESETS[preset])
    if layers:
        p["num_hidden_layers"] = layers
    half = int(p["hidden_size"] // p["num_attention_heads"] * 0.75) // 2
    rng = np.random.default_rng(1)
    return {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", **p, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "hidden_act": "silu",
        "rope_scaling": {"type": "longrope", "short_factor": (1 + rng.random(half)).round(4).tolist(),
                         "long_factor": (1 + 40 * rng.random(half)).round(4).tolist()},
        "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
        "sliding_window": 262144, "torch_dtype": "bfloat16", "attention_bias": False,
    }


def tensors(cfg: dict):
    """(name, shape, std) in checkpoint order."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d
    yield "model.embed_tokens.weight", (v, h), 0.02
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,), 0.0
        yield p + "self_attn.qkv_proj.weight", (qkv, h), 0.02
        yield p + "self_attn.o_proj.weight", (h, h), 0.02
        yield p + "post_attention_layernorm.weight", (h,), 0.0
        yield p + "mlp.gate_up_proj.weight", (2 * f, h), 0.02
        yield p + "mlp.down_proj.weight", (h, f), 0.02
    yield "model.norm.weight", (h,), 0.0


def write(out: Path, preset: str, layers: int | None = None, shard_bytes: int = 2 << 30, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=False)
    cfg = config(preset, layers)
    rng = np.random.default_rng(seed)
    shards: list[dict[str, np.ndarray]] = [{}]
    weight_map, size, names = {}, 0, []

    def flush():
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_file(shards[-1], str(out / name), metadata={"format": "pt"})
        names.append(name)
        shards[-1] = {}

    for name, shape, std in tensors(cfg):
        n = int(np.prod(shape))
        if size and size + 2 * n > shard_bytes:
            flush()
            size = 0
        arr = np.ones(shape, np.float32) if std == 0 else rng.standard_normal(shape, np.float32) * np.float32(std)
        shards[-1][name] = arr.astype(ml_dtypes.bfloat16)
        weight_map[name] = len(names)
        size += 2 * n
    flush()
    total = len(names)
    final = {}
    for i, old in enumerate(names):   # rename to the -0000i-of-0000n pattern transformers writes
        new = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        (out / old).rename(out / new)
        final[i] = new
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: final[v] for k, v in weight_map.items()}}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [0, 4]}))
    save_tokenizer(train_tokenizer(), out, cfg["max_position_embeddings"])
    return out


def write_peft_adapter(out: Path, checkpoint: Path, rank: int, alpha: float | None = None, seed: int = 1) -> Path:
    """A random PEFT LoRA adapter (all four layer linears, every layer) for a checkpoint written above,
    e.g. rank 320 like Phi-4-multimodal's speech LoRA."""
    cfg = json.loads((checkpoint / "config.json").read_text())
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * (h // cfg["num_attention_heads"])
    dims = {"self_attn.qkv_proj": (qkv, h), "self_attn.o_proj": (h, h), "mlp.gate_up_proj": (2 * f, h),
            "mlp.down_proj": (h, f)}
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(cfg["num_hidden_layers"]):
        for module, (o, n) in dims.items():
            key = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, n), np.float32) * 0.01).astype(ml_dtypes.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((o, rank), np.float32) * 0.01).astype(ml_dtypes.bfloat16)
    out.mkdir(parents=True, exist_ok=False)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha or 2 * rank, "base_model_name_or_path": str(checkpoint),
        "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]}))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="phi4-mini")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=0, help="also write a random PEFT adapter of this rank "
                    "to OUTPUT-lora-rRANK")
    a = ap.parse_args()
    print(write(a.output, a.preset, a.layers, seed=a.seed))
    if a.lora_rank:
        print(write_peft_adapter(a.output.with_name(f"{a.output.name}-lora-r{a.lora_rank}"), a.output, a.lora_rank))
