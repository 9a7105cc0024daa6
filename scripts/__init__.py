"""Tools run from the repository (not shipped in the wheel): the embedded model's training script
and task synthesis, and the byte-level BPE builder for tiny and synthetic checkpoints."""
