"""Writing a bundle folder atomically and safely.

- Staged in a hidden sibling folder, renamed into place at the end: no half-written bundle is ever
  at the output path.
- One export per output path at a time: a lock file beside it (flock, released by the kernel even
  when the process is killed). The second export fails at once.
- `force` replaces only an existing phi4edge bundle, never the input checkpoint, any other folder
  or a file.
- Every way out cleans up: exceptions and Ctrl-C in `finally`, SIGTERM turned into an exception
  while staging, and what a SIGKILL left behind is removed by the next export to the same path
  (it holds the lock, so no live export owns those folders).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import Phi4EdgeError
from ..format import FORMAT, MANIFEST


def is_bundle(path: Path) -> bool:
    """A folder holding a phi4edge manifest (of any version)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_output(out_dir: Path, inputs: Sequence[Path], force: bool) -> None:
    """Refuse an output path that would destroy something export did not make."""
    out = out_dir.resolve()
    for given in inputs:
        src = given.resolve()
        if out == src or out in src.parents:
            raise Phi4EdgeError(f"{out_dir}: the output would replace the input {given}; choose another -o")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise Phi4EdgeError(f"{out_dir}: exists and is not a folder; phi4edge replaces only bundles it wrote")
    if out_dir.exists():
        if not force:
            raise Phi4EdgeError(f"{out_dir}: output folder already exists (choose another -o, or pass --force "
                                "to replace a bundle)")
        if not is_bundle(out_dir):
            raise Phi4EdgeError(f"{out_dir}: exists and is not a phi4edge bundle (no phi4edge manifest.json); "
                                "--force replaces only bundles, so remove it yourself or choose another -o")


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside out_dir for the whole export; fail at once if another holds it."""
    lock_path = out_dir.with_name(f".{out_dir.name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Phi4EdgeError(f"{out_dir}: another phi4edge export is writing this bundle now "
                                f"(it holds {lock_path.name}); wait for it or choose another -o") from None
        # the previous holder unlinks the file when done: if ours was unlinked meanwhile, retry
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """While staging, SIGTERM unwinds like Ctrl-C so the staging folder is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_leftovers(out_dir: Path) -> None:
    """Staging and replaced folders of exports to this path that did not finish (we hold the lock,
    so no live export owns them). A replaced bundle whose successor never arrived is put back."""
    for stale in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        if not out_dir.exists() and stale.is_dir() and not stale.is_symlink():
            stale.rename(out_dir)
    for prefix in (f".{out_dir.name}.partial-", f".{out_dir.name}.old-"):
        for stale in out_dir.parent.glob(f"{prefix}*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staging(out_dir: Path, force: bool = False, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield an empty folder beside out_dir; on success it becomes out_dir, on any failure
    (exception, Ctrl-C, SIGTERM) it is removed, so no half-written bundle is ever left at out_dir."""
    out_dir = Path(out_dir)
    check_output(out_dir, list(inputs), force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir), sigterm_as_exception():
        try:
            check_output(out_dir, list(inputs), force)   # again: it may have changed while we waited
            remove_leftovers(out_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)   # mkdtemp makes it private; the bundle should be like any new folder
            yield tmp
            if out_dir.exists():
                out_dir.rename(out_dir.with_name(f".{out_dir.name}.old-{tmp.name[-8:]}"))
            tmp.rename(out_dir)
        finally:
            # whatever stopped us, even between mkdtemp and here: our staging folder goes, and a
            # replaced bundle comes back if its successor is not in place
            remove_leftovers(out_dir)
