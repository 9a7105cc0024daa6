"""Image preprocessing against transformers' Phi4MultimodalImageProcessor (run unchanged over the
torchvision stand-in, see tests/torchvision_standin.py), and bad images."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from phi4edge.runtime.image import ImageError, load_image, preprocess

LEVEL = 2 / 255   # one uint8 step after rescale and normalise (mean = std = 0.5)
SIZES = [(448, 448), (500, 300), (333, 777), (1000, 2000), (2000, 450), (640, 480), (1, 1), (20000, 20),
         (3000, 900), (449, 449), (896, 447), (100, 4000)]


@pytest.fixture(scope="module")
def reference():
    from transformers import Phi4MultimodalImageProcessor
    return Phi4MultimodalImageProcessor()


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_matches_transformers_processor(size, reference):
    w, h = size
    image = Image.fromarray(np.random.default_rng(w * 7 + h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    ref = reference(image, return_tensors="np")
    ours = preprocess(image)
    pixels, mask = ref["image_pixel_values"][0], ref["image_attention_mask"][0].astype(bool)
    assert ours.num_tokens == ref["num_img_tokens"][0]
    assert ours.pixel_values.shape == pixels.shape and ours.patch_mask.shape == mask.shape
    assert np.array_equal(ours.patch_mask, mask)
    rows, cols = ours.grid
    assert [rows * 448, cols * 448] == ref["image_sizes"][0].tolist()
    # Pillow's antialiased bilinear and torch's fixed-point uint8 version round a few half-way
    # pixels differently: at most a level or two, on under 3% of pixels.
    levels = np.abs(ours.pixel_values - pixels) / LEVEL
    assert levels.max() <= 2.01 and (levels > 0.5).mean() < 0.03, (levels.max(), (levels > 0.5).mean())
    print(f"{w}x{h}: {ours.num_tokens} tokens, grid {rows}x{cols}, {(levels > 0.5).mean():.2%} of pixels "
          f"off by one level, max {levels.max():.0f}")


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_modes_are_converted_like_transformers(reference):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (60, 90), dtype=np.uint8)
    cases = {
        "RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "L": Image.fromarray(rgb[..., 0], "L"),
        "P": Image.fromarray(rgb).convert("P"),
        "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
    }
    for mode, image in cases.items():
        loaded = load_image(_png(image))
        assert loaded.mode == "RGB" and loaded.size == (90, 60)
        ref = reference(image, return_tensors="np")["image_pixel_values"][0]
        assert np.abs(preprocess(loaded).pixel_values - ref).max() <= 2.01 * LEVEL, mode


def test_sixteen_bit_and_exif_rotation():
    grey16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
    source = Image.fromarray(grey16)
    assert source.mode == "I;16"
    loaded = load_image(_png(source))
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    assert np.asarray(loaded)[-1, -1, 0] == round(grey16[-1, -1] / 65535 * 255)
    image = Image.fromarray(np.zeros((20, 50, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 degrees on display
    rotated = load_image(_png(image, format="JPEG", exif=exif.tobytes()))
    assert rotated.size == (20, 50)


@pytest.mark.parametrize("data,match", [
    (b"", "not a readable image"),
    (b"this is not an image at all", "not a readable image"),
    (_png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))[:3000],
     "not a readable image"),   # truncated file
])
def test_bad_files_give_clear_errors(data, match):
    with pytest.raises(ImageError, match=match):
        load_image(data)


def test_missing_file_and_extreme_aspect_ratio(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="too extreme an aspect ratio"):
        preprocess(Image.new("RGB", (20000, 5)))


def test_huge_images_are_refused_from_the_header_or_decoded_small():
    """Past MAX_PIXELS a PNG is refused before decoding; a JPEG is decoded at a reduced scale."""
    from phi4edge.runtime import image as image_mod
    with pytest.raises(image_mod.ImageError, match="9000x8000 is 72 megapixels; phi4edge takes at most 64"):
        load_image(_png(Image.new("RGB", (9000, 8000), (200, 10, 10))))
    buf = io.BytesIO()
    Image.new("RGB", (9000, 8000), (200, 10, 10)).save(buf, "JPEG")
    loaded = load_image(buf.getvalue())
    assert loaded.size == (4500, 4000)
