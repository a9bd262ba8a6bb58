"""The engine runtimes hwnas builds for (the TensorRT flavours), stated once and without torch:
the TensorRT backend imports the module named here, the export pipeline and the manifest reader
(which runs without torch) check a flavour against these names."""
from __future__ import annotations

# engine flavour -> (python module, install hint)
ENGINE_FLAVOURS: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "pip install 'hwnas[tensorrt]' (TensorRT wheels come from NVIDIA's index)"),
    "tensorrt-rtx": ("tensorrt_rtx", "pip install 'hwnas[tensorrt-rtx]' (i.e. tensorrt-rtx-cu13)"),
}
