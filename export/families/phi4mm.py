"""Phi-4-multimodal, in the original remote-code layout (`Phi4MMForCausalLM`) or transformers'
(`Phi4MultimodalForCausalLM`): the Phi-3 decoder plus a SigLIP vision encoder and a conformer
speech encoder (each only if the checkpoint has it), and its vision/speech LoRA adapters."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from ...format import DYNAMIC_HD, Speech, SpeechNames, Vision, VisionNames
from ...models.checkpoint import Checkpoint
from ...models.config import DecoderConfig
from ...models.lora import PHI4MM_ADAPTERS, LoraAdapter, read_peft, read_phi4mm
from ...models.phi4mm import AUDIO_TOKEN, IMAGE_TOKEN, SpeechWeights, VisionWeights, has_speech, has_vision
from ..speech import SpeechBuilder
from ..vision import VisionBuilder
from .family import Encoder, Family


def max_crops(model_dir: Path) -> int:
    """The image processor's crop limit (`dynamic_hd`; the published preprocessor config says 36)."""
    path = model_dir / "preprocessor_config.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    return int(settings.get("dynamic_hd") or (settings.get("image_processor") or {}).get("dynamic_hd") or DYNAMIC_HD)


def encoders(ckpt: Checkpoint, cfg: DecoderConfig, tokenizer: Tokenizer, model_dir: Path) -> list[Encoder]:
    found = []
    if has_vision(ckpt):
        v = VisionWeights(ckpt, cfg.raw, cfg.hidden_size, tokenizer.token_to_id(IMAGE_TOKEN))
        found.append(Encoder("vision", v, VisionBuilder, v.cfg.num_layers, VisionNames.IMAGE_FEATURES,
                             v.cfg.image_token_id, lambda graph: Vision(graph, v.cfg,
                                                                        dynamic_hd=max_crops(model_dir))))
    if has_speech(ckpt):
        s = SpeechWeights(ckpt, cfg.raw, cfg.hidden_size, tokenizer.token_to_id(AUDIO_TOKEN))
        found.append(Encoder("speech", s, SpeechBuilder, s.cfg.num_blocks, SpeechNames.DECODER_INPUT,
                             s.cfg.audio_token_id, lambda graph: Speech(graph, s.cfg)))
    return found


def adapters(ckpt: Checkpoint, cfg: DecoderConfig, model_dir: Path) -> list[LoraAdapter]:
    """Inside the shards in the original layout, else PEFT folders vision-lora/ and speech-lora/."""
    return read_phi4mm(ckpt, cfg.raw) or [read_peft(name, model_dir / f"{name}-lora") for name in PHI4MM_ADAPTERS
                                         if (model_dir / f"{name}-lora" / "adapter_config.json").is_file()]


FAMILY = Family("phi4mm", frozenset({"Phi4MMForCausalLM", "Phi4MultimodalForCausalLM"}), encoders, adapters)
