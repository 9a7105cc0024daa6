"""The decoder on onnxruntime: one preallocated KV buffer per layer, bound once as both the
GroupQueryAttention past and present (the kernel appends in place), and every step's inputs and
logits bound to preallocated arrays, so a decode step allocates nothing.

Every graph session records which execution provider runs each node (`node_counts`). A graph that
the requested providers take only in part runs with the CPU doing the rest, and a
ProviderFallbackWarning says so; a strict request (`ProviderRequest(..., strict=True)`, the CLI's
`--require-provider`) refuses it instead."""
from __future__ import annotations

import mmap
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import PurePosixPath

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..errors import BundleError
from ..format import WEBGPU_DECODER, DecoderNames
from ..providers import (
    CPU,
    OPENVINO,
    PROVIDERS,
    QNN,
    SIMULATED,
    WEBGPU,
    add_qnn,
    fallback_ops,
    node_counts,
    plugins,
    record_assignment,
    short,
    stdout_to_stderr,
)
from . import prepacked, webgpu
from .adapter_sessions import adapter_session
from .adapters import AdapterSet
from .memory import file_mappings, release_load_pages
from .static_encoders import StaticEncoderSession


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider does not run the whole graph; the CPU runs the rest."""


class ProviderRequest(list):
    """Execution providers in order of preference, and whether a graph they do not take whole is an
    error (`strict`) rather than run partly on the CPU with a ProviderFallbackWarning."""

    def __init__(self, names: Iterable[str] = (), strict: bool = False):
        super().__init__(names)
        self.strict = strict


def resolve_providers(names: list[str] | None) -> list[str]:
    """Execution providers by short or full name, checked against this onnxruntime build and the
    installed plugins (onnxruntime-qnn); CPU is always appended as the fallback for operators a
    provider does not take."""
    available = list(dict.fromkeys(ort.get_available_providers() + sorted(plugins())))
    chosen = []
    for name in names or []:
        full = PROVIDERS.get(name.lower(), name)
        if full not in available:
            hint = " (for qnn: pip install 'phi4edge[qnn]')" if full == QNN else ""
            raise BundleError(f"execution provider '{name}' is not in this onnxruntime build (available: "
                              f"{', '.join(short(p) for p in available)}){hint}")
        chosen.append(full)
    if set(chosen) & plugins() and len(set(chosen) - {CPU}) > 1:
        raise BundleError(f"execution provider '{short(next(iter(set(chosen) & plugins())))}' is a plugin and runs "
                          "with the CPU alone here, not with other providers")
    return chosen + ([] if CPU in chosen else [CPU])


# Providers that compute the default (CPU-form) decoder wrongly, found on this machine (docs/webgpu.md,
# docs/openvino.md); the WebGPU form (`export --target webgpu`) gave both the CPU's tokens.
UNFIT = {OPENVINO: "OpenVINO reads its rank-0 LoRA defaults as uninitialised memory (NaN logits) and ignores "
                   "adapters fed to them",
         WEBGPU: "its rank-0 LoRA defaults crash the WebGPU EP (a MatMul of inner dimension 0) and GroupQueryAttention's "
                 "prefill is wrong on GPUs with 4-lane subgroups"}


def refuse_unfit(bundle: Bundle, names: list[str] | None) -> None:
    """Refuse a provider known to compute this bundle's decoder wrongly (UNFIT), naming the fix."""
    m = bundle.manifest
    if m.static is not None or WEBGPU_DECODER in m.requires:
        return
    for name in names or []:
        full = PROVIDERS.get(name.lower(), name)
        if full in UNFIT:
            raise BundleError(f"execution provider '{short(full)}' cannot run this bundle's decoder: {UNFIT[full]}; "
                              f"export with --target webgpu, whose decoder {short(full)} runs with the CPU's tokens")


