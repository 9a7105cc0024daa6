"""Opening a bundle folder: its manifest, and verifying its files against the recorded hashes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..models.errors import BundleError

FORMAT = "phi4edge-bundle"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = {FORMAT_VERSION}
MANIFEST = "manifest.json"


def sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def config(self) -> dict:
        return self.manifest["model"]["config"]

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.manifest["generation"]["eos_token_ids"])

    def file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (re-export it)")
        return path

    def verify(self) -> dict[str, str]:
        """Check each file's size and sha256; returns {file: "ok" | problem}."""
        report = {}
        for name, entry in self.manifest["files"].items():
            path = self.path / name
            if not path.is_file():
                report[name] = "missing"
            elif path.stat().st_size != entry["size"]:
                report[name] = f"size {path.stat().st_size}, manifest says {entry['size']}"
            else:
                report[name] = "ok" if sha256(path) == entry["sha256"] else "sha256 mismatch"
        return report


def open_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a phi4edge bundle (no manifest.json); create one with 'phi4edge export'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r} version "
                          f"{manifest.get('format_version')!r} is not supported by this phi4edge")
    return Bundle(path, manifest)
