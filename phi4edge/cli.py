"""The `phi4edge` command line."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import Phi4EdgeError
from .quant import (
    BITS_BUDGET,
    DEFAULT_BITS_BUDGET,
    DEFAULT_BLOCK,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_BLOCK,
    DEFAULT_HEAD,
    DEFAULT_METHOD,
    ENCODER_CHOICES,
    HEADS,
    METHODS,
)


def friendly_errors(fn):
    """Our own errors (bad checkpoint, bad bundle, bad request) and the system's (disk full,
    permission denied) become one line and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Phi4EdgeError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory") from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
    return wrapper


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


PROMPT_LOOKUP = click.option(
    "--prompt-lookup", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
    help="Draft up to N tokens per step from the prompt and answer so far, checked in one decoder call "
         "(greedy answers only, unchanged; faster on copy-heavy answers). 0: off.")
REQUIRE_PROVIDER = click.option(
    "--require-provider", is_flag=True,
    help="Refuse to run a graph the requested --provider does not take whole, instead of letting the CPU run the rest.")
PROVIDER = click.option("--provider", "providers", multiple=True,
                        help="Execution provider (cpu, qnn, webgpu, openvino, cuda, ...; repeatable, in order of preference).")


def _providers(names: tuple[str, ...], require: bool) -> list[str]:
    """The --provider names as the runtime takes them (strict with --require-provider)."""
    from .runtime.session import ProviderRequest
    if require and not [n for n in names if n.lower() not in ("cpu", "cpuexecutionprovider")]:
        raise click.UsageError("--require-provider needs a --provider other than cpu")
    return ProviderRequest(names, strict=require)


@click.group()
@click.version_option(package_name="phi4edge")
def main() -> None:
    """Phi-4-mini and Phi-4-multimodal on laptops and phones, offline."""
    import warnings
    # the runtime's warnings (a provider that leaves nodes to the CPU) as one line each on stderr
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Bundle folder to create.")
@click.option("--precision", type=click.Choice(["int4", "fp32"]), default="int4", show_default=True)
@click.option("--block-size", type=int, default=DEFAULT_BLOCK, show_default=True,
              help="int4 quantisation block size (16-256; a partial last block is zero padded).")
@click.option("--quant", type=click.Choice(sorted(METHODS)), default=DEFAULT_METHOD, show_default=True,
              help="int4 method: gptq (error feedback, calibrated on the text shipped in the package), imatrix (scales "
                   "searched against calibration-weighted error), hqq (fitted scales and zero points, no calibration), "
                   "rtn (round to nearest). Figures: docs/quantization.md.")
@click.option("--head", type=click.Choice(HEADS), default=DEFAULT_HEAD, show_default=True,
              help="Precision of the (tied) embedding / LM head table. int8-screened: the int8 table's bytes in two int4 "
                   "halves; the LM head reads the high halves and completes its top 256 logits exactly (faster decode, "
                   "the other logits int4-accurate; CPU graphs, WebGPU/QNN get plain int8; docs/quantization.md).")
@click.option("--head-block-size", type=int, default=0, help="Block size of the head table [default: --block-size].")
@click.option("--bits-budget", type=float, default=DEFAULT_BITS_BUDGET,
              help="Mixed precision: store the decoder linears most sensitive on the calibration text in int8 while "
                   f"bits per weight over every decoder matrix (table included) stay within this; 0: none [default: "
                   f"{BITS_BUDGET} with gptq or imatrix when the block size and head leave room, else none].")
@click.option("--encoder-quant", type=click.Choice(ENCODER_CHOICES), default=DEFAULT_ENCODER, show_default=True,
              help="The vision/speech encoders' linears: int4 hqq or rtn, int8, or fp32 (figures: docs/quantization.md).")
@click.option("--encoder-block-size", type=int, default=DEFAULT_ENCODER_BLOCK, show_default=True,
              help="Block size of the encoders' linears (0: --block-size).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=PEFT_DIR",
              help="Add a PEFT LoRA adapter (repeatable). Phi-4-multimodal's vision/speech come by themselves.")
