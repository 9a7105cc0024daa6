"""`phi4edge export`: a Hugging Face checkpoint folder in, a bundle folder out."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import onnx
from tokenizers import Tokenizer

from ..bundle import file_table, read_tokenizer
from ..errors import CheckpointError
from ..format import MEDIA_INPUTS, WEBGPU_DECODER, Decoder, Generation, Manifest, Model, ModelConfig, Quantization, Speech, Vision
from ..models.checkpoint import Checkpoint
from ..models.config import DecoderConfig, load_config
from ..models.lora import LoraAdapter, check_fits, read_peft
from ..models.phi3 import Phi3Weights
from ..progress import progress
from ..quant import (
    CALIBRATED,
    DEFAULT_BITS_BUDGET,
    DEFAULT_BLOCK,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_BLOCK,
    DEFAULT_HEAD,
    DEFAULT_METHOD,
    QuantConfig,
)
from .adapters import PRECISIONS, graph_precision, write_adapter
from .calibrate import calibrate, calibration_ids, default_budget
from .decoder import DecoderBuilder, DecoderOptions
from .families import Encoder, Family, family_for
from .genai_config import genai_config
from .graph import Graph, WeightFile
from .mobile import convert_graphs, point_genai_config, remove_onnx_graphs
from .staging import staging

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json",
                   "preprocessor_config.json", "processor_config.json")
STOP_TOKENS = ("<|end|>", "<|endoftext|>")


def stop_token_ids(model_dir: Path, cfg: DecoderConfig, tokenizer: Tokenizer) -> list[int]:
    """Every id that ends generation: config, generation_config, and the chat end tokens."""
    ids = set(cfg.eos_token_ids)
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else eos or [])
    ids.update(i for t in STOP_TOKENS if (i := tokenizer.token_to_id(t)) is not None)
    return sorted(i for i in ids if i is not None)


def base_model_id(cfg: DecoderConfig, weights: Phi3Weights) -> str:
    """Identifies the base weights (not their precision): adapters record it and are refused by a
    bundle of any other base."""
    h = hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode())
    h.update(weights.linear(0, "self_attn.qkv_proj")[:64].tobytes())
    return h.hexdigest()


def find_adapters(family: Family, model_dir: Path, ckpt: Checkpoint, cfg: DecoderConfig,
                  extra: dict[str, Path]) -> list[LoraAdapter]:
    """The family's own adapters (Phi-4-multimodal's vision/speech LoRAs), plus those given with --adapter."""
    found = family.adapters(ckpt, cfg, model_dir) + [read_peft(name, path) for name, path in extra.items()]
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"adapter name '{dup}' is given twice (the checkpoint may already carry it)")
    for adapter in found:
        check_fits(adapter, cfg)
    return found


def export_encoder(encoder: Encoder, quant: QuantConfig | None, out: Path, show_progress: bool) -> Vision | Speech:
    """KIND.onnx (+ its own weight file) for one encoder; returns its manifest section."""
    kind = encoder.kind
    data = WeightFile(out / f"{kind}.onnx.data")
    graph = Graph(f"phi4mm_{kind}", data)
    with progress(encoder.layers, f"export {kind}", "layer", show_progress) as tick:
        encoder.builder(graph, encoder.weights, quant).build(lambda _: tick())
    data.close()
    onnx.save_model(graph.model(), out / f"{kind}.onnx")
    return encoder.entry(f"{kind}.onnx")


@dataclass(frozen=True)
class Source:
    """A checkpoint folder read and checked for export, before anything is written."""

    folder: Path
    cfg: DecoderConfig
    tokenizer: Tokenizer
    family: Family
    weights: Phi3Weights
    adapters: list[LoraAdapter]          # the family's own and those given with --adapter
    adapter_dirs: list[Path]
    base_id: str
    encoders: list[Encoder]

    @property
    def inputs(self) -> list[Path]:
        """Folders the export reads (staging refuses an output inside them)."""
        return [self.folder, *self.adapter_dirs]

    def model(self) -> Model:
        """The manifest's `model` section."""
        return Model(family=self.family.name, source=self.folder.resolve().name, base_id=self.base_id,
                     config=ModelConfig(**self.cfg.to_json()))

    def generation(self) -> Generation:
        return Generation(eos_token_ids=stop_token_ids(self.folder, self.cfg, self.tokenizer))

    def copy_files(self, out: Path) -> None:
        """The tokenizer files and config.json, as the checkpoint has them."""
        for name in TOKENIZER_FILES + ("config.json",):
            if (self.folder / name).is_file():
                shutil.copy2(self.folder / name, out / name)


