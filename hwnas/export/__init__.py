"""Deployment: the deployable ONNX graph (decode + NMS in the graph), runners, parity checks.

Importing this package imports nothing heavy (no onnx, onnxruntime or TensorRT): names resolve
lazily from their modules on first use.

* :mod:`~hwnas.export.deploy`: :class:`DeployModel`, :func:`export_deploy_onnx`, :data:`NMS_FORMS`,
  :class:`OnnxDetector`, :class:`TorchDetector`.
* :mod:`~hwnas.export.nms`: the NMS forms as graph pieces.
* :mod:`~hwnas.export.parity`: :func:`parity`, one runner's mAP and boxes against another's.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "NMS_FORMS": "deploy", "DeployConfig": "deploy", "DeployModel": "deploy", "OnnxDetector": "deploy",
    "TorchDetector": "deploy", "export_deploy_onnx": "deploy", "parity": "parity", "box_agreement": "parity",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"hwnas.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hwnas.export' has no attribute {name!r}")
