"""Decode speed of two phi4edge source trees on one bundle, measured in alternating fresh processes
(A, B, A, B, ...) so that machine noise hits both alike: for "before/after this change" figures.

    python bench/paired_decode.py BUNDLE --a /path/to/old/checkout --b . --rounds 7
    python bench/paired_decode.py OLD_BUNDLE --a OLD_TREE --b . --bundle-b NEW_BUNDLE   # export changes too

Each tree is imported as the `phi4edge` package from its own folders (export/, runtime/, models/,
quant/), whatever is installed. Prints per-round tok/s, the medians and the ratio B/A.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from phi4edge.runtime.benchmark import cpu_name

WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
try:
    from phi4edge import load
except ImportError:   # trees from before phi4edge.load
    from phi4edge.runtime.generate import load
from phi4edge.runtime.benchmark import decode_tokens_per_s
model = load(sys.argv[2], threads=int(sys.argv[3]) or None)
decode_tokens_per_s(model, 8)   # warm-up
print(json.dumps([decode_tokens_per_s(model, int(sys.argv[4])) for _ in range(3)]))
"""


def package_root(tree: Path, where: Path) -> Path:
    """A folder holding `phi4edge/` whose subpackages are the tree's top-level folders."""
    pkg = where / "phi4edge"
    pkg.mkdir(parents=True)
    core = tree.resolve() / "phi4edge"   # the package's own files, in trees that have the folder
    for f in core.glob("*.py") if core.is_dir() else []:
        (pkg / f.name).symlink_to(f)
    if not (pkg / "__init__.py").exists():
        (pkg / "__init__.py").write_text("")
    for sub in ("export", "runtime", "models", "quant"):
        (pkg / sub).symlink_to(tree.resolve() / sub)
    return where


def measure(root: Path, bundle: str, threads: int, tokens: int) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, str(root), bundle, str(threads), str(tokens)],
                         capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--a", type=Path, required=True, help="source tree A (before)")
    ap.add_argument("--b", type=Path, required=True, help="source tree B (after)")
    ap.add_argument("--bundle-b", help="B's bundle, where B's export differs too (default: the same bundle)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: package_root(tree, Path(tmp) / name) for name, tree in (("A", args.a), ("B", args.b))}
        bundles = {"A": args.bundle, "B": args.bundle_b or args.bundle}
        results: dict[str, list[float]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                results[name].append(measure(roots[name], bundles[name], args.threads, args.tokens))
            print(f"round {r + 1}: A {results['A'][-1]:.2f} tok/s, B {results['B'][-1]:.2f} tok/s", flush=True)
    a, b = statistics.median(results["A"]), statistics.median(results["B"])
    paired = statistics.median(y / x for x, y in zip(results["A"], results["B"]))   # each round ran both
    print(f"{cpu_name()}, threads {args.threads or 'all'}: median decode A {a:.2f} tok/s, B {b:.2f} tok/s, "
          f"B/A {b / a:.3f} (median of per-round ratios {paired:.3f})")


if __name__ == "__main__":
    main()
