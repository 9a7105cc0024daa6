"""genai_config.json, so onnxruntime-genai can run a bundle (and load its adapters) as well."""
from __future__ import annotations

from ..models.config import DecoderConfig


def genai_config(cfg: DecoderConfig, eos_token_ids: list[int]) -> dict:
    return {
        "model": {
            "type": "phi3", "bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else eos_token_ids[0],
            "eos_token_id": eos_token_ids, "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None
            else eos_token_ids[0], "vocab_size": cfg.vocab_size, "context_length": cfg.max_position,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "decoder.onnx", "head_size": cfg.head_dim, "hidden_size": cfg.hidden_size,
                "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
                "num_hidden_layers": cfg.num_layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": cfg.max_position, "min_length": 0,
                   "past_present_share_buffer": True, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
                   "repetition_penalty": 1.0, "early_stopping": True, "num_return_sequences": 1,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
