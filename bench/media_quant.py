"""Encoder and adapter quantisation on the embedded model: each export setting against fp32 on the
held-out sets (image accuracy, speech WER, text perplexity) and by the encoders' feature error
(max abs and relative RMS of every output token, all held-out images and clips, against the fp32
bundle's features).

    python bench/media_quant.py --workdir /tmp/media-quant            # results.json + a markdown table

Variants are export_model keyword sets (name=JSON, repeatable with --variant); the default set
covers --encoder-quant x --encoder-block-size and --adapter-precision.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from phi4edge.export import export_model
from phi4edge.runtime.evaluate import evaluate, read_set
from phi4edge.runtime.generate import Model

ROOT = Path(__file__).resolve().parents[1]

CHECKPOINT = ROOT / "models" / "embedded" / "checkpoint"
EVAL = ROOT / "models" / "embedded" / "eval"
VARIANTS: dict[str, dict] = {
    "fp32": dict(precision="fp32"),
    **{f"enc-{q}-b{b}": dict(encoder_quant=q, encoder_block_size=b) for q in ("rtn", "hqq") for b in (32, 64, 128)},
    "enc-int8-b32": dict(encoder_quant="int8", encoder_block_size=32),
    "enc-fp32": dict(encoder_quant="fp32"),
    **{f"adapters-{p}": dict(adapter_precision=p) for p in ("fp16", "int8", "int4")},
}


def features(model: Model, limit: int | None) -> dict[str, list[np.ndarray]]:
    """Every held-out image's features and every clip's speech and vision_speech features."""
    images = [model.prepare_image(i["file"]) for i in read_set(EVAL, "image", limit)]
    audios = [model.prepare_audio(i["file"]) for i in read_set(EVAL, "speech", limit)]
    return {"vision": [model.image_features([i]) for i in images],
            "speech": [model.audio_features([a], False) for a in audios],
            "vision_speech": [model.audio_features([a], True) for a in audios]}


def feature_error(got: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
    """Largest absolute difference, and RMS of the difference over RMS of the reference (all tokens)."""
    diff = np.concatenate([g - r for g, r in zip(got, ref)])
    whole = np.concatenate(ref)
    return {"max_abs": float(np.abs(diff).max()), "rel_rms": float(np.sqrt((diff ** 2).mean() / (whole ** 2).mean())),
            "ref_max_abs": float(np.abs(whole).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="export_model keywords for one more variant, e.g. 'b64={\"encoder_block_size\": 64}'")
    ap.add_argument("--only", nargs="*", help="run only these variants (fp32, the reference, always runs)")
    ap.add_argument("--limit", type=int, default=None, help="first N items of each held-out set")
    a = ap.parse_args()
    variants = dict(VARIANTS)
    for spec in a.variant:
        name, _, kw = spec.partition("=")
        variants[name] = json.loads(kw)
    if a.only:
        variants = {k: v for k, v in variants.items() if k == "fp32" or k in a.only}
    results, ref = {}, None
    for name, kw in variants.items():
        bundle = export_model(CHECKPOINT, a.workdir / name, force=True, show_progress=False, **kw)
        model = Model(bundle, threads=1)
        report = evaluate(model, EVAL, limit=a.limit)
        feats = features(model, a.limit)
        ref = ref or feats
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file() and f.suffix in (".data", ".onnx_adapter"))
        results[name] = {"export": kw, **report["routed"], "text_perplexity": report.get("text_perplexity"),
                         "bytes": size, "answers": report["answers"]["routed"],
                         "features": {k: feature_error(feats[k], ref[k]) for k in feats}}
        r = results[name]
        print(f"{name:18s} image {r['image_accuracy']:.2%} WER {r['speech_wer']:.2%} ppl {r['text_perplexity']:.4f} "
              + " ".join(f"{k} {v['max_abs']:.3g}/{v['rel_rms']:.2%}" for k, v in r["features"].items()), flush=True)
    (a.workdir / "results.json").write_text(json.dumps(results, indent=1))
    base = results["fp32"]
    print("\n| export | image accuracy | speech WER | text ppl | vision max abs / rel RMS | speech | vision_speech |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cols = [f"{100 * r['image_accuracy']:.1f}% ({100 * (r['image_accuracy'] - base['image_accuracy']):+.1f})",
                f"{100 * r['speech_wer']:.1f}% ({100 * (r['speech_wer'] - base['speech_wer']):+.1f})",
                f"{r['text_perplexity']:.3f}"]
        cols += [f"{v['max_abs']:.3g} / {100 * v['rel_rms']:.2f}%" for v in r["features"].values()]
        print(f"| {name} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