def read_source(model_dir: str | Path, adapters: dict[str, str | Path] | None = None) -> Source:
    """Read a Phi-3-family checkpoint folder (and extra PEFT adapter folders by name), checking
    every tensor's presence and shape."""
    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path}: not found (phi4edge needs the fast tokenizer file)")
    tokenizer = read_tokenizer(tok_path, CheckpointError)
    family = family_for(cfg)
    ckpt = Checkpoint(model_dir)
    weights = Phi3Weights(ckpt, cfg)
    weights.check()   # every tensor present and shaped right before anything is written
    extra = {k: Path(v) for k, v in (adapters or {}).items()}
    return Source(model_dir, cfg, tokenizer, family, weights, find_adapters(family, model_dir, ckpt, cfg, extra),
                  list(extra.values()), base_model_id(cfg, weights), family.encoders(ckpt, cfg, tokenizer, model_dir))


def quant_config(src: Source, precision: str, method: str = DEFAULT_METHOD, block_size: int = DEFAULT_BLOCK,
                 head: str = DEFAULT_HEAD, head_block_size: int = 0, encoder: str = DEFAULT_ENCODER,
                 encoder_block_size: int = DEFAULT_ENCODER_BLOCK, bits_budget: float | None = DEFAULT_BITS_BUDGET,
                 show_progress: bool = True) -> QuantConfig | None:
    """The weights' quantisation settings (None for fp32), with the calibration pass's linears for a
    calibrated method or mixed precision, and the int8 linears of mixed precision."""
    if precision not in ("int4", "fp32"):
        raise CheckpointError(f"--precision {precision!r}: choose int4 or fp32")
    if precision == "fp32":
        return None
    quant = QuantConfig(method, block_size=block_size, head=head, head_block_size=head_block_size, encoder=encoder,
                        encoder_block_size=encoder_block_size, bits_budget=bits_budget or 0.0)
    if bits_budget is None:
        quant = replace(quant, bits_budget=default_budget(src.cfg, quant))
    if quant.method not in CALIBRATED and not quant.bits_budget:
        return quant
    calibrated = calibrate(src.cfg, src.weights, calibration_ids(src.tokenizer), quant, show_progress)
    return replace(quant, int8=calibrated.plan.int8 if calibrated.plan else (), calibration=calibrated)


