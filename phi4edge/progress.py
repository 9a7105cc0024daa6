"""Progress for long work: a tqdm bar on a terminal; piped or logged, one line when a stage ends
(a redrawn bar would write thousands of carriage-return frames into the log)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress(total: int, desc: str, unit: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yield a tick callback for `total` steps of the stage `desc`."""
    if not enabled:
        yield lambda: None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr) as bar:
            yield lambda: bar.update()
        return
    done = [0]
    start = time.perf_counter()
    yield lambda: done.__setitem__(0, done[0] + 1)
    print(f"{desc}: {done[0]}/{total} {unit}s in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
