"""Shared fixtures: tiny random checkpoints built by transformers, and their exported bundles."""
from __future__ import annotations

from pathlib import Path

import pytest

from .torchvision_standin import install as _install_torchvision_standin

_install_torchvision_standin()   # before transformers is imported (it checks for torchvision once)

from phi4edge.export import export_model

from .checkpoints import make_phi3, phi3_config

# Shapes that exercise what differs across the Phi-3 family. Every vocabulary differs from every
# projection width, and head_dim is 64 wherever the partial rotary factor is 0.75 (see README).
SHAPES = {
    # Phi-4-mini-like: GQA 2:1, partial rotary 0.75, LongRoPE, tied embeddings, bf16 shards.
    "phi4mini": dict(config=dict(), dtype="bfloat16"),
    # Phi-3-mini-like: no GQA, full rotary, plain RoPE, untied LM head, one fp32 file.
    "phi3mini": dict(config=dict(hidden=128, heads=4, kv_heads=4, intermediate=200, vocab=997,
                                 partial_rotary=1.0, longrope=False, tie=False, max_position=4096),
                     dtype="float32", shard_size="50MB"),
    # GQA 4:1, three layers, LongRoPE with full rotary, fp16 shards.
    "gqa4": dict(config=dict(hidden=256, layers=3, heads=8, kv_heads=2, intermediate=416, vocab=1509,
                             partial_rotary=1.0), dtype="float16"),
}


def _dtype(name: str):
    import torch
    return getattr(torch, name)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_phi3(root / name, phi3_config(**spec["config"]), dtype=_dtype(spec["dtype"]),
                            **({"shard_size": spec["shard_size"]} if "shard_size" in spec else {}))
            for name, spec in SHAPES.items()}


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(shape, precision) -> exported bundle, built lazily on first use."""
    root = tmp_path_factory.mktemp("bundles")

    class Lazy(dict):
        def __missing__(self, key):
            shape, precision = key
            self[key] = export_model(checkpoints[shape], root / f"{shape}-{precision}", precision=precision,
                                     show_progress=False)
            return self[key]
    return Lazy()


LM_TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"


@pytest.fixture(scope="session")
def mm_with_adapters(tmp_path_factory):
    """Tiny Phi-4-multimodal (transformers layout) with vision/speech LoRAs in vision-lora/ and
    speech-lora/, plus the peft-wrapped transformers model as the reference."""
    import torch
    from transformers import Phi4MultimodalForCausalLM

    from phi4edge.models.lora import save_peft_adapter

    from .checkpoints import make_phi4mm, peft_model
    root = tmp_path_factory.mktemp("phi4mm-lora")
    ck = make_phi4mm(root / "native")
    ref = Phi4MultimodalForCausalLM.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    pm = peft_model(ref, {"vision": dict(r=8, lora_alpha=16, target_modules=LM_TARGETS),
                          "speech": dict(r=12, lora_alpha=24, target_modules=LM_TARGETS)}, seed=5)
    for name in ("vision", "speech"):
        save_peft_adapter(pm, name, ck / f"{name}-lora")
    bundle = export_model(ck, root / "fp32", precision="fp32", show_progress=False)
    return pm, bundle


@pytest.fixture(scope="session")
def mm(tmp_path_factory):
    """A tiny random Phi-4-multimodal (transformers layout, no adapters), its fp32 bundle, and
    transformers' model as the reference."""
    import torch
    from transformers import Phi4MultimodalForCausalLM

    from .checkpoints import make_phi4mm
    root = tmp_path_factory.mktemp("phi4mm")
    ck = make_phi4mm(root / "native")
    bundle = export_model(ck, root / "fp32", precision="fp32", show_progress=False)
    # eager attention: transformers 5.23 marks the SigLIP attention is_causal=True, so under SDPA an
    # unpadded crop (no mask) gets causal attention; SigLIP, and the original model, are bidirectional
    ref = Phi4MultimodalForCausalLM.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    return ck, bundle, ref