def export_model(model_dir: str | Path, out_dir: str | Path, precision: str = "int4",
                 block_size: int = DEFAULT_BLOCK, force: bool = False, show_progress: bool = True,
                 adapters: dict[str, str | Path] | None = None, adapter_precision: str = "fp32",
                 lora: bool = False, graph_format: str = "onnx", webgpu: bool = False, quant_method: str = DEFAULT_METHOD,
                 head: str = DEFAULT_HEAD, head_block_size: int = 0, encoder_quant: str = DEFAULT_ENCODER,
                 encoder_block_size: int = DEFAULT_ENCODER_BLOCK, bits_budget: float | None = DEFAULT_BITS_BUDGET) -> Path:
    """Export a Phi-3-family checkpoint to a bundle; returns the bundle path.

    adapters: extra PEFT adapter folders by name. lora: add LoRA inputs even with no adapter (so
    adapters can be brought later). adapter_precision: fp32, fp16, int8 or int4 LoRA weights (int4
    files run on int8 LoRA inputs). graph_format:
    "onnx", or "ort" for onnxruntime's ORT format (export/mobile.py; staged as ONNX, then converted).
    webgpu: the decoder's WebGPU form (export/webgpu.py; the bundle requires "webgpu-decoder").
    quant_method, head, head_block_size, encoder_quant, encoder_block_size, bits_budget: int4 settings
    (quant.QuantConfig; docs/quantization.md).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if precision not in ("int4", "fp32"):   # before reading the checkpoint
        raise CheckpointError(f"--precision {precision!r}: choose int4 or fp32")
    if adapter_precision not in PRECISIONS:
        raise CheckpointError(f"--adapter-precision {adapter_precision!r}: choose {' or '.join(PRECISIONS)}")
    if graph_format not in ("onnx", "ort"):
        raise CheckpointError(f"--format {graph_format!r}: choose onnx or ort")
    if webgpu and graph_precision(adapter_precision) == "int8":
        raise CheckpointError(f"--adapter-precision {adapter_precision} has no WebGPU form (its int8 LoRA inputs run "
                              "DynamicQuantizeMatMul); choose fp32 or fp16")
    src = read_source(model_dir, adapters)
    quant = quant_config(src, precision, quant_method, block_size, head, head_block_size, encoder_quant, encoder_block_size,
                         bits_budget, show_progress)
    cfg, weights, loras, encoders = src.cfg, src.weights, src.adapters, src.encoders
    if webgpu and quant is not None and quant.screened:   # a CPU-operator head (TopK, Scan): WebGPU reads plain int8
        quant = replace(quant, head="int8")
    lora_dtype = graph_precision(adapter_precision) if (loras or lora) else None
    media = tuple((e.media_input, e.token_id) for e in encoders)

    with staging(out_dir, force, src.inputs) as tmp:
        data = WeightFile(tmp / "decoder.onnx.data")
        graph = Graph("phi3_decoder", data)
        with progress(cfg.num_layers, "export decoder", "layer", show_progress) as tick:
            options = DecoderOptions(quant=quant, lora=lora_dtype, media=media, webgpu=webgpu)
            DecoderBuilder(graph, cfg, weights, options).build(lambda _: tick())
        data.close()
        sections = {e.kind: export_encoder(e, quant.encoders if quant else None, tmp, show_progress) for e in encoders}
        adapter_entries = {}
        with progress(len(loras), "export adapters", "adapter", show_progress and bool(loras)) as tick:
            for adapter in loras:
                adapter_entries[adapter.name] = write_adapter(adapter, tmp / "adapters" / f"{adapter.name}.onnx_adapter",
                                                              adapter_precision, src.base_id)
                tick()
        onnx.save_model(graph.model(), tmp / "decoder.onnx")
        src.copy_files(tmp)
        generation = src.generation()
        (tmp / "genai_config.json").write_text(json.dumps(genai_config(cfg, generation.eos_token_ids), indent=2))
        manifest = Manifest(
            created_by=f"phi4edge {version('phi4edge')}",
            model=src.model(),
            quantization=Quantization(precision=precision, **(quant.to_json() if quant else {}),  # type: ignore[arg-type]
                                      tied_embeddings=quant.describe_table()
                                      if quant and cfg.tie_word_embeddings else None,
                                      encoders=quant.describe_encoders() if quant and encoders else None),
            decoder=Decoder(graph="decoder.onnx", lora=lora_dtype, media=dict(media)),  # type: ignore[arg-type]
            adapters=adapter_entries, vision=sections.get("vision"), speech=sections.get("speech"),  # type: ignore[arg-type]
            generation=generation,
            files={},
            requires=([MEDIA_INPUTS] if media else []) + ([WEBGPU_DECODER] if webgpu else []),
        )
        if graph_format == "ort":
            onnx_manifest = manifest
            manifest = convert_graphs(tmp, tmp, onnx_manifest)
            remove_onnx_graphs(tmp, onnx_manifest)
            point_genai_config(tmp, manifest)
        replace(manifest, files=file_table(tmp)).write(tmp)
    return out_dir
