"""The bundle format: the contract between export and every runtime (Python, Kotlin, the browser).

`manifest.json` as typed, versioned classes with reading, writing and validation, and the name of
every graph input and output. Export writes through this module, runtimes read through it, and
docs/bundle-format.md describes the same thing for people writing readers in other languages.

Compatibility rules: a reader refuses a `format_version` it does not know and any name in
`requires` it does not implement; it ignores fields it does not know (writers may add optional
fields without a new version).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import BundleError

FORMAT = "phi4edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# `requires` names this reader implements. "media-inputs": the decoder's image/audio feature inputs
# are plain inputs with no default, so a reader feeds an empty [0, hidden] tensor for text (readers
# that cannot feed initializers, such as onnxruntime's Java API, need them as inputs).
MEDIA_INPUTS = "media-inputs"
# "ort-graphs": the graphs are onnxruntime's ORT format (flatbuffers, weights inside, `.ort`) rather
# than ONNX; the manifest's `ort` section says how they were converted. A reader that passes graphs
# to onnxruntime by path implements it by loading them as ORT format.
ORT_GRAPHS = "ort-graphs"
# "static-shapes": every graph has fixed input shapes, as NPUs (Qualcomm's HTP) need: the decoder is
# two graphs over a fixed context window, one for prompt chunks and one for single tokens, whose KV
# cache the runtime keeps; encoders take one image layout and one audio length. The `static`
# section gives the shapes; StaticDecoderNames the interface (docs/bundle-format.md).
STATIC_SHAPES = "static-shapes"
# "webgpu-decoder": the decoder is the WebGPU form (export/webgpu.py, docs/webgpu.md): LoRA A/B are
# plain inputs without defaults, fed on every call (rank-1 zeros for the base model on WebGPU), and
# past and present key/values are distinct tensors (present = past, then the new rows), so one
# buffer must not be bound to both.
WEBGPU_DECODER = "webgpu-decoder"
FEATURES: frozenset[str] = frozenset({MEDIA_INPUTS, ORT_GRAPHS, STATIC_SHAPES, WEBGPU_DECODER})
ORT_SUFFIX = ".ort"
ORT_FILE_IDENTIFIER = b"ORTM"            # bytes 4..8 of an ORT-format file (its FlatBuffers file identifier)
MAX_MANIFEST_BYTES = 16 << 20            # a real manifest is a few KB; refuse to parse anything huge
DYNAMIC_HD = 36                          # crop limit when a vision bundle does not record its own

Precision = Literal["int4", "fp32"]
AdapterPrecision = Literal["fp32", "fp16", "int8"]                # the decoder's LoRA inputs
AdapterFilePrecision = Literal["fp32", "fp16", "int8", "int4"]   # int4 files run on int8 inputs


# --- graph interface names ---------------------------------------------------------------------

class DecoderNames:
    """Decoder graph inputs/outputs (onnxruntime-genai's spelling, so genai runs bundles as they are)."""

    INPUT_IDS = "input_ids"              # int64 [1, seq]
    ATTENTION_MASK = "attention_mask"    # int64 [1, past + seq], all ones
    LOGITS = "logits"                    # float32 [k, 1, vocab]: the last k = logits_to_keep positions
    LOGITS_TO_KEEP = "logits_to_keep"    # int64 [1], default 1 (CPU form only): positions that get logits

    @staticmethod
    def past(layer: int, kind: str) -> str:
        """KV cache input, kind "key" or "value": float32 [1, kv_heads, past, head_dim]."""
        return f"past_key_values.{layer}.{kind}"

    @staticmethod
    def present(layer: int, kind: str) -> str:
        return f"present.{layer}.{kind}"

    @staticmethod
    def lora(layer: int, module: str, which: str) -> str:
        """LoRA input `which` "A" [in, r] or "B" [r, out] of a layer linear (module "qkv_proj", ...);
        int8 adapters add f"{name}.scale" inputs ([r] for A, [out] for B)."""
        return f"lora.layers.{layer}.{module.split('.')[-1]}.{which}"


class StaticDecoderNames:
    """The decoder graphs of a static-shapes bundle; S is the rows of one call (`static.prefill_chunk`
    for the prefill graph, 1 for the decoder graph) and C is `static.context`."""

    INPUT_IDS = "input_ids"              # int64 [1, S]; padding rows come first
    POSITION_IDS = "position_ids"        # int64 [1, S]; + C where LongRoPE's long factors apply
    ATTENTION_BIAS = "attention_bias"    # float32 [1, 1, S, C]: 0 where a row attends, MASK_VALUE elsewhere
    MEDIA_FEATURES = "media_features"    # float32 [1, S, hidden]: image/audio rows, zero on text rows
    TEXT_MASK = "text_mask"              # float32 [1, S, 1]: 1 on rows embedded from input_ids, 0 on media rows
    LOGITS = "logits"                    # float32 [1, 1, vocab]: the last row

    @staticmethod
    def new(layer: int, kind: str) -> str:
        """The S rows of keys or values this call adds: float32 [1, kv_heads, S, head_dim]."""
        return f"new_key_values.{layer}.{kind}"


# Additive attention mask of static graphs: NPUs compute in fp16, where float32's min is -inf and a
# fully masked padding row would give NaN; exp(-10000) is 0 in fp16 as in fp32.
MASK_VALUE = -10000.0


class VisionNames:
    PIXEL_VALUES = "pixel_values"        # float32 [crops, 3, crop, crop]: the global image first
    POSITION_IDS = "position_ids"        # int64 [crops, patches]
    ATTENTION_BIAS = "attention_bias"    # float32 [crops, 1, 1, patches]: 0 or float32 min
    TOKEN_INDEX = "token_index"          # int64 [tokens]: rows of the HD layout
    IMAGE_FEATURES = "image_features"    # float32 [tokens, text_hidden]; also the decoder's media input


class SpeechNames:
    AUDIO_FEATURES = "audio_features"              # float32 [1, frames, 80] log-mel
    KEY_BIAS = "key_bias"                          # float32 [chunks, 1, 1, chunk_len]
    SPEECH_FEATURES = "speech_features"            # float32 [tokens, text_hidden]: audio alone
    VISION_SPEECH_FEATURES = "vision_speech_features"   # the same, for requests that also have an image
    DECODER_INPUT = "audio_features"               # the decoder's media input for either


# --- adapter files -----------------------------------------------------------------------------

ADAPTER_FORMAT_VERSION = 1   # onnxruntime adapter_version written into .onnx_adapter files


def base_model_version(base_id: str) -> int:
    """The base model id as the int an .onnx_adapter file keeps in model_version (28 bits): a
    runtime refuses an adapter whose model_version differs from its bundle's."""
    return int(base_id[:7], 16) if base_id else 0


# --- manifest ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """The language model's shape and tokens, as export read them from config.json."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position: int
    tie_word_embeddings: bool
    rope_kind: Literal["default", "longrope"]
    rotary_dim: int
    model_type: str = "phi3"
    original_max_position: int = 0       # LongRoPE: long factors apply past this length
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None


@dataclass(frozen=True)
class Model:
    config: ModelConfig
    family: str = "phi3"
    source: str = ""                     # the checkpoint folder's name
    base_id: str = ""                    # sha256 identity of the base weights; adapters record it


@dataclass(frozen=True)
class LinearQuant:
    bits: int
    block_size: int


@dataclass(frozen=True)
class Quantization:
    precision: Precision
    method: str | None = None            # int4 only, from here down: the quantisation method
    bits: int | None = None
    block_size: int | None = None
    accuracy_level: int | None = None
    tied_embeddings: str | None = None   # note on how a tied embedding/head is stored
    encoders: str | None = None          # note on how the vision/speech encoders' linears are stored
    bits_budget: float | None = None     # mixed precision: bits per weight over every decoder matrix it filled
    overrides: dict[str, LinearQuant] | None = None   # decoder linears (node names) stored otherwise than bits/block_size


@dataclass(frozen=True)
class Decoder:
    graph: str
    lora: AdapterPrecision | None = None   # LoRA inputs on every layer linear, in this precision
    media: dict[str, int] = field(default_factory=dict)   # feature input -> placeholder token id
    inputs: str = "input_ids"
    logits: Literal["last_position"] = "last_position"


@dataclass(frozen=True)
class Adapter:
    file: str
    precision: AdapterFilePrecision
    ranks: list[int]
    alpha: float
    rslora: bool
    modules: list[str]
    layers: int
    source: str = ""
    base_model: str = ""


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    image_size: int
    crop_size: int
    layer_norm_eps: float
    image_token_id: int
    text_hidden_size: int

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class Vision:
    graph: str
    config: VisionConfig
    dynamic_hd: int = DYNAMIC_HD         # most crops per image


@dataclass(frozen=True)
class SpeechConfig:
    hidden_size: int
    num_heads: int
    num_blocks: int
    input_size: int
    kernel_size: int
    bias_max_distance: int
    time_reduction: int
    audio_token_id: int
    text_hidden_size: int
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class Speech:
    graph: str
    config: SpeechConfig


@dataclass(frozen=True)
class Generation:
    eos_token_ids: list[int]


@dataclass(frozen=True)
class OrtGraphs:
    """Present when the graphs are ORT format (the bundle `requires` "ort-graphs")."""

    optimization: Literal["disabled", "basic", "extended", "all"]   # graph optimisations applied at conversion
    onnxruntime: str                     # version of the onnxruntime that converted them
    required_operators: str              # the operators of all graphs, for a reduced onnxruntime build


@dataclass(frozen=True)
class Static:
    """Present when the bundle `requires` "static-shapes": the fixed shapes of its graphs."""

    context: int                         # C: positions in the window (cache slots + the rows of one call)
    prefill_graph: str                   # the decoder graph for prompt chunks; decoder.graph takes one token
    prefill_chunk: int                   # rows per prefill call
    lora_rank: int = 0                   # rank of every LoRA input (adapters are zero-padded to it); 0: none
    audio_frames: int = 0                # log-mel frames the speech graph takes (speech bundles)


@dataclass(frozen=True)
class Qnn:
    """Qualcomm QNN context binaries (EPContext graphs) compiled from the static graphs, so that a
    device loads them without compiling. Optional: the static graphs themselves run anywhere."""

    soc_model: int                       # the Snapdragon SoC the binaries were compiled for (QNN's soc_model id)
    contexts: dict[str, str]             # graph kind ("decoder", "prefill", "vision", "speech") -> EPContext graph
    onnxruntime_qnn: str                 # version of the onnxruntime-qnn that compiled them
    nodes: dict[str, int] = field(default_factory=dict)   # nodes of each source graph, all on QNN


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    model: Model
    quantization: Quantization
    decoder: Decoder
    generation: Generation
    files: dict[str, FileEntry]
    adapters: dict[str, Adapter] = field(default_factory=dict)
    vision: Vision | None = None
    speech: Speech | None = None
    ort: OrtGraphs | None = None         # the graphs are ORT format (see OrtGraphs)
    static: Static | None = None         # the graphs have fixed shapes (see Static)
    qnn: Qnn | None = None               # QNN context binaries of the static graphs (see Qnn)
    created_by: str = ""
    requires: list[str] = field(default_factory=list)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if not (v is None or (k == "requires" and not v))}

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.generation.eos_token_ids)

    @property
    def graph_format(self) -> Literal["onnx", "ort"]:
        """How every graph of the bundle is stored: ONNX protobuf, or ORT format ("ort-graphs")."""
        return "ort" if self.ort is not None else "onnx"

    @property
    def graphs(self) -> dict[str, str]:
        """{"decoder" | "prefill" | "vision" | "speech": graph file} for the graphs the bundle has
        ("prefill": the prompt-chunk decoder of static-shapes bundles)."""
        parts = {"decoder": self.decoder, "vision": self.vision, "speech": self.speech}
        graphs = {kind: part.graph for kind, part in parts.items() if part is not None}
        return graphs | ({"prefill": self.static.prefill_graph} if self.static else {})

    @staticmethod
    def from_json(doc: object, source: str = MANIFEST) -> Manifest:
        """Check and type a parsed manifest; one BundleError names the first bad field."""
        if not isinstance(doc, dict):
            raise BundleError(f"{source}: the manifest must be a JSON object")
        if doc.get("format") != FORMAT:
            raise BundleError(f"{source}: field 'format' is {_short(doc.get('format'))}, not {FORMAT!r}: "
                              "not a phi4edge bundle manifest")
        version = doc.get("format_version")
        if not _is_int(version) or version != FORMAT_VERSION:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
            raise BundleError(f"{source}: field 'format_version' is {_short(version)}; this phi4edge reads version "
                              f"{FORMAT_VERSION}" + (" (upgrade phi4edge to read newer bundles)" if newer else ""))
        unknown = [r for r in doc.get("requires", []) if r not in FEATURES] if isinstance(doc.get("requires"), list) else []
        if unknown:
            raise BundleError(f"{source}: field 'requires' lists {_short(unknown[0])}, which this phi4edge does not "
                              "implement (upgrade phi4edge)")
        manifest = typing.cast(Manifest, _read(Manifest, doc, "", source))
        _check_values(manifest, source)
        return manifest

    @staticmethod
    def read(folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise BundleError(f"{folder}: not a phi4edge bundle (no manifest.json); create one with 'phi4edge export'")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes is too large for a manifest")
        try:
            doc = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BundleError(f"{path}: not valid JSON ({e})") from None
        return Manifest.from_json(doc, str(path))


# --- typed reading -------------------------------------------------------------------------------

def esc(text: str) -> str:
    """A name from a manifest, safe in a one-line message (control characters escaped)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _short(value: object) -> str:
    text = esc(json.dumps(value)) if not isinstance(value, str) else repr(esc(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_HINTS: dict[type, dict[str, object]] = {}


def _hints(cls: type) -> dict[str, object]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(tp: object) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "an object"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))   # type: ignore[call-overload]


def _read(tp: object, value: object, where: str, source: str) -> object:
    """`value` as type `tp`, or a BundleError naming `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong() -> BundleError:
        return BundleError(f"{source}: field '{esc(where)}' is {_short(value)}, expected {_describe(tp)}")
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _read(inner[0], value, where, source) if len(inner) == 1 else _first(inner, value, where, source, wrong)
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            raise wrong()
        return value
    if origin is list:
        if not isinstance(value, list):
            raise wrong()
        return [_read(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        return {k: _read(args[1], v, f"{where}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong()
        hints, kwargs = _hints(tp), {}   # type: ignore[arg-type]
        for f in dataclasses.fields(tp):
            path = f"{where}.{f.name}" if where else f.name
            if f.name in value:
                kwargs[f.name] = _read(hints[f.name], value[f.name], path, source)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BundleError(f"{source}: required field '{esc(path)}' is missing")
        return tp(**kwargs)   # type: ignore[operator]
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong()
        return float(value)
    if tp is int:
        if not _is_int(value):
            raise wrong()
        return value
    if not isinstance(value, tp):   # type: ignore[arg-type]
        raise wrong()
    return value


def _first(options: list, value: object, where: str, source: str, wrong) -> object:
    for option in options:
        try:
            return _read(option, value, where, source)
        except BundleError:
            continue
    raise wrong()


def _check_values(m: Manifest, source: str) -> None:
    """Ranges the types alone do not say."""
    positive = {"model.config.hidden_size": m.model.config.hidden_size, "model.config.num_layers": m.model.config.num_layers,
                "model.config.num_heads": m.model.config.num_heads, "model.config.num_kv_heads": m.model.config.num_kv_heads,
                "model.config.head_dim": m.model.config.head_dim, "model.config.vocab_size": m.model.config.vocab_size,
                "model.config.max_position": m.model.config.max_position}
    if m.vision:
        positive |= {"vision.dynamic_hd": m.vision.dynamic_hd, "vision.config.crop_size": m.vision.config.crop_size,
                     "vision.config.patch_size": m.vision.config.patch_size}
    for name, entry in m.files.items():
        positive[f"files.{name}.size"] = entry.size + 1   # zero-byte files are fine
    for where, value in positive.items():
        if value <= 0:
            raise BundleError(f"{source}: field '{esc(where)}' must be positive")
    if m.quantization.precision == "int4" and not (m.quantization.block_size and m.quantization.bits):
        raise BundleError(f"{source}: field 'quantization' of an int4 bundle needs bits and block_size")
    # ORT-format graphs: the `ort` section, the feature and the file names agree (an older reader must
    # refuse such a bundle through `requires`, and onnxruntime tells the formats apart by file name)
    if (ORT_GRAPHS in m.requires) != (m.ort is not None):
        raise BundleError(f"{source}: field 'ort' must be present exactly when field 'requires' lists '{ORT_GRAPHS}'")
    for kind, name in m.graphs.items():
        if name.lower().endswith(ORT_SUFFIX) != (m.ort is not None):
            raise BundleError(f"{source}: field '{kind}.graph' is {_short(name)}: " + (
                f"ORT-format graphs are named *{ORT_SUFFIX}" if m.ort else f"*{ORT_SUFFIX} names an ORT-format graph, "
                f"which needs field 'ort' and '{ORT_GRAPHS}' in 'requires'"))
    if (STATIC_SHAPES in m.requires) != (m.static is not None):
        raise BundleError(f"{source}: field 'static' must be present exactly when field 'requires' lists '{STATIC_SHAPES}'")
    if m.static is not None:
        _check_static(m, m.static, source)
    elif m.qnn is not None:
        raise BundleError(f"{source}: field 'qnn' needs a static-shapes bundle ('{STATIC_SHAPES}' in 'requires')")
    if m.ort is not None and m.ort.required_operators not in m.files:
        raise BundleError(f"{source}: field 'ort.required_operators' names {_short(m.ort.required_operators)}, "
                          "which is not listed in 'files'")


def _check_static(m: Manifest, s: Static, source: str) -> None:
    if m.ort is not None:
        raise BundleError(f"{source}: field 'ort': static-shapes bundles are ONNX (QNN takes their context binaries)")
    if not 1 < s.prefill_chunk < s.context:
        raise BundleError(f"{source}: field 'static.prefill_chunk' is {s.prefill_chunk}; it must be more than 1 and "
                          f"less than 'static.context' ({s.context})")
    if s.lora_rank < 0 or (s.lora_rank > 0) != (m.decoder.lora is not None):
        raise BundleError(f"{source}: field 'static.lora_rank' is {s.lora_rank}; it must be positive exactly when "
                          "'decoder.lora' is set")
    if m.speech is not None and s.audio_frames <= 0:
        raise BundleError(f"{source}: field 'static.audio_frames' must be positive in a bundle with speech")
    for kind, name in (m.qnn.contexts.items() if m.qnn else []):
        if kind not in m.graphs or name not in m.files:
            raise BundleError(f"{source}: field 'qnn.contexts.{esc(kind)}' names {_short(name)}, which is not "
                              "a graph of this bundle's with a file listed in 'files'")
