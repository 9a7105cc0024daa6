"""Running the vision graph: patch positions, attention bias and the HD token layout from a
prepared image, then the encoder + projection in onnxruntime. Runs only for requests with images."""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError
from ..format import VisionNames
from .image import PreparedImage
from .session import load_graph

NEG = np.finfo(np.float32).min   # additive mask value for padded patches (as transformers uses)


def position_ids(patch_mask: np.ndarray) -> np.ndarray:
    """[crops, P] position ids: each crop's valid patches spread over the full position grid
    (fractional coordinates bucketed, as transformers' Phi4MultimodalVisionEmbeddings does)."""
    crops, side, _ = patch_mask.shape
    boundaries = (np.arange(1, side, dtype=np.float64) / side).astype(np.float32)
    out = np.zeros((crops, side * side), np.int64)
    for c in range(crops):
        steps = (np.float32(1.0) / np.float32(patch_mask[c, :, 0].sum()), np.float32(1.0) / np.float32(patch_mask[c, 0, :].sum()))
        coords = [np.minimum(np.arange(side, dtype=np.float32) * s, np.float32(1 - 1e-6)) for s in steps]
        h, w = (np.searchsorted(boundaries, x, side="right") for x in coords)
        out[c] = np.where(patch_mask[c].reshape(-1), (h[:, None] * side + w[None, :]).reshape(-1), 0)
    return out


def token_index(image: PreparedImage) -> np.ndarray:
    """Rows of [pooled features of every crop; sub separator; global separator] in the order the
    model reads them: sub-image features (useful area, a separator ending each row), the global
    separator, then the global image (a separator ending each row)."""
    crops, side = image.patch_mask.shape[0], image.patch_mask.shape[1] // 2
    per_crop = side * side
    sub_sep, glb_sep = crops * per_crop, crops * per_crop + 1
    rows, cols = image.grid
    sub = (np.arange(per_crop, (1 + rows * cols) * per_crop).reshape(rows, cols, side, side)
           .transpose(0, 2, 1, 3).reshape(rows * side, cols * side))
    pooled = np.concatenate([np.concatenate(list(r), axis=1) for r in
                             image.patch_mask[1:, 0::2, 0::2].reshape(rows, cols, side, side)], axis=0)
    sub = sub[:int(pooled[:, 0].sum()), :int(pooled[0, :].sum())]
    with_sep = lambda grid: np.concatenate([grid, np.full((grid.shape[0], 1), sub_sep)], axis=1).reshape(-1)
    glb = np.arange(per_crop).reshape(side, side)
    return np.concatenate([with_sep(sub), [glb_sep], with_sep(glb)]).astype(np.int64)


class VisionEncoder:
    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None):
        if bundle.manifest.vision is None:
            raise BundleError(f"{bundle.path}: this bundle has no vision encoder")
        self.session = load_graph(bundle, "vision", threads, providers)

    def __call__(self, image: PreparedImage) -> np.ndarray:
        """[num_tokens, text_hidden] features for one image."""
        bias = np.where(image.patch_mask.reshape(len(image.patch_mask), 1, 1, -1), 0.0, NEG).astype(np.float32)
        index = token_index(image)
        assert len(index) == image.num_tokens
        return self.session.run([VisionNames.IMAGE_FEATURES], {
            VisionNames.PIXEL_VALUES: image.pixel_values, VisionNames.POSITION_IDS: position_ids(image.patch_mask),
            VisionNames.ATTENTION_BIAS: bias, VisionNames.TOKEN_INDEX: index})[0]
