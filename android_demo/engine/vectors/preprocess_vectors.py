"""Test vectors for the Kotlin engine's preprocessing (ImageProcessor.kt, AudioFeatures.kt, Wav.kt):
inputs and the Python runtime's own outputs for them.

    .venv/bin/python android_demo/engine/vectors/preprocess_vectors.py build/android-test

writes OUTDIR/preprocess/: PNG images and 16 kHz WAV files, the outputs of phi4edge.runtime.image
and phi4edge.runtime.audio as raw little-endian files (.f32 float32, .u8 bool/uint8), and
index.json describing them (shapes, grids, token counts, messages). PreprocessTest.kt reads them.
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from phi4edge.runtime import audio as raudio
from phi4edge.runtime import image as rimage

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "models" / "embedded" / "samples"


def settings_json(s: rimage.ImageSettings) -> dict:
    return {"crop_size": s.crop_size, "patch_size": s.patch_size, "dynamic_hd": s.dynamic_hd,
            "mean": s.mean, "std": s.std}


def synthetic(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients and rings with a block of 8-bit noise: edges, flats and every level."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / max(width, 1) * 7.0 + y / max(height, 1) * 3.0)
    g = 127.5 + 127.5 * np.cos(np.hypot(x - width / 3, y - height / 2) / 9.0)
    b = (x * 3 + y * 5) % 256
    rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
    bh, bw = max(1, height // 4), max(1, width // 4)
    rgb[height // 3:height // 3 + bh, width // 2:width // 2 + bw] = rng.integers(0, 256, (bh, bw, 3), np.uint8)
    rgb[:max(1, height // 8), :max(1, width // 8)] = 255 * (rng.integers(0, 2, (max(1, height // 8), max(1, width // 8), 1)))
    return Image.fromarray(rgb, "RGB")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data: refused from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def write_images(out: Path, index: dict) -> None:
    default = rimage.ImageSettings()
    small = rimage.ImageSettings(dynamic_hd=4)
    cases = [
        ("small_upscale", synthetic(123, 77, 1), default),      # 1x1 grid, upscaled, bottom padding
        ("tiny", synthetic(3, 2, 2), default),                  # 3x2 pixels to 448x298
        ("exact_crop", synthetic(448, 448, 3), default),        # same size: Pillow copies
        ("horizontal_only", synthetic(447, 100, 4), default),   # only the width changes
        ("vertical_only", synthetic(100, 447, 5), default),     # only the height changes
        ("wide", synthetic(1500, 200, 6), default),             # 4x1 grid, masked bottom rows
        ("tall", synthetic(150, 1300, 7), default),             # 1x3 grid, masked right columns
        ("big_downscale", synthetic(4000, 3000, 8), default),   # 9x7 > 36 crops: aspect search, 4x3, shrunk 0.448
        ("search_tall", synthetic(30, 3500, 9), small),         # more than 100:1, shrunk vertically
        ("search_wide", synthetic(3500, 30, 10), small),
        ("search_tie", synthetic(1000, 1000, 11), small),       # (1,1) and (2,2) tie: the larger grid
        ("crop224", synthetic(700, 500, 12), rimage.ImageSettings(crop_size=224, patch_size=16, dynamic_hd=12)),
        ("shape_jpg", rimage.load_image(SAMPLES / "shape.jpg"), default),
    ]
    entries = []
    for name, img, s in cases:
        png = f"{name}.png"
        img.save(out / png)
        img = rimage.load_image(out / png)   # what the Kotlin test decodes
        p = rimage.preprocess(img, s)
        p.pixel_values.astype("<f4").tofile(out / f"{name}.pixels.f32")
        p.patch_mask.astype(np.uint8).tofile(out / f"{name}.mask.u8")
        entries.append({"name": name, "png": png, "width": img.width, "height": img.height,
                        "settings": settings_json(s), "rows": p.grid[0], "cols": p.grid[1],
                        "crops": int(p.pixel_values.shape[0]), "num_tokens": p.num_tokens,
                        "pixels": f"{name}.pixels.f32", "mask": f"{name}.mask.u8",
                        "pixel_shape": list(p.pixel_values.shape), "mask_shape": list(p.patch_mask.shape)})
    index["images"] = entries

    # crop grids alone, for many sizes and settings (no pixels)
    rng = np.random.default_rng(0)
    grids = []
    for s in (default, small, rimage.ImageSettings(dynamic_hd=1), rimage.ImageSettings(dynamic_hd=12),
              rimage.ImageSettings(crop_size=224, patch_size=16, dynamic_hd=9)):
        sizes = [(int(w), int(h)) for w, h in np.exp(rng.uniform(0, np.log(12000), (400, 2))).astype(int) + 1]
        sizes += [(s.crop_size * a, s.crop_size * b) for a in range(1, 8) for b in range(1, 8)]
        sizes += [(5200, 4800), (4800, 5200), (2689, 2689), (2688, 2688), (20000, 200), (3000, 1000)]
        for w, h in sizes:
            cols, rows = rimage.crop_grid(w, h, s)
            grids.append({"width": w, "height": h, "settings": settings_json(s), "cols": cols, "rows": rows})
    index["grids"] = grids

    errors = []
    for w, h, s in [(5, 2000, default), (2000, 5, default), (15, 30000, default), (16, 9000, small)]:
        try:
            rimage.preprocess(Image.new("RGB", (w, h)), s)
            raise AssertionError(f"{w}x{h} was accepted")
        except rimage.ImageError as e:
            errors.append({"width": w, "height": h, "settings": settings_json(s), "message": str(e)})
    index["image_errors"] = errors

    limits = []
    for w, h in [(8001, 8001), (9000, 9000), (64001, 1000), (100000, 645)]:
        try:
            rimage.load_image(png_header(w, h))
            raise AssertionError(f"{w}x{h} was accepted")
        except rimage.ImageError as e:
            limits.append({"width": w, "height": h, "name": "<bytes>", "message": str(e)})
    index["pixel_limits"] = limits

    # Pillow's resize as image.preprocess calls it, alone, over sizes preprocess rarely reaches: the
    # pass order (vertical first when the height loses more than twice the pixels the width does)
    src = synthetic(97, 301, 13)
    src.save(out / "resize_src.png")
    resizes = []
    for w, h in [(90, 287), (90, 286), (50, 200), (120, 150), (200, 400), (30, 20), (97, 100), (40, 301),
                 (1, 1), (500, 3), (96, 298), (96, 299), (300, 7)]:
        raw = f"resize_{w}x{h}.u8"
        np.asarray(src.resize((w, h), Image.Resampling.BILINEAR), np.uint8).tofile(out / raw)
        resizes.append({"width": w, "height": h, "rgb": raw})
    index["resize"] = {"png": "resize_src.png", "sizes": resizes}


def speechy(seconds: float, channels: int, seed: int) -> np.ndarray:
    """Chirps, a vowel-like buzz, noise and silence; channels differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    out = []
    for c in range(channels):
        chirp = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t * (1 + c)) * t)
        buzz = 0.2 * np.sign(np.sin(2 * np.pi * (110 + 20 * c) * t)) * (t > seconds / 2)
        noise = 0.05 * rng.standard_normal(len(t))
        x = (chirp + buzz + noise) * (np.abs(np.sin(np.pi * t * 1.5)) > 0.2)
        out.append(np.clip(x, -0.99, 0.99))
    return np.stack(out, axis=1).astype(np.float32)


