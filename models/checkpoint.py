"""Lazy, tensor-by-tensor reading of single or sharded safetensors checkpoints.

Tensors are converted to float32 one at a time, so the caller decides how much is resident (export
never holds more than one tensor, or one slice of one). Each read opens its shard and closes it
again: safetensors memory-maps a shard while it is open, and pages read through a long-lived
mapping stay resident, which would add the whole checkpoint (7.7 GB for Phi-4-mini) to the peak.
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes  # noqa: F401  registers numpy's bfloat16 so safetensors can return bf16 arrays
import numpy as np
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class Checkpoint:
    """Every tensor of a checkpoint folder (or of one .safetensors file), read on demand."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.dir: Path = path.parent if path.suffix == ".safetensors" else path
        self._file: str | None = path.name if path.suffix == ".safetensors" else None
        self._where = self._weight_map()
        self._shapes: dict[str, tuple[int, ...]] = {}
        for shard in sorted(set(self._where.values())):
            path = self.dir / shard
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in {INDEX_FILE} is missing")
            with self._open(shard) as f:
                present = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            missing = [k for k, s in self._where.items() if s == shard and k not in present]
            if missing:
                raise CheckpointError(f"{path}: tensor '{missing[0]}' listed in the index is not in the shard")
            self._shapes.update({k: v for k, v in present.items() if self._where.get(k) == shard})

    def _open(self, shard: str):
        path = self.dir / shard
        try:
            return safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from None

    def _weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX_FILE
        if index.is_file() and self._file is None:
            try:
                return dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: malformed index ({e})") from None
        single = self.dir / (self._file or SINGLE_FILE)
        if single.is_file():
            try:
                with safe_open(str(single), framework="numpy") as f:
                    return {k: single.name for k in f.keys()}
            except SafetensorError as e:
                raise CheckpointError(f"{single}: unreadable or truncated safetensors file ({e})") from None
        raise CheckpointError(f"{self.dir}: no {SINGLE_FILE} or {INDEX_FILE} found")

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            raise CheckpointError(f"{self.dir}: tensor '{name}' not found in the checkpoint")
        return self._shapes[name]

    def get(self, name: str, rows: slice | None = None) -> np.ndarray:
        """One tensor (or a slice of its rows) as float32."""
        self.shape(name)
        shard = self._where[name]
        try:
            with self._open(shard) as f:
                arr = f.get_slice(name)[rows] if rows is not None else f.get_tensor(name)
                arr = np.asarray(arr, dtype=np.float32)
        except SafetensorError as e:
            raise CheckpointError(f"{self.dir / shard}: cannot read '{name}' ({e})") from None
        check_finite(arr, f"{self.dir / shard}: tensor '{name}'")
        return arr


def check_finite(arr: np.ndarray, what: str, chunk: int = 1 << 24) -> None:
    """Refuse NaN/Inf weights (they would export silently and answer nothing). Checked in chunks:
    a whole-tensor isfinite mask of Phi-4's embedding would add 614 MB to the export's peak."""
    flat = arr.reshape(-1)
    for lo in range(0, flat.size, chunk):
        part = flat[lo:lo + chunk]
        if not np.isfinite(part).all():
            bad = lo + int(np.flatnonzero(~np.isfinite(part))[0])
            index = tuple(int(i) for i in np.unravel_index(bad, arr.shape))
            raise CheckpointError(f"{what} holds a non-finite value ({flat[bad]}) at {list(index)}")
