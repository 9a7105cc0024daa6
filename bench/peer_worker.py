"""One runtime in its own process, driven by bench/peers.py: it loads a model, answers timing
requests one JSON line at a time, and idles on stdin in between, so the runtimes measured in turn
never compete for the cores. Each runtime imports only its own package, so this file runs in the
peer's venv (llama-cpp-python, optimum) as well as in ours.

    PY peer_worker.py RUNTIME MODEL THREADS serve   # {"decode": n, "prompt_len": p} | {"prefill": p} | {"memory": 1}
    PY peer_worker.py RUNTIME MODEL THREADS ttft    # load, prefill 128 ids, one token, print, exit

RUNTIME: phi4edge (a bundle), llama.cpp (a GGUF), genai (an onnxruntime-genai model folder),
optimum (an optimum-onnx ORTModelForCausalLM folder). Every runtime gets the same token ids, greedy.
"""
from __future__ import annotations

import json
import sys
import time


def ids(n: int) -> list[int]:
    """The prompt every runtime gets (phi4edge's own benchmarks use the same ids)."""
    return [i % 97 + 10 for i in range(n)]


def memory() -> dict[str, int]:
    """Resident and peak resident bytes of this process, and the anonymous part (Linux). Not
    phi4edge.runtime.memory.rss: the peers' venvs have no phi4edge, and the peak is needed too."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"], "anon": fields["RssAnon"], "file": fields["RssFile"]}


class Phi4Edge:
    def __init__(self, path: str, threads: int):
        from phi4edge import load
        self.model = load(path, threads=threads)

    def kernels(self) -> str:
        import onnxruntime as ort
        return f"onnxruntime {ort.__version__}, MatMulNBits accuracy level 4 (MLAS, picked by cpuid)"

    def run(self, prompt: list[int], new_tokens: int) -> dict[str, float]:
        request: dict = {}
        for _ in self.model.stream(prompt, new_tokens, stop_token_ids=set(), request=request, logprobs=False):
            pass
        t = request["timings"]
        return {"prefill_s": t["prefill_ms"] / 1e3, "decode_tokens_per_s": t.get("decode_tokens_per_s", 0.0)}


class LlamaCpp:
    def __init__(self, path: str, threads: int):
        from llama_cpp import Llama
        self.llm = Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         verbose=False)

    def kernels(self) -> str:
        import llama_cpp
        return f"llama-cpp-python {llama_cpp.__version__}: " + llama_cpp.llama_print_system_info().decode().strip()

    def run(self, prompt: list[int], new_tokens: int) -> dict[str, float]:
        import numpy as np
        llm = self.llm
        # llm.scores is filled only with logits_all (which would copy every position's logits): read
        # the last position's from the context, as llama.cpp's own sampler does
        last = lambda: int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))))
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        token = last()
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = last()
        return {"prefill_s": prefill_s, "decode_tokens_per_s": (new_tokens - 1) / (time.perf_counter() - start)}


class Genai:
    def __init__(self, path: str, threads: int):
        import onnxruntime_genai as og
        self.og = og
        config = og.Config(path)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)

    def kernels(self) -> str:
        return f"onnxruntime-genai {self.og.__version__}, its model builder's int4 (MatMulNBits)"

    def run(self, prompt: list[int], new_tokens: int) -> dict[str, float]:
        import numpy as np
        og = self.og
        params = og.GeneratorParams(self.model)
        total = len(prompt) + new_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)   # no early stop
        gen = og.Generator(self.model, params)
        start = time.perf_counter()
        gen.append_tokens(np.array(prompt, dtype=np.int32))
        gen.generate_next_token()            # the first token closes the prefill
        prefill_s = time.perf_counter() - start
        start, produced = time.perf_counter(), 0
        while not gen.is_done():
            gen.generate_next_token()
            produced += 1
        return {"prefill_s": prefill_s, "decode_tokens_per_s": produced / (time.perf_counter() - start) if produced else 0.0}


class Optimum:
    def __init__(self, path: str, threads: int):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.model = ORTModelForCausalLM.from_pretrained(path, session_options=so, use_io_binding=False)
        # optimum-onnx 0.1.0 sizes the empty first cache with num_attention_heads for model types it
        # does not list as GQA, phi3 among them; the exported graph wants num_key_value_heads.
        self.model.num_key_value_heads = self.model.config.num_key_value_heads

    def kernels(self) -> str:
        import onnxruntime as ort
        import optimum.version
        return f"optimum {optimum.version.__version__} ORTModelForCausalLM, onnxruntime {ort.__version__}"

    def run(self, prompt: list[int], new_tokens: int) -> dict[str, float]:
        import torch
        x = torch.tensor([prompt])
        start = time.perf_counter()
        out = self.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
        prefill_s = time.perf_counter() - start
        past, mask = out.past_key_values, torch.ones_like(x)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = self.model(input_ids=token, attention_mask=mask, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return {"prefill_s": prefill_s, "decode_tokens_per_s": (new_tokens - 1) / (time.perf_counter() - start)}


RUNTIMES = {"phi4edge": Phi4Edge, "llama.cpp": LlamaCpp, "genai": Genai, "optimum": Optimum}


def main() -> None:
    runtime, path, threads, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    start = time.perf_counter()
    rt = RUNTIMES[runtime](path, threads)
    load_s = time.perf_counter() - start
    if mode == "ttft":
        rt.run(ids(128), 1)
        print(json.dumps({"done": True}), flush=True)
        return
    print(json.dumps({"load_s": load_s, "kernels": rt.kernels(), **memory()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "memory" in req:
            answer = memory()
        elif "prefill" in req:
            answer = {"tokens_per_s": req["prefill"] / rt.run(ids(req["prefill"]), 1)["prefill_s"]}
        else:
            answer = {"tokens_per_s": rt.run(ids(req["prompt_len"]), req["decode"])["decode_tokens_per_s"]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
