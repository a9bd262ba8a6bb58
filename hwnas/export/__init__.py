"""Deployment: the deployable ONNX graph (decode + NMS in the graph), runners, parity checks.

Importing this package imports nothing heavy (no onnx, onnxruntime or TensorRT); import the
module you need:

* :mod:`~hwnas.export.deploy`: :class:`~hwnas.export.deploy.DeployModel`,
  :func:`~hwnas.export.deploy.export_deploy_onnx`, :data:`~hwnas.export.deploy.NMS_FORMS`,
  :class:`~hwnas.export.deploy.OnnxDetector`, :class:`~hwnas.export.deploy.TorchDetector`.
* :mod:`~hwnas.export.nms`: the NMS forms as graph pieces.
* :mod:`~hwnas.export.parity`: :func:`~hwnas.export.parity.parity`, one runner's mAP and boxes
  against another's.
* :mod:`~hwnas.export.precision`: fp16 and int8 (Q/DQ) conversion of a deployable graph.
* :mod:`~hwnas.export.engine` and :mod:`~hwnas.export.manifest`: engine files and their manifests.
* :mod:`~hwnas.export.pipeline`: ``hwnas export``, ``bench`` and ``infer`` behind the CLI.
"""
