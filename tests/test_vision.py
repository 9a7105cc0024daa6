"""Vision against transformers' Phi4MultimodalForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phi4edge.export import export_model
from phi4edge.runtime.bundle import open_bundle
from phi4edge.runtime.image import PreparedImage, preprocess
from phi4edge.runtime.vision import VisionEncoder, token_index

from .checkpoints import make_phi4mm

SIZES = [(448, 448), (500, 300), (900, 1300), (2000, 450)]


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    from transformers import Phi4MultimodalForCausalLM
    root = tmp_path_factory.mktemp("phi4mm")
    ck = make_phi4mm(root / "native")
    bundle = export_model(ck, root / "fp32", precision="fp32", show_progress=False)
    # eager attention: transformers 5.23 marks the SigLIP attention is_causal=True, so under SDPA an
    # unpadded crop (no mask) gets causal attention; SigLIP, and the original model, are bidirectional
    ref = Phi4MultimodalForCausalLM.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    return ck, bundle, ref


def reference_features(ref, inputs) -> np.ndarray:
    n = int(inputs["num_img_tokens"][0])
    ids = torch.full((1, n), ref.config.vision_config.image_token_id)
    with torch.no_grad():
        out = ref.model.embed_tokens_extend.image_embed(
            ids, torch.zeros(1, n, ref.config.hidden_size), image_pixel_values=inputs["image_pixel_values"],
            image_sizes=inputs["image_sizes"], image_attention_mask=inputs["image_attention_mask"])
    return out[0].numpy()


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_image_features_match_transformers(size, mm):
    """Same pixels in: the vision graph's features equal transformers' image embedding."""
    from transformers import Phi4MultimodalImageProcessor
    _, bundle, ref = mm
    w, h = size
    image = Image.fromarray(np.random.default_rng(w + h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    inputs = Phi4MultimodalImageProcessor()(image, return_tensors="pt")
    ours = preprocess(image)
    same_pixels = PreparedImage(inputs["image_pixel_values"][0].numpy(), inputs["image_attention_mask"][0].numpy() > 0,
                                ours.grid, ours.num_tokens)
    expected = reference_features(ref, inputs)
    got = VisionEncoder(open_bundle(bundle))(same_pixels)
    assert got.shape == expected.shape == (ours.num_tokens, ref.config.hidden_size)
    err = np.abs(got - expected).max() / max(1.0, np.abs(expected).max())
    assert err < 1e-4, f"relative error {err:.2e}"
    print(f"{w}x{h}: {ours.num_tokens} image tokens, max relative feature error {err:.1e}")
