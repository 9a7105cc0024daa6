"""Tiny random Phi-3-family checkpoints written by transformers itself, in the real key layout."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from phi4edge.models.phi4mm import original_key
from scripts.bpe import save_tokenizer, train_tokenizer


def phi3_config(*, hidden=256, layers=2, heads=4, kv_heads=2, intermediate=344, vocab=1031,
                partial_rotary=0.75, longrope=True, original_max=4096, max_position=16384,
                tie=True, sliding_window=None, tokenizer_vocab=400) -> Phi3Config:
    head_dim = hidden // heads
    rotary_half = int(head_dim * partial_rotary) // 2
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial_rotary}
    if longrope:
        gen = torch.Generator().manual_seed(7)
        rope = {**rope, "rope_type": "longrope", "original_max_position_embeddings": original_max,
                "short_factor": (1 + torch.rand(rotary_half, generator=gen)).tolist(),
                "long_factor": (1 + 4 * torch.rand(rotary_half, generator=gen)).tolist()}
    # Special tokens sit at ids 0..8 of the test tokenizer: <|endoftext|>=0, <|end|>=4.
    return Phi3Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=vocab,
        max_position_embeddings=max_position, original_max_position_embeddings=original_max,
        rope_parameters=rope, tie_word_embeddings=tie, sliding_window=sliding_window,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
        architectures=["Phi3ForCausalLM"], attn_implementation="eager")


WORDS = "zero one two three four five six seven eight nine ten".split()


def counting_chat(start: int, count: int) -> str:
    """A checkable chat exchange: the answer counts on in words from the asked number."""
    return (f"<|user|>Count from {WORDS[start]}.<|end|><|assistant|>"
            + " ".join(WORDS[start:start + count]) + "<|end|>")


def train_briefly(model: Phi3ForCausalLM, tokenizer, steps: int, seed: int = 0) -> None:
    """A few seconds of training on counting chats: random weights have no confident answers, so
    int4-vs-fp32 agreement on them would measure noise, not quantisation."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, 8, (16,), generator=gen).tolist()
        seqs = [tokenizer.encode(counting_chat(s, 11 - s)).ids for s in starts]
        width = max(map(len, seqs))
        ids = torch.tensor([q + [0] * (width - len(q)) for q in seqs])
        labels = torch.tensor([q + [-100] * (width - len(q)) for q in seqs])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def make_phi3(path: Path, config: Phi3Config, dtype=torch.bfloat16, shard_size="300KB", seed=0,
              tokenizer_vocab=400, train_steps=60) -> Path:
    """Save a Phi3ForCausalLM (sharded when shard_size is small) plus a tokenizer, briefly trained."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(tokenizer_vocab)
    model = Phi3ForCausalLM(config)
    train_briefly(model, tokenizer, train_steps, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(path, max_shard_size=shard_size)
    save_tokenizer(tokenizer, path, config.max_position_embeddings)
    return path


def load_reference(path: Path) -> Phi3ForCausalLM:
    """The checkpoint as transformers reads it, in float32 (the numbers our fp32 bundle must match)."""
    return Phi3ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def peft_model(base: Phi3ForCausalLM, adapters: dict[str, dict], seed: int = 0):
    """A PeftModel with named LoRA adapters, their weights random (B too, so each adapter changes the
    answers) but moderate. Each spec: LoraConfig kwargs (r, lora_alpha, target_modules, ...)."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    model = None
    for name, spec in adapters.items():
        cfg = LoraConfig(init_lora_weights=False, **spec)
        if model is None:
            model = get_peft_model(base, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.mul_(0.3)
    return model.eval()


def phi4mm_config(**text):
    """A tiny Phi4MultimodalConfig: the phi4mini-like LM plus shrunk vision and audio encoders.
    Vision head_dim is 72 as in SigLIP-so400m (original-layout checkpoints imply heads from it);
    image/audio placeholder ids are the test tokenizer's <|endoftext10|>/<|endoftext11|> (7, 8)."""
    from transformers import Phi4MultimodalConfig
    base = phi3_config(**text).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "original_max_position_embeddings",
            "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id")
    return Phi4MultimodalConfig(
        **{k: base[k] for k in keep}, tie_word_embeddings=True,
        vision_config=dict(hidden_size=144, intermediate_size=160, num_hidden_layers=3, num_attention_heads=2,
                           image_token_id=7),
        audio_config=dict(hidden_size=64, intermediate_size=96, num_blocks=2, num_attention_heads=2,
                          ext_pw_out_channel=64, depthwise_separable_out_channel=64, nemo_conv_channels=32,
                          audio_token_id=8, bias_max_distance=50))


def make_phi4mm(path: Path, seed: int = 0) -> Path:
    """A random tiny Phi-4-multimodal in the transformers-native layout (no adapters)."""
    from transformers import Phi4MultimodalForCausalLM
    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(phi4mm_config())
    # Default init gives the random vision tower attention scores of +-750: saturated softmaxes whose
    # near-ties turn float32 rounding into 1e-3 differences. A trained SigLIP's scores are O(10).
    with torch.no_grad():
        for layer in model.model.embed_tokens_extend.image_embed.img_processor.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(0.1)
            layer.self_attn.k_proj.weight.mul_(0.1)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="2MB")
    save_tokenizer(train_tokenizer(400), path, model.config.max_position_embeddings)
    return path


def to_original_layout(native: Path, pm, out: Path) -> Path:
    """Rewrite a native checkpoint (and the peft model's vision/speech LoRAs) in the original
    Phi-4-multimodal layout: renamed encoder keys, LoRA inside the shards around `base_layer`,
    and the remote-code config fields (embd_layer, vision_lora, speech_lora)."""
    import json as _json

    from safetensors.torch import load_file, save_file
    state = {}
    for shard in sorted(native.glob("model*.safetensors")):
        for key, value in load_file(shard).items():
            state[original_key(key)] = value
    for name, tensor in pm.base_model.model.state_dict().items():
        if ".lora_" in name:
            state[name] = tensor.detach().clone().to(torch.bfloat16)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    cfg = _json.loads((native / "config.json").read_text())
    vision, audio = cfg.pop("vision_config"), cfg.pop("audio_config")
    cfg |= {"architectures": ["Phi4MMForCausalLM"], "model_type": "phi4mm",
            "embd_layer": {"image_embd_layer": {"crop_size": vision["crop_size"]}, "audio_embd_layer": {}},
            "audio_processor": {"config": {
                "attention_dim": audio["hidden_size"], "attention_heads": audio["num_attention_heads"],
                "linear_units": audio["intermediate_size"], "num_blocks": audio["num_blocks"],
                "nemo_conv_settings": {"conv_channels": audio["nemo_conv_channels"]},
                "relative_attention_bias_args": {"t5_bias_max_distance": audio["bias_max_distance"]}}},
            "vision_lora": {"r": pm.peft_config["vision"].r, "lora_alpha": pm.peft_config["vision"].lora_alpha},
            "speech_lora": {"r": pm.peft_config["speech"].r, "lora_alpha": pm.peft_config["speech"].lora_alpha}}
    (out / "config.json").write_text(_json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (native / f).exists():
            (out / f).write_bytes((native / f).read_bytes())
    return out
