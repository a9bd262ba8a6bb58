"""The export choices, stated once and without torch: the deployable graph, the export pipeline
and the manifest reader (which must run without torch) all read them here. The engine flavours
are stated with the runtimes (``hwnas.runtimes``), below the backends that import their modules."""
from __future__ import annotations

from hwnas.runtimes import ENGINE_FLAVOURS

__all__ = ["ENGINE_FLAVOURS", "INT8_TARGETS", "NMS_FORMS", "PRECISIONS"]

# NMS form of the deployed graph: ONNX NonMaxSuppression, NMS written with plain ops (builds on
# TensorRT-RTX), TensorRT's EfficientNMS plugin, or decode only with NMS on the host.
NMS_FORMS = ("onnx", "ops", "efficient", "host")
PRECISIONS = ("fp32", "fp16", "int8")
# An int8 Q/DQ graph is specific to its runtime (asymmetric uint8 is what is fast on a CPU,
# TensorRT wants symmetric int8), so the manifest says which one it is.
INT8_TARGETS = ("cpu", "tensorrt")
