"""Timing primitives shared by `phi4edge bench` and the scripts in bench/: warm-up, repetitions,
medians. Kept here (not in bench/) because the CLI ships them; they need nothing beyond the runtime."""
from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..providers import QNN, SIMULATED
from .generate import Model
from .memory import rss


def decode_tokens_per_s(model: Model, new_tokens: int = 64, prompt_len: int = 16, adapter: str | None = None) -> float:
    """One greedy generation of exactly `new_tokens` (end tokens ignored); decode tokens per second."""
    prompt = (np.arange(prompt_len) % 97 + 10).tolist()
    request: dict = {}
    for _ in model.stream(prompt, new_tokens, adapter=adapter, stop_token_ids=set(), request=request, logprobs=False):
        pass
    return request["timings"]["decode_tokens_per_s"]


def interleaved(runs: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each measurement in turn, round after round, so machine noise hits all of them alike."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            results[name].append(fn())
    return results


def switch_latency_ms(model: Model, a: str | None, b: str | None, switches: int = 1000) -> float:
    """Median time to switch the active adapter between a and b (both already loaded)."""
    dec = model.decoder
    dec.use_adapter(a)
    dec.use_adapter(b)
    times = []
    for i in range(switches):
        name = a if i % 2 == 0 else b
        start = time.perf_counter()
        dec.use_adapter(name)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimddp", "i8mm", "sve")


def cpu_name() -> str:
    """The CPU and the instruction-set extensions that pick int4/int8 kernels (onnxruntime's MLAS and
    llama.cpp's), for every benchmark table; the platform's processor string off Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    field = lambda key: next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")
    flags = set(field("flags").split() or field("Features").split())   # x86 / ARM spelling
    isa = ", ".join(f for f in KERNEL_FLAGS if f in flags)
    return f"{field('model name') or platform.processor()} ({platform.machine()}, {os.cpu_count()} cores; {isa})"


@dataclass(frozen=True)
class Bandwidth:
    """What the read-bandwidth probe measured: the median and best of its passes over one buffer."""
    gbs: float                 # median GB/s
    best_gbs: float
    buffer_bytes: int
    threads: int
    llc_bytes: int | None      # the last-level cache the buffer must dwarf (None: unknown here)
    method: str


def last_level_cache_bytes() -> int | None:
    """The largest cache of CPU 0 (Linux sysfs), or None where sysfs does not say."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=None)


def read_bandwidth(threads: int | None = None, repeats: int = 7, buffer_bytes: int | None = None) -> Bandwidth:
    """The memory read ceiling a decode step can reach: onnxruntime's ReduceSum over a float32
    buffer of at least 8x the last-level cache (512 MiB at least), rows split across all the
    cores this process may use. A numpy sum was the probe before: single-threaded per chunk and
    compute-bound, it gave 7.5 GB/s on one thread and 15.1 on two on a Xeon (issue 21), so decode
    came out at 108% of "roofline". One thread of ReduceSum reads a cache-resident 16 MiB 1.8-2.1x
    faster than this buffer (bench/RESULTS.md), so here the memory, not the kernel, is the limit.
    `buffer_bytes` overrides the size (bench/bandwidth.py's cache-resident comparison)."""
    from onnx import TensorProto, helper
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    llc = last_level_cache_bytes()
    rows = 4096   # parallel over rows; each row 128 KiB or more, read start to end
    size = buffer_bytes or max(512 << 20, 8 * (llc or 0))
    cols = -(-size // (4 * rows))
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, cols])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    data = np.ones((rows, cols), np.float32)
    session.run(None, {"x": data})   # warm-up: pages faulted in, threads started
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": data})
        rates.append(data.nbytes / (time.perf_counter() - start) / 1e9)
    return Bandwidth(statistics.median(rates), max(rates), data.nbytes, threads, llc,
                     f"onnxruntime ReduceSum, float32 [{rows}, {cols}], {threads} threads, median of {repeats}")


def decode_bytes_per_token(bundle) -> int:
    """Decoder weight bytes read per generated token: every initializer in the data file but the
    rotary caches (of which one row is read) and the embedding gather (one row), unless the
    embedding is the tied LM head, which is read whole (a screened table's high halves and scales:
    its low halves are gathered, quant/screen.py)."""
    tied = bundle.manifest.model.config.tie_word_embeddings
    total = 0
    for name, length in _initializer_bytes(bundle):
        # static bundles: rotary tables, and an fp16 embedding table besides the tied int4 one
        if "_cache" in name or name.endswith(("_table", ".low")) or name == "embed_tokens.fp16" or \
                (name.startswith("embed_tokens") and not tied):
            continue
        total += length
    return total


