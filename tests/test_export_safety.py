"""Export never destroys what it did not make, never leaves a staging folder behind, refuses a
second concurrent export to the same path, and writes the same bytes every time."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi4edge.cli import main
from phi4edge.errors import CheckpointError, Phi4EdgeError
from phi4edge.export import export_model

from .conftest import PYTHON, sigint_default


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name or p.name.endswith(".lock"))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_never_replaces_the_checkpoint_a_folder_or_a_file(checkpoints, tmp_path):
    import shutil
    ck = Path(shutil.copytree(checkpoints["phi3mini"], tmp_path / "ck"))
    before = tree(ck)
    for target in (ck, ck.parent):   # the checkpoint itself, and a folder holding it
        result = CliRunner().invoke(main, ["export", str(ck), "-o", str(target), "--force"])
        assert result.exit_code != 0 and "would replace the input" in result.output, result.output
    assert tree(ck) == before
    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "a.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", str(ck), "-o", str(plain), "--force"])
    assert result.exit_code != 0 and "not a phi4edge bundle" in result.output
    assert (plain / "a.txt").read_text() == "mine"
    afile = tmp_path / "file.bin"
    afile.write_bytes(b"data")
    result = CliRunner().invoke(main, ["export", str(ck), "-o", str(afile), "--force"])
    assert result.exit_code != 0 and "not a folder" in result.output and afile.read_bytes() == b"data"
    # a bundle is replaced with --force
    bundle = export_model(ck, tmp_path / "b", precision="fp32", show_progress=False)
    (bundle / "stale.txt").write_text("old bundle content")
    assert CliRunner().invoke(main, ["export", str(ck), "-o", str(bundle), "--precision", "fp32", "--force"]).exit_code == 0
    assert not (bundle / "stale.txt").exists() and (bundle / "manifest.json").is_file()
    assert leftovers(tmp_path) == []


def test_second_concurrent_export_fails_clearly(checkpoints, tmp_path):
    from phi4edge.export.staging import output_lock
    out = tmp_path / "b"
    with output_lock(out):   # another export is writing b
        with pytest.raises(Phi4EdgeError, match="another phi4edge export is writing"):
            export_model(checkpoints["phi3mini"], out, precision="fp32", show_progress=False)
    assert not out.exists()
    export_model(checkpoints["phi3mini"], out, precision="fp32", show_progress=False)
    assert leftovers(tmp_path) == []


def _start_export(ck: Path, out: Path) -> subprocess.Popen:
    """A real export in another process, slowed down so that it can be signalled mid-way."""
    code = ("import sys, time\n"
            "from phi4edge.models import checkpoint\n"
            "real = checkpoint.Checkpoint.get\n"
            "def slow(self, name, rows=None):\n"
            "    time.sleep(0.05)\n"
            "    return real(self, name, rows)\n"
            "checkpoint.Checkpoint.get = slow\n"
            "from phi4edge.cli import main\n"
            "sys.argv = ['phi4edge', 'export', sys.argv[1], '-o', sys.argv[2]]\n"
            "main()\n")
    return subprocess.Popen([*PYTHON, "-c", code, str(ck), str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)


def _wait_for_staging(folder: Path, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if any(".partial-" in p.name for p in folder.iterdir()):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise AssertionError("the export never started staging")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_leave_no_staging_folder(sig, checkpoints, tmp_path):
    out = tmp_path / "b"
    proc = _start_export(checkpoints["gqa4"], out)
    _wait_for_staging(tmp_path, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists() and leftovers(tmp_path) == []


def test_sigkill_leftovers_are_removed_by_the_next_export(checkpoints, tmp_path):
    out = tmp_path / "b"
    proc = _start_export(checkpoints["gqa4"], out)
    _wait_for_staging(tmp_path, proc)
    proc.kill()   # nothing can clean up after SIGKILL...
    proc.wait(timeout=60)
    assert [n for n in leftovers(tmp_path) if ".partial-" in n]
    export_model(checkpoints["phi3mini"], out, precision="fp32", show_progress=False)   # ...until the next export
    assert leftovers(tmp_path) == [] and (out / "manifest.json").is_file()


def test_exports_are_byte_for_byte_reproducible(mm, tmp_path):
    """Two int4 exports of the multimodal checkpoint (the vision MLP's K = 144 is not a multiple of
    the block size 32, so its last block is padded) are identical, file by file."""
    ck = mm[0]
    a = export_model(ck, tmp_path / "a", show_progress=False)
    b = export_model(ck, tmp_path / "b", show_progress=False)
    ta, tb = tree(a), tree(b)
    assert ta.keys() == tb.keys()
    assert [n for n in ta if ta[n] != tb[n]] == []


def test_padding_of_partial_blocks_is_zero_points():
    """The int4 packer leaves a partial last block's padding alone: it must not be heap garbage."""
    import numpy as np

    from phi4edge.quant.int4 import quantize_int4
    w = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    for _ in range(3):
        np.empty((8, 2, 16), np.uint8).fill(0xAB)   # dirty the heap where np.empty would land
        packed, _ = quantize_int4(w, 32)
        assert (packed[:, 1, 4:] == 0x88).all()      # columns 40..63: zero point in both nibbles