@click.option("--adapter-precision", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="fp32", show_default=True,
              help="LoRA weight precision (fp16: half the size, fast on ARM64, slower than fp32 on x86; "
                   "int8: a quarter of the size, faster than fp32 with an adapter active on x86; int4: an eighth "
                   "of the file size, files for phi4edge's runtime only, widened to int8 at load. After 'phi4edge "
                   "prepack' int8 and int4 adapters run in sessions of their own, int4 the fastest).")
@click.option("--lora", is_flag=True, help="Add LoRA inputs even without adapters, to bring adapters later.")
@click.option("--format", "graph_format", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="Graph format: ONNX with external weights, or onnxruntime's ORT format for phones and reduced "
                   "onnxruntime builds (2 GiB at most per graph; see 'phi4edge mobile').")
@click.option("--target", type=click.Choice(["dynamic", "webgpu", "static", "qnn"]), default="dynamic", show_default=True,
              help="dynamic: graphs for any prompt length (CPU, GPU); webgpu: the dynamic graphs in the decoder form "
                   "WebGPU runs; static: fixed shapes and NPU operators (docs/qnn.md); qnn: static plus Qualcomm QNN "
                   "context binaries (needs onnxruntime-qnn).")
@click.option("--context", type=click.IntRange(min=3), default=None,
              help="static/qnn: positions in the fixed window, prompt + answer [default: 1024].")
@click.option("--prefill-chunk", type=click.IntRange(min=2), default=None,
              help="static/qnn: prompt tokens per prefill call [default: 32].")
@click.option("--image-crops", type=click.IntRange(min=1), default=None,
              help="static/qnn: crops besides the global image the vision graph takes [default: the checkpoint's limit].")
@click.option("--audio-seconds", type=click.FloatRange(min=0.1, max=40), default=None,
              help="static/qnn: the longest audio the speech graph takes; shorter clips are padded [default: 10].")
@click.option("--soc-model", type=click.IntRange(min=1), default=None,
              help="qnn: the Snapdragon to compile for, as QNN's soc_model id [default: 69, the 8 Elite; 57: 8 Gen 3].")
@friendly_errors
def export(model_dir: str, out_dir: str, precision: str, block_size: int, quant: str, head: str, head_block_size: int,
           bits_budget: float | None, encoder_quant: str, encoder_block_size: int, force: bool, adapters: tuple[str, ...],
           adapter_precision: str, lora: bool, graph_format: str, target: str, context: int | None,
           prefill_chunk: int | None, image_crops: int | None, audio_seconds: float | None, soc_model: int | None) -> None:
    """Export a Hugging Face checkpoint folder to a bundle."""
    from .export import export_model  # export-only dependencies load only here
    named: dict[str, str | Path] = {}
    for spec in adapters:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise click.BadParameter(f"{spec!r}: expected NAME=PEFT_DIR", param_hint="--adapter")
        named[name] = folder
    static: dict[str, Any] = {"context": context, "prefill_chunk": prefill_chunk, "image_crops": image_crops,
                              "audio_seconds": audio_seconds}
    given = [flag for flag, wrong in [("--soc-model", soc_model is not None and target != "qnn")] + (
        [("--" + k.replace("_", "-"), v is not None) for k, v in static.items()] if target in ("dynamic", "webgpu") else
        [("--format ort", graph_format != "onnx"), ("--lora", lora),
         (f"--adapter-precision {adapter_precision}", adapter_precision != "fp32")]) if wrong]
    if given:   # static bundles are ONNX, with fp32 LoRA inputs of their adapters' rank (docs/qnn.md)
        raise click.UsageError(f"{given[0]} does not apply to --target {target}")
    if target in ("dynamic", "webgpu"):
        path = export_model(model_dir, out_dir, precision=precision, block_size=block_size, force=force,
                            quant_method=quant, head=head, head_block_size=head_block_size, bits_budget=bits_budget,
                            encoder_quant=encoder_quant, encoder_block_size=encoder_block_size, adapters=named,
                            adapter_precision=adapter_precision, lora=lora, graph_format=graph_format,
                            webgpu=target == "webgpu")
    else:
        from .export.static import StaticShapes, export_static
        from .providers import DEFAULT_SOC
        path = export_static(model_dir, out_dir, precision=precision, block_size=block_size, force=force, adapters=named,
                             quant_method=quant, head=head, head_block_size=head_block_size, bits_budget=bits_budget,
                             encoder_quant=encoder_quant, encoder_block_size=encoder_block_size,
                             shapes=StaticShapes(**{k: v for k, v in static.items() if v is not None}),
                             qnn_soc=(soc_model or DEFAULT_SOC) if target == "qnn" else None)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Bundle folder to create.")
