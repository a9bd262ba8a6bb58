"""Backend protocol, the fingerprint of a measurement target, and the one timing protocol.

Everything that times anything in hwnas goes through :func:`measure`: warm-up, repeats until both a
minimum count and a minimum time are reached, robust outlier rejection, median and robust spread.
Nothing here imports onnxruntime, TensorRT or touches CUDA; backends import those lazily.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from hwnas.errors import HwnasError

__all__ = [
    "Latency",
    "Target",
    "TimingConfig",
    "Timer",
    "CpuTimer",
    "CudaTimer",
    "Runner",
    "Backend",
    "measure",
    "robust_latency",
    "time_module",
    "cpu_name",
    "library_versions",
    "to_numpy_list",
]

# 1.4826 * MAD estimates the standard deviation of normally distributed samples.
_MAD_TO_STD = 1.4826


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    """A measured latency: median over kept samples, robust spread (1.4826 * MAD), sample count."""

    median_ms: float
    spread_ms: float
    n: int

    def __add__(self, other: "Latency") -> "Latency":
        if not isinstance(other, Latency):
            return NotImplemented
        # Independent units: medians add, spreads add in quadrature; n is the weakest link.
        return Latency(
            median_ms=self.median_ms + other.median_ms,
            spread_ms=math.hypot(self.spread_ms, other.spread_ms),
            n=min(self.n, other.n),
        )

    def __radd__(self, other: Any) -> "Latency":
        # Lets sum([...]) start from 0.
        if other == 0:
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "spread_ms": self.spread_ms, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Latency":
        """From a file: a median that is NaN, infinite or negative would predict NaN (invalid JSON
        downstream) or a negative latency, so it is refused here, where every table entry passes."""
        median, spread, n = d["median_ms"], d["spread_ms"], d["n"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (median, spread)) \
                or not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"median_ms, spread_ms must be numbers and n an integer, got {median!r}, {spread!r}, {n!r}")
        if not (math.isfinite(median) and median >= 0 and math.isfinite(spread) and spread >= 0 and n >= 1):
            raise ValueError(f"median_ms {median} and spread_ms {spread} must be finite and >= 0, n {n} >= 1")
        return cls(median_ms=float(median), spread_ms=float(spread), n=n)


# The Target fields that change latency; `libraries` is recorded but not compared.
_LATENCY_FIELDS = ("device", "backend", "backend_version", "precision", "batch", "threads")


@dataclass(frozen=True)
class Target:
    """What a latency table was measured on (its fingerprint)."""

    device: str
    backend: str
    backend_version: str
    precision: str
    batch: int
    threads: int
    libraries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Normalise to a sorted tuple of pairs so equal fingerprints compare and hash equal.
        libs = tuple(sorted((str(k), str(v)) for k, v in self.libraries))
        object.__setattr__(self, "libraries", libs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["libraries"] = {k: v for k, v in self.libraries}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Target":
        libs = d.get("libraries", {})
        pairs = tuple(libs.items()) if isinstance(libs, dict) else tuple(tuple(p) for p in libs)
        return cls(
            device=str(d["device"]),
            backend=str(d["backend"]),
            backend_version=str(d["backend_version"]),
            precision=str(d["precision"]),
            batch=int(d["batch"]),
            threads=int(d["threads"]),
            libraries=pairs,
        )

    @property
    def on_gpu(self) -> bool:
        """Measured on a CUDA GPU: :func:`cuda_device_name` writes such devices as ``"<name> sm_XY"``."""
        return " sm_" in self.device

    def mismatches(self, other: "Target") -> list[str]:
        """Human-readable differences in the fields that matter for latency, e.g.
        ``"device: 'Intel Xeon X' != 'AMD EPYC Y'"``. Empty when the targets are compatible."""
        out = []
        for name in _LATENCY_FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {a!r} != {b!r}")
        return out


@dataclass(frozen=True)
class TimingConfig:
    """How to time one runnable.

    warmup: untimed calls first. Then repeat at least ``min_repeats`` times and keep going until
    ``min_time_s`` seconds were spent timing, never more than ``max_repeats`` samples.
    Samples farther than ``outlier_k`` robust std from the median are dropped (never more than half).
    """

    warmup: int = 5
    min_repeats: int = 15
    max_repeats: int = 300
    min_time_s: float = 0.25
    outlier_k: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if not isinstance(self.min_repeats, int) or self.min_repeats < 1:
            raise ValueError(f"min_repeats must be an int >= 1, got {self.min_repeats!r}")
        if not isinstance(self.max_repeats, int) or self.max_repeats < self.min_repeats:
            raise ValueError(
                f"max_repeats must be an int >= min_repeats ({self.min_repeats}), got {self.max_repeats!r}"
            )
        if not (isinstance(self.min_time_s, (int, float)) and self.min_time_s >= 0 and math.isfinite(self.min_time_s)):
            raise ValueError(f"min_time_s must be a finite number >= 0 seconds, got {self.min_time_s!r}")
        if not (isinstance(self.outlier_k, (int, float)) and self.outlier_k > 0):
            raise ValueError(f"outlier_k must be > 0 (robust std units; 3.0 is usual), got {self.outlier_k!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimingConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------------------------
# Timers and the timing protocol
# --------------------------------------------------------------------------------------------
@runtime_checkable
class Timer(Protocol):
    def time_once(self, run: Callable[[], None]) -> float:
        """Call ``run`` once and return its duration in milliseconds."""
        ...


class CpuTimer:
    """Wall clock around a synchronous call."""

    def time_once(self, run: Callable[[], None]) -> float:
        t0 = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - t0) / 1e6


class CudaTimer:
    """CUDA events on the current stream around the call, then synchronize.

    ``run`` may only enqueue work on the current stream; the end event is recorded after it and
    waited for, so the sample is GPU time of the enqueued work (plus launch gaps).
    """

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise HwnasError(
                "CudaTimer needs a CUDA GPU but torch.cuda.is_available() is False; "
                "time on the CPU with --backend ort-cpu or --device cpu"
            )
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def time_once(self, run: Callable[[], None]) -> float:
        self._start.record()
        run()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


def robust_latency(samples: list[float], outlier_k: float = 3.0) -> Latency:
    """Median and robust spread of ``samples`` (ms) after dropping outliers.

    A sample is an outlier when it lies more than ``outlier_k`` robust std (1.4826 * MAD) from the
    median. At least half of the samples (the ones closest to the median) are always kept.
    """
    if not samples:
        raise ValueError("robust_latency needs at least one sample")
    xs = sorted(float(s) for s in samples)
    med = statistics.median(xs)
    rstd = _MAD_TO_STD * statistics.median(abs(x - med) for x in xs)
    kept = [x for x in xs if abs(x - med) <= outlier_k * rstd]
    min_keep = (len(xs) + 1) // 2
    if len(kept) < min_keep:
        kept = sorted(xs, key=lambda x: abs(x - med))[:min_keep]
    kmed = statistics.median(kept)
    kspread = _MAD_TO_STD * statistics.median(abs(x - kmed) for x in kept)
    return Latency(median_ms=float(kmed), spread_ms=float(kspread), n=len(kept))


def measure(run: Callable[[], None], timer: Timer, cfg: TimingConfig = TimingConfig()) -> Latency:
    """The one timing protocol: warm up, repeat (count and time bounded), reject outliers, summarise."""
    for _ in range(cfg.warmup):
        run()
    samples: list[float] = []
    budget_ns = int(cfg.min_time_s * 1e9)
    t0 = time.perf_counter_ns()
    while len(samples) < cfg.max_repeats:
        samples.append(timer.time_once(run))
        if len(samples) >= cfg.min_repeats and time.perf_counter_ns() - t0 >= budget_ns:
            break
    return robust_latency(samples, cfg.outlier_k)


# --------------------------------------------------------------------------------------------
# Backend and runner protocols
# --------------------------------------------------------------------------------------------
@runtime_checkable
class Runner(Protocol):
    """One compiled module bound to fixed inputs."""

    timer: Timer

    def run(self) -> None:
        """One inference on the fixed inputs. Synchronous on CPU; on CUDA it is ordered on the
        current stream and ``timer`` synchronizes (so launch-to-sync latency is not timed)."""
        ...

    def outputs(self) -> list[np.ndarray]:
        """Run once and return every output as a float32 numpy array (flattened output order)."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def target(self) -> Target: ...

    def compile(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner: ...


def time_module(
    backend: Backend,
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    cfg: TimingConfig = TimingConfig(),
) -> Latency:
    """Compile ``module`` for ``backend`` with ``inputs`` and time it with :func:`measure`."""
    runner = backend.compile(module, inputs)
    return measure(runner.run, runner.timer, cfg)


# --------------------------------------------------------------------------------------------
# Helpers shared by backends
# --------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo ("model name"), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def cuda_device_name(device: str) -> str:
    """``"<GPU name> sm_XY"`` for a torch device string such as ``cuda:0``."""
    dev = torch.device(device)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return f"{torch.cuda.get_device_name(idx)} sm_{major}{minor}"


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(extra: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """Sorted (name, version) of the libraries that shape a measurement: torch, onnx, numpy, python,
    plus ``extra`` (the backend's own runtime, e.g. onnxruntime or tensorrt_rtx)."""
    libs: dict[str, str] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    onnx_v = _dist_version("onnx")  # metadata only: importing onnx is not needed to know its version
    if onnx_v:
        libs["onnx"] = onnx_v
    libs.update(extra or {})
    return tuple(sorted(libs.items()))


def to_numpy_list(out: Any) -> list[np.ndarray]:
    """Flatten a tensor / tuple / list / dict of tensors into float32 numpy arrays."""
    result: list[np.ndarray] = []

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            result.append(o.detach().to("cpu", torch.float32).numpy())
        elif isinstance(o, np.ndarray):
            result.append(o.astype(np.float32, copy=False))
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)
        else:
            raise TypeError(f"module output must be tensors (possibly nested in tuple/list/dict), got {type(o).__name__}")

    walk(out)
    return result


def check_threads(threads: int) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise HwnasError(f"threads must be an integer >= 1, got {threads!r}")
    return threads


def check_choice(what: str, value: str, valid: tuple[str, ...], hint: str = "") -> str:
    if value not in valid:
        msg = f"{what} {value!r} is not valid; choose one of: {', '.join(valid)}"
        raise HwnasError(msg + (f" ({hint})" if hint else ""))
    return value


_CUDA_DEVICE_RE = re.compile(r"^cuda(:\d+)?$")


def is_cuda_device(device: str) -> bool:
    return bool(_CUDA_DEVICE_RE.match(device))
