"""Ahead-of-time TensorRT(-RTX) engines of whole detectors (no GPU needed for tensorrt-rtx with ``sm``).

Every head type builds whole ("full" form) on TensorRT-RTX 1.7: the two-stage head's multi-scale
RoIAlign is exported in the gather form (:mod:`hwnas.models.roi_align`), since RTX has no RoiAlign
plugin and no NonZero; see ``benchmarks/results/trt_rtx_aot.md`` for build times and sizes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from hwnas.backends.tensorrt import build_engine, export_for_precision, trt_module
from hwnas.errors import HwnasError
from hwnas.spec.arch import Arch

__all__ = ["build_detector_engine"]


def build_detector_engine(
    arch: Arch,
    num_classes: int,
    *,
    flavour: str = "tensorrt-rtx",
    sm: str | None = "80",
    precision: str = "fp32",
    batch: int = 1,
    timing_cache: Path | None = None,
    roi_impl: str | None = None,
    seed: int = 0,
) -> tuple[bytes, dict[str, Any]]:
    """Export ``Detector.from_arch(arch, num_classes)`` (raw head outputs, decode/NMS outside) at
    ``precision`` and build a serialized engine for compute capability ``sm``.

    roi_impl: RoIAlign form of a two-stage head; None = the head's choice for the flavour
    (:func:`hwnas.heads.rcnn.choose_roi_impl`).
    Returns (engine bytes, info) where info records what was built: arch, head, form ("full":
    the whole detector incl. the RoI head), roi_impl, output names, sizes and seconds.
    Raises HwnasError (with the builder's message) when it does not build.
    """
    from hwnas.models.detector import Detector

    if not isinstance(batch, int) or batch < 1:
        raise HwnasError(f"batch must be a positive integer, got {batch!r}")
    trt = trt_module(flavour)
    roi_impl = arch.head.roi_impl(backend=flavour, requested=roi_impl)  # None: the head has no RoIAlign
    torch.manual_seed(seed)
    det = Detector.from_arch(arch, num_classes).eval()
    x = torch.randn(batch, 3, *arch.input_hw)
    t0 = time.perf_counter()
    onnx_bytes = export_for_precision(det, (x,), precision, roi_impl=roi_impl)
    t1 = time.perf_counter()
    engine = build_engine(onnx_bytes, flavour=flavour, sm=sm, timing_cache=timing_cache)
    t2 = time.perf_counter()
    info = {
        "arch": str(arch),
        "head": arch.head.kind,
        "num_classes": num_classes,
        "flavour": flavour,
        "version": trt.__version__,
        "sm": sm,
        "precision": precision,
        "batch": batch,
        "form": "full",
        "roi_impl": roi_impl,
        # the plan's tensors are named output0..N-1 (hwnas.backends.onnx_export); each is the detector output
        # of the same position, recorded so a loader can tell which is which
        "outputs": [{"name": f"output{i}", "is": n} for i, n in enumerate(det.output_names)],
        "onnx_bytes": len(onnx_bytes),
        "engine_bytes": len(engine),
        "export_s": round(t1 - t0, 3),
        "build_s": round(t2 - t1, 3),
    }
    return engine, info
