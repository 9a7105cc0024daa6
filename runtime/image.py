"""Image preprocessing for Phi-4-multimodal with numpy and Pillow (no torch): the dynamic-HD crop
grid, resize, white padding, global image, normalisation, patch masks and the token count,
matching transformers' Phi4MultimodalImageProcessor."""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import Phi4EdgeError
from ..format import DYNAMIC_HD

# Images are checked from their header, before any pixel is decoded. A 64 MP image decodes to at
# most 256 MB (RGBA) and its conversions stay under 1 GB RSS (tests/test_hostile.py measures it);
# JPEGs beyond it are decoded at reduced size, everything else beyond it is refused. No prompt
# needs more: dynamic HD uses at most 36 crops of 448x448 (7.2 MP).
MAX_PIXELS = 64_000_000


class ImageError(Phi4EdgeError):
    """An input image that cannot be used."""


@dataclass(frozen=True)
class ImageSettings:
    crop_size: int = 448
    patch_size: int = 14
    dynamic_hd: int = DYNAMIC_HD
    mean: float = 0.5
    std: float = 0.5

    @property
    def mask_size(self) -> int:
        return self.crop_size // self.patch_size


@dataclass
class PreparedImage:
    pixel_values: np.ndarray     # [1 + crops, 3, crop, crop] float32: the global image, then the crops
    patch_mask: np.ndarray       # [1 + crops, mask, mask] bool: patches that hold image, not padding
    grid: tuple[int, int]        # crops (rows, columns)
    num_tokens: int              # placeholder tokens this image takes in the prompt


def load_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open an image (or take a PIL one) as 8-bit RGB: EXIF rotation applied, alpha composited on
    white, 16-bit and palette images converted. Larger than MAX_PIXELS: refused from the header
    (JPEGs are first decoded at the reduced size that fits, if there is one)."""
    name = "<bytes>" if isinstance(source, bytes) else "<image>" if isinstance(source, Image.Image) else str(source)
    try:
        with warnings.catch_warnings():   # Pillow warns past 89 MP; the check below refuses past 64
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = source if isinstance(source, Image.Image) else \
                Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > MAX_PIXELS and image.format == "JPEG":
            factor = math.ceil(math.sqrt(image.width * image.height / MAX_PIXELS))
            image.draft("RGB", (image.width // factor, image.height // factor))   # decode at 1/2, 1/4 or 1/8
        if image.width * image.height > MAX_PIXELS:
            raise ImageError(f"{name}: {image.width}x{image.height} is {image.width * image.height / 1e6:.0f} "
                             f"megapixels; phi4edge takes at most {MAX_PIXELS / 1e6:.0f} (downscale it first)")
        image.load()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError,
            EOFError, MemoryError) as e:
        raise ImageError(f"{name}: not a readable image ({e})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):   # 16/32-bit grey: scale to 8 bits, in float32
        arr = np.asarray(image).astype(np.float32)          # in place from here: 62 MP peaked at 0.78 GB
        np.nan_to_num(arr, copy=False)                      # with copies (1.4 GB with float64 before)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr *= 255 / peak
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        image = Image.fromarray(arr.astype(np.uint8))
        del arr
    if image.mode != "RGB" and "A" not in image.getbands() and "transparency" not in image.info:
        image = image.convert("RGB")   # nothing to composite: one conversion, not three
    if image.mode != "RGB":   # as transformers' convert_to_rgb: composite on white
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255)), rgba).convert("RGB")
    return image


def crop_grid(width: int, height: int, s: ImageSettings) -> tuple[int, int]:
    """(columns, rows) of crops: enough to cover the image, or the closest aspect ratio allowed."""
    cols, rows = math.ceil(width / s.crop_size), math.ceil(height / s.crop_size)
    if cols * rows <= s.dynamic_hd:
        return cols, rows
    aspect = width / height
    ratios = sorted({(i, j) for n in range(1, s.dynamic_hd + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if i * j <= s.dynamic_hd}, key=lambda r: r[0] * r[1])
    best, best_diff = (1, 1), float("inf")
    for ratio in ratios:   # ties go to the larger grid when the image is big enough to use it
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and width * height > 0.5 * s.crop_size ** 2 * ratio[0] * ratio[1]:
            best = ratio
    return best


def _cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of bicubic interpolation (a = -0.75, half-pixel centres, edge clamped),
    without antialiasing: the kernel PyTorch's interpolate(mode="bicubic") applies."""
    a = -0.75
    scale = in_size / out_size
    x = (np.arange(out_size) + 0.5) * scale - 0.5
    base = np.floor(x).astype(np.int64)
    t = x - base
    w = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                  ((a + 2) * t - (a + 3)) * t * t + 1,
                  ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                  ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a], axis=1)
    m = np.zeros((out_size, in_size))
    for k in range(4):
        np.add.at(m, (np.arange(out_size), np.clip(base - 1 + k, 0, in_size - 1)), w[:, k])
    return m


