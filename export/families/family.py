"""What describes a model family (see export/families/__init__.py)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from ...format import Speech, Vision
from ...models.checkpoint import Checkpoint
from ...models.config import DecoderConfig
from ...models.lora import LoraAdapter


@dataclass(frozen=True)
class Encoder:
    """One encoder graph: written to KIND.onnx, its features fed to the decoder's `media_input`."""

    kind: str                                       # "vision" or "speech": graph file and manifest section
    weights: object                                 # the layout reader its builder takes
    builder: Callable                               # (graph, weights, quant) -> object with .build(progress)
    layers: int                                     # for progress
    media_input: str                                # decoder input name
    token_id: int                                   # placeholder token id of its features in prompts
    entry: Callable[[str], Vision | Speech]          # graph file name -> manifest section


@dataclass(frozen=True)
class Family:
    name: str
    architectures: frozenset[str]
    encoders: Callable[[Checkpoint, DecoderConfig, Tokenizer, Path], list[Encoder]] = lambda *_: []
    adapters: Callable[[Checkpoint, DecoderConfig, Path], list[LoraAdapter]] = lambda *_: []
