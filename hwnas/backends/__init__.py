"""Backends that compile and time a module, and the one timing protocol.

Importing this package imports neither onnxruntime nor TensorRT: backend modules import them
lazily, and a missing library raises HwnasError naming what to ``pip install``.
"""

from hwnas.backends.base import (
    Backend,
    CpuTimer,
    CudaTimer,
    Latency,
    Runner,
    Target,
    Timer,
    TimingConfig,
    measure,
    robust_latency,
    time_module,
)
from hwnas.backends.registry import BACKENDS, backend_for_target, get_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "CpuTimer",
    "CudaTimer",
    "Latency",
    "Runner",
    "Target",
    "Timer",
    "TimingConfig",
    "backend_for_target",
    "get_backend",
    "measure",
    "robust_latency",
    "time_module",
]
