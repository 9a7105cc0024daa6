"""phi4edge: Phi-4-mini and Phi-4-multimodal on laptops and phones, offline.

    import phi4edge
    model = phi4edge.load("bundles/phi4-mini")
    print(model.generate("Explain GQA in one paragraph.").text)

The package's parts: `phi4edge.format` (the bundle contract), `phi4edge.export` (checkpoint ->
bundle; needs the `export` extra), `phi4edge.runtime` (bundle -> answers; no torch), `phi4edge.cli`.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BundleError, CheckpointError, Phi4EdgeError, RequestError

if TYPE_CHECKING:
    from .runtime.generate import Model

try:
    __version__ = version("phi4edge")
except PackageNotFoundError:   # running from a source tree that was not installed
    __version__ = "0+unknown"


def load(bundle: str | Path, threads: int | None = None, providers: list[str] | None = None,
         verify: bool = False) -> Model:
    """Open a bundle (its files checked; their sha256 too with `verify`) and load its decoder."""
    from .runtime.generate import Model
    return Model(bundle, threads, providers, verify)


__all__ = ["load", "__version__", "Phi4EdgeError", "BundleError", "CheckpointError", "RequestError"]
