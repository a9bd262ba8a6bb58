"""``torch``: PyTorch eager on the CPU or a CUDA GPU."""

from __future__ import annotations

import copy

import numpy as np
import torch

from hwnas.backends.base import (
    CpuTimer,
    CudaTimer,
    Target,
    Timer,
    check_choice,
    check_threads,
    cpu_name,
    cuda_device_name,
    is_cuda_device,
    library_versions,
    to_numpy_list,
)
from hwnas.errors import HwnasError

__all__ = ["TorchBackend", "TorchRunner"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class TorchRunner:
    def __init__(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], timer: Timer) -> None:
        self.module = module
        self.inputs = inputs
        self.timer = timer

    def run(self) -> None:
        # On CUDA this only enqueues; CudaTimer / outputs() synchronize.
        with torch.inference_mode():
            self.module(*self.inputs)

    def outputs(self) -> list[np.ndarray]:
        with torch.inference_mode():
            return to_numpy_list(self.module(*self.inputs))


class TorchBackend:
    name = "torch"
    PRECISIONS = ("fp32", "fp16")

    def __init__(self, *, device: str = "cpu", precision: str = "fp32", threads: int = 1, batch: int = 1) -> None:
        if device != "cpu" and not is_cuda_device(device):
            raise HwnasError(f"torch device {device!r} is not valid; choose one of: cpu, cuda, cuda:<index>")
        self.device = device
        self.precision = check_choice("torch precision", precision, self.PRECISIONS)
        if precision == "fp16" and device == "cpu":
            raise HwnasError("torch precision 'fp16' needs --device cuda; on the CPU use fp32")
        if is_cuda_device(device) and not torch.cuda.is_available():
            raise HwnasError(
                f"device {device!r} asked for but torch.cuda.is_available() is False; "
                "use --backend ort-cpu or --device cpu"
            )
        self.threads = check_threads(threads)
        self.batch = int(batch)

    def target(self) -> Target:
        device = cpu_name() if self.device == "cpu" else cuda_device_name(self.device)
        extra = {}
        if self.device != "cpu" and torch.version.cuda:
            extra["cuda"] = str(torch.version.cuda)
        return Target(
            device=device,
            backend=self.name,
            backend_version=torch.__version__,
            precision=self.precision,
            batch=self.batch,
            threads=self.threads,
            libraries=library_versions(extra),
        )

    def compile(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> TorchRunner:
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        dtype = _DTYPES[self.precision]
        # A copy, so casting/moving never changes the caller's module.
        mod = copy.deepcopy(module).eval().to(self.device, dtype)
        ins = tuple(t.detach().to(self.device, dtype if t.is_floating_point() else t.dtype) for t in inputs)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
            timer: Timer = CpuTimer()
        else:
            torch.cuda.set_device(torch.device(self.device))
            timer = CudaTimer()
        return TorchRunner(mod, ins, timer)
