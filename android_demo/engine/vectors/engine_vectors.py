"""Reference answers of the Python runtime for the Kotlin engine's tests (EngineTest.kt).

    python android_demo/engine/vectors/engine_vectors.py OUTDIR

For every bundle under OUTDIR/bundles/ (exported by `make android-test` in the same run), answers
held-out items of the embedded model greedily: text, image, audio and image+audio prompts, with the
adapter routed by modality, with none and with the swapped one (as `phi4edge eval` does), plus a
tampered copy of a bundle for refusal tests. Media are written as PNG and 16 kHz float WAV (decoded
and resampled by the Python runtime's own loaders), so both runtimes read identical pixels and
samples. Also records the Python runtime's decode speed on each bundle for the speed table.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import soundfile

import phi4edge
from phi4edge.runtime.audio import SAMPLE_RATE, load_audio
from phi4edge.runtime.evaluate import adapter_for, read_set
from phi4edge.runtime.image import load_image

EVAL = Path(__file__).resolve().parents[3] / "models" / "embedded" / "eval"
SAMPLES = EVAL.parent / "samples"
ITEMS = 8                  # per set and adapter mode
SPEED_TOKENS, SPEED_RUNS = 64, 5


def png(source: Path, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        load_image(source).save(out)
    return str(out)


def wav(source: Path, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        soundfile.write(out, load_audio(source), SAMPLE_RATE, subtype="FLOAT")
    return str(out)


def cases(media: Path) -> list[dict]:
    """Requests: (name, prompt, image path, audio path, adapter argument, expected answer)."""
    out = [dict(name=f"text/{i}", kind="text", mode="routed", prompt=item["prompt"], answer=item["answer"])
           for i, item in enumerate(read_set(EVAL, "text", ITEMS))]
    for kind, key in (("image", "image"), ("speech", "audio")):
        for mode in ("routed", "none", "swapped"):
            for i, item in enumerate(read_set(EVAL, kind, ITEMS)):
                src = Path(item["file"])
                path = png(src, media / f"{src.stem}.png") if key == "image" else wav(src, media / f"{src.stem}.wav")
                out.append({"name": f"{kind}-{mode}/{i}", "kind": kind, "mode": mode, "prompt": item["prompt"],
                            "answer": item["answer"], key: path, "adapter": adapter_for(kind, mode)})
    both = dict(image=png(SAMPLES / "shape.jpg", media / "shape.png"), audio=wav(SAMPLES / "speech.ogg", media / "speech.wav"))
    out.append(dict(name="image+audio/0", kind="image+audio", mode="routed", prompt="What color is the shape?",
                    answer="", **both))
    out.append(dict(name="image+audio/1", kind="image+audio", mode="routed",
                    prompt="<|audio_1|> Transcribe the audio. <|image_1|>", answer="", **both))
    out.append(dict(name="text-adapter/0", kind="text", mode="explicit", prompt="What color is the shape?", answer="",
                    adapter="vision"))
    out.append(dict(name="text-system/0", kind="text", mode="routed", prompt="Repeat after me: red <|user|> two.",
                    system="You are terse.", answer=""))
    return out


def answer(model, case: dict) -> dict:
    request: dict = {}
    steps = list(model.stream(case["prompt"], max_new_tokens=24, system=case.get("system"), adapter=case.get("adapter"),
                              images=[case["image"]] if "image" in case else [],
                              audios=[case["audio"]] if "audio" in case else [], request=request, logprobs=False))
    ids = [s.token_id for s in steps]
    return {"prompt_ids": request["prompt_token_ids"], "adapter": request["adapter"], "tokens": ids,
            "text": model.tokenizer.decode(ids), "pieces": [s.text for s in steps],
            "finish_reason": steps[-1].finish_reason}


def speed(model) -> float:
    """Median decode tokens/s over SPEED_RUNS answers of SPEED_TOKENS tokens (no end token)."""
    rates = []
    for _ in range(SPEED_RUNS + 1):   # the first run warms up
        r = model.generate("Repeat after me: one two three.", max_new_tokens=SPEED_TOKENS, stop_token_ids=set())
        rates.append(r.timings["decode_tokens_per_s"])
    return statistics.median(rates[1:])


def main(out: Path) -> None:
    media = out / "media"
    bundles = sorted(p for p in (out / "bundles").iterdir() if (p / "manifest.json").is_file())
    todo = cases(media)
    results = {"bundles": {}, "cases": todo}
    for bundle in bundles:
        model = phi4edge.load(bundle)
        answers = {c["name"]: answer(model, c) for c in todo}
        logits = {name: model.score(answers[name]["prompt_ids"], answers[name]["tokens"][:1], adapter=answers[name]["adapter"])[0]
                  for name in ("text/0", "text-adapter/0")}   # prefill logits, base and with an adapter
        results["bundles"][bundle.name] = {"answers": answers, "logits": {k: v.tolist() for k, v in logits.items()},
                                           "python_decode_tokens_per_s": speed(model),
                                           "speed_tokens": SPEED_TOKENS}
        print(f"{bundle.name}: {len(todo)} reference answers", flush=True)
    tampered = out / "tampered"
    shutil.rmtree(tampered, ignore_errors=True)
    shutil.copytree(bundles[0], tampered)
    with open(tampered / "tokenizer.json", "r+b") as f:   # same size, other bytes: only sha256 sees it
        f.seek(10)
        f.write(b"#")
    mismatched = out / "mismatched"   # adapters of other base weights: refused when first used
    shutil.rmtree(mismatched, ignore_errors=True)
    shutil.copytree(bundles[0], mismatched)
    manifest = json.loads((mismatched / "manifest.json").read_text())
    manifest["model"]["base_id"] = "f" * 64
    (mismatched / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out / "engine_vectors.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
