"""int4 and int8 adapters of a prepacked decoder run in sessions of their own
(runtime/adapter_sessions.py): the adapter's pairs become MatMulNBits constants, the base weights
come from the same prepacked entry. Judged against peft (fp32 adapters) and against the same file bound to the LoRA inputs."""
from __future__ import annotations

import gc
import shutil
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from phi4edge import load
from phi4edge.cli import main
from phi4edge.errors import BundleError
from phi4edge.export import export_model
from phi4edge.runtime import prepacked
from phi4edge.runtime.benchmark import bench

from .compare import hf_greedy, margins
from .test_adapters import PROMPTS
from .test_prepacked import resident

# int4 adapter files bound to the int8 LoRA inputs differ from peft's fp32 adapters by 0.06-0.60 in
# the logits, int8 files by up to 0.058 with AVX-512 VNNI and 0.82 on an AVX2-only CPU
# (tests/test_adapters.py). In their own sessions (MatMulNBits on the same levels), with AVX-512
# VNNI: int4 0.09-0.57 from peft and 0.016-0.092 from the bound path, int8 0.008-0.068 and 0.009-0.163
BOUND = 2.0


@pytest.fixture(scope="module", params=["int4", "int8"])
def quantised_bundle(request, two_adapters, checkpoints, tmp_path_factory):
    """The two-adapter bundle with int4 or int8 adapter files ('style': rank 8 on every linear, 'terse':
    rank 16 on two), and peft's greedy tokens and logits for each adapter and the base."""
    pm, dirs, _ = two_adapters
    bundle = export_model(checkpoints["phi4mini"], tmp_path_factory.mktemp("lanes") / request.param, precision="fp32",
                          show_progress=False, adapters={k: str(v) for k, v in dirs.items()},
                          adapter_precision=request.param)
    model = load(bundle)
    expected = {}
    for name in ("style", "terse", None):
        if name:
            pm.set_adapter(name)
        with pm.disable_adapter() if name is None else warnings.catch_warnings():
            expected[name] = [hf_greedy(pm, model.encode(p), 8) for p in PROMPTS]
    return bundle, expected


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(prepacked.ENV, str(tmp_path / "cache"))


def test_quantised_adapters_run_in_their_own_sessions_like_peft(quantised_bundle, cache, tmp_path):
    bundle, expected = quantised_bundle
    bound = load(bundle)   # no prepacked entry yet: the adapters are bound to the LoRA inputs
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    model = load(bundle)
    assert model.decoder.session.prepacked
    text_only = {p: model.score(model.encode(p), expected[None][i][0])[None] for i, p in enumerate(PROMPTS)}
    # requests alternate between the base and each adapter, all on one KV cache
    for name in (None, "style", "terse", None, "terse", "style", None):
        for p, (tokens, ref) in zip(PROMPTS, expected[name]):
            ids = model.encode(p)
            got = model.score(ids, tokens, adapter=name)
            assert (model.decoder.running is model.decoder.session) == (name is None)
            if name is None:   # the base session, untouched by the adapters' sessions
                np.testing.assert_array_equal(got, text_only[p][0])
                continue
            err = float(np.abs(got - ref).max())
            drift = float(np.abs(got - bound.score(ids, tokens, adapter=name)).max())
            print(f"{name}, {p!r}: |logits - peft| {err:.3f}, |own session - bound| {drift:.3f}")
            assert err < BOUND and drift < BOUND
            confident = margins(ref) > 2 * err
            n = int(np.argmin(confident)) if not confident.all() else len(tokens)
            assert model.generate(ids, max_new_tokens=8, adapter=name).token_ids[:n] == tokens[:n]
    assert sorted(n for n, lane in model.decoder.lanes.items() if lane) == ["style", "terse"]
    assert model.loaded_adapters == ["style", "terse"]
    del bound   # its mappings of the files are not the sessions'
    gc.collect()
    if sys.platform.startswith("linux"):   # packed into the sessions: the files' pages were handed back
        mappings, resident_bytes = resident(bundle / "adapters")
        assert mappings == 2 and resident_bytes == 0
    assert bench(model, prompt_lengths=(8,), new_tokens=2, repeats=1)["adapter"]["own_session"] is True


def test_other_adapters_stay_bound(two_adapters, cache, tmp_path):
    """fp32 adapter files, and adapters of a decoder loaded without a prepacked entry, run on the LoRA
    inputs as before (the bit-equal logits with and without the entry are tests/test_prepacked.py's)."""
    bundle = shutil.copytree(two_adapters[2], tmp_path / "fp32")
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    model = load(bundle)
    model.load_adapter("style")
    assert model.decoder.lanes == {"style": None} and model.loaded_adapters == ["style"]


def test_an_adapter_that_does_not_fit_is_refused(quantised_bundle, cache, tmp_path):
    """A file whose pair does not fit its linear is refused with the module and shapes, as when
    bound (its qkv_proj pair renamed o_proj: B has qkv_proj's outputs)."""
    bundle = quantised_bundle[0]
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    source = ort.AdapterFormat.read_adapter(str(bundle / "adapters" / "terse.onnx_adapter"))
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(source.get_model_version())
    fmt.set_parameters({k.replace("qkv_proj", "o_proj"): v for k, v in source.get_parameters().items()})
    fmt.export_adapter(str(tmp_path / "wrong.onnx_adapter"))
    model = load(bundle)
    model.add_adapter("wrong", tmp_path / "wrong.onnx_adapter")
    with pytest.raises(BundleError, match=r"layers\.1\.o_proj B has shape \[16, 512\], the base expects \['r', 256\]"):
        model.generate("hi", max_new_tokens=2, adapter="wrong")
    assert model.decoder.lanes == {"wrong": None}
