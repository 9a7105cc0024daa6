"""Vision against transformers' Phi4MultimodalForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phi4edge.bundle import open_bundle
from phi4edge.export import export_model
from phi4edge.runtime.image import PreparedImage, preprocess
from phi4edge.runtime.vision import VisionEncoder

from .compare import assert_greedy_matches, hf_greedy, int4_vs_fp32

SIZES = [(448, 448), (500, 300), (900, 1300), (2000, 450)]


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


def test_image_prompt_greedy_matches_transformers_with_vision_adapter(mm_with_adapters):
    from transformers import Phi4MultimodalImageProcessor

    from phi4edge import load
    pm, bundle = mm_with_adapters
    model = load(bundle)
    assert model.adapters == ["speech", "vision"]
    for size in [(448, 448), (700, 500)]:
        image = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        inputs = Phi4MultimodalImageProcessor()(image, return_tensors="pt")
        ours = preprocess(image)
        same = PreparedImage(inputs["image_pixel_values"][0].numpy(), inputs["image_attention_mask"][0].numpy() > 0,
                             ours.grid, ours.num_tokens)
        prompt = "<|image_1|>What is in this picture?"
        result = model.generate(prompt, images=[same], max_new_tokens=10)
        assert result.adapter == "vision"
        ids = result.prompt_token_ids
        assert ids.count(7) == ours.num_tokens
        pm.set_adapter("vision")
        assert_greedy_matches(result.token_ids, *hf_greedy(
            pm, ids, 10, image_pixel_values=inputs["image_pixel_values"], image_sizes=inputs["image_sizes"],
            image_attention_mask=inputs["image_attention_mask"]))
    text = model.generate("What is in this picture?", max_new_tokens=10)
    assert text.adapter is None
    with pm.disable_adapter():
        assert_greedy_matches(text.token_ids, *hf_greedy(pm, text.prompt_token_ids, 10))


def test_placeholders_are_checked_and_inserted(mm_with_adapters):
    from phi4edge import load
    from phi4edge.errors import RequestError
    _, bundle = mm_with_adapters
    model = load(bundle)
    img = Image.new("RGB", (300, 200), (200, 30, 30))
    prepared = [model.prepare_image(img), model.prepare_image(img)]
    two = model.encode("Compare <|image_1|> and <|image_2|>.", images=prepared)
    assert two.count(7) == 2 * prepared[0].num_tokens
    auto = model.encode("Compare them.", images=prepared)   # no placeholders: both go before the text
    assert auto.count(7) == two.count(7)
    with pytest.raises(RequestError, match=r"<\|image_3\|> but 2 images were given"):
        model.encode("<|image_1|> vs <|image_3|>", images=prepared)


def test_int4_bundle_answers_an_image_prompt(mm_with_adapters, tmp_path):
    """int4 (decoder, vision encoder and projection) against fp32 on the same image prompts."""
    from phi4edge import load
    pm, fp32_bundle = mm_with_adapters
    ck = fp32_bundle.parent / "native"
    int4 = load(export_model(ck, tmp_path / "int4", show_progress=False))
    fp32 = load(fp32_bundle)
    prepared = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        image = Image.fromarray(rng.integers(0, 256, (int(rng.integers(200, 900)), int(rng.integers(200, 900)), 3),
                                            dtype=np.uint8))
        prepared.append(fp32.prepare_image(image))
    agree, feature_err = int4_vs_fp32(fp32, int4, prepared, lambda m, p: m.image_features([p]),
                                      "<|image_1|>What is in this picture?", "images")
    print(f"\nint4 vs fp32 image prompts: first-token agreement {agree:.0%} over {len(prepared)} images, "
          f"mean relative image-feature error {feature_err:.3f}")
    # ~8.6% weight error per int4 matmul compounds through this random tower's ~14 matmuls; the
    # bound only catches a broken quantised graph (a wrong layout gives errors near or above 1)
    assert feature_err < 0.35
    result = int4.generate("<|image_1|>What is in this picture?", images=[image], max_new_tokens=5)
    assert result.adapter == "vision" and len(result.token_ids) >= 1


def test_cli_image_option(mm_with_adapters, tmp_path):
    import json

    from click.testing import CliRunner

    from phi4edge.cli import main
    _, bundle = mm_with_adapters
    path = tmp_path / "photo.png"
    Image.new("RGB", (500, 300), (10, 200, 40)).save(path)
    result = CliRunner().invoke(main, ["run", str(bundle), "--image", str(path), "--image", str(path), "--json",
                                       "--prompt", "<|image_1|> or <|image_2|>?", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["adapter"] == "vision" and out["prompt_token_ids"].count(7) == 2 * 721
    assert out["timings"]["image_encode_ms"] > 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    result = CliRunner().invoke(main, ["run", str(bundle), "--image", str(bad), "--prompt", "hi"])
    assert result.exit_code != 0 and "bad.png: not a readable image" in result.output and "Traceback" not in result.output


def test_original_layout_checkpoint_gives_the_same_bundle_behaviour(mm_with_adapters, tmp_path):
    """The remote-code layout (renamed keys, LoRAs in the shards, no vision/audio config) exports to a
    bundle that answers image, text and audio prompts exactly as the transformers-layout export does."""
    from phi4edge import load

    from .checkpoints import to_original_layout
    pm, native_bundle = mm_with_adapters
    original = to_original_layout(native_bundle.parent / "native", pm, tmp_path / "original")
    bundle = export_model(original, tmp_path / "b", precision="fp32", show_progress=False)
    a, b = load(native_bundle), load(bundle)
    assert b.adapters == ["speech", "vision"] and b.image_token_id == a.image_token_id == 7
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (380, 620, 3), dtype=np.uint8))
    prepared = a.prepare_image(image)
    assert np.abs(a.image_features([prepared]) - b.image_features([prepared])).max() < 1e-5
    wave = np.sin(np.arange(24000) / 16000 * 2 * np.pi * 330).astype(np.float32) * 0.3
    assert np.abs(a.audio_features([a.prepare_audio(wave)], False) -
                  b.audio_features([b.prepare_audio(wave)], False)).max() < 1e-5
    for prompt, images, audios in (("<|image_1|>What is in this picture?", [prepared], []), ("Count from two.", [], []),
                                   ("<|audio_1|>Transcribe the audio.", [], [wave])):
        assert a.generate(prompt, images=images, audios=audios, max_new_tokens=8).token_ids == \
            b.generate(prompt, images=images, audios=audios, max_new_tokens=8).token_ids


def test_crop_limit_comes_from_the_preprocessor_config(mm_with_adapters, tmp_path):
    import json
    import shutil

    from phi4edge import load
    _, bundle = mm_with_adapters
    ck = tmp_path / "ck"
    shutil.copytree(bundle.parent / "native", ck)
    (ck / "preprocessor_config.json").write_text(json.dumps({"dynamic_hd": 4}))
    model = load(export_model(ck, tmp_path / "b", precision="fp32", show_progress=False))
    assert model.bundle.manifest.vision.dynamic_hd == 4
    assert model.prepare_image(Image.new("RGB", (4000, 1000))).grid == (1, 4)   # 36 would allow 9x2
