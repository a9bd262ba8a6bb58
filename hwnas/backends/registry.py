"""The backends by name: one line per backend in :data:`BACKENDS`.

Kept apart from ``base`` because every backend module imports ``base``: a registry there would
import its own importers. The factories import their backend lazily, so importing this module
pulls in neither onnxruntime nor TensorRT.
"""
from __future__ import annotations

from typing import Any, Callable

from hwnas.backends.base import Backend, Target
from hwnas.errors import HwnasError


def _ort_cpu(**kw: Any) -> Backend:
    from hwnas.backends.ort import OrtCpuBackend

    return OrtCpuBackend(**kw)


def _torch(**kw: Any) -> Backend:
    from hwnas.backends.torch_backend import TorchBackend

    return TorchBackend(**kw)


def _tensorrt(**kw: Any) -> Backend:
    from hwnas.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(flavour="tensorrt", **kw)


def _tensorrt_rtx(**kw: Any) -> Backend:
    from hwnas.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(flavour="tensorrt-rtx", **kw)


BACKENDS: dict[str, Callable[..., Backend]] = {
    "ort-cpu": _ort_cpu,
    "torch": _torch,
    "tensorrt": _tensorrt,
    "tensorrt-rtx": _tensorrt_rtx,
}


def get_backend(
    name: str,
    *,
    device: str | None = None,
    precision: str = "fp32",
    threads: int = 1,
    **opts: Any,
) -> Backend:
    """Backend by name. ``device=None`` picks the backend's default (``cpu`` for ort-cpu and torch,
    ``cuda`` for tensorrt / tensorrt-rtx). Invalid names, devices or precisions raise HwnasError
    listing the valid values."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise HwnasError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}") from None
    kw: dict[str, Any] = dict(precision=precision, threads=threads, **opts)
    if device is not None:
        kw["device"] = device
    return factory(**kw)


def backend_for_target(target: Target) -> Backend:
    """The backend a table was measured with, on this machine (torch on CUDA when the table is a GPU's)."""
    device = "cuda" if target.on_gpu and target.backend == "torch" else None
    return get_backend(target.backend, device=device, precision=target.precision, threads=target.threads)
