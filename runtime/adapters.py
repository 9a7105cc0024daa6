"""Switching LoRA adapters per request without reloading anything.

onnxruntime's own mechanism (RunOptions.add_active_adapter) is ignored by run_with_iobinding, which
the decoder needs for its in-place KV cache; so the adapter's tensors are bound to the LoRA graph
inputs directly. A file is memory-mapped the first time a request names it (pages come in as the
tensors are first used); switching afterwards only rebinds a few hundred tensors.
"""
from __future__ import annotations

import mmap
import struct
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import BundleError
from ..format import base_model_version
from ..lora_codec import int4_to_int8
from .adapter_file import read_mapped


class AdapterSet:
    def __init__(self, bundle, session: ort.InferenceSession):
        self.bundle = bundle
        # inputs with initializer defaults are listed as overridable initializers, not inputs; the
        # WebGPU form's have no defaults (plain inputs)
        plain = [i for i in session.get_inputs() if i.name.startswith("lora.")]
        self.inputs = {i.name: i for i in [*session.get_overridable_initializers(), *plain] if i.name.startswith("lora.")}
        self.files = {name: bundle.file(e.file) for name, e in bundle.manifest.adapters.items()}
        self.base_id = bundle.manifest.model.base_id
        self.rank1 = bool(plain) or any(i.type == "tensor(int8)" for i in self.inputs.values())
        self._mapped: dict[str, tuple[mmap.mmap, dict[str, np.ndarray]]] = {}   # name -> (mapping, its arrays)
        self._loaded: dict[str, dict[str, ort.OrtValue]] = {}   # name -> the values bound for it
        self.active: str | None = None
        self.unbound = bool(plain)   # inputs without defaults: nothing is bound until activate()

    @cached_property
    def empty(self) -> dict[str, ort.OrtValue]:
        """The LoRA inputs' values for the base model (made on first use)."""
        return {name: ort.OrtValue.ortvalue_from_numpy(self._empty(i, self.rank1)) for name, i in self.inputs.items()}

    @staticmethod
    def _dtype(inp) -> type:
        return {"tensor(float16)": np.float16, "tensor(int8)": np.int8}.get(inp.type, np.float32)

    def _empty(self, inp, rank1: bool) -> np.ndarray:
        """The no-adapter value of a LoRA input: rank 0, or rank 1 of zeros with unit scales in an
        int8 bundle (int8 LoRA at rank 0 gives NaN; see export/decoder.py) and in the WebGPU form (a
        rank-0 MatMul crashed the WebGPU EP)."""
        shape = [(1 if rank1 else 0) if isinstance(d, str) else d for d in inp.shape]
        return np.ones(shape, np.float32) if inp.name.endswith(".scale") else np.zeros(shape, self._dtype(inp))

    @property
    def names(self) -> list[str]:
        return sorted(self.files)

    @property
    def loaded(self) -> list[str]:
        """Adapters whose files have been mapped so far (loading is lazy)."""
        return sorted(self._mapped)

    def add(self, name: str, path: str | Path) -> None:
        """Make an adapter file outside the bundle available under `name` (checked when first used)."""
        if not self.inputs:
            raise BundleError(f"{self.bundle.path}: exported without LoRA support; re-export with --adapter or --lora")
        self.files[name] = Path(path)
        self._mapped.pop(name, None)
        self._loaded.pop(name, None)

    def read(self, name: str) -> tuple[mmap.mmap, dict[str, np.ndarray]]:
        """(the file's mapping, its tensors as arrays viewing it) for adapter `name`, refused unless
        the file is readable and was exported for this bundle's base weights. Mapped once."""
        if name in self._mapped:
            return self._mapped[name]
        if name not in self.files:
            have = ", ".join(self.names) or "none"
            raise BundleError(f"adapter '{name}' is not in this bundle (adapters: {have})")
        path = self.files[name]
        if not path.is_file():
            raise BundleError(f"{path}: adapter file missing")
        try:
            model_version, arrays, mapping = read_mapped(path)
        except (ValueError, IndexError, OSError, struct.error, UnicodeDecodeError) as e:
            raise BundleError(f"{path}: not a readable .onnx_adapter file ({e})") from None
        if model_version != base_model_version(self.base_id):
            raise BundleError(f"{path}: adapter '{name}' was exported for another base model "
                              f"(model_version {model_version}, this bundle is {base_model_version(self.base_id)})")
        self._mapped[name] = (mapping, arrays)   # the arrays and values point into the mapping: keep it open
        return mapping, arrays

    def load(self, name: str) -> dict[str, ort.OrtValue]:
        """Adapter `name`'s values for the LoRA inputs (checked against them), made on first use."""
        if name in self._loaded:
            return self._loaded[name]
        params = {pname: ort.OrtValue.ortvalue_from_numpy(arr) for pname, arr in self._widen(self.read(name)[1]).items()}
        for pname, value in params.items():
            self._check(name, pname, value)
        self._loaded[name] = params
        return params

    def _widen(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """int4 tensors (packed uint8 with block scales, phi4edge/lora_codec.py) as the int8 LoRA
        inputs take them, in memory; other tensors stay views of the mapped file. B's rows are A's rank."""
        out = dict(arrays)
        for a_name, packed in arrays.items():
            b_name = a_name.removesuffix(".A") + ".B"
            parts = (f"{a_name}.scale", b_name, f"{b_name}.scale")
            if packed.dtype != np.uint8 or not a_name.endswith(".A") or a_name not in self.inputs or \
                    not all(p in arrays for p in parts):
                continue   # not an int4 pair: _check names what does not fit
            a, a_scale = int4_to_int8(packed, arrays[f"{a_name}.scale"], self.inputs[a_name].shape[0])
            b, b_scale = int4_to_int8(arrays[b_name], arrays[f"{b_name}.scale"], a.shape[1])
            out |= {a_name: a, f"{a_name}.scale": a_scale, b_name: b, f"{b_name}.scale": b_scale}
        return out

    def _check(self, name: str, pname: str, value: ort.OrtValue) -> None:
        inp = self.inputs.get(pname)
        if inp is None:
            raise BundleError(f"adapter '{name}': tensor '{pname}' matches no LoRA input of this decoder")
        shape, want = value.shape(), inp.shape
        fixed_ok = all(isinstance(w, str) or w == s for w, s in zip(want, shape))
        if len(shape) != len(want) or not fixed_ok:
            module = pname.rsplit(".", 1)[0].removeprefix("lora.")
            raise BundleError(f"adapter '{name}': {module} {pname[-1]} has shape {shape}, the base expects "
                              f"{['r' if isinstance(w, str) else w for w in want]}")
        if value.data_type() != inp.type:
            raise BundleError(f"adapter '{name}': '{pname}' is {value.data_type()}, this decoder takes {inp.type} "
                              f"(re-export the adapter with the bundle's --adapter-precision)")

    def activate(self, binding: ort.IOBinding, name: str | None) -> None:
        """Bind `name`'s tensors (or the empty values for None) to the LoRA inputs."""
        if name == self.active and not self.unbound:
            return
        if name is not None and not self.inputs:
            raise BundleError(f"{self.bundle.path}: exported without LoRA support, so adapter '{name}' cannot run")
        values = self.load(name) if name is not None else {}
        for pname in self.inputs:
            binding.bind_ortvalue_input(pname, values.get(pname, self.empty[pname]))
        self.active, self.unbound = name, False
