"""Opening a bundle folder: its manifest checked field by field, and its files checked against it.

Loading is cheap and always checks that every file the manifest lists lies inside the bundle (no
absolute paths, no `..`, no symlink leading out) with its recorded size, and that every file the
runtime will read (graphs, their external weight files, tokenizer, adapters) is listed; `verify`
adds the sha256 of each file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..models.errors import BundleError

FORMAT = "phi4edge-bundle"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = {FORMAT_VERSION}
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20   # a real manifest is a few KB; refuse to parse anything huge

# Manifest fields the runtime relies on, with their JSON types, by path ("*" = every key of an
# object). A field is required wherever its parent exists: `vision.graph` only in bundles with a
# vision encoder, `adapters.*.file` for every adapter.
INT, NUM, STR, BOOL, LIST, DICT = (int,), (int, float), (str,), (bool,), (list,), (dict,)
REQUIRED = {
    "model": DICT, "model.config": DICT,
    **{f"model.config.{k}": INT for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                          "intermediate_size", "vocab_size", "max_position", "rotary_dim")},
    "model.config.rope_kind": STR, "model.config.tie_word_embeddings": BOOL, "model.config.architecture": STR,
    "quantization": DICT, "quantization.precision": STR,
    "decoder": DICT, "decoder.graph": STR,
    "generation": DICT, "generation.eos_token_ids": LIST,
    "files": DICT, "files.*": DICT, "files.*.size": INT, "files.*.sha256": STR,
    "adapters.*": DICT, "adapters.*.file": STR, "adapters.*.ranks": LIST, "adapters.*.alpha": NUM,
    "adapters.*.rslora": BOOL, "adapters.*.layers": INT, "adapters.*.modules": LIST, "adapters.*.precision": STR,
    "vision.graph": STR, "vision.config": DICT,
    **{f"vision.config.{k}": INT for k in ("image_token_id", "crop_size", "patch_size", "num_layers", "hidden_size")},
    "speech.graph": STR, "speech.config": DICT, "speech.config.audio_token_id": INT,
    "decoder.media.*": INT,
}
OPTIONAL = {
    "decoder.media": DICT, "decoder.lora": STR + (type(None),), "adapters": DICT, "vision": DICT,
    "vision.dynamic_hd": INT, "speech": DICT, "model.base_id": STR, "model.config.original_max_position": INT,
    "model.source": STR, "model.family": STR, "created_by": STR,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _walk(manifest: dict, path: str) -> list[tuple[str, object]]:
    """(concrete path, value) for every manifest field matching a dotted path with `*` wildcards."""
    found = [("", manifest)]
    for part in path.split("."):
        nxt = []
        for where, value in found:
            if not isinstance(value, dict):
                continue
            keys = list(value) if part == "*" else [part] if part in value else []
            nxt += [(f"{where}.{k}" if where else k, value[k]) for k in keys]
        found = nxt
    return found


def check_manifest(manifest: object, source: Path) -> dict:
    """Check the fields the runtime relies on; one error names the first bad field."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{source}: the manifest must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{source}: field 'format' is {manifest.get('format')!r}, not {FORMAT!r}: "
                          "not a phi4edge bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        raise BundleError(f"{source}: field 'format_version' is {version!r}; this phi4edge reads version "
                          f"{FORMAT_VERSION}" + (" (upgrade phi4edge to read newer bundles)" if newer else ""))
    for table, required in ((REQUIRED, True), (OPTIONAL, False)):
        for path, types in table.items():
            parent, _, leaf = path.rpartition(".")
            if required and leaf != "*":
                for where, value in (_walk(manifest, parent) if parent else [("", manifest)]):
                    if isinstance(value, dict) and leaf not in value:
                        raise BundleError(f"{source}: required field '{esc(f'{where}.' if where else '')}{leaf}' is missing")
            for where, value in _walk(manifest, path):
                if not isinstance(value, types) or (types in (INT, NUM) and isinstance(value, bool)):
                    want = " or ".join("null" if t is type(None) else {int: "integer", float: "number", str: "string",
                                       bool: "boolean", list: "list", dict: "object"}[t] for t in types)
                    raise BundleError(f"{source}: field '{esc(where)}' is {type(value).__name__} {_short(value)}, "
                                      f"expected {want}")
    for where, value in _walk(manifest, "generation.eos_token_ids"):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise BundleError(f"{source}: field '{where}' must list integer token ids")
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "max_position"):
        if manifest["model"]["config"][key] <= 0:
            raise BundleError(f"{source}: field 'model.config.{key}' must be positive")
    for where, value in _walk(manifest, "vision.dynamic_hd") + _walk(manifest, "vision.config.crop_size") + \
            _walk(manifest, "vision.config.patch_size"):
        if value <= 0:
            raise BundleError(f"{source}: field '{esc(where)}' must be positive")
    return manifest