def session_options(threads: int | None = None, graph_format: str = "onnx") -> ort.SessionOptions:
    so = ort.SessionOptions()
    # ONNX graphs are optimised at load. ORT-format graphs were optimised when converted and load as
    # they are; the manifest, not the file name, says which format a graph is.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.load_model_format", "ORT" if graph_format == "ort" else "ONNX")
    if threads:
        so.intra_op_num_threads = threads
    # Idle intra-op threads sleep instead of spinning: 2% slower decode on an idle machine, but with
    # one core busy elsewhere (a laptop, a phone) spinning threads fight it and decode fell to 0.6x
    # (bench/RESULTS.md, second and third rounds). It also saves battery.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    record_assignment(so)
    so.log_severity_level = 3
    return so


def _assignment(kind: str, session: ort.InferenceSession, accelerators: list[str]) -> str | None:
    """What the CPU runs of a graph that `accelerators` were asked to run, or None if nothing."""
    counts = node_counts(session)
    taken, total = sum(counts.get(a, 0) for a in accelerators), sum(counts.values())
    if taken == total:
        return None
    top = ", ".join(f"{op} x{n}" for op, n in fallback_ops(session, accelerators).most_common(4))
    return (f"{kind} graph: {'/'.join(short(a) for a in accelerators)} takes {taken} of its {total} nodes, "
            f"the CPU runs the rest ({top})")


def _release(text: str) -> tuple[int, ...]:
    """'1.32.0' -> (1, 32, 0); local or pre-release tails ('1.33.0.dev2026', '1.32.0+cpu') ignored."""
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = piece[:len(piece) - len(piece.lstrip("0123456789"))]
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):   # '1rc1': a pre-release of 1
            break
    return tuple(parts)


_LOAD_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in
                     ("Fail", "InvalidGraph", "InvalidProtobuf", "InvalidArgument", "NoSuchFile", "RuntimeException"))


def load_graph(bundle: Bundle, kind: str, threads: int | None = None,
               providers: list[str] | None = None) -> ort.InferenceSession:
    """A session for the bundle's `kind` graph ("decoder", "prefill", "vision", "speech"); a graph
    onnxruntime cannot load (corrupt, tampered, not the format the manifest says) is a BundleError.
    With QNN requested, the bundle's QNN context binary for the graph is loaded if it has one. A
    graph the requested providers take only in part warns (ProviderFallbackWarning), or with a
    strict ProviderRequest is refused (the CPU fallback is then disabled)."""
    m = bundle.manifest
    if m.ort is not None and _release(ort.__version__) < _release(m.ort.onnxruntime):
        # ORT format reads forwards only: 1.29 refused 1.32's decoder (GroupQueryAttention's newer attributes)
        raise BundleError(f"{bundle.path}: its graphs are ORT format written by onnxruntime {m.ort.onnxruntime}, and this "
                          f"onnxruntime is {ort.__version__}: upgrade onnxruntime, or use the bundle's ONNX form")
    if kind == "decoder":
        refuse_unfit(bundle, providers)
    names = resolve_providers(providers)
    accelerators = [p for p in names if p != CPU]
    strict = bool(accelerators) and getattr(providers, "strict", False)
    # the encoders of a static-shapes bundle fit each request to their fixed shapes
    cls = StaticEncoderSession if m.static is not None and kind in ("vision", "speech") else ort.InferenceSession
    load = lambda name, no_fallback: _session(cls, bundle, kind, name, threads, names, no_fallback)
    context = qnn_context(bundle, kind) if QNN in names else None
    refused = "fallback to CPU EP has been explicitly disabled"
    folders = (bundle.path, prepacked.cache_root())   # where the graph may be read from
    mapped_before = {folder: file_mappings(folder) for folder in folders}
    for name in ([context] if context else []) + [m.graphs[kind]]:
        try:
            session = load(name, strict)
            break
        except _LOAD_ERRORS as e:
            if name == context and refused not in str(e):   # compiled for another SoC or QNN version than this one
                warnings.warn(f"{kind} graph: QNN did not load its context binary {name} (compiled for SoC "
                              f"{m.qnn.soc_model if m.qnn else '?'}: {str(e).strip()[:200]}); compiling the graph instead",
                              ProviderFallbackWarning, stacklevel=2)
                continue
            if strict and refused in str(e):   # count what the CPU would have run, for the message
                problem = _assignment(kind, load(name, False), accelerators)
                raise BundleError(f"{bundle.path}: {problem}; refused, as a partial assignment was not allowed") from None
            raise BundleError(f"{bundle.path}: {kind} graph failed to load ({str(e).strip()[:300]})") from None
    if accelerators and (problem := _assignment(kind, session, accelerators)):
        warnings.warn(problem, ProviderFallbackWarning, stacklevel=2)
    # The weight-file pages that only prepacking read leave RSS: the 32-layer Phi-4-mini decoder held
    # 3.58 GiB after load (1.54x its 2.50 GB of weights), now 2.85 GiB (1.23x); bench/RESULTS.md,
    # "Load memory (issue 21)", has the A/B decode check and what the remaining 1.23x is. A prepacked
    # entry (runtime/prepacked.py) is mapped whole, weights as exported and as packed: 3.52 GiB resident
    # after loading the 32-layer decoder; handed back, decoding reads back what it uses (2.77 GiB).
    folder = prepacked.cache_root() if getattr(session, "prepacked", False) else bundle.path
    release_load_pages(folder, mapped_before[folder])
    return session