@click.option("--force", is_flag=True, help="Replace the output folder if it is a bundle.")
@friendly_errors
def mobile(bundle: str, out_dir: str, force: bool) -> None:
    """Convert an ONNX bundle's graphs to onnxruntime's ORT format (.ort) for phones.

    Writes a new bundle (the source is checked against its sha256 and left as it is) with the
    graphs in ORT format and required_operators.config, the operators of all its graphs, for a
    reduced onnxruntime build. Adapters, tokenizer and the rest are copied unchanged. Needs no
    checkpoint and no torch; the same as 'phi4edge export --format ort'."""
    from .export.mobile import mobile_bundle
    click.echo(f"wrote {mobile_bundle(bundle, out_dir, force)}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", default=None, help="The user message (or raw text with --no-chat-template).")
@click.option("--prompt-file", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the prompt from a UTF-8 file ('-': standard input) instead of --prompt.")
@click.option("--system", default=None, help="Optional system message.")
@click.option("--no-chat-template", is_flag=True, help="Send the prompt as raw text.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="Sampling temperature; greedy when unset or 0 (1.0 when only --top-k/--top-p are given).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="Sample among the k most likely tokens.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, help="Nucleus sampling mass.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed for sampling (>= 0).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores).")
@PROVIDER
@REQUIRE_PROVIDER
@click.option("--adapter", default=None,
              help="LoRA adapter of the bundle to use (default: 'vision' with images, 'speech' with audio only, "
                   "none for text; 'none' forces the base model).")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="An image for <|image_N|> in the prompt (repeatable; placed before the text without placeholders).")
@click.option("--audio", "audios", multiple=True, type=click.Path(dir_okay=False),
              help="An audio file (wav/flac/ogg, any rate) for <|audio_N|> in the prompt (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, ids, timings) instead of streaming.")
