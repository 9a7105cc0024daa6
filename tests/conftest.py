"""Shared fixtures: tiny random checkpoints built by transformers, and their exported bundles."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import pytest

from .torchvision_standin import install as _install_torchvision_standin

_install_torchvision_standin()   # before transformers is imported (it checks for torchvision once)

from phi4edge.export import export_model  # noqa: E402  (after the stand-in, see above)

from .fixtures import SHAPES  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Under `make test-avx2` the suite runs in qemu's Haswell model; a child process started with plain
# sys.executable would run natively, so children are started through the same wrapper.
PYTHON = shlex.split(os.environ.get("PHI4EDGE_PYTHON_WRAPPER", "")) + [sys.executable]


def sigint_default() -> None:
    """preexec_fn for a child that a test interrupts with Ctrl-C: a suite started as a background
    job runs with SIGINT ignored, which children inherit, and Python then raises no
    KeyboardInterrupt (two tests failed so, in a CI run started with `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The shipped, confidently trained checkpoints (tests/fixtures/build.py), copied so that no
    test can change them."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: Path(shutil.copytree(FIXTURES / name, root / name)) for name in SHAPES}


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(shape, precision) -> exported bundle, built lazily on first use."""
    root = tmp_path_factory.mktemp("bundles")

    class Lazy(dict):
        def __missing__(self, key):
            shape, precision = key
            self[key] = export_model(checkpoints[shape], root / f"{shape}-{precision}", precision=precision,
                                     show_progress=False)
            return self[key]
    return Lazy()


ALL = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@pytest.fixture(scope="session")
def two_adapters(checkpoints, tmp_path_factory):
    """A tiny Phi-3 with two PEFT adapters of different ranks, target spellings and scalings."""
    from phi4edge.models.lora import save_peft_adapter

    from .checkpoints import load_reference, peft_model
    root = tmp_path_factory.mktemp("peft")
    ck = checkpoints["phi4mini"]
    specs = {"style": dict(r=8, lora_alpha=16, target_modules=ALL),
             "terse": dict(r=16, lora_alpha=8, target_modules=r".*\.(qkv_proj|down_proj)", use_rslora=True,
                           alpha_pattern={"down_proj": 24})}
    pm = peft_model(load_reference(ck), specs)
    dirs = {"style": save_peft_adapter(pm, "style", root / "style"),
            "terse": save_peft_adapter(pm, "terse", root / "terse", prefix=False)}
    bundle = export_model(ck, root / "bundle", precision="fp32", show_progress=False,
                          adapters={k: str(v) for k, v in dirs.items()})
    return pm, dirs, bundle


@pytest.fixture(scope="session")
def two_adapters_bundle(two_adapters) -> Path:
    return two_adapters[2]


LM_TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"


@pytest.fixture(scope="session")
def mm_with_adapters(tmp_path_factory):
    """Tiny Phi-4-multimodal (transformers layout) with vision/speech LoRAs in vision-lora/ and
    speech-lora/, plus the peft-wrapped transformers model as the reference."""
    import torch
    from transformers import Phi4MultimodalForCausalLM

    from phi4edge.models.lora import save_peft_adapter

    from .checkpoints import make_phi4mm, peft_model
    root = tmp_path_factory.mktemp("phi4mm-lora")
    ck = make_phi4mm(root / "native")
    ref = Phi4MultimodalForCausalLM.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    pm = peft_model(ref, {"vision": dict(r=8, lora_alpha=16, target_modules=LM_TARGETS),
                          "speech": dict(r=12, lora_alpha=24, target_modules=LM_TARGETS)}, seed=5)
    for name in ("vision", "speech"):
        save_peft_adapter(pm, name, ck / f"{name}-lora")
    bundle = export_model(ck, root / "fp32", precision="fp32", show_progress=False)
    return pm, bundle


@pytest.fixture(scope="session")
def mm(tmp_path_factory):
    """A tiny random Phi-4-multimodal (transformers layout, no adapters), its fp32 bundle, and
    transformers' model as the reference."""
    import torch
    from transformers import Phi4MultimodalForCausalLM

    from .checkpoints import make_phi4mm
    root = tmp_path_factory.mktemp("phi4mm")
    ck = make_phi4mm(root / "native")
    bundle = export_model(ck, root / "fp32", precision="fp32", show_progress=False)
    # eager attention: transformers 5.23 marks the SigLIP attention is_causal=True, so under SDPA an
    # unpadded crop (no mask) gets causal attention; SigLIP, and the original model, are bidirectional
    ref = Phi4MultimodalForCausalLM.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    return ck, bundle, ref
