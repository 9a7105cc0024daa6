"""The shipped embedded model (models/embedded): exported to int4 like `make demo` does, it answers
held-out image and audio items with the adapters routed, and fails them without the adapters or
with the swapped ones, and `phi4edge demo` answers its text, image and audio samples."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phi4edge import load
from phi4edge.cli import main
from phi4edge.export import export_model
from phi4edge.models import EMBEDDED
from phi4edge.runtime.evaluate import evaluate


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_model(EMBEDDED / "checkpoint", tmp_path_factory.mktemp("embedded") / "int4", show_progress=False)


def test_shipped_files():
    checkpoint = EMBEDDED / "checkpoint"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Phi4MMForCausalLM"]
    assert {"vision_lora", "speech_lora", "embd_layer", "audio_processor"} <= set(config)
    for sub in ("vision-lora", "speech-lora"):
        assert (checkpoint / sub / "adapter_model.safetensors").is_file()
    size = sum(p.stat().st_size for p in EMBEDDED.rglob("*") if p.is_file())
    assert size <= 30 * 2 ** 20 + 10 * 2 ** 20, "checkpoint 30 MB at most, eval sets and samples beside it"
    assert sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) <= 30 * 2 ** 20


def test_int4_held_out_items(bundle):
    report = evaluate(load(bundle), EMBEDDED / "eval", modes=("routed", "none", "swapped"))
    routed, none, swapped = report["routed"], report["none"], report["swapped"]
    print(json.dumps(report, indent=1))
    # the whole held-out sets (300 images, 200 clips); measured: image 97.3%, speech WER 4.1%
    assert routed["image_accuracy"] >= 0.95
    assert routed["speech_wer"] <= 0.07
    # the skills live in the adapters: without them, or with the other one, at most a third is left
    for other in (none, swapped):
        assert other["image_accuracy"] <= routed["image_accuracy"] / 3
        assert other["speech_word_accuracy"] <= routed["speech_word_accuracy"] / 3
    assert report["text_perplexity"] < 1.5


def test_demo_answers_its_samples(bundle):
    result = CliRunner().invoke(main, ["demo", "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    answers = [line.split("answer:")[1].split("(adapter")[0].strip() for line in result.output.splitlines()
               if "answer:" in line]
    expected = [line.split("expected:")[1].strip() for line in result.output.splitlines() if "expected:" in line]
    assert len(answers) == 3 and answers == expected, result.output   # text, image, audio
    assert "(adapter: none)" in result.output   # the text prompt runs the base model
    assert "(adapter: vision)" in result.output and "(adapter: speech)" in result.output
