"""Write a random checkpoint in a real layout (config.json, bf16 safetensors shards with
model.safetensors.index.json, tokenizer), at full width or tiny, without downloading anything.

- `phi4-mini`, `tiny`: Phi-4-mini (`Phi3ForCausalLM`).
- `phi4-multimodal`, `tiny-multimodal`: Phi-4-multimodal in its ORIGINAL remote-code layout
  (`Phi4MMForCausalLM`, model_type phi4mm): LoRA-wrapped decoder linears
  (`...qkv_proj.base_layer.weight`, `...lora_A.vision.weight`, `...lora_B.speech.weight`; vision
  r=256 alpha 512, speech r=320 alpha 640), the SigLIP-so400m image encoder and projection
  (`img_processor.*`, `img_projection.0/.2`, `glb_GN`, `sub_GN`) and the conformer speech encoder and
  projections (`encoder.*`, `audio_projection.speech/.vision`), with the config fields the remote
  code reads (`embd_layer`, `audio_processor`, `vision_lora`, `speech_lora`).

    python bench/synthetic_checkpoint.py --preset phi4-mini --layers 8 -o /tmp/phi4-mini-8l
    python bench/synthetic_checkpoint.py --preset phi4-multimodal --layers 8 -o /tmp/phi4mm-8l
    python bench/synthetic_checkpoint.py --preset phi4-multimodal --layers 8 --vision-layers 2 \
        --audio-blocks 2 -o /tmp/phi4mm-8l-small-encoders    # full-width encoders, fewer layers

Tensors are generated and written one shard at a time, so memory stays near one shard plus the
float32 draft of the largest tensor (3.6 GB peak for the 8-layer multimodal preset: the embedding).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository's scripts/
from scripts.bpe import save_tokenizer, train_tokenizer  # noqa: E402

PRESETS = {
    # Phi-4-mini-instruct's config.json values (transformers 4.x spelling, as published).
    "phi4-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=24,
                      num_key_value_heads=8, vocab_size=200064, max_position_embeddings=131072,
                      original_max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=520, max_position_embeddings=16384,
                 original_max_position_embeddings=4096),
}
# Phi-4-multimodal = the Phi-4-mini decoder + these (published config and checkpoint shapes).
MULTIMODAL = {
    "phi4-multimodal": ("phi4-mini", dict(
        vision=dict(hidden=1152, ffn=4304, layers=27, patch=14, image=448),     # SigLIP so400m
        audio=dict(hidden=1024, ffn=1536, blocks=24, heads=16, channels=1024, mels=80, kernel=3, max_distance=500),
        lora=dict(vision=(256, 512, 0.0), speech=(320, 640, 0.01)))),           # r, alpha, dropout
    "tiny-multimodal": ("tiny", dict(
        vision=dict(hidden=144, ffn=160, layers=3, patch=14, image=448),        # head_dim 72 like so400m
        audio=dict(hidden=64, ffn=96, blocks=2, heads=2, channels=32, mels=80, kernel=3, max_distance=50),
        lora=dict(vision=(8, 16, 0.0), speech=(12, 24, 0.01)))),
}


def config(preset: str, layers: int | None, vision_layers: int | None = None, audio_blocks: int | None = None) -> dict:
    text, mm = MULTIMODAL[preset] if preset in MULTIMODAL else (preset, None)
    p = dict(PRESETS[text])
    if layers:
        p["num_hidden_layers"] = layers
    half = int(p["hidden_size"] // p["num_attention_heads"] * 0.75) // 2
    rng = np.random.default_rng(1)
    cfg = {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", **p, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "hidden_act": "silu",
        "rope_scaling": {"type": "longrope", "short_factor": (1 + rng.random(half)).round(4).tolist(),
                         "long_factor": (1 + 40 * rng.random(half)).round(4).tolist()},
        "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
        "sliding_window": 262144, "torch_dtype": "bfloat16", "attention_bias": False,
    }
    if mm is None:
        return cfg
    vision = mm["vision"] | ({"layers": vision_layers} if vision_layers else {})
    audio = mm["audio"] | ({"blocks": audio_blocks} if audio_blocks else {})
    # The LoRA target regex the published config carries (the remote code hands it to PEFT).
    target = r"layers.*((self_attn\.(qkv_proj|o_proj))|(mlp\.(gate_up|down)_proj))"
    return cfg | {
        "architectures": ["Phi4MMForCausalLM"], "model_type": "phi4mm", "img_processor": None,
        "embd_layer": {"embedding_cls": "image_audio",
                       "image_embd_layer": {"crop_size": vision["image"], "embedding_cls": "tune_image",
                                            "hd_transform_order": "sub_glb", "image_token_compression_cls": "avg_pool_2d",
                                            "projection_cls": "mlp", "use_hd_transform": True,
                                            "with_learnable_separator": True},
                       "audio_embd_layer": {"compression_rate": 8, "downsample_rate": 1, "embedding_cls": "audio",
                                            "projection_cls": "mlp"}},
        "audio_processor": {"name": "cascades", "config": {
            "attention_dim": audio["hidden"], "attention_heads": audio["heads"], "linear_units": audio["ffn"],
            "num_blocks": audio["blocks"], "input_size": audio["mels"], "kernel_size": audio["kernel"],
            "ext_pw_out_channel": audio["hidden"], "depthwise_seperable_out_channel": audio["hidden"],
            "input_layer": "nemo_conv", "time_reduction": 8, "nemo_conv_settings": {"conv_channels": audio["channels"]},
            "relative_attention_bias_args": {"type": "t5", "t5_bias_max_distance": audio["max_distance"]}}},
        **{f"{name}_lora": {"r": r, "lora_alpha": alpha, "layer": target, "dp": dp}
           for name, (r, alpha, dp) in mm["lora"].items()},
        "_synthetic": {"vision": vision, "audio": audio},   # read back by tensors(); ignored by readers
    }


ONES, ZEROS = 0.0, -1.0   # "std" codes: norm scales are ones, biases zeros, the rest normal(0, std)


def tensors(cfg: dict):
    """(name, shape, std) in checkpoint order."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d
    linears = {"self_attn.qkv_proj": (qkv, h), "self_attn.o_proj": (h, h), "mlp.gate_up_proj": (2 * f, h),
               "mlp.down_proj": (h, f)}
    loras = {name: cfg[f"{name}_lora"]["r"] for name in ("vision", "speech") if f"{name}_lora" in cfg}
    yield "model.embed_tokens.weight", (v, h), 0.02
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,), ONES
        for module, (out_dim, in_dim) in linears.items():
            if module == "mlp.gate_up_proj":   # checkpoint order, so a seed gives the same weights as before
                yield p + "post_attention_layernorm.weight", (h,), ONES
            if not loras:
                yield f"{p}{module}.weight", (out_dim, in_dim), 0.02
                continue
            # original phi4mm layout: PEFT-wrapped linears, both adapters inside the shards
            yield f"{p}{module}.base_layer.weight", (out_dim, in_dim), 0.02
            for name, r in loras.items():
                yield f"{p}{module}.lora_A.{name}.weight", (r, in_dim), 0.01
                yield f"{p}{module}.lora_B.{name}.weight", (out_dim, r), 0.01
    yield "model.norm.weight", (h,), ONES
    if "_synthetic" in cfg:
        yield from vision_tensors(cfg["_synthetic"]["vision"], h)
        yield from audio_tensors(cfg["_synthetic"]["audio"], h)


