"""onnxruntime's WebGPU EP as the onnxruntime-ep-webgpu package ships it: a plugin library that
onnxruntime registers at run time, selected per session with `add_provider_for_devices`.

What it does without a GPU (measured with 0.4.0 on onnxruntime 1.32): it offers no device at all
(onnxruntime's device discovery lists GPUs only), unless ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER=1 is
set before it is registered; then it offers one on the CPU device and asks Dawn for any adapter:
with a Vulkan ICD such as Chromium's SwiftShader (VK_ICD_FILENAMES=.../vk_swiftshader_icd.json) it
runs there, and without one session creation fails ("No supported adapters"). A session given
`providers=["WebGpuExecutionProvider"]` is no way to ask for it: the name is not in the onnxruntime
build, so it is refused. `driver()` says which Vulkan driver the process actually loaded.
"""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import BundleError
from ..providers import WEBGPU, plugin_devices

SOFTWARE_ADAPTER = "ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER"
SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"   # Debian's chromium package


def devices() -> list:
    """The WebGPU EP's devices, registering the plugin on first use; a BundleError names what is
    missing when there are none."""
    found = plugin_devices(WEBGPU)
    if not found:
        raise BundleError(f"WebGPU: onnxruntime lists no GPU for the WebGPU EP; to run on a software Vulkan "
                          f"adapter set {SOFTWARE_ADAPTER}=1 and VK_ICD_FILENAMES (e.g. {SWIFTSHADER_ICD})")
    return found


def session(path: str | Path, so: ort.SessionOptions,
            cls: type[ort.InferenceSession] = ort.InferenceSession) -> ort.InferenceSession:
    """A WebGPU session for the graph at `path` (the CPU runs the nodes it does not take); no
    adapter is a one-line BundleError, not a CPU run."""
    so.add_provider_for_devices(devices(), {})
    try:
        return cls(str(path), so)
    except Exception as e:   # onnxruntime raises its own EPFail type, which the Python API does not export
        if "adapter" in str(e):
            raise BundleError(f"WebGPU: no adapter ({str(e).strip().splitlines()[-1][-160:]}); install a GPU driver, "
                              f"or point VK_ICD_FILENAMES at a software Vulkan such as {SWIFTSHADER_ICD}") from None
        raise


def driver() -> str:
    """The Vulkan driver libraries this process has loaded (Linux), e.g. 'libvk_swiftshader.so': what
    a WebGPU session really ran on. 'unknown' where /proc is not there."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return "unknown"
    names = {line.rsplit("/", 1)[-1].strip() for line in maps.read_text().splitlines() if "/" in line}
    drivers = sorted(n for n in names if n.startswith(("libvk_", "libvulkan_", "libnvidia-vulkan", "libGLX_nvidia")))
    return ", ".join(drivers) or "none loaded"
