"""A greedy text decoder for static-shapes bundles written from docs/bundle-format.md ("Static-shapes
bundles") alone, sharing no code with phi4edge: json, numpy and onnxruntime's plain `run`. The
tests hold it to the Python runtime's tokens, which checks that the document is enough to drive
the graphs (chunked prefill with padding, the bias, the cache, zeros for LoRA and media)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

MASK = -10000.0


class StaticReader:
    def __init__(self, folder: str | Path):
        root = Path(folder)
        m = json.loads((root / "manifest.json").read_text())
        assert "static-shapes" in m["requires"]
        self.c, self.s = m["static"]["context"], m["static"]["prefill_chunk"]
        cfg = m["model"]["config"]
        self.layers, self.kv, self.d, self.hidden = cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"], cfg["hidden_size"]
        self.eos = set(m["generation"]["eos_token_ids"])
        self.graphs = {rows: ort.InferenceSession(str(root / name), providers=["CPUExecutionProvider"])
                       for rows, name in ((1, m["decoder"]["graph"]), (self.s, m["static"]["prefill_graph"]))}

    def call(self, rows: int, ids: list[int]) -> np.ndarray:
        graph, k, c = self.graphs[rows], len(ids), self.c
        p, first = rows - k, c - rows
        bias = np.full((1, 1, rows, c), MASK, np.float32)
        for r in range(rows):
            if r < p:
                bias[0, 0, r, first + r] = 0
            else:
                bias[0, 0, r, :self.length] = 0
                bias[0, 0, r, first + p:first + r + 1] = 0
        feeds = {"input_ids": np.array([[0] * p + ids], np.int64),
                 "position_ids": np.array([[0] * p + list(range(self.length, self.length + k))], np.int64),
                 "attention_bias": bias}
        for name in (i.name for i in graph.get_inputs()):   # LoRA and media inputs: no adapter, text rows
            if name.startswith("lora.") or name == "media_features":
                feeds[name] = np.zeros([i.shape for i in graph.get_inputs() if i.name == name][0], np.float32)
            elif name == "text_mask":
                feeds[name] = np.ones((1, rows, 1), np.float32)
        for i in range(self.layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.ascontiguousarray(self.cache[i, kind][:, :, :first])
        names = [o.name for o in graph.get_outputs()]
        out = dict(zip(names, graph.run(names, feeds)))
        m = min(k, c - 1 - self.length)
        for i in range(self.layers):
            for kind in ("key", "value"):
                self.cache[i, kind][:, :, self.length:self.length + m] = out[f"new_key_values.{i}.{kind}"][:, :, p:p + m]
        self.length += k
        return out["logits"][0, 0]

    def feed(self, ids: list[int]) -> np.ndarray:
        done, logits = 0, None
        while done < len(ids):
            chunked = len(ids) - done >= 2 and self.length <= self.c - self.s
            take = min(self.s, len(ids) - done) if chunked else 1
            logits = self.call(self.s if chunked else 1, ids[done:done + take])
            done += take
        return logits

    def greedy(self, prompt: list[int], max_new: int) -> list[int]:
        self.length = 0
        self.cache = {(i, kind): np.zeros((1, self.kv, self.c - 1, self.d), np.float32)
                      for i in range(self.layers) for kind in ("key", "value")}
        out: list[int] = []
        logits = self.feed(prompt)
        while len(out) < max_new and self.length < self.c:
            out.append(int(np.argmax(logits)))
            if out[-1] in self.eos or len(out) == max_new:
                break
            logits = self.feed([out[-1]])
        return out
