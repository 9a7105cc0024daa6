"""A bundle folder: its manifest plus the files it lists, checked before anything is read.

Opening always checks that every listed file lies inside the bundle (no absolute paths, no `..`,
no symlink leading out) with its recorded size, and that every file a runtime reads (graphs, their
external weight files, tokenizer, adapters) is listed; `verify` adds each file's sha256.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tokenizers import Tokenizer

from .errors import BundleError, Phi4EdgeError
from .format import MANIFEST, ORT_FILE_IDENTIFIER, FileEntry, Manifest, esc

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"


def read_tokenizer(path: Path, error: type[Phi4EdgeError] = BundleError) -> Tokenizer:
    """A tokenizer.json, or `error` naming the file (for bundles and checkpoints alike)."""
    try:
        return Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: unreadable ({e})") from None
    except BaseException as e:   # the Rust parser raises Exception, or PanicException (a BaseException)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise error(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]})") from None


def sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, FileEntry]:
    """Every file under root (except the manifest) with its size and sha256, for the manifest."""
    return {p.relative_to(root).as_posix(): FileEntry(p.stat().st_size, sha256(p))
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def safe_member(root: Path, name: object, field: str) -> Path:
    """The file `name` inside bundle `root`, refusing anything that would read outside it."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"{root}: {esc(field)} {esc(repr(name))} is not a relative file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[:1] == ("~",):
        raise BundleError(f"{root}: {esc(field)} '{esc(name)}' points outside the bundle")
    path = root / pure
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):   # symlink loop
        inside = False
    if not inside:
        raise BundleError(f"{root}: {esc(field)} '{esc(name)}' is a link that leads outside the bundle")
    return path


def external_data(graph: Path, root: Path) -> list[str]:
    """The external weight files an ONNX graph names, each checked to lie inside the bundle."""
    import onnx
    from google.protobuf.message import DecodeError
    if not graph.is_file():
        raise BundleError(f"{graph}: missing from the bundle (re-export it)")
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{graph}: not a readable ONNX graph ({e})") from None
    tensors = list(model.graph.initializer) + [t for n in model.graph.node for a in n.attribute
                                               for t in ([a.t] if a.HasField("t") else list(a.tensors))]
    names = sorted({e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
                    for e in t.external_data if e.key == "location"})
    base = graph.parent.relative_to(root)
    out = []
    for name in names:
        rel = (base / name).as_posix() if str(base) != "." else name
        safe_member(root, rel, f"{graph.name} external data")
        out.append(rel)
    return out


def check_ort_graph(graph: Path) -> None:
    """An ORT-format graph keeps its weights inside (no other file to list); refuse anything that
    does not carry the format's file identifier (onnxruntime verifies the rest when it loads it)."""
    if not graph.is_file():
        raise BundleError(f"{graph}: missing from the bundle (re-export it)")
    with open(graph, "rb") as f:
        head = f.read(8)
    if head[4:8] != ORT_FILE_IDENTIFIER:
        raise BundleError(f"{graph}: {graph.name} is not an ORT-format graph (no '{ORT_FILE_IDENTIFIER.decode()}' file "
                          "identifier), though the manifest says the bundle's graphs are; re-export it")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        """A file a runtime reads: it must be listed in the manifest (and so checked at open)."""
        if name not in self.manifest.files:
            raise BundleError(f"{self.path}: '{esc(name)}' is not listed in the manifest's files; "
                              "the bundle is incomplete or was edited (re-export it)")
        return safe_member(self.path, name, "file")

    def optional_file(self, name: str) -> Path | None:
        """A listed file, or None when the bundle has none by that name (unlisted files are ignored)."""
        return self.file(name) if name in self.manifest.files else None

    def read_set(self) -> list[tuple[str, str]]:
        """(manifest field, file) for every file a runtime may read."""
        m = self.manifest
        wanted = [("tokenizer", TOKENIZER)]
        for kind, name in m.graphs.items():
            graph = safe_member(self.path, name, f"{kind}.graph")
            wanted.append((f"{kind}.graph", name))
            if m.graph_format == "ort":
                check_ort_graph(graph)
            else:
                wanted += [(f"{kind}.graph's external data", d) for d in external_data(graph, self.path)]
        for name, adapter in m.adapters.items():
            safe_member(self.path, adapter.file, f"adapters.{name}.file")
            wanted.append((f"adapters.{name}.file", adapter.file))
        return wanted

    def audit(self, hashes: bool = False) -> dict[str, str]:
        """{file: "ok" | problem} for every listed file (inside the bundle, present, its size, and
        its sha256 when `hashes`), plus every file a runtime would read that is not listed."""
        report = {}
        for name, entry in self.manifest.files.items():
            try:
                path = safe_member(self.path, name, "listed file")
            except BundleError as e:
                report[name] = str(e).split(": ", 1)[-1]
                continue
            if not path.is_file():
                report[name] = "listed in the manifest but missing"
            elif path.stat().st_size != entry.size:
                report[name] = f"{path.stat().st_size} bytes, the manifest says {entry.size} (truncated or changed)"
            elif hashes and sha256(path) != entry.sha256:
                report[name] = "sha256 differs from the manifest's (the file was changed)"
            else:
                report[name] = "ok"
        try:
            wanted = self.read_set()
        except BundleError as e:
            return report | {"(graphs)": str(e).split(": ", 1)[-1]}
        for field, name in wanted:
            if name not in self.manifest.files:
                report[name] = f"read by the runtime ({esc(field)}) but not listed in the manifest's files"
        return report

    def check_files(self, hashes: bool = False) -> None:
        """Raise on the first problem `audit` finds."""
        bad = {n: p for n, p in self.audit(hashes).items() if p != "ok"}
        if bad:
            name, problem = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more; see 'phi4edge inspect')" if len(bad) > 1 else ""
            raise BundleError(f"{self.path / esc(name)}: {problem}{more}")


def open_bundle(path: str | Path, verify: bool = False, check: bool = True) -> Bundle:
    """Read a bundle's manifest and check its files (sha256 too when `verify`; with check=False
    only the manifest, for `inspect`, which reports every problem instead of the first)."""
    bundle = Bundle(Path(path), Manifest.read(Path(path)))
    if check or verify:
        bundle.check_files(hashes=verify)
    return bundle
