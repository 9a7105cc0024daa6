"""Resident memory: what this process holds (anonymous vs file-backed), and handing back the pages
of weight files that onnxruntime read only while loading a graph. Linux only; elsewhere these
report nothing and release nothing."""
from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

_MADV_DONTNEED = 4
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$")


def rss() -> dict[str, int] | None:
    """{"rss", "anon", "file"} bytes resident now (from /proc/self/status), or None off Linux."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    out = {fields[k]: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines) if k in fields}
    return out if len(out) == len(fields) else None


def file_mappings(folder: Path) -> set[tuple[int, int]]:
    """(start, end) of this process's mappings of files under `folder` (from /proc/self/maps: cheap)."""
    return set(_mappings("maps", folder))


def _mappings(source: str, folder: Path) -> dict[tuple[int, int], int]:
    """{(start, end): anonymous bytes} of the mappings of files under `folder`, from /proc/self/`source`
    ("smaps" gives the anonymous bytes, a page-table walk; "maps" gives 0 for each, quickly)."""
    try:
        text = Path(f"/proc/self/{source}").read_text()
    except OSError:
        return {}
    prefix = str(Path(folder).resolve()) + "/"
    out: dict[tuple[int, int], int] = {}
    current: tuple[int, int] | None = None
    for line in text.splitlines():
        if m := _MAPPING.match(line):
            current = (int(m[1], 16), int(m[2], 16)) if m[3].startswith(prefix) else None
            if current is not None:
                out[current] = 0 if source == "maps" else -1   # -1: not yet known, never released
        elif current is not None and line.startswith("Anonymous:"):
            out[current] = int(line.split()[1]) * 1024
    return out


def release_load_pages(folder: Path, before: set[tuple[int, int]]) -> int:
    """Drop from RSS the pages of the files under `folder` that onnxruntime mapped since `before`
    (a `file_mappings` snapshot) and never wrote: the page cache keeps them, and a later read
    faults them back in unchanged. Returns the bytes of mappings released.

    Why: onnxruntime memory-maps page-aligned external data (copy-on-write). MatMulNBits prepacks its
    weights into its own buffer and the mapping of the int4 data is unmapped, but the mappings it
    keeps were read whole while packing: the float scales (copied into the packed buffer on x86)
    and the tied embedding, which GatherBlockQuantized reads one row per token. On the 8-layer
    Phi-4-mini that was 462 MiB of the 1647 MiB resident after load (bench/RESULTS.md, issue 21)."""
    if not sys.platform.startswith("linux"):
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for (start, end), anonymous in _mappings("smaps", folder).items():
        # a mapping with private (written) pages would lose them: left alone
        if (start, end) not in before and anonymous == 0 and madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += end - start
    return released
