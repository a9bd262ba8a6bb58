"""``ort-cpu``: onnxruntime CPUExecutionProvider on an ONNX export of the module."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.backends.base import (
    CpuTimer,
    Target,
    check_choice,
    check_threads,
    cpu_name,
    library_versions,
)
from hwnas.errors import HwnasError

__all__ = ["OrtCpuBackend", "OrtRunner", "cpu_session", "import_onnxruntime", "session_options"]


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise HwnasError(f"the ort-cpu backend needs onnxruntime ({e}): pip install onnxruntime") from None
    return onnxruntime


def session_options(threads: int | None = None, *, optimize: bool = True) -> Any:
    """onnxruntime options for one stream on the CPU: ``threads`` intra-op threads (None:
    onnxruntime's default), no inter-op parallelism, errors-only logging. ``optimize=False``
    keeps the graph as written (quantisation debugging compares its tensors by name)."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3  # errors only
    return so


def cpu_session(model: bytes | str | Path, threads: int | None = None, *, profile_prefix: str | None = None) -> Any:
    """An onnxruntime InferenceSession on the CPU provider with :func:`session_options`: the one
    place hwnas opens one (timing, deployed graphs, engines of the onnx flavour, bench).
    ``profile_prefix``: record onnxruntime's profile to a file of that prefix (``end_profiling()``)."""
    so = session_options(threads)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    src = model if isinstance(model, (bytes, bytearray)) else str(model)
    return import_onnxruntime().InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


class OrtRunner:
    """An InferenceSession with its inputs bound once (IOBinding), so run() is just the inference."""

    def __init__(self, session: Any, feed: dict[str, np.ndarray]) -> None:
        self.session = session
        self.timer = CpuTimer()
        self._binding = session.io_binding()
        self._feed = feed  # keep the arrays alive: the binding points at their memory
        for name, arr in feed.items():
            self._binding.bind_cpu_input(name, arr)
        for out in session.get_outputs():
            self._binding.bind_output(out.name, "cpu")

    def run(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def outputs(self) -> list[np.ndarray]:
        self.run()
        return [np.asarray(o, dtype=np.float32) for o in self._binding.copy_outputs_to_cpu()]


class OrtCpuBackend:
    name = "ort-cpu"
    PRECISIONS = ("fp32",)
    DEVICES = ("cpu",)

    def __init__(
        self,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int = 1,
        batch: int = 1,
        opset: int = 17,
    ) -> None:
        self.device = check_choice("ort-cpu device", device, self.DEVICES, "for GPUs use --backend torch or tensorrt")
        self.precision = check_choice(
            "ort-cpu precision", precision, self.PRECISIONS, "fp16/int8 ONNX conversion is not wired up yet"
        )
        self.threads = check_threads(threads)
        self.batch = int(batch)
        self.opset = int(opset)
        # The ONNX export runs in torch; its own thread pool would otherwise spin on the cores
        # onnxruntime is timed on (3.5x slower profiles on 2 cores, and noisier timings).
        torch.set_num_threads(self.threads)

    def target(self) -> Target:
        ort = import_onnxruntime()
        return Target(
            device=cpu_name(),
            backend=self.name,
            backend_version=ort.__version__,
            precision=self.precision,
            batch=self.batch,
            threads=self.threads,
            libraries=library_versions({"onnxruntime": ort.__version__}),
        )

    def session(self, onnx_bytes: bytes) -> Any:
        """An InferenceSession on the CPU provider, configured for stable single-stream timing."""
        return cpu_session(onnx_bytes, self.threads)

    def compile(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> OrtRunner:
        from hwnas.backends.onnx_export import to_onnx

        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        import_onnxruntime()  # fail with the install hint before spending time on the export
        cpu_inputs = tuple(t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype) for t in inputs)
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()):
            module = copy.deepcopy(module).to("cpu", torch.float32)  # never move the caller's module
        data = to_onnx(module, cpu_inputs, opset=self.opset)
        sess = self.session(data)
        feed = {
            meta.name: np.ascontiguousarray(t.numpy()) for meta, t in zip(sess.get_inputs(), cpu_inputs, strict=True)
        }
        return OrtRunner(sess, feed)
