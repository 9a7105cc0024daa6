"""Bad input: a clear one-line error, a non-zero exit, and never a partial bundle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi4edge.cli import main


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, out: Path, *needles: str):
    assert result.exit_code != 0
    message = result.stderr.strip().splitlines()[-1]   # progress bars may precede it on stderr
    assert message.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name], "staging folder left behind"


@pytest.fixture
def ckpt(checkpoints, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoints["phi4mini"], dst)
    return dst


def _edit_config(ckpt: Path, edit) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_missing_shard(ckpt, tmp_path):
    shard = sorted(ckpt.glob("model-*.safetensors"))[2]
    shard.unlink()
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", shard.name, "missing")


def test_truncated_shard(ckpt, tmp_path):
    shard = sorted(ckpt.glob("model-*.safetensors"))[1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", shard.name, "truncated")


def test_unsupported_architecture(ckpt, tmp_path):
    _edit_config(ckpt, lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"))
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", "LlamaForCausalLM", "not supported")


def test_config_missing_field(ckpt, tmp_path):
    _edit_config(ckpt, lambda c: c.pop("num_hidden_layers"))
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", "num_hidden_layers", "config.json")


def test_tensor_shape_disagrees_with_config(ckpt, tmp_path):
    _edit_config(ckpt, lambda c: c.update(intermediate_size=c["intermediate_size"] * 2))
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", "mlp.gate_up_proj", "shape")


def test_missing_tokenizer(ckpt, tmp_path):
    (ckpt / "tokenizer.json").unlink()
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", "tokenizer.json")


def test_bad_block_size(ckpt, tmp_path):
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out", "--block-size", "24"), tmp_path / "out", "block")


def test_existing_output_folder_is_kept(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = run_cli("export", ckpt, "-o", out)
    assert result.exit_code != 0 and "already exists" in result.output
    result = run_cli("export", ckpt, "-o", out, "--force")   # --force replaces bundles only
    assert result.exit_code != 0 and "not a phi4edge bundle" in result.output
    assert (out / "mine.txt").read_text() == "keep me"


def test_failure_midway_leaves_nothing(ckpt, tmp_path, monkeypatch):
    """An error while writing layers (here: a tensor unreadable after the up-front checks)."""
    from phi4edge.models import checkpoint
    real_get = checkpoint.Checkpoint.get

    def failing_get(self, name, rows=None):
        if "layers.1.mlp.down_proj" in name:
            raise checkpoint.CheckpointError(f"{name}: simulated read failure")
        return real_get(self, name, rows)
    monkeypatch.setattr(checkpoint.Checkpoint, "get", failing_get)
    assert_clean_failure(run_cli("export", ckpt, "-o", tmp_path / "out"), tmp_path / "out", "simulated")


def test_not_a_bundle(tmp_path):
    result = run_cli("run", tmp_path, "--prompt", "hi")
    assert result.exit_code != 0 and "no manifest.json" in result.output and "Traceback" not in result.output
