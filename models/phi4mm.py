"""Phi-4-multimodal checkpoint layouts for the vision encoder and projector.

transformers-native (`Phi4MultimodalForCausalLM`) and the original remote-code layout (`phi4mm`)
name the same tensors differently; this maps our logical names to whichever is present (the map
follows transformers' convert_phi4_multimodal_weights_to_hf.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from ..format import SpeechConfig, VisionConfig
from .checkpoint import Checkpoint

IMAGE = "model.embed_tokens_extend.image_embed."
# transformers-native name pattern -> original remote-code replacement, where they differ
ORIGINAL_IMAGE_NAMES = [
    (r"^img_projection_up", "img_projection.0"),
    (r"^img_projection_down", "img_projection.2"),
    (r"^global_img_feature_extensor", "glb_GN"),
    (r"^sub_img_feature_extensor", "sub_GN"),
]
SIGLIP_HEAD_DIM = 72   # so400m: 1152 / 16; original checkpoints hard-code the head count in code


def has_vision(ckpt: Checkpoint) -> bool:
    return any(k.startswith(IMAGE) for k in ckpt.keys())


IMAGE_TOKEN = "<|endoftext10|>"   # the placeholder the original remote code hard-codes (id 200010)


class EncoderWeights:
    """An encoder's tensors by transformers-native name, in whichever layout the checkpoint has."""

    kind: str                             # "vision" or "speech", for messages
    prefix: str                           # key prefix of the encoder's tensors
    renames: list[tuple[str, str]]        # native pattern -> original-layout replacement
    original_marker: str                  # a key only the original layout has

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.original = self.prefix + self.original_marker in ckpt

    def key(self, name: str) -> str:
        if self.original:
            for pattern, repl in self.renames:
                name = re.sub(pattern, repl, name)
        key = self.prefix + name
        if key not in self.ckpt:
            raise CheckpointError(f"{self.ckpt.dir}: {self.kind} tensor '{key}' not found")
        return key

    def get(self, name: str) -> np.ndarray:
        return self.ckpt.get(self.key(name))


class VisionWeights(EncoderWeights):
    kind, prefix, renames, original_marker = "vision", IMAGE, ORIGINAL_IMAGE_NAMES, "glb_GN"

    def __init__(self, ckpt: Checkpoint, raw_config: dict, text_hidden: int, tokenizer_image_id: int | None = None):
        super().__init__(ckpt)
        self.cfg = self._config(raw_config, text_hidden, tokenizer_image_id)

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


AUDIO = "model.embed_tokens_extend.audio_embed."
AUDIO_TOKEN = "<|endoftext11|>"   # the audio placeholder (id 200011 in the real model)
# transformers-native name pattern -> original remote-code replacement (convert script, reversed)
ORIGINAL_AUDIO_NAMES = [
    (r"feed_forward_(in|out)\.gate_up_proj", r"feed_forward_\1.net.0.linear"),
    (r"feed_forward_(in|out)\.down_proj", r"feed_forward_\1.net.2"),
    (r"self_attn\.(q|k|v)_proj", r"self_attn.linear_\1"),
    (r"self_attn\.o_proj", "self_attn.linear_out"),
    (r"^up_proj_for_speech", "audio_projection.speech.0"),
    (r"^down_proj_for_speech", "audio_projection.speech.2"),
    (r"^up_proj_for_vision_speech", "audio_projection.vision.0"),
    (r"^down_proj_for_vision_speech", "audio_projection.vision.2"),
]


@dataclass(frozen=True)
class SubsamplingConv:
    index: int
    strides: list[int]
    pads: list[int]
    group: int
    relu_after: bool


def has_speech(ckpt: Checkpoint) -> bool:
    return any(k.startswith(AUDIO) for k in ckpt.keys())


class SpeechWeights(EncoderWeights):
    kind, prefix, renames, original_marker = "speech", AUDIO, ORIGINAL_AUDIO_NAMES, "audio_projection.speech.0.weight"

    def __init__(self, ckpt: Checkpoint, raw_config: dict, text_hidden: int, tokenizer_audio_id: int | None = None):
        super().__init__(ckpt)
        ac = raw_config.get("audio_config") or {}
        orig = (raw_config.get("audio_processor") or {}).get("config") or {}
        hidden = self.ckpt.shape(self.key("encoder.embed.out.weight"))[0]
        heads = ac.get("num_attention_heads") or orig.get("attention_heads")
        if not heads:
            raise CheckpointError(f"{ckpt.dir / 'config.json'}: the audio encoder's attention head count is missing "
                                  f"(audio_config.num_attention_heads or audio_processor.config.attention_heads)")
        max_distance = ac.get("bias_max_distance") or (orig.get("relative_attention_bias_args") or {}).get("t5_bias_max_distance")
        buckets = self.ckpt.shape(self.key("encoder.relative_attention_bias_layer.bias_values.weight"))[0]
        self.cfg = SpeechConfig(
            hidden_size=hidden, num_heads=int(heads),
            num_blocks=len({k.split(".encoders.")[1].split(".")[0] for k in ckpt.keys()
                            if k.startswith(AUDIO) and ".encoders." in k}),
            input_size=self.ckpt.shape(self.key("encoder.encoder_embedding.global_mean"))[0],
            kernel_size=self.ckpt.shape(self.key("encoder.encoders.0.conv.dw_sep_conv_1d.dw_conv.weight"))[-1],
            bias_max_distance=int(max_distance or buckets // 2), time_reduction=8,
            audio_token_id=int(ac.get("audio_token_id") or tokenizer_audio_id or 200011), text_hidden_size=text_hidden)

    def subsampling_layers(self) -> list[SubsamplingConv]:
        """The NeMo subsampling Sequential: stride-2 3x3 convs (the later ones depthwise), 1x1
        pointwise convs, ReLU after the first conv and after each pointwise conv."""
        indices = sorted({int(k.split(".embed.conv.")[1].split(".")[0]) for k in self.ckpt.keys()
                          if k.startswith(AUDIO) and ".embed.conv." in k})
        layers = []
        for i in indices:
            out_ch, in_per_group, kernel, _ = self.ckpt.shape(self.key(f"encoder.embed.conv.{i}.weight"))
            strided = kernel == 3
            layers.append(SubsamplingConv(i, [2, 2] if strided else [1, 1], [1, 1, 1, 1] if strided else [0, 0, 0, 0],
                                          out_ch if (strided and in_per_group == 1 and i > 0) else 1,
                                          i + 1 not in indices))
        return layers


LM_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj)\.weight$")


def original_key(key: str) -> str:
    """A transformers-native (or peft-wrapped) key as the original remote-code checkpoint names it:
    encoder keys renamed, and LoRA-carrying linears' weights under `base_layer`."""
    for prefix, renames in ((IMAGE, ORIGINAL_IMAGE_NAMES), (AUDIO, ORIGINAL_AUDIO_NAMES)):
        if key.startswith(prefix):
            name = key[len(prefix):]
            for pattern, repl in renames:
                name = re.sub(pattern, repl, name)
            return prefix + name
    return key.replace(".weight", ".base_layer.weight") if LM_LINEAR.match(key) else key