@click.option("--verify", is_flag=True, help="Check every file's sha256 before loading (sizes are always checked).")
@PROMPT_LOOKUP
@friendly_errors
def run(bundle: str, prompt: str | None, prompt_file, system: str | None, no_chat_template: bool,
        max_new_tokens: int, temperature: float | None, top_k: int, top_p: float, seed: int | None,
        threads: int | None, providers: tuple[str, ...], require_provider: bool, adapter: str | None,
        images: tuple[str, ...], audios: tuple[str, ...], as_json: bool, verify: bool, prompt_lookup: int) -> None:
    """Generate an answer to one prompt."""
    from . import load
    from .runtime.sampling import SamplingParams
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give the prompt with exactly one of --prompt TEXT or --prompt-file FILE")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read()
        except UnicodeDecodeError as e:
            raise click.ClickException(f"{prompt_file.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if temperature is None:
        temperature = 1.0 if (top_k or top_p < 1.0) else 0.0
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    model = load(bundle, threads=threads, providers=_providers(providers, require_provider), verify=verify)
    def on_text(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    assert prompt is not None
    result = model.generate(prompt, max_new_tokens=max_new_tokens, sampling=sampling,
                            chat_template=not no_chat_template, system=system, adapter=adapter,
                            images=list(images), audios=list(audios), on_text=None if as_json else on_text,
                            prompt_lookup=prompt_lookup)
    if as_json:   # with the nodes each execution provider runs, by graph
        click.echo(json.dumps(result.to_json() | {"nodes": model.node_counts()}))
    else:
        click.echo()
        t = result.timings
        speed = f", {t['decode_tokens_per_s']:.1f} tok/s" if t.get("decode_tokens_per_s") else ""
        if t.get("drafted_tokens"):
            speed += f", {t['accepted_tokens']} of {t['drafted_tokens']} drafted tokens accepted"
        from .providers import QNN, SIMULATED
        simulated = SIMULATED and any(QNN in n for n in model.node_counts().values())
        where = " on QNN's HTP simulator, not a phone" if simulated else ""
        click.echo(f"[{len(result.token_ids)} tokens, {result.finish_reason}; prefill {t['prefill_ms']:.0f} ms{speed}{where}]",
                   err=True)


def _engine_options(fn):
    """Options `serve` and `chat` share: how the model runs and what an answer may cost."""
    options = [
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores)."),
        click.option("--provider", "providers", multiple=True, help="Execution provider (repeatable, as in 'run')."),
        click.option("--max-context", type=click.IntRange(min=16), default=None,
                     help="Cap on tokens per conversation (bounds the KV cache's memory; default: the model's)."),
        click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Answer length when a request names none."),
        click.option("--temperature", type=click.FloatRange(min=0, max=2), default=0.0, show_default=True,
                     help="Sampling temperature when a request names none (0: greedy, as 'run')."),
        PROMPT_LOOKUP,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="PHI4EDGE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 (also read from $PHI4EDGE_API_KEY).")
@click.option("--max-queue", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests that may wait behind the running one; more are refused with 429.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds per request, waiting included; an answer still going then is cut short.")
@click.option("--queue-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds a request may wait for its turn; not started by then, it gets 503.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=32.0, show_default=True,
              help="Largest request body (base64 images and audio included); larger ones get 413.")
@click.option("--allow-local-files", is_flag=True, help="Let image_url and input_audio name files on this machine.")
@_engine_options
@friendly_errors
def serve(bundle: str, host: str, port: int, api_key: str | None, max_queue: int, timeout: float, queue_timeout: float,
          max_body_mb: float, allow_local_files: bool, threads: int | None, providers: tuple[str, ...], max_context: int | None,
          max_tokens: int, temperature: float, prompt_lookup: int) -> None:
    """Serve a bundle over an OpenAI-compatible HTTP API (needs: pip install 'phi4edge[serve]')."""
    try:
        from .runtime.serve.app import ServerSettings
        from .runtime.serve.app import serve as run_server
    except ImportError as e:
        raise click.ClickException(f"'phi4edge serve' needs {e.name}: pip install 'phi4edge[serve]'") from None
    from .runtime.serve.engine import load_engine
    from .runtime.serve.protocol import Limits
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach it can use it", err=True)
    limits = Limits(max_tokens=max_tokens, temperature=temperature, allow_local_files=allow_local_files)
    settings = ServerSettings(host, port, api_key, max_queue, timeout, queue_timeout, int(max_body_mb * 2 ** 20),
                              limits=limits)
    run_server(load_engine(bundle, threads, list(providers), max_context, prompt_lookup), settings)


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--system", default=None, help="System message for the conversation.")
@click.option("--adapter", default=None, help="Adapter to use (default: routed by modality; 'none': the base model).")
@_engine_options
@friendly_errors
def chat(bundle: str, system: str | None, adapter: str | None, threads: int | None, providers: tuple[str, ...],
         max_context: int | None, max_tokens: int, temperature: float, prompt_lookup: int) -> None:
    """Chat with a bundle in the terminal (/help lists the commands; Ctrl-C stops an answer)."""
    from .runtime.sampling import SamplingParams
    from .runtime.serve.chat import Chat
    from .runtime.serve.engine import load_engine
    engine = load_engine(bundle, threads, list(providers), max_context, prompt_lookup)
    Chat(engine, system=system, adapter=adapter, max_tokens=max_tokens,
         sampling=SamplingParams(temperature=temperature)).loop()


@main.command("bench")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@click.option("--chart", type=click.Path(dir_okay=False), default=None, help="Also draw a PNG chart here.")
@PROVIDER
@REQUIRE_PROVIDER
@friendly_errors
def bench_cmd(bundle: str, repeats: int, new_tokens: int, threads: int | None, output: str | None,
              chart: str | None, providers: tuple[str, ...], require_provider: bool) -> None:
    """Measure a bundle: prefill, decode, time to first token, memory, adapters, encoders, and the
    nodes each execution provider ran."""
    from . import load
    from .runtime.benchmark import bench
    result = bench(load(bundle, threads=threads, providers=_providers(providers, require_provider)),
                   new_tokens=new_tokens, repeats=repeats)
    if chart:
        from .runtime.chart import bench_chart
        bench_chart(result, chart, f"phi4edge bench: {Path(bundle).name}")
    for key, value in result.items():
        click.echo(f"{key:26s} {json.dumps(value) if isinstance(value, (dict, list)) else f'{value:.4g}'}", err=True)
    text = json.dumps(result, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    click.echo(text)


@main.command("eval")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--set", "eval_set", type=click.Path(file_okay=False), required=True,
              help="Evaluation folder: image.jsonl, speech.jsonl and/or text.jsonl (see README).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["routed", "none", "swapped", "all"]),
              default=("routed",), show_default=True,
              help="Adapter per image/audio item: as routed, none (base model), or the other modality's (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N items of each set.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@PROVIDER
@REQUIRE_PROVIDER
@friendly_errors
def eval_cmd(bundle: str, eval_set: str, modes: tuple[str, ...], limit: int | None, threads: int | None,
             as_json: bool, providers: tuple[str, ...], require_provider: bool) -> None:
    """Score a bundle on held-out sets: image accuracy, speech WER, text perplexity."""
    from contextlib import ExitStack

    from . import load
    from .progress import progress
    from .runtime.evaluate import MODES, evaluate
    modes = MODES if "all" in modes else tuple(dict.fromkeys(modes))
    with ExitStack() as stack:
        model = load(bundle, threads=threads, providers=_providers(providers, require_provider))
        report = evaluate(model, Path(eval_set), modes, limit,
                          lambda total: stack.enter_context(progress(total, "eval", "item", not as_json)))
    report["nodes"] = model.node_counts()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"set {report['set']}: " + ", ".join(f"{n} {k}" for k, n in report["items"].items()))
    for mode in modes:
        s = report[mode]
        parts = ([f"image accuracy {s['image_accuracy']:.1%}"] if "image_accuracy" in s else []) + \
                ([f"speech WER {s['speech_wer']:.1%} (exact {s['speech_exact']:.1%})"] if "speech_wer" in s else [])
        click.echo(f"adapters {mode:8s} " + ", ".join(parts))
    if "text_perplexity" in report:
        click.echo(f"text perplexity {report['text_perplexity']:.3f}")
    click.echo(f"nodes by provider: {_nodes(report['nodes'])}")


def _nodes(counts: dict[str, dict[str, int]]) -> str:
    """{graph: {provider: nodes}} as 'decoder qnn 196; vision qnn 79, cpu 2'."""
    from .providers import short
    return "; ".join(f"{kind} " + ", ".join(f"{short(p)} {n}" for p, n in by.items()) for kind, by in counts.items())


@main.command()
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False), default=None,
              help="Where to export the embedded model (default: ~/.cache/phi4edge/embedded-PRECISION).")