def resize_bicubic(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Separable bicubic resize of a float [C, H, W] array (no antialiasing)."""
    rows, cols = _cubic_weights(chw.shape[1], height), _cubic_weights(chw.shape[2], width)
    return ((rows @ chw.astype(np.float64)) @ cols.T).astype(np.float32)   # along H, then along W


def preprocess(image: Image.Image, s: ImageSettings = ImageSettings()) -> PreparedImage:
    width, height = image.size
    cols, rows = crop_grid(width, height, s)
    target_w, target_h = s.crop_size * cols, s.crop_size * rows
    if target_w / width < target_h / height:
        new_w, new_h = target_w, int(height * target_w / width)
    else:
        new_w, new_h = int(width * target_h / height), target_h
    if min(new_w, new_h) < 10:
        raise ImageError(f"image of {width}x{height} is too extreme an aspect ratio: it would be "
                         f"{new_w}x{new_h} pixels inside a {cols}x{rows} crop grid")
    # Pillow's bilinear resize antialiases when shrinking: the same filter as torchvision's
    # antialiased uint8 resize (which was ported from Pillow-SIMD).
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    canvas = np.full((target_h, target_w, 3), 255, np.uint8)
    canvas[:new_h, :new_w] = resized
    pixels = ((canvas.astype(np.float32) / 255 - s.mean) / s.std).transpose(2, 0, 1)

    mask = np.ones((s.mask_size * rows, s.mask_size * cols), bool)
    pad_w, pad_h = target_w - new_w, target_h - new_h
    if pad_w >= s.patch_size:
        mask[:, mask.shape[1] - pad_w // s.patch_size:] = False
    if pad_h >= s.patch_size:
        mask[mask.shape[0] - pad_h // s.patch_size:, :] = False

    c = s.crop_size
    crops = pixels.reshape(3, rows, c, cols, c).transpose(1, 3, 0, 2, 4).reshape(-1, 3, c, c)
    crop_masks = mask.reshape(rows, s.mask_size, cols, s.mask_size).transpose(0, 2, 1, 3).reshape(-1, s.mask_size, s.mask_size)
    glob = resize_bicubic(pixels, c, c)[None]
    # tokens: the global image's 16x16 features with a separator per row (16x17), one separator
    # between, and the sub-image features of the useful (unpadded) area with a separator per row
    pooled = mask[0::2, 0::2]
    useful_rows, useful_cols = int(pooled[:, 0].sum()), int(pooled[0].sum())
    side = (s.mask_size + 1) // 2
    num_tokens = side * (side + 1) + 1 + useful_rows * (useful_cols + 1)
    return PreparedImage(np.concatenate([glob, crops]).astype(np.float32),
                         np.concatenate([np.ones((1, s.mask_size, s.mask_size), bool), crop_masks]),
                         (rows, cols), num_tokens)
