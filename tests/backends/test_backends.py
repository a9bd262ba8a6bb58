"""Backends and the one timing protocol. Everything here is real: no mocks."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.backends import (
    BACKENDS,
    CpuTimer,
    Latency,
    Target,
    TimingConfig,
    get_backend,
    measure,
    robust_latency,
    time_module,
)
from hwnas.backends.onnx_export import to_onnx
from hwnas.errors import HwnasError

FAST = TimingConfig(warmup=2, min_repeats=15, max_repeats=100, min_time_s=0.02)


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


HAS_RTX = _has("tensorrt_rtx")
HAS_CUDA = torch.cuda.is_available()


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
    # Non-trivial BN statistics so folding is actually exercised.
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


class AddConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = self.conv(a + b)
        return y, [y.relu(), y.mean(dim=(2, 3))]


# ------------------------------------------------------------------ timing protocol
def test_measure_sleep_median() -> None:
    lat = measure(lambda: time.sleep(0.002), CpuTimer(), TimingConfig(warmup=1, min_repeats=15, min_time_s=0.0))
    # A sleep never returns early; a busy machine may wake it late, so the upper bound only catches a
    # wrong unit (seconds would read 0.002, microseconds 2000), not a slow scheduler.
    assert 1.8 <= lat.median_ms <= 50.0, lat
    assert lat.n >= 8  # at most half dropped


class ScriptedTimer:
    """A Timer whose clock reads the given durations (ms) in turn: what ``measure`` does with samples,
    independent of how busy the machine is."""

    def __init__(self, durations_ms: list[float]) -> None:
        self.durations = iter(durations_ms)

    def time_once(self, run) -> float:
        run()
        return next(self.durations)


def test_measure_rejects_slow_outliers() -> None:
    calls = {"n": 0}

    def run() -> None:
        calls["n"] += 1
        time.sleep(0.02 if calls["n"] % 10 == 0 else 0.001)

    cfg = TimingConfig(warmup=0, min_repeats=40, max_repeats=40, min_time_s=0.0)
    lat = measure(run, CpuTimer(), cfg)
    assert calls["n"] == 40
    assert lat.n <= 36  # the four 20 ms calls are gone
    assert 1.0 <= lat.median_ms < 10.0  # the median of the 1 ms calls, however late they wake (not 20)
    # the same protocol on a clock without scheduler noise: 36 calls of 1 ms, every tenth 20 ms.
    # median 1, MAD 0: all four 20 ms samples are outliers and the 36 left agree exactly.
    lat = measure(lambda: None, ScriptedTimer([20.0 if i % 10 == 9 else 1.0 for i in range(40)]), cfg)
    assert lat == Latency(median_ms=1.0, spread_ms=0.0, n=36)
    # noisier fast calls, 12 each of 0.9, 1.0, 1.1 ms, and the four 20 ms ones: median 1.0, MAD 0.1
    # (robust std 0.148), so 20 ms is far out; the 36 left: median 1.0, deviations 12 x 0 and 24 x 0.1
    fast = iter([0.9, 1.0, 1.1] * 12)
    noisy = [20.0 if i % 10 == 9 else next(fast) for i in range(40)]
    lat = measure(lambda: None, ScriptedTimer(noisy), cfg)
    assert lat.n == 36 and lat.median_ms == pytest.approx(1.0) and lat.spread_ms == pytest.approx(1.4826 * 0.1)


def test_robust_latency_keeps_at_least_half() -> None:
    lat = robust_latency([1.0] * 10 + [50.0] * 4)
    assert lat == Latency(median_ms=1.0, spread_ms=0.0, n=10)
    # Constant-ish samples (MAD = 0) must not drop below half.
    lat = robust_latency([1.0, 1.0, 1.0, 2.0, 3.0, 4.0])
    assert lat.n >= 3


def test_measure_respects_min_time_and_max_repeats() -> None:
    count = {"n": 0}

    def run() -> None:
        count["n"] += 1

    measure(run, CpuTimer(), TimingConfig(warmup=3, min_repeats=5, max_repeats=50, min_time_s=10.0))
    assert count["n"] == 3 + 50  # capped by max_repeats although min_time was not reached


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"warmup": -1}, "warmup"),
        ({"min_repeats": 0}, "min_repeats"),
        ({"min_repeats": 20, "max_repeats": 10}, "max_repeats"),
        ({"min_time_s": -0.1}, "min_time_s"),
        ({"outlier_k": 0}, "outlier_k"),
    ],
)
def test_timing_config_validation(kw: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        TimingConfig(**kw)


# ------------------------------------------------------------------ value types
def test_latency_add_and_round_trip() -> None:
    a, b = Latency(1.0, 0.3, 20), Latency(2.5, 0.4, 15)
    s = a + b
    assert s.median_ms == pytest.approx(3.5)
    assert s.spread_ms == pytest.approx(0.5)
    assert s.n == 15
    assert sum([a, b]) == s
    assert Latency.from_dict(s.to_dict()) == s


def test_target_round_trip_and_mismatches() -> None:
    t = Target("Intel Xeon X", "ort-cpu", "1.32.0", "fp32", 1, 1, (("torch", "2.14"), ("numpy", "2.0")))
    assert t.libraries == (("numpy", "2.0"), ("torch", "2.14"))
    assert Target.from_dict(t.to_dict()) == t
    import json

    assert Target.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    u = Target("AMD EPYC Y", "ort-cpu", "1.32.0", "fp32", 1, 4, (("torch", "2.15"),))
    assert t.mismatches(u) == ["device: 'Intel Xeon X' != 'AMD EPYC Y'", "threads: 1 != 4"]
    assert t.mismatches(t) == []


# ------------------------------------------------------------------ ONNX export
def test_to_onnx_names_and_nested_outputs() -> None:
    import onnx

    m = onnx.load_from_string(to_onnx(AddConv(), (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8))))
    assert [i.name for i in m.graph.input] == ["input0", "input1"]
    assert [o.name for o in m.graph.output] == ["output0", "output1", "output2"]


# ------------------------------------------------------------------ ort-cpu
def test_ort_cpu_times_and_matches_torch() -> None:
    net, x = small_net(), torch.randn(1, 3, 32, 32)
    backend = get_backend("ort-cpu", threads=1)
    lat = time_module(backend, net, (x,), FAST)
    assert lat.median_ms > 0 and lat.n >= FAST.min_repeats // 2
    runner = backend.compile(net, (x,))
    (out,) = runner.outputs()
    np.testing.assert_allclose(out, net(x).detach().numpy(), atol=1e-4, rtol=1e-4)
    t = backend.target()
    assert t.backend == "ort-cpu" and t.threads == 1 and t.precision == "fp32"
    assert dict(t.libraries)["onnxruntime"] == t.backend_version


def test_ort_cpu_multi_input() -> None:
    mod, a, b = AddConv().eval(), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    runner = get_backend("ort-cpu").compile(mod, (a, b))
    outs = runner.outputs()
    ref = [mod(a, b)[0], *mod(a, b)[1]]
    assert len(outs) == 3
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r.detach().numpy(), atol=1e-4, rtol=1e-4)
    assert measure(runner.run, runner.timer, FAST).median_ms > 0


def test_ort_cpu_rejects_fp16() -> None:
    with pytest.raises(HwnasError, match="fp32"):
        get_backend("ort-cpu", precision="fp16")


# ------------------------------------------------------------------ torch
def test_torch_cpu_times() -> None:
    net, x = small_net(), torch.randn(1, 3, 32, 32)
    backend = get_backend("torch", device="cpu", threads=1)
    lat = time_module(backend, net, (x,), FAST)
    assert lat.median_ms > 0
    (out,) = backend.compile(net, (x,)).outputs()
    np.testing.assert_allclose(out, net(x).detach().numpy(), atol=1e-5)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_torch_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(HwnasError, match=r"torch.cuda.is_available\(\).*--backend ort-cpu"):
        get_backend("torch", device="cuda")


def test_torch_bad_device_and_precision() -> None:
    with pytest.raises(HwnasError, match="cpu, cuda"):
        get_backend("torch", device="tpu")
    with pytest.raises(HwnasError, match="fp32"):
        get_backend("torch", precision="int4")
    with pytest.raises(HwnasError, match="cuda"):
        get_backend("torch", device="cpu", precision="fp16")


# ------------------------------------------------------------------ registry
def test_unknown_backend_lists_names() -> None:
    with pytest.raises(HwnasError) as e:
        get_backend("nope")
    for name in ("ort-cpu", "torch", "tensorrt", "tensorrt-rtx"):
        assert name in str(e.value)
    assert set(BACKENDS) == {"ort-cpu", "torch", "tensorrt", "tensorrt-rtx"}


def test_import_is_lazy() -> None:
    code = (
        "import hwnas.backends, hwnas.backends.ort, hwnas.backends.tensorrt, sys; "
        "bad = [m for m in ('onnxruntime', 'tensorrt', 'tensorrt_rtx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(_has("tensorrt"), reason="full tensorrt is installed here")
def test_missing_tensorrt_says_what_to_install() -> None:
    with pytest.raises(HwnasError, match=r"pip install 'hwnas\[tensorrt\]'"):
        get_backend("tensorrt")


# ------------------------------------------------------------------ TensorRT-RTX (ahead of time, no GPU)
trt = pytest.mark.trt
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx not installed: pip install 'hwnas[tensorrt-rtx]'")


@trt
@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_aot_build(precision: str, tmp_path) -> None:
    from hwnas.backends.tensorrt import build_engine, export_for_precision

    onnx_bytes = export_for_precision(small_net(), (torch.randn(1, 3, 32, 32),), precision)
    cache = tmp_path / "sub" / "timing.cache"
    engine = build_engine(onnx_bytes, flavour="tensorrt-rtx", sm="80", timing_cache=cache, workspace_mb=256, opt_level=3)
    assert isinstance(engine, bytes) and len(engine) > 1000
    assert cache.exists()
    again = build_engine(onnx_bytes, flavour="tensorrt-rtx", sm="80", timing_cache=cache)
    assert len(again) > 1000
    assert not list(cache.parent.glob("*.tmp"))  # atomic write leaves no temp files


@trt
@needs_rtx
def test_rtx_backend_build_and_no_gpu_compile() -> None:
    backend = get_backend("tensorrt-rtx", precision="fp16", sm="86")
    net, x = small_net(), torch.randn(1, 3, 32, 32)
    assert len(backend.build(net, (x,))) > 1000
    assert next(net.parameters()).dtype == torch.float32  # the caller's module was not cast
    t = backend.target()
    assert t.backend == "tensorrt-rtx" and t.precision == "fp16" and "tensorrt_rtx" in dict(t.libraries)
    if not HAS_CUDA:
        with pytest.raises(HwnasError, match="build_engine"):
            backend.compile(net, (x,))


@trt
@needs_rtx
def test_rtx_bad_inputs() -> None:
    from hwnas.backends.tensorrt import build_engine

    onnx_bytes = to_onnx(small_net(), (torch.randn(1, 3, 16, 16),))
    with pytest.raises(HwnasError, match="75, 80, 86, 89, 120, 121"):
        build_engine(onnx_bytes, flavour="tensorrt-rtx", sm="90")
    with pytest.raises(HwnasError) as e:
        build_engine(b"this is not onnx", flavour="tensorrt-rtx", sm="80")
    assert "\n" not in str(e.value) and "parse" in str(e.value)
    with pytest.raises(HwnasError, match="sm="):
        build_engine(onnx_bytes, flavour="tensorrt-rtx", sm="80", hardware_compatible=True)
    with pytest.raises(HwnasError, match="int8"):
        get_backend("tensorrt-rtx", precision="int8")
    with pytest.raises(HwnasError, match="cuda"):
        get_backend("tensorrt-rtx", device="cpu")


# ------------------------------------------------------------------ GPU only (never in CI)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_timing(precision: str) -> None:
    net, x = small_net(), torch.randn(1, 3, 64, 64)
    backend = get_backend("torch", device="cuda", precision=precision)
    lat = time_module(backend, net, (x,), FAST)
    assert lat.median_ms > 0
    assert "sm_" in backend.target().device
    (out,) = backend.compile(net, (x,)).outputs()
    np.testing.assert_allclose(out, net(x).detach().numpy(), atol=1e-4 if precision == "fp32" else 5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_RTX), reason="needs a CUDA GPU and tensorrt_rtx")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_rtx_runner(precision: str) -> None:
    net, x = small_net(), torch.randn(1, 3, 64, 64)
    backend = get_backend("tensorrt-rtx", device="cuda", precision=precision)
    runner = backend.compile(net, (x,))
    (out,) = runner.outputs()
    np.testing.assert_allclose(out, net(x).detach().numpy(), atol=1e-3 if precision == "fp32" else 5e-2)
    assert measure(runner.run, runner.timer, FAST).median_ms > 0