def test_non_finite_weights_are_refused_naming_the_tensor(checkpoints, tmp_path):
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file
    ck = Path(shutil.copytree(checkpoints["phi3mini"], tmp_path / "ck"))
    shard = next(ck.glob("model*.safetensors"))
    tensors = load_file(shard)
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][3, 7] = np.nan
    save_file(tensors, shard, metadata={"format": "pt"})
    result = CliRunner().invoke(main, ["export", str(ck), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"tensor '{name}' holds a non-finite value (nan) at [3, 7]" in result.output
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def _tmpfs(where: Path, options: str):
    """A small tmpfs (needs root, as CI and the developer machines run; elsewhere it fails loudly)."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    return where


def test_full_or_read_only_disk_is_a_one_line_error(checkpoints, tmp_path):
    mounts = {"No space left": _tmpfs(tmp_path / "full", "size=256k"),
              "Read-only": _tmpfs(tmp_path / "ro", "ro,size=256k")}
    try:
        for needle, mount in mounts.items():
            result = CliRunner().invoke(main, ["export", str(checkpoints["gqa4"]), "-o", str(mount / "b")])
            assert result.exit_code == 1 and "Traceback" not in result.output
            line = result.output.strip().splitlines()[-1]
            assert line.startswith("Error: ") and needle in line, line
            assert list(mount.iterdir()) == []   # nothing half-written, no staging folder, no lock
    finally:
        for mount in mounts.values():
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_config_with_zero_heads_is_a_one_line_error(checkpoints, tmp_path):
    import shutil
    ck = Path(shutil.copytree(checkpoints["phi3mini"], tmp_path / "ck"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["num_attention_heads"] = 0
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'num_attention_heads' is 0; it must be a positive integer"):
        export_model(ck, tmp_path / "out", show_progress=False)


def test_garbage_tokenizer_is_a_one_line_error(checkpoints, tmp_path):
    import shutil
    ck = Path(shutil.copytree(checkpoints["phi3mini"], tmp_path / "ck"))
    (ck / "tokenizer.json").write_text('{"model": 12}')
    result = CliRunner().invoke(main, ["export", str(ck), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "tokenizer.json: not a valid tokenizer.json" in result.output
    assert "Traceback" not in result.output


def test_progress_is_one_line_per_stage_when_piped(checkpoints, tmp_path):
    proc = subprocess.run([*PYTHON, "-m", "phi4edge.cli", "export", str(checkpoints["gqa4"]),
                           "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    stages = [re.fullmatch(r"(.+): 3/3 layers in \d+\.\d s", line) for line in proc.stderr.splitlines()]
    assert all(stages) and [m.group(1) for m in stages] == ["calibrate", "export decoder"], proc.stderr
