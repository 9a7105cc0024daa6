"""Phi-4-multimodal checkpoint layouts for the vision encoder and projector.

transformers-native (`Phi4MultimodalForCausalLM`) and the original remote-code layout (`phi4mm`)
name the same tensors differently; this maps our logical names to whichever is present (the map
follows transformers' convert_phi4_multimodal_weights_to_hf.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checkpoint import Checkpoint
from .errors import CheckpointError

IMAGE = "model.embed_tokens_extend.image_embed."
# logical name -> original-layout name, where they differ
ORIGINAL_NAMES = {
    "img_projection_up": "img_projection.0",
    "img_projection_down": "img_projection.2",
    "global_img_feature_extensor": "glb_GN",
    "sub_img_feature_extensor": "sub_GN",
}
SIGLIP_HEAD_DIM = 72   # so400m: 1152 / 16; original checkpoints hard-code the head count in code


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int          # layers run: features come from hidden_states[feature_layer]
    num_heads: int
    patch_size: int
    image_size: int
    crop_size: int
    layer_norm_eps: float
    image_token_id: int
    text_hidden_size: int

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    def to_json(self) -> dict:
        return dict(self.__dict__)


def has_vision(ckpt: Checkpoint) -> bool:
    return any(k.startswith(IMAGE) for k in ckpt.keys())


IMAGE_TOKEN = "<|endoftext10|>"   # the placeholder the original remote code hard-codes (id 200010)


class VisionWeights:
    def __init__(self, ckpt: Checkpoint, raw_config: dict, text_hidden: int, tokenizer_image_id: int | None = None):
        self.ckpt = ckpt
        self.original = f"{IMAGE}glb_GN" in ckpt
        self.cfg = self._config(raw_config, text_hidden, tokenizer_image_id)

    def key(self, name: str) -> str:
        if self.original:
            for new, old in ORIGINAL_NAMES.items():
                name = name.replace(new, old)
        key = IMAGE + name
        if key not in self.ckpt:
            raise CheckpointError(f"{self.ckpt.dir}: vision tensor '{key}' not found")
        return key

    def get(self, name: str) -> np.ndarray:
        return self.ckpt.get(self.key(name))

    def _config(self, raw: dict, text_hidden: int, tokenizer_image_id: int | None) -> VisionConfig:
        patch = self.ckpt.shape(self.key("img_processor.embeddings.patch_embedding.weight"))
        hidden, patch_size = patch[0], patch[-1]
        layers = len({k.split(".encoder.layers.")[1].split(".")[0] for k in self.ckpt.keys()
                      if k.startswith(IMAGE) and ".encoder.layers." in k})
        positions = self.ckpt.shape(self.key("img_processor.embeddings.position_embedding.weight"))[0]
        vc = raw.get("vision_config") or {}
        embd = (raw.get("embd_layer") or {}).get("image_embd_layer") or {}
        feature_layer = vc.get("feature_layer", -2)
        heads = vc.get("num_attention_heads") or hidden // SIGLIP_HEAD_DIM
        if hidden % heads:
            raise CheckpointError(f"{self.ckpt.dir}: vision hidden size {hidden} is not divisible by {heads} heads")
        return VisionConfig(
            hidden_size=hidden,
            intermediate_size=self.ckpt.shape(self.key("img_processor.encoder.layers.0.mlp.fc1.weight"))[0],
            num_layers=layers + 1 + feature_layer if feature_layer < 0 else feature_layer,
            num_heads=heads, patch_size=patch_size, image_size=int(round(positions ** 0.5)) * patch_size,
            crop_size=int(vc.get("crop_size") or embd.get("crop_size") or 448),
            layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
            image_token_id=int(vc.get("image_token_id") or tokenizer_image_id or 200010),
            text_hidden_size=text_hidden)