def _linear(name: str, out_dim: int, in_dim: int, std: float = 0.02):
    yield f"{name}.weight", (out_dim, in_dim), std
    yield f"{name}.bias", (out_dim,), ZEROS


def _norm(name: str, dim: int):
    yield f"{name}.weight", (dim,), ONES
    yield f"{name}.bias", (dim,), ZEROS


def vision_tensors(vc: dict, text_hidden: int):
    """SigLIP so400m + HD separators + projection, original names (transformers' convert script, reversed)."""
    p, c, f = "model.embed_tokens_extend.image_embed.", vc["hidden"], vc["ffn"]
    yield p + "glb_GN", (1, 1, c), 0.02
    yield p + "sub_GN", (1, 1, 1, c), 0.02
    e = p + "img_processor."
    yield e + "embeddings.patch_embedding.weight", (c, 3, vc["patch"], vc["patch"]), 0.02
    yield e + "embeddings.patch_embedding.bias", (c,), ZEROS
    yield e + "embeddings.position_embedding.weight", ((vc["image"] // vc["patch"]) ** 2, c), 0.02
    for i in range(vc["layers"]):
        q = f"{e}encoder.layers.{i}."
        yield from _norm(q + "layer_norm1", c)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            # small q/k: random full-width attention would otherwise give saturated softmaxes
            yield from _linear(q + "self_attn." + proj, c, c, 0.002 if proj in ("q_proj", "k_proj") else 0.02)
        yield from _norm(q + "layer_norm2", c)
        yield from _linear(q + "mlp.fc1", f, c)
        yield from _linear(q + "mlp.fc2", c, f)
    yield from _norm(e + "post_layernorm", c)
    # SigLIP's pooling head: in the checkpoint, unused by Phi-4-multimodal (features come from layer -2)
    yield e + "head.probe", (1, 1, c), 0.02
    yield e + "head.attention.in_proj_weight", (3 * c, c), 0.02
    yield e + "head.attention.in_proj_bias", (3 * c,), ZEROS
    yield from _linear(e + "head.attention.out_proj", c, c)
    yield from _norm(e + "head.layernorm", c)
    yield from _linear(e + "head.mlp.fc1", f, c)
    yield from _linear(e + "head.mlp.fc2", c, f)
    yield from _linear(p + "img_projection.0", text_hidden, c)
    yield from _linear(p + "img_projection.2", text_hidden, text_hidden)


def audio_tensors(ac: dict, text_hidden: int):
    """Conformer speech encoder (NeMo x8 subsampling, T5 bias) + both projections, original names."""
    p, h, f, ch = "model.embed_tokens_extend.audio_embed.", ac["hidden"], ac["ffn"], ac["channels"]
    e = p + "encoder."
    yield e + "encoder_embedding.global_mean", (ac["mels"],), ZEROS
    yield e + "encoder_embedding.global_invstd", (ac["mels"],), ONES
    # NeMo "dw_striding": conv 3x3 s2, ReLU, [depthwise 3x3 s2, pointwise 1x1, ReLU] x 2
    for i, shape in ((0, (ch, 1, 3, 3)), (2, (ch, 1, 3, 3)), (3, (ch, ch, 1, 1)), (5, (ch, 1, 3, 3)), (6, (ch, ch, 1, 1))):
        yield f"{e}embed.conv.{i}.weight", shape, 0.02
        yield f"{e}embed.conv.{i}.bias", (ch,), ZEROS
    yield from _linear(e + "embed.out", h, ch * (ac["mels"] // 8))
    yield e + "relative_attention_bias_layer.bias_values.weight", (2 * ac["max_distance"], ac["heads"]), 0.02
    for i in range(ac["blocks"]):
        q = f"{e}encoders.{i}."
        for ff in ("feed_forward_in", "feed_forward_out"):
            yield from _norm(f"{q}{ff}.layer_norm", h)
            yield from _linear(f"{q}{ff}.net.0.linear", 2 * f, h)
            yield from _linear(f"{q}{ff}.net.2", h, f)
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            yield from _linear(f"{q}self_attn.{proj}", h, h)
        yield from _norm(q + "conv.layer_norm", h)
        yield q + "conv.glu.b1", (1, h, 1), ZEROS
        yield q + "conv.glu.b2", (1, h, 1), ZEROS
        yield q + "conv.glu.ext_pw_conv_1d.weight", (2 * h, h, 1), 0.02
        yield q + "conv.glu.ext_pw_conv_1d.bias", (2 * h,), ZEROS
        yield q + "conv.dw_sep_conv_1d.dw_conv.weight", (h, 1, ac["kernel"]), 0.02
        yield q + "conv.dw_sep_conv_1d.dw_conv.bias", (h,), ZEROS
        yield q + "conv.dw_sep_conv_1d.pw_conv.weight", (h, h, 1), 0.02
        yield q + "conv.dw_sep_conv_1d.pw_conv.bias", (h,), ZEROS
        yield q + "conv.ext_pw_conv_1d.weight", (h, h, 1), 0.02
        yield q + "conv.ext_pw_conv_1d.bias", (h,), ZEROS
        yield from _norm(q + "layer_norm_att", h)
        yield from _norm(q + "layer_norm", h)
    for which in ("speech", "vision"):
        yield from _linear(f"{p}audio_projection.{which}.0", text_hidden, h)
        yield from _linear(f"{p}audio_projection.{which}.2", text_hidden, text_hidden)


def write(out: Path, preset: str, layers: int | None = None, shard_bytes: int = 2 << 30, seed: int = 0,
          vision_layers: int | None = None, audio_blocks: int | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=False)
    cfg = config(preset, layers, vision_layers, audio_blocks)
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
        arr = (np.ones(shape, np.float32) if std == ONES else np.zeros(shape, np.float32) if std == ZEROS
               else rng.standard_normal(shape, np.float32) * np.float32(std))
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
    cfg.pop("_synthetic", None)
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
    ap.add_argument("--preset", choices=sorted(PRESETS) + sorted(MULTIMODAL), default="phi4-mini")
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument("--vision-layers", type=int, default=None, help="multimodal: image encoder layers (27)")
    ap.add_argument("--audio-blocks", type=int, default=None, help="multimodal: conformer blocks (24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=0, help="also write a random PEFT adapter of this rank "
                    "to OUTPUT-lora-rRANK")
    a = ap.parse_args()
    print(write(a.output, a.preset, a.layers, seed=a.seed, vision_layers=a.vision_layers, audio_blocks=a.audio_blocks))
    if a.lora_rank:
        print(write_peft_adapter(a.output.with_name(f"{a.output.name}-lora-r{a.lora_rank}"), a.output, a.lora_rank))
