"""Model families: each maps its architectures to the weight layout, the graphs to write beyond
the Phi-3 decoder (encoders) and the adapters its checkpoints carry. Adding a family (say
Phi-3.5-vision) is one new module here and one entry in FAMILIES; the exporter has no if-chain."""
from __future__ import annotations

from ...errors import CheckpointError
from ...models.config import DecoderConfig
from . import phi3, phi4mm
from .family import Encoder, Family

FAMILIES = (phi3.FAMILY, phi4mm.FAMILY)


def family_for(cfg: DecoderConfig) -> Family:
    for family in FAMILIES:
        if cfg.architecture in family.architectures:
            return family
    known = sorted(a for f in FAMILIES for a in f.architectures)
    raise CheckpointError(f"architecture {cfg.architecture!r} has no exporter; phi4edge exports {known}")


__all__ = ["FAMILIES", "Encoder", "Family", "family_for"]
