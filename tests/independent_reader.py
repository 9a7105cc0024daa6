"""A bundle reader written from docs/bundle-format.md alone, sharing no code with phi4edge: json,
hashlib, tokenizers, jinja2, onnx (to list external data) and onnxruntime's plain `run`. The tests
hold it to the Python runtime's tokens, which checks that the document is enough to write a reader."""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import jinja2
import numpy as np
import onnx
import onnxruntime as ort
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


class Refused(Exception):
    pass


def inside(root: Path, name: str) -> Path:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not (root / pure).resolve().is_relative_to(root.resolve()):
        raise Refused(f"{name}: outside the bundle")
    return root / pure


class Reader:
    def __init__(self, folder: str | Path):
        self.root = Path(folder)
        m = json.loads((self.root / "manifest.json").read_text())
        if m.get("format") != "phi4edge-bundle":
            raise Refused("format: not a bundle")
        if m.get("format_version") != 1:
            raise Refused(f"format_version {m.get('format_version')}: need a newer reader")
        if set(m.get("requires", [])) - {"media-inputs", "ort-graphs", "webgpu-decoder"}:
            raise Refused(f"requires {m['requires']}: not implemented")
        for path in ("model.config.num_layers", "model.config.num_kv_heads", "model.config.head_dim",
                     "model.config.max_position", "decoder.graph", "generation.eos_token_ids", "files"):
            node = m
            for key in path.split("."):
                if not isinstance(node, dict) or key not in node:
                    raise Refused(f"{path}: missing")
                node = node[key]
        self.m = m
        # linears stored otherwise than quantization.bits/block_size (mixed precision): informative
        self.overrides = m.get("quantization", {}).get("overrides") or {}
        fields = ("bits", "block_size")
        if not isinstance(self.overrides, dict) or not all(
                isinstance(v, dict) and all(type(v.get(k)) is int for k in fields) for v in self.overrides.values()):
            raise Refused("quantization.overrides: wrong type")
        for name, entry in m["files"].items():
            path = inside(self.root, name)
            if not path.is_file() or path.stat().st_size != entry["size"]:
                raise Refused(f"{name}: missing or wrong size")
        graph = m["decoder"]["graph"]
        if "ort-graphs" in m.get("requires", []):   # ORT format: weights inside, the file identifier at bytes 4..8
            if "ort" not in m or not graph.endswith(".ort") or inside(self.root, graph).read_bytes()[4:8] != b"ORTM":
                raise Refused(f"{graph}: not an ORT-format graph")
            data = set()
        else:
            model = onnx.load(str(inside(self.root, graph)), load_external_data=False)
            data = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                    for e in t.external_data if e.key == "location"}
        for name in {graph, "tokenizer.json", *data, *(a["file"] for a in m.get("adapters", {}).values())}:
            if name not in m["files"]:
                raise Refused(f"{name}: read but not listed")
        self.tok = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        self.plain = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        self.plain.encode_special_tokens = True
        config = json.loads((self.root / "tokenizer_config.json").read_text()) \
            if "tokenizer_config.json" in m["files"] else {}
        self.specials = {k: config.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
        self.template = env.from_string(config["chat_template"])
        self.session = ort.InferenceSession(str(inside(self.root, graph)), providers=["CPUExecutionProvider"])

    def encode(self, messages: list[dict]) -> list[int]:
        """Template text with special tokens, message contents as plain text."""
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        text = self.template.render(messages=[{**msg, "content": mk} for msg, mk in zip(messages, marks)],
                                    add_generation_prompt=True, **self.specials)
        ids: list[int] = []
        for msg, mk in zip(messages, marks):
            before, text = text.split(mk)
            ids += self.tok.encode(before, add_special_tokens=False).ids
            ids += self.plain.encode(msg["content"], add_special_tokens=False).ids
        return ids + self.tok.encode(text, add_special_tokens=False).ids

    def generate(self, ids: list[int], max_new: int, adapter: str | None = None) -> list[int]:
        cfg = self.m["model"]["config"]
        feeds: dict[str, np.ndarray] = {name: np.zeros((0, cfg["hidden_size"]), np.float32)
                                        for name in self.m["decoder"].get("media", {})}
        if adapter:
            entry = self.m["adapters"][adapter]
            params = ort.AdapterFormat.read_adapter(str(inside(self.root, entry["file"])))
            feeds |= {k: v.numpy() for k, v in params.get_parameters().items()}
        for i in self.session.get_inputs():   # LoRA inputs without defaults (webgpu-decoder): rank-1 zeros
            if i.name.startswith("lora.") and i.name not in feeds:
                dtype = np.float16 if i.type == "tensor(float16)" else np.float32
                feeds[i.name] = np.zeros([1 if isinstance(d, str) else d for d in i.shape], dtype)
        empty = np.zeros((1, cfg["num_kv_heads"], 0, cfg["head_dim"]), np.float32)
        past = {f"past_key_values.{i}.{k}": empty for i in range(cfg["num_layers"]) for k in ("key", "value")}
        switch = cfg.get("original_max_position") if cfg["rope_kind"] == "longrope" else None
        stop = set(self.m["generation"]["eos_token_ids"])
        sequence, new, out = list(ids), list(ids), []
        outputs = [o.name for o in self.session.get_outputs()]
        while len(out) < max_new and len(sequence) < cfg["max_position"]:
            if switch and len(sequence) - len(new) == switch:   # the cache holds exactly the switch length
                past = {k: empty for k in past}
                new = list(sequence)
            length = len(sequence) - len(new) + len(new)
            result = dict(zip(outputs, self.session.run(outputs, feeds | past | {
                "input_ids": np.array([new], np.int64), "attention_mask": np.ones((1, length), np.int64)})))
            past = {f"past_key_values.{i}.{k}": result[f"present.{i}.{k}"]
                    for i in range(cfg["num_layers"]) for k in ("key", "value")}
            token = int(np.argmax(result["logits"][0, -1]))
            out.append(token)
            sequence.append(token)
            new = [token]
            if token in stop:
                break
        return out