def write_audio(out: Path, index: dict) -> None:
    cases = [
        ("pcm16_mono", speechy(1.5, 1, 1), "WAV", "PCM_16"),
        ("pcm16_stereo", speechy(1.25, 2, 2), "WAV", "PCM_16"),
        ("float_mono", speechy(1.0, 1, 3), "WAV", "FLOAT"),
        ("float_stereo", speechy(0.8, 2, 4), "WAV", "FLOAT"),
        ("pcm8_mono", speechy(0.5, 1, 5), "WAV", "PCM_U8"),
        ("pcm24_stereo", speechy(0.5, 2, 6), "WAV", "PCM_24"),
        ("pcm32_mono", speechy(0.5, 1, 7), "WAV", "PCM_32"),
        ("double_mono", speechy(0.3, 1, 8), "WAV", "DOUBLE"),
        ("wavex_3ch_pcm24", speechy(0.4, 3, 9), "WAVEX", "PCM_24"),
        ("wavex_10ch_float", speechy(0.1, 10, 10), "WAVEX", "FLOAT"),
        ("one_frame", speechy(400 / 16000, 1, 11), "WAV", "PCM_16"),
    ]
    speech = raudio.load_audio(SAMPLES / "speech.ogg")   # 44.1 kHz Vorbis, resampled by the runtime
    cases.append(("speech_ogg", speech[:, None], "WAV", "FLOAT"))
    entries = []
    for name, data, fmt, subtype in cases:
        wav = f"{name}.wav"
        soundfile.write(out / wav, data, 16000, subtype=subtype, format=fmt)
        wave = raudio.load_audio(out / wav)
        mel = raudio.log_mel(wave)
        wave.astype("<f4").tofile(out / f"{name}.wave.f32")
        mel.astype("<f4").tofile(out / f"{name}.mel.f32")
        entries.append({"name": name, "wav": wav, "channels": int(data.shape[1]), "subtype": subtype,
                        "format": fmt, "samples": len(wave), "wave": f"{name}.wave.f32",
                        "frames": int(mel.shape[0]), "n_mels": int(mel.shape[1]), "mel": f"{name}.mel.f32",
                        "num_tokens": raudio.PreparedAudio(mel).num_tokens})
    index["audio"] = entries

    errors = []
    for samples in (0, 8, 24, 399):
        try:
            raudio.log_mel(np.zeros(samples, np.float32))
            raise AssertionError(f"{samples} samples were accepted")
        except raudio.AudioError as e:
            errors.append({"samples": samples, "message": str(e)})
    index["audio_errors"] = errors
    index["audio_tokens"] = [{"frames": f, "num_tokens": raudio.num_audio_tokens(f)} for f in range(0, 40)]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: preprocess_vectors.py OUTDIR")
    out = Path(sys.argv[1]) / "preprocess"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    index: dict = {"pillow": Image.__version__, "numpy": np.__version__, "soundfile": soundfile.__version__}
    write_images(out, index)
    write_audio(out, index)
    (out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(index['images'])} images, {len(index['audio'])} audio files to {out}")


if __name__ == "__main__":
    main()