@click.option("--precision", type=click.Choice(["int4", "fp32"]), default="int4", show_default=True)
@click.option("--force", is_flag=True, help="Export again even if the bundle exists.")
@friendly_errors
def demo(bundle_dir: str | None, precision: str, force: bool) -> None:
    """Export the embedded tiny Phi-4-multimodal and answer a text, an image and an audio prompt."""
    from . import load
    from .export import export_model
    from .models import EMBEDDED
    if not (EMBEDDED / "checkpoint" / "config.json").is_file():
        raise click.ClickException(f"the embedded model is missing from {EMBEDDED} (see scripts/train_embedded.py)")
    bundle = Path(bundle_dir) if bundle_dir else Path.home() / ".cache" / "phi4edge" / f"embedded-{precision}"
    if force or not (bundle / "manifest.json").is_file():
        export_model(EMBEDDED / "checkpoint", bundle, precision=precision, force=True)
    model = load(bundle)
    samples = EMBEDDED / "samples"
    spec = json.loads((samples / "samples.json").read_text())
    requests: list[tuple[str, str, str, dict[str, list[str]]]] = [
                ("text", "Count from three to seven.", "three four five six seven", {}),
                ("image", spec["image"]["prompt"], spec["image"]["answer"], {"images": [str(samples / spec["image"]["file"])]}),
                ("audio", spec["audio"]["prompt"], spec["audio"]["answer"], {"audios": [str(samples / spec["audio"]["file"])]})]
    click.echo(f"bundle {bundle} ({precision})")
    for kind, prompt, expected, media in requests:
        result = model.generate(prompt, max_new_tokens=24, images=media.get("images", []), audios=media.get("audios", []))
        files = ", ".join(Path(f).name for f in media.get("images", []) + media.get("audios", []))
        click.echo(f"\n[{kind}] {prompt}" + (f"  ({files})" if files else ""))
        click.echo(f"  answer:   {result.text.strip()}   (adapter: {result.adapter or 'none'})")
        click.echo(f"  expected: {expected}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of every file.")
