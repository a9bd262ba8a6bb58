"""The export choices, stated once and without torch: the deployable graph, the export pipeline,
the TensorRT backends and the manifest reader (which must run without torch) all read them here."""
from __future__ import annotations

__all__ = ["ENGINE_FLAVOURS", "INT8_TARGETS", "NMS_FORMS", "PRECISIONS"]

# NMS form of the deployed graph: ONNX NonMaxSuppression, NMS written with plain ops (builds on
# TensorRT-RTX), TensorRT's EfficientNMS plugin, or decode only with NMS on the host.
NMS_FORMS = ("onnx", "ops", "efficient", "host")
PRECISIONS = ("fp32", "fp16", "int8")
# An int8 Q/DQ graph is specific to its runtime (asymmetric uint8 is what is fast on a CPU,
# TensorRT wants symmetric int8), so the manifest says which one it is.
INT8_TARGETS = ("cpu", "tensorrt")
# engine flavour -> (python module, install hint)
ENGINE_FLAVOURS: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "pip install 'hwnas[tensorrt]' (TensorRT wheels come from NVIDIA's index)"),
    "tensorrt-rtx": ("tensorrt_rtx", "pip install 'hwnas[tensorrt-rtx]' (i.e. tensorrt-rtx-cu13)"),
}