def _initializer_bytes(bundle) -> list[tuple[str, int]]:
    """(name, bytes) of the decoder's stored weights: those in external data for an ONNX graph,
    every initializer for an ORT-format graph (read with onnxruntime's own FlatBuffers bindings)."""
    path = bundle.file(bundle.manifest.decoder.graph)
    if bundle.manifest.graph_format == "ort":
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession
        graph = InferenceSession.GetRootAs(path.read_bytes(), 0).Model().Graph()
        tensors = [graph.Initializers(i) for i in range(graph.InitializersLength())]
        return [(t.Name().decode(), t.RawDataLength()) for t in tensors]
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return [(t.name, next((int(e.value) for e in t.external_data if e.key == "length"), 0)) for t in model.graph.initializer]


def prefill_tokens_per_s(model: Model, length: int) -> float:
    prompt = (np.arange(length) % 97 + 10).tolist()
    request: dict = {}
    for _ in model.stream(prompt, 1, request=request):
        pass
    return length / (request["timings"]["prefill_ms"] / 1e3)


def bench(model: Model, prompt_lengths=(16, 128, 512), new_tokens: int = 32, repeats: int = 3) -> dict:
    """Medians over `repeats` runs after one warm-up: what `phi4edge bench` prints. Called right
    after loading `model`, its resident memory is what the load left (`memory_after_load`)."""
    import resource
    loaded = rss()
    lengths = [n for n in prompt_lengths if n + new_tokens < model.context_length]
    runs: dict[str, Callable[[], float]] = {f"prefill_{n}": functools.partial(prefill_tokens_per_s, model, n)
                                            for n in lengths}
    runs["decode"] = lambda: decode_tokens_per_s(model, new_tokens)
    runs["ttft_ms"] = lambda: _ttft_ms(model)
    for name in model.adapters[:1]:
        runs[f"decode_with_{name}"] = functools.partial(decode_tokens_per_s, model, new_tokens, adapter=name)
    samples = interleaved(runs, repeats)
    med = {k: statistics.median(v) for k, v in samples.items()}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # before the bandwidth probe
    bandwidth = read_bandwidth()
    per_token = decode_bytes_per_token(model.bundle)
    roofline = bandwidth.gbs * 1e9 / per_token
    result = {
        "prefill_tokens_per_s": {n: med[f"prefill_{n}"] for n in lengths},
        "decode_tokens_per_s": med["decode"], "time_to_first_token_ms": med["ttft_ms"],
        "decode_bytes_per_token": per_token, "read_bandwidth_gbs": bandwidth.gbs, "bandwidth_probe": asdict(bandwidth),
        "roofline_tokens_per_s": roofline, "fraction_of_roofline": med["decode"] / roofline,
        "repeats": repeats, "new_tokens": new_tokens,
        # loaded from a `phi4edge prepack` entry: its mapped pages are handed back after the load and
        # come back as decoding reads them, so memory_after_load is not the working set
        "prepacked": sorted(k for k, s in model.decoder.sessions().items() if getattr(s, "prepacked", False)),
    }
    if loaded:
        weights = sum(length for _, length in _initializer_bytes(model.bundle))
        result["memory_after_load"] = {"rss_bytes": loaded["rss"], "anon_bytes": loaded["anon"],
                                       "file_bytes": loaded["file"], "decoder_weight_bytes": weights,
                                       "rss_over_weights": loaded["rss"] / weights}
    if model.adapters:
        name = model.adapters[0]
        result["adapter"] = {"name": name, "decode_tokens_per_s": med[f"decode_with_{name}"],
                             "ratio_to_text_only": med[f"decode_with_{name}"] / med["decode"],
                             # an int4/int8 adapter of a prepacked decoder runs in a session of its own
                             "own_session": getattr(model.decoder, "lanes", {}).get(name) is not None,
                             "switch_latency_ms": switch_latency_ms(model, None, name)}
    if model.bundle.manifest.vision:
        image = _test_image(model)
        result["image_encode_ms"] = _median_ms(lambda: model.image_features([image]), repeats)
    if model.bundle.manifest.speech:
        audio = _test_audio(model)
        result["audio_encode_ms"] = _median_ms(lambda: model.audio_features([audio], False), repeats)
    result["peak_rss_mb"] = peak_rss_mb
    # what ran where; on x86-64, QNN is its HTP simulator, whose times say nothing about a phone's
    result["execution"] = {"nodes": model.node_counts(),
                           "qnn_simulator": SIMULATED and any(QNN in n for n in model.node_counts().values())}
    return result


def _median_ms(fn, repeats: int) -> float:
    """Median wall time of fn after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _ttft_ms(model: Model, length: int = 128) -> float:
    start = time.perf_counter()
    for _ in model.stream((np.arange(length) % 97 + 10).tolist(), 1):
        pass
    return (time.perf_counter() - start) * 1e3


def _test_image(model: Model):
    from PIL import Image
    return model.prepare_image(Image.new("RGB", (896, 448), (120, 60, 30)))   # 2 crops + global


def _test_audio(model: Model):
    t = np.arange(5 * 16000) / 16000
    return model.prepare_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))   # 5 s
