"""A stand-in for the few torchvision functions transformers' Phi4MultimodalImageProcessor calls.

No CPU build of torchvision exists here (PyPI's wheels link libtorch_cuda), yet the processor is
the reference our numpy preprocessing must match. So the processor's own code runs unchanged, and
only its image primitives come from here, each doing what torchvision 0.28 does on CPU tensors:
the same torch kernels with the same arguments (resize = interpolate with align_corners=False and
its antialias flag, uint8 bilinear natively, other uint8 cases through float32 and rounding).
"""
from __future__ import annotations

import enum
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import interpolate


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def resize(image: torch.Tensor, size, interpolation=InterpolationMode.BILINEAR, antialias=True, max_size=None):
    interpolation = InterpolationMode(interpolation) if not isinstance(interpolation, InterpolationMode) else interpolation
    if interpolation not in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC):
        raise NotImplementedError(f"stand-in resize: {interpolation}")
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[-2:] == (h, w):
        return image
    shape, dtype = image.shape, image.dtype
    batch = image.reshape(-1, *shape[-3:])
    native = dtype == torch.float32 or (dtype == torch.uint8 and interpolation == InterpolationMode.BILINEAR)
    x = batch if native else batch.to(torch.float32)
    out = interpolate(x, size=[h, w], mode=interpolation.value, align_corners=False, antialias=bool(antialias))
    if not native and dtype == torch.uint8:
        out = out.clamp_(0, 255).round_().to(dtype)
    return out.reshape(*shape[:-2], h, w)


def pad(image: torch.Tensor, padding, fill=0, padding_mode="constant"):
    left, top, right, bottom = padding if len(padding) == 4 else (padding[0], padding[1], padding[0], padding[1])
    if padding_mode != "constant":
        raise NotImplementedError(padding_mode)
    fills = fill if isinstance(fill, (list, tuple)) else [fill] * image.shape[-3]
    out = torch.empty(*image.shape[:-2], image.shape[-2] + top + bottom, image.shape[-1] + left + right, dtype=image.dtype)
    for c, value in enumerate(fills):
        out[..., c, :, :] = value
    out[..., top:top + image.shape[-2], left:left + image.shape[-1]] = image
    return out


def to_dtype(image: torch.Tensor, dtype=torch.float32, scale=False):
    if not scale or image.dtype == dtype:
        return image.to(dtype)
    if image.dtype == torch.uint8 and dtype.is_floating_point:
        return image.to(dtype) / 255
    if image.is_floating_point() and dtype == torch.uint8:
        return (image * 255).round().clamp(0, 255).to(dtype)
    raise NotImplementedError(f"to_dtype {image.dtype} -> {dtype}")


def normalize(image: torch.Tensor, mean, std, inplace=False):
    mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image.clone() if not inplace else image).sub_(mean).div_(std)


def grayscale_to_rgb(image: torch.Tensor):
    return image if image.shape[-3] == 3 else image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()


def crop(image: torch.Tensor, top: int, left: int, height: int, width: int):
    return image[..., top:top + height, left:left + width]


def pil_to_tensor(pic):
    arr = np.array(pic, copy=True)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def install() -> None:
    """Put the stand-in on sys.path as package `torchvision` (with metadata, so transformers counts
    it as installed). Must run before transformers is imported."""
    if "torchvision" in sys.modules:
        return
    root = Path(tempfile.mkdtemp(prefix="torchvision-standin-"))
    dist = root / "torchvision-0.28.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    (root / "torchvision").mkdir()
    (root / "torchvision" / "__init__.py").write_text(
        "from tests.torchvision_standin import _build\n_build(__name__)\n__version__ = '0.28.0'\n")
    sys.path.append(str(root))


def _build(package: str) -> None:
    """Fill the stand-in package's submodules."""
    functional = types.ModuleType(f"{package}.transforms.v2.functional")
    for fn in (resize, pad, to_dtype, normalize, grayscale_to_rgb, crop, pil_to_tensor):
        setattr(functional, fn.__name__, fn)
    functional.InterpolationMode = InterpolationMode
    transforms = types.ModuleType(f"{package}.transforms")
    transforms.InterpolationMode = InterpolationMode
    transforms.functional = types.ModuleType(f"{package}.transforms.functional")
    transforms.functional.pil_to_tensor = pil_to_tensor
    transforms.functional.InterpolationMode = InterpolationMode
    v2 = types.ModuleType(f"{package}.transforms.v2")
    v2.functional = functional
    transforms.v2 = v2
    io = types.ModuleType(f"{package}.io")
    for name, module in ((f"{package}.transforms", transforms), (f"{package}.transforms.v2", v2),
                         (f"{package}.transforms.v2.functional", functional),
                         (f"{package}.transforms.functional", transforms.functional), (f"{package}.io", io)):
        sys.modules[name] = module
    parent = sys.modules[package]
    parent.transforms, parent.io = transforms, io