def _session(cls: type[ort.InferenceSession], bundle: Bundle, kind: str, name: str, threads: int | None,
             names: list[str], no_fallback: bool) -> ort.InferenceSession:
    m = bundle.manifest
    so = session_options(threads, m.graph_format)
    if name == m.graphs.get(kind) and prepacked.cacheable(bundle, kind, names) and (cached := prepacked.find(bundle, kind)):
        # optimised and packed for this CPU by `phi4edge prepack`: loads without either step
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = cls(str(cached), so, providers=names)
            session.prepacked = cached   # what `phi4edge bench` reports (its load and memory figures differ),
            # and the graph that per-adapter sessions share (runtime/adapter_sessions.py)
            return session
        except _LOAD_ERRORS as e:
            warnings.warn(f"{cached}: prepacked {kind} graph unreadable ({str(e).strip()[:200]}); loading the bundle's "
                          "(phi4edge prepack --clear removes it)", stacklevel=3)
            so = session_options(threads, m.graph_format)
    if no_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.log_severity_level = 4   # the refusal is ours to word; QNN would log every node it does not take
    path = str(bundle.file(name))
    if WEBGPU in names:
        return webgpu.session(path, so, cls)
    if QNN in names:
        add_qnn(so, m.qnn.soc_model if m.qnn else None)
        with stdout_to_stderr() if SIMULATED else nullcontext():
            return cls(path, so)
    return cls(path, so, providers=names)


def qnn_context(bundle: Bundle, kind: str) -> str | None:
    """The bundle's QNN context graph for `kind` (None if it has none), once the binary each of its
    EPContext nodes reads (`ep_cache_context`, relative to the graph) is checked to be a file the
    manifest lists."""
    import onnx
    m = bundle.manifest
    if m.qnn is None or kind not in m.qnn.contexts:
        return None
    name = m.qnn.contexts[kind]
    folder = PurePosixPath(name).parent
    for node in onnx.load(str(bundle.file(name)), load_external_data=False).graph.node:
        attrs = {a.name: a for a in node.attribute}
        embedded = "embed_mode" in attrs and attrs["embed_mode"].i == 1   # the binary is inside the node
        if node.op_type == "EPContext" and "ep_cache_context" in attrs and not embedded:
            bundle.file((folder / attrs["ep_cache_context"].s.decode("utf-8", "replace")).as_posix())   # listed, or refused
    return name