@friendly_errors
def inspect(bundle: str, no_verify: bool) -> None:
    """Show a bundle's manifest and verify its files."""
    from .bundle import open_bundle
    b = open_bundle(bundle, check=False)
    m = b.manifest
    cfg, q = m.model.config, m.quantization
    click.echo(f"bundle      {b.path}  ({m.format} v{m.format_version}, {m.created_by or '?'})")
    click.echo(f"model       {m.model.family} {cfg.architecture} from {m.model.source}")
    click.echo(f"shape       {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/"
               f"{cfg.num_kv_heads} kv, head_dim {cfg.head_dim}, vocab {cfg.vocab_size}")
    click.echo(f"context     {cfg.max_position} tokens, rope {cfg.rope_kind} (rotary dim {cfg.rotary_dim})")
    quant = q.precision if q.precision == "fp32" else \
        f"int4 ({q.method or 'rtn'}), block {q.block_size}, accuracy level {q.accuracy_level}"
    if q.bits_budget:
        quant += f"; {len(q.overrides or {})} linears int8 within {q.bits_budget} bits/weight"
    click.echo(f"weights     {quant}")
    if q.tied_embeddings:
        click.echo(f"table       {q.tied_embeddings}")
    click.echo("graphs      " + (f"ORT format (optimisation {m.ort.optimization}, onnxruntime {m.ort.onnxruntime}; "
                                 f"operators in {m.ort.required_operators})" if m.ort else "ONNX"))
    if m.static:   # the window, not config.max_position, bounds a request
        st = m.static
        click.echo(f"static      window {st.context} tokens, prefill chunks of {st.prefill_chunk}, LoRA rank {st.lora_rank}"
                   + (f", {m.vision.dynamic_hd} image crops" if m.vision else "")
                   + (f", audio up to {(st.audio_frames - 1) / 100:.1f} s" if m.speech else ""))
    if m.qnn:
        click.echo(f"qnn         context binaries for soc_model {m.qnn.soc_model} (onnxruntime-qnn {m.qnn.onnxruntime_qnn}): "
                   + ", ".join(m.qnn.contexts))
    click.echo(f"stop ids    {m.generation.eos_token_ids}")
    if m.vision:
        v = m.vision.config
        click.echo(f"vision      {v.num_layers} encoder layers, hidden {v.hidden_size}, crop {v.crop_size}, "
                   f"image token {v.image_token_id}")
    lora = m.decoder.lora
    click.echo(f"lora        {f'{lora} inputs on every layer linear' if lora else 'not supported (no LoRA inputs)'}")
    for name, a in m.adapters.items():
        click.echo(f"  adapter   {name}: rank {'/'.join(map(str, a.ranks))}, alpha {a.alpha:g}"
                   f"{' (rsLoRA)' if a.rslora else ''}, {a.layers} layers x {len(a.modules)} modules, "
                   f"{a.precision}  <- {a.source}")
    from .runtime import prepacked
    kinds = prepacked.kinds(b)
    cached = [k for k in kinds if prepacked.find(b, k)]
    if kinds:
        click.echo(f"prepacked   {', '.join(cached) or 'none'} for this CPU and onnxruntime"
                   + ("" if cached == kinds else f" (phi4edge prepack {b.path}: faster loads)"))
    report = b.audit(hashes=not no_verify)
    click.echo("files" + (" (sizes checked; sha256 skipped)" if no_verify else " (sizes and sha256 checked)"))
    for name, entry in m.files.items():
        status = "ok" if report[name] == "ok" else f"FAILED: {report[name]}"
        click.echo(f"  {name:40s} {_size(entry.size):>10s}  {entry.sha256[:16]}  {status}")
    for name, problem in report.items():
        if name not in m.files:
            click.echo(f"  {name:40s} FAILED: {problem}")
    bad = [n for n, s in report.items() if s != "ok"]
    if bad:
        raise click.ClickException(f"{len(bad)} file(s) failed the checks: {', '.join(bad)}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False), required=False)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for packing (default: all cores).")