def esc(text: str) -> str:
    """A name from a manifest, safe in a one-line message (control characters escaped)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        """A file the runtime reads: it must be listed in the manifest (and so checked at load)."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: '{esc(name)}' is not listed in the manifest's files; "
                              "the bundle is incomplete or was edited (re-export it)")
        return safe_member(self.path, name, "file")

    def optional_file(self, name: str) -> Path | None:
        """A listed file, or None when the bundle has none by that name (an unlisted file on disk is ignored)."""
        return self.file(name) if name in self.manifest["files"] else None

    def audit(self, hashes: bool = False) -> dict[str, str]:
        """{file: "ok" | problem} for every listed file (inside the bundle, present, its size, and
        its sha256 when `hashes`), plus every file the runtime would read that is not listed."""
        report = {}
        for name, entry in self.manifest["files"].items():
            try:
                path = safe_member(self.path, name, "listed file")
            except BundleError as e:
                report[name] = str(e).split(": ", 1)[-1]
                continue
            if not path.is_file():
                report[name] = "listed in the manifest but missing"
            elif path.stat().st_size != entry["size"]:
                report[name] = f"{path.stat().st_size} bytes, the manifest says {entry['size']} (truncated or changed)"
            elif hashes and sha256(path) != entry["sha256"]:
                report[name] = "sha256 differs from the manifest's (the file was changed)"
            else:
                report[name] = "ok"
        try:
            wanted = self.read_set()
        except BundleError as e:
            return report | {"(graphs)": str(e).split(": ", 1)[-1]}
        for field, name in wanted:
            if name not in self.manifest["files"]:
                report[name] = f"read by the runtime ({esc(field)}) but not listed in the manifest's files"
        return report

    def check_files(self, hashes: bool = False) -> None:
        """Raise on the first problem `audit` finds."""
        bad = {n: p for n, p in self.audit(hashes).items() if p != "ok"}
        if bad:
            name, problem = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more; see 'phi4edge inspect')" if len(bad) > 1 else ""
            raise BundleError(f"{self.path / esc(name)}: {problem}{more}")

    def read_set(self) -> list[tuple[str, str]]:
        """(manifest field, file) for every file the runtime may read."""
        m = self.manifest
        wanted = [("tokenizer", "tokenizer.json")]
        for kind in ("decoder", "vision", "speech"):
            if kind in m:
                graph = safe_member(self.path, m[kind]["graph"], f"{kind}.graph")
                wanted.append((f"{kind}.graph", m[kind]["graph"]))
                wanted += [(f"{kind}.graph's external data", d) for d in external_data(graph, self.path)]
        for name, adapter in m.get("adapters", {}).items():
            safe_member(self.path, adapter["file"], f"adapters.{name}.file")
            wanted.append((f"adapters.{name}.file", adapter["file"]))
        return wanted


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


def open_bundle(path: str | Path, verify: bool = False, check: bool = True) -> Bundle:
    """Read a bundle's manifest and check its files (sha256 too when `verify`; nothing but the
    manifest with check=False, for `inspect`, which reports every problem instead)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a phi4edge bundle (no manifest.json); create one with 'phi4edge export'")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: {manifest_path.stat().st_size} bytes is too large for a manifest")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    bundle = Bundle(path, check_manifest(manifest, manifest_path))
    if check or verify:
        bundle.check_files(hashes=verify)
    return bundle