class DecoderSession:
    rows_logits = False   # forward_rows works: the graph takes logits_to_keep (CPU-form bundles)
    own_sessions = True   # int4/int8 adapters of a prepacked decoder may run in sessions of their own

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None):
        cfg = bundle.manifest.model.config
        self.num_layers, self.vocab_size = cfg.num_layers, cfg.vocab_size
        self.kv_shape = (cfg.num_kv_heads, cfg.head_dim)
        self.max_position = cfg.max_position
        self.session = load_graph(bundle, "decoder", threads, providers)
        self.binding = self.session.io_binding()
        self.threads = threads
        # the session and binding that run: the base's, or an adapter's own (use_adapter)
        self.running, self.base_binding = self.session, self.binding
        self.lanes: dict[str, tuple[ort.InferenceSession, ort.IOBinding] | None] = {}   # None: runs bound
        self.logits = np.zeros((1, 1, self.vocab_size), np.float32)
        self.binding.bind_output(DecoderNames.LOGITS, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        self.rows_logits = DecoderNames.LOGITS_TO_KEEP in {i.name for i in self.session.get_overridable_initializers()}
        self.rows_bound = 1   # logits rows the binding holds now (forward_rows rebinds, forward binds back)
        self._spare = np.zeros((0, 1, self.vocab_size), np.float32)   # forward_rows' logits, grown as needed
        self.capacity = 0
        self.cache: list[ort.OrtValue] = []   # a KV buffer per layer and kind, made by reserve()
        self.length = 0   # tokens already in the KV cache
        self.adapters = AdapterSet(bundle, self.session)
        # image/audio feature inputs: given with prefill, empty otherwise (plain inputs in bundles that
        # require "media-inputs", overridable initializers with empty defaults in older ones)
        self.media_inputs = {i.name: i.shape[1] for i in [*self.session.get_inputs(),
                                                          *self.session.get_overridable_initializers()]
                             if i.name in bundle.manifest.decoder.media}
        self.media_empty = {name: np.zeros((0, hidden), np.float32) for name, hidden in self.media_inputs.items()}
        self.media_bound = True   # so that the first call binds the empty values
        self.bind_media(None)

    def sessions(self) -> dict[str, ort.InferenceSession]:
        """The decoder's graph sessions by graph kind."""
        return {"decoder": self.session}

    def use_adapter(self, name: str | None) -> None:
        """Choose the LoRA adapter for the next tokens (None: the base model, at no extra cost). An int4
        or int8 adapter of a decoder loaded from a prepacked entry runs in a session of its own, created
        on its first use (runtime/adapter_sessions.py); any other is bound to the base session's LoRA inputs."""
        lane = self.lane(name) if name is not None else None
        self._switch(*(lane or (self.session, self.base_binding)))
        if lane is None:
            self.adapters.activate(self.binding, name)

    def lane(self, name: str) -> tuple[ort.InferenceSession, ort.IOBinding] | None:
        """Adapter `name`'s own (session, binding), made on first use; None when it runs bound to the
        base session (its file is fp32/fp16, or the base was not loaded from a prepacked entry)."""
        if name in self.lanes:
            return self.lanes[name]
        entry = getattr(self.session, "prepacked", None)
        mapping, arrays = self.adapters.read(name)
        self.lanes[name] = None
        quantised = any(a.dtype in (np.uint8, np.int8) for a in arrays.values())   # int4 files store uint8
        if not self.own_sessions or entry is None or not quantised:
            return None
        before = file_mappings(prepacked.cache_root())
        try:
            session = adapter_session(entry, arrays, session_options(self.threads), name)
        except BundleError as e:
            self.adapters.load(name)   # a file that does not fit is refused here, in the LoRA inputs' terms
            warnings.warn(f"{e}; it runs on the decoder's LoRA inputs instead", stacklevel=3)
            return None
        release_load_pages(prepacked.cache_root(), before)
        if hasattr(mmap, "MADV_DONTNEED"):   # packed now: the file's pages leave RSS (288 MB at 32 layers, rank 320)
            mapping.madvise(mmap.MADV_DONTNEED)
        session.prepacked = entry
        self.lanes[name] = (session, session.io_binding())
        return self.lanes[name]

    def load_adapter(self, name: str) -> None:
        """Map, check and prepare adapter `name` now rather than at its first request."""
        if self.lane(name) is None:
            self.adapters.load(name)

    def _switch(self, session: ort.InferenceSession, binding: ort.IOBinding) -> None:
        """Make `binding` (of `session`) the one that runs, bound to the same KV buffers and outputs."""
        if binding is self.binding:
            return
        self.running, self.binding = session, binding
        self._bind_cache()
        if self.rows_logits:
            self._bind_rows(1, self.logits)
        else:
            binding.bind_output(DecoderNames.LOGITS, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        self.media_bound = True
        self.bind_media(None)

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` tokens and start a new sequence (reallocates only to grow)."""
        self.reset()
        if capacity <= self.capacity:
            return
        self.capacity = capacity
        self.mask = np.ones((1, capacity), np.int64)
        shape = (1, self.kv_shape[0], capacity, self.kv_shape[1])
        # keep alive: the binding holds only pointers
        self.cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2 * self.num_layers)]
        self._bind_cache()

    def _bind_cache(self) -> None:
        """Bind each layer's KV buffer as both its past input and its present output (appended in place)."""
        for index, value in enumerate(self.cache):
            layer, kind = divmod(index, 2)
            self.binding.bind_ortvalue_input(DecoderNames.past(layer, ("key", "value")[kind]), value)
            self.binding.bind_ortvalue_output(DecoderNames.present(layer, ("key", "value")[kind]), value)

    def reset(self) -> None:
        """Forget the cached tokens (the buffers stay allocated)."""
        self.length = 0

    def bind_media(self, media: dict[str, np.ndarray] | None) -> None:
        """Features for the placeholder tokens of the next call (None: none)."""
        if not media and not self.media_bound:
            return
        self._media_values = []   # the binding only points into these arrays: keep them alive
        for name in self.media_inputs:
            value = np.ascontiguousarray((media or {}).get(name, self.media_empty[name]), np.float32)
            self._media_values.append(value)
            # overridable initializers take OrtValues (bind_cpu_input accepts plain inputs only)
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
        self.media_bound = bool(media)

    def forward(self, ids: np.ndarray, media: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run `ids` ([n] int64, contiguous) after the cached tokens; returns last-position logits.
        `media` holds features for the image/audio placeholder ids among them."""
        if self.rows_bound != 1:
            self._bind_rows(1, self.logits)
        return self._run(ids, media)[0, 0]

    def forward_rows(self, ids: np.ndarray) -> np.ndarray:
        """Run text `ids` ([n] int64) after the cached tokens; returns the logits of all n rows
        ([n, vocab]), for checking drafted tokens in one call (needs `rows_logits`)."""
        n = ids.shape[0]
        if not self.rows_logits:
            raise BundleError("this decoder graph returns the last position's logits only (no 'logits_to_keep' "
                              "input); re-export the bundle with this phi4edge for prompt-lookup decoding")
        if self.rows_bound != n:
            if len(self._spare) < n:
                self._spare = np.zeros((n, 1, self.vocab_size), np.float32)
            self._bind_rows(n, self._spare[:n])
        return self._run(ids, None)[:, 0]

    def _bind_rows(self, n: int, out: np.ndarray) -> None:
        self._rows = (np.array([n], np.int64), out)   # the binding only points into these arrays: keep them alive
        self.binding.bind_ortvalue_input(DecoderNames.LOGITS_TO_KEEP, ort.OrtValue.ortvalue_from_numpy(self._rows[0]))
        self.binding.bind_output(DecoderNames.LOGITS, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.rows_bound = n

    def _run(self, ids: np.ndarray, media: dict[str, np.ndarray] | None) -> np.ndarray:
        """Run the bound graph on `ids`; returns the bound logits array [rows, 1, vocab]."""
        self.bind_media(media)
        n = ids.shape[0]
        total = self.length + n
        if total > self.capacity:
            raise BundleError(f"sequence of {total} tokens exceeds the reserved {self.capacity}")
        self.binding.bind_input(DecoderNames.INPUT_IDS, "cpu", 0, np.int64, [1, n], ids.ctypes.data)
        self.binding.bind_input(DecoderNames.ATTENTION_MASK, "cpu", 0, np.int64, [1, total], self.mask.ctypes.data)
        self.running.run_with_iobinding(self.binding)
        self.length = total
        return self._rows[1] if self.rows_bound != 1 else self.logits
