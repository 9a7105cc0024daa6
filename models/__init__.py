"""Model definitions, checkpoint layouts and the embedded tiny Phi-4-multimodal."""
from pathlib import Path

# The shipped default model (`phi4edge demo`, `make demo`): checkpoint/ in the original
# Phi-4-multimodal layout, eval/ held-out sets, samples/ demo inputs, training.json.
EMBEDDED = Path(__file__).resolve().parent / "embedded"
