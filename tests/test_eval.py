"""`phi4edge eval`: held-out sets through a bundle, per adapter mode, with perplexity checked against
transformers and the adapter routing of every mode checked."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner
from PIL import Image

from phi4edge import load
from phi4edge.cli import main
from phi4edge.errors import BundleError
from phi4edge.runtime.evaluate import evaluate, read_set
from phi4edge.runtime.generate import NO_ADAPTER, Model

TEXT = [{"prompt": "Count from two.", "answer": "two three four"}, {"prompt": "Say hi.", "answer": "hi"}]


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """Two images, two clips (16 and 8 kHz) and two text items, in the documented layout."""
    root = tmp_path_factory.mktemp("evalset")
    (root / "media").mkdir()
    rng = np.random.default_rng(0)
    with open(root / "image.jsonl", "w") as f:
        for i, size in enumerate([(300, 200), (120, 500)]):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "media" / f"{i}.png")
            f.write(json.dumps({"file": f"media/{i}.png", "prompt": "What color is the shape?", "answer": "red"}) + "\n")
    with open(root / "speech.jsonl", "w") as f:
        for i, rate in enumerate([16000, 8000]):
            t = np.arange(rate) / rate
            soundfile.write(root / "media" / f"{i}.wav", 0.3 * np.sin(2 * np.pi * 440 * t), rate)
            f.write(json.dumps({"file": f"media/{i}.wav", "prompt": "Transcribe the audio.", "answer": "one two"}) + "\n")
    (root / "text.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TEXT))
    return root


def test_modes_route_the_adapters(mm_with_adapters, eval_set, monkeypatch):
    """routed: vision for images, speech for audio; none: the base model; swapped: the other one."""
    pm, bundle = mm_with_adapters
    model = load(bundle)
    used = []
    original = Model.generate

    def spy(self, prompt, **kwargs):
        result = original(self, prompt, **kwargs)
        used.append(("image" if kwargs.get("images") else "speech", result.adapter))
        return result
    monkeypatch.setattr(Model, "generate", spy)
    report = evaluate(model, eval_set, ("routed", "none", "swapped"))
    assert used == [("image", "vision")] * 2 + [("speech", "speech")] * 2 + [("image", None)] * 2 + \
        [("speech", None)] * 2 + [("image", "speech")] * 2 + [("speech", "vision")] * 2
    assert report["items"] == {"image": 2, "speech": 2, "text": 2}
    for mode in ("routed", "none", "swapped"):
        assert 0 <= report[mode]["image_accuracy"] <= 1 and report[mode]["speech_wer"] >= 0


def test_no_adapter_overrides_routing(mm_with_adapters, eval_set):
    _, bundle = mm_with_adapters
    model = load(bundle)
    image = str(eval_set / "media" / "0.png")
    assert model.generate("Describe.", max_new_tokens=2, images=[image]).adapter == "vision"
    assert model.generate("Describe.", max_new_tokens=2, images=[image], adapter=NO_ADAPTER).adapter is None


def test_perplexity_matches_transformers(mm_with_adapters, eval_set):
    """Teacher-forced perplexity of the answers (base model) equals transformers' on the same ids."""
    pm, bundle = mm_with_adapters
    model = load(bundle)
    ours = evaluate(model, eval_set, ())["text_perplexity"]
    end = model.tokenizer.token_id("<|end|>")
    nll, count = 0.0, 0
    with pm.disable_adapter(), torch.no_grad():
        for item in TEXT:
            prompt = model.encode(item["prompt"])
            target = model.tokenizer.encode_text(item["answer"]) + [end]
            logits = pm(input_ids=torch.tensor([prompt + target])).logits[0].double()
            logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
            nll -= logp[torch.arange(len(target)), torch.tensor(target)].sum().item()
            count += len(target)
    assert ours == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_eval_cli(mm_with_adapters, eval_set):
    _, bundle = mm_with_adapters
    out = CliRunner().invoke(main, ["eval", str(bundle), "--set", str(eval_set), "--limit", "1", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["items"] == {"image": 1, "speech": 1, "text": 1}
    assert set(report["routed"]) == {"image_accuracy", "speech_wer", "speech_word_accuracy", "speech_exact"}
    text = CliRunner().invoke(main, ["eval", str(bundle), "--set", str(eval_set), "--mode", "all", "--limit", "1"])
    assert text.exit_code == 0 and "adapters swapped" in text.output and "text perplexity" in text.output


def test_eval_set_errors(mm_with_adapters, tmp_path):
    (tmp_path / "image.jsonl").write_text('{"file": "a.jpg", "prompt": "What?"}\n')
    with pytest.raises(BundleError, match=r"image.jsonl:1: missing field\(s\) answer"):
        read_set(tmp_path, "image", None)
    (tmp_path / "text.jsonl").write_text("not json\n")
    with pytest.raises(BundleError, match=r"text.jsonl:1: not JSON"):
        read_set(tmp_path, "text", None)
    _, bundle = mm_with_adapters
    out = CliRunner().invoke(main, ["eval", str(bundle), "--set", str(tmp_path / "missing")])
    assert out.exit_code == 1 and "no such evaluation folder" in out.output
