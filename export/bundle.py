"""Writing a bundle folder atomically: stage in a hidden sibling folder, rename at the end."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..models.errors import Phi4EdgeError
from ..runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, sha256


def file_table(root: Path) -> dict[str, dict]:
    """Every file under root (except the manifest) with its size and sha256."""
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


@contextmanager
def staging(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside out_dir; on success it becomes out_dir, on any failure
    (exception, Ctrl-C) it is removed, so no half-written bundle is ever left at out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise Phi4EdgeError(f"{out_dir}: output folder already exists (choose another -o, or pass --force)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)   # mkdtemp makes it private; the bundle should be like any new folder
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name[-8:]}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(root: Path, body: dict) -> dict:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **body, "files": file_table(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