@click.option("--clear", is_flag=True, help="Remove every prepacked graph from this machine's cache instead.")
@friendly_errors
def prepack(bundle: str | None, threads: int | None, clear: bool) -> None:
    """Save the bundle's graphs optimised, with their weights packed for this CPU, so that later loads
    skip both steps (the 32-layer decoder: a few seconds less to the first token), and int4/int8
    adapters run in sessions of their own that share the packed base weights (faster with an adapter active).

    The cache ($PHI4EDGE_CACHE, default ~/.cache/phi4edge) holds about twice the graphs' weight bytes,
    and an entry is used only with this bundle unchanged, this onnxruntime and this CPU."""
    import time

    from .bundle import open_bundle
    from .runtime import prepacked
    from .runtime.session import session_options
    if clear:
        click.echo(f"removed {_size(prepacked.clear())} from {prepacked.cache_root()}")
        return
    if bundle is None:
        raise click.UsageError("give a BUNDLE to prepack, or --clear")
    b = open_bundle(bundle, verify=True)   # the cache's key trusts the manifest's hashes: check them once
    kinds = prepacked.kinds(b)
    if not kinds:
        raise click.ClickException(f"{b.path}: its graphs are not plain ONNX graphs for the CPU "
                                   "(ORT-format and static-shapes bundles are not prepacked)")
    for kind in kinds:
        start = time.perf_counter()
        folder, written = prepacked.write(b, kind, session_options(threads))
        size = sum(p.stat().st_size for p in folder.iterdir())
        click.echo(f"{kind:8s} {'wrote' if written else 'already there'} {folder} ({_size(size)}"
                   + (f", {time.perf_counter() - start:.1f} s)" if written else ")"))


if __name__ == "__main__":
    main()
