"""``tensorrt`` and ``tensorrt-rtx``: one code path over the two Python modules.

Both take a strongly typed network parsed from ONNX, so precision lives in the graph (fp16 = a
module exported in half precision; int8 = explicit Q/DQ from :func:`hwnas.export.precision.to_int8`,
which :func:`build_engine` takes but the timing backend does not yet). TensorRT-RTX can build
ahead of time for a chosen compute capability on a machine without a GPU (:func:`build_engine`);
running or timing an engine needs a GPU (:class:`TensorRTRunner`, torch CUDA tensors as I/O).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.backends.base import (
    CudaTimer,
    Target,
    check_choice,
    check_threads,
    cuda_device_name,
    is_cuda_device,
    library_versions,
)
from hwnas.errors import HwnasError
from hwnas.runtimes import ENGINE_FLAVOURS
from hwnas.fileio import write_atomic
from hwnas.heads.rcnn import choose_roi_impl

__all__ = [
    "FLAVOURS",
    "TensorRTBackend",
    "TensorRTRunner",
    "build_engine",
    "check_batch_profile",
    "export_for_precision",
    "normalize_sm",
    "offered_sms",
    "trt_module",
]

FLAVOURS = ENGINE_FLAVOURS  # flavour -> (python module, install hint), stated in hwnas.runtimes


def trt_module(flavour: str) -> Any:
    """Import ``tensorrt`` or ``tensorrt_rtx`` lazily; a missing one says what to install."""
    check_choice("TensorRT flavour", flavour, tuple(FLAVOURS))
    modname, hint = FLAVOURS[flavour]
    try:
        return __import__(modname)
    except ImportError as e:
        raise HwnasError(f"the {flavour} backend needs the {modname} module ({e}): {hint}") from None


def offered_sms(trt: Any) -> tuple[str, ...]:
    """Compute capabilities this TensorRT module can build for ahead of time, e.g. ("75", "80", ...)."""
    cc = getattr(trt, "ComputeCapability", None)
    if cc is None:
        return ()
    return tuple(n[2:] for n in cc.__members__ if n.startswith("SM"))


def normalize_sm(sm: str | int) -> str:
    """"sm_89", "SM89", 89 -> "89": the one spelling of a compute capability in hwnas."""
    return str(sm).strip().lower().removeprefix("sm_").removeprefix("sm")


def _make_logger(trt: Any) -> Any:
    class _Collecting(trt.ILogger):
        """Keeps errors for the HwnasError message; prints nothing (CUDA-less AOT builds log
        harmless 'CUDA driver version is insufficient' errors and still succeed)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.ERROR:
                self.errors.append(msg)
            elif severity <= trt.ILogger.WARNING:
                self.warnings.append(msg)

    return _Collecting()


def _one_line(msgs: list[str], limit: int = 5) -> str:
    flat = [" ".join(m.split()) for m in msgs]
    more = f" (+{len(flat) - limit} more)" if len(flat) > limit else ""
    return "; ".join(flat[:limit]) + more


def build_engine(
    onnx_bytes: bytes,
    *,
    flavour: str,
    sm: str | None = None,
    workspace_mb: int | None = None,
    opt_level: int | None = None,
    timing_cache: Path | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    batch_profile: tuple[int, int, int] | None = None,
) -> bytes:
    """Serialized engine for an ONNX model (strongly typed: precision comes from the graph).

    sm: tensorrt-rtx only, build ahead of time for this compute capability ("75", "80", "86", "89",
        "120", "121"). None: full TensorRT builds for the GPU present; tensorrt-rtx 1.7 leaves the
        compute-capability list empty (its default), which also builds without a GPU.
    workspace_mb: workspace memory pool limit. opt_level: builder optimization level 0..5.
    version_compatible / hardware_compatible: full TensorRT only (HwnasError on tensorrt-rtx).
    timing_cache: loaded if it exists, saved (atomically) after the build. On TensorRT-RTX the
        timing-cache calls are deprecated no-ops (it autotunes at JIT time on the GPU and has a
        runtime cache instead); the file is still written so one command line serves both flavours.
    batch_profile: (min, opt, max) batch of an ONNX exported with a dynamic first axis (-1,
        e.g. named "batch"): one optimisation profile sets those shapes on every dynamic input.
        Required for such a model, refused for a static one.
    """
    trt = trt_module(flavour)

    # Cheap argument checks before any parsing.
    cc = None
    if sm is not None:
        sms = offered_sms(trt)
        if not sms:
            raise HwnasError(
                f"sm={sm!r}: ahead-of-time builds for a chosen compute capability need tensorrt-rtx; "
                f"{flavour} builds for the GPU it runs on (drop --sm)"
            )
        sm = normalize_sm(sm)
        if sm not in sms:
            raise HwnasError(f"sm {sm!r} is not offered by {flavour} {trt.__version__}; choose one of: {', '.join(sms)}")
        cc = getattr(trt.ComputeCapability, f"SM{sm}")
    if workspace_mb is not None and (not isinstance(workspace_mb, int) or workspace_mb <= 0):
        raise HwnasError(f"workspace_mb must be a positive integer (MiB), got {workspace_mb!r}")
    if opt_level is not None and (not isinstance(opt_level, int) or not 0 <= opt_level <= 5):
        raise HwnasError(f"opt_level must be an integer in 0..5 (builder optimization level), got {opt_level!r}")
    if flavour == "tensorrt-rtx" and (version_compatible or hardware_compatible):
        # Checked on 1.7: setHardwareCompatibilityLevel() is "unsupported in TensorRT-RTX" (ignored
        # with a warning) and VERSION_COMPATIBLE fails the build (no libnvinfer_lean in the wheel).
        raise HwnasError(
            "version_compatible / hardware_compatible are not supported by tensorrt-rtx; "
            "choose the target with sm=... (RTX engines are specialised on the device at load time)"
        )
    if not isinstance(onnx_bytes, (bytes, bytearray)) or not onnx_bytes:
        raise HwnasError("build_engine needs serialized ONNX bytes (hwnas.backends.onnx_export.to_onnx)")
    if batch_profile is not None:
        batch_profile = check_batch_profile(batch_profile)

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:  # TensorRT 10 / RTX need it; TensorRT 11 is strongly typed only
        flags |= 1 << int(strongly)
    # Keep `network` referenced for as long as `parser`: the parser holds a raw pointer to it
    # (a temporary network segfaults the parser).
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(bytes(onnx_bytes)):
        errs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or logger.errors
        raise HwnasError(f"{flavour} could not parse the ONNX model: {_one_line(errs)}")
    if network.num_outputs == 0:
        # Protobuf is lenient: many random byte strings decode as an empty ModelProto and "parse".
        raise HwnasError(
            f"{flavour} could not parse the ONNX model: it has no outputs ({len(onnx_bytes)} bytes; "
            "not a serialized ONNX model? export with hwnas.backends.onnx_export.to_onnx)"
        )

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if opt_level is not None:
        config.builder_optimization_level = opt_level
    if cc is not None:
        config.num_compute_capabilities = 1
        if not config.set_compute_capability(cc, 0):
            raise HwnasError(f"{flavour} refused compute capability sm_{sm}: {_one_line(logger.errors)}")
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    _add_batch_profile(builder, network, config, batch_profile, flavour)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.exists() else b""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # RTX: "Timing cache operations are no-ops"
            cache = config.create_timing_cache(data)
            config.set_timing_cache(cache, False)

    engine = builder.build_serialized_network(network, config)
    if engine is None:
        why = _one_line(logger.errors) or "no error message from the builder"
        raise HwnasError(f"{flavour} engine build failed: {why}")

    if cache_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tc = config.get_timing_cache()
            if tc is not None:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(cache_path, bytes(tc.serialize()))
    return bytes(engine)


def check_batch_profile(batch_profile: Any) -> tuple[int, int, int]:
    """(min, opt, max) batch sizes, positive integers with min <= opt <= max."""
    ok = (isinstance(batch_profile, (tuple, list)) and len(batch_profile) == 3
          and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batch_profile))
    if not ok or not batch_profile[0] <= batch_profile[1] <= batch_profile[2]:
        raise HwnasError(f"batch_profile must be (min, opt, max) positive integers with min <= opt <= max, "
                         f"got {batch_profile!r}")
    return tuple(batch_profile)


def _add_batch_profile(builder: Any, network: Any, config: Any, batch_profile: tuple[int, int, int] | None,
                       flavour: str) -> None:
    """One optimisation profile over the batch axis of every dynamic input.

    Only the batch (first) axis may be dynamic: the latency tables and the input convention are
    per resolution, so a dynamic height/width would be an export mistake, said here rather than by
    the builder's "no optimization profile" error.
    """
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if batch_profile is None:
        if dynamic:
            raise HwnasError(f"input {dynamic[0].name} has a dynamic shape {tuple(dynamic[0].shape)}; "
                             "pass batch_profile=(min, opt, max) to build it for a range of batch sizes")
        return
    if not dynamic:
        raise HwnasError(f"batch_profile={batch_profile} given but every input has a fixed shape "
                         f"({', '.join(f'{t.name} {tuple(t.shape)}' for t in inputs)}); export with a "
                         "dynamic batch axis, or drop batch_profile")
    profile = builder.create_optimization_profile()
    for t in dynamic:
        shape = tuple(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise HwnasError(f"input {t.name} {shape}: only the batch (first) axis may be dynamic; "
                             "export with a fixed input size")
        lo, opt, hi = ((b, *shape[1:]) for b in batch_profile)
        profile.set_shape(t.name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise HwnasError(f"{flavour} refused the batch profile {batch_profile}")


def export_for_precision(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    precision: str,
    *,
    opset: int = 17,
    roi_impl: str | None = None,
) -> bytes:
    """ONNX bytes whose tensor types carry ``precision`` (strongly typed networks take it from the graph).

    fp16: a half copy of the module with half inputs, exported on the CPU in channels_last (fast
    half convs while tracing; BatchNorm is folded into the conv in eval mode).
    roi_impl: if given, every RoIStage of the exported copy uses this RoIAlign form ("gather" for
    engines without RoiAlign, see :func:`hwnas.heads.rcnn.choose_roi_impl`); ``module`` itself is left as it is.
    """
    from hwnas.backends.onnx_export import to_onnx
    from hwnas.models.blocks import set_roi_impl

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    check_choice("TensorRT precision", precision, TensorRTBackend.PRECISIONS)
    if precision == "int8":
        raise HwnasError("TensorRT int8 (explicit Q/DQ ONNX) is not yet supported; use fp32 or fp16")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    mod = copy.deepcopy(module).eval().to("cpu", dtype)
    if roi_impl is not None:
        set_roi_impl(mod, roi_impl)
    ins = tuple(t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype) for t in inputs)
    if precision == "fp16":
        # Tracing runs the model: CPU half convs in NCHW take a slow reference path (a 256-channel
        # 3x3 conv at 64x64: 14 s; channels_last: 0.15 s), which made a 512 px RetinaNet export
        # take ~450 s. The exported graph is the same node for node (memory format is not traced).
        mod = mod.to(memory_format=torch.channels_last)
        ins = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in ins)
    return to_onnx(mod, ins, opset=opset)


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.uint8: torch.uint8,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    try:
        return table[dt]
    except KeyError:
        raise HwnasError(f"engine I/O dtype {dt} has no torch equivalent here") from None


class TensorRTRunner:
    """A deserialized engine with torch CUDA tensors as fixed I/O buffers. Needs a GPU."""

    def __init__(self, trt: Any, engine_bytes: bytes, inputs: tuple[torch.Tensor, ...], device: str) -> None:
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise HwnasError(f"could not deserialize the engine: {_one_line(self._logger.errors)}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise HwnasError(f"could not create an execution context: {_one_line(self._logger.errors)}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        in_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        out_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(in_names) != len(inputs):
            raise HwnasError(f"engine has {len(in_names)} inputs {in_names} but {len(inputs)} tensors were given")
        # to_onnx names inputs input0..; match by that index when present, else by engine order.
        by_index = {f"input{i}": t for i, t in enumerate(inputs)}
        self.input_names = list(in_names)  # engine order, the order of self._inputs
        self._inputs: list[torch.Tensor] = []
        for pos, name in enumerate(in_names):
            t = by_index.get(name, inputs[pos])
            buf = t.detach().to(device, _torch_dtype(trt, self.engine.get_tensor_dtype(name))).contiguous()
            self.context.set_input_shape(name, tuple(buf.shape))
            self.context.set_tensor_address(name, buf.data_ptr())
            self._inputs.append(buf)
        # output0, output1, ..., output10; output_names lists them in the order of outputs()
        self.output_names = sorted(out_names, key=lambda n: (len(n), n))
        self._outputs: list[torch.Tensor] = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            buf = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device=device)
            self.context.set_tensor_address(name, buf.data_ptr())
            self._outputs.append(buf)
        self.timer = CudaTimer()

    def set_inputs(self, *tensors: torch.Tensor) -> None:
        """Copy new values into the bound input buffers (same shapes; the engine keeps the addresses)."""
        if len(tensors) != len(self._inputs):
            raise HwnasError(f"engine has {len(self._inputs)} inputs {self.input_names} "
                             f"but {len(tensors)} tensors were given")
        for name, buf, t in zip(self.input_names, self._inputs, tensors):
            if tuple(t.shape) != tuple(buf.shape):
                raise HwnasError(f"input {name} was bound with shape {tuple(buf.shape)}, got {tuple(t.shape)}")
            buf.copy_(t)

    def run(self) -> None:
        # Enqueue on the current stream; CudaTimer / outputs() synchronize.
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise HwnasError(f"TensorRT execution failed: {_one_line(self._logger.errors)}")

    def _run_and_wait(self) -> list[torch.Tensor]:
        self.run()
        torch.cuda.current_stream().synchronize()
        return self._outputs

    def outputs(self) -> list[np.ndarray]:
        return [o.to(torch.float32).cpu().numpy() for o in self._run_and_wait()]

    def named_outputs(self) -> dict[str, np.ndarray]:
        """Run once; outputs by name in their engine dtypes (a deploy engine's int32 counts and classes)."""
        return {n: o.cpu().numpy() for n, o in zip(self.output_names, self._run_and_wait())}


class TensorRTBackend:
    PRECISIONS = ("fp32", "fp16", "int8")

    def __init__(
        self,
        *,
        flavour: str,
        device: str = "cuda",
        precision: str = "fp32",
        threads: int = 1,
        batch: int = 1,
        sm: str | None = None,
        workspace_mb: int | None = None,
        opt_level: int | None = None,
        timing_cache: Path | None = None,
        opset: int = 17,
    ) -> None:
        self.trt = trt_module(flavour)  # fail early with the install hint
        self.flavour = self.name = flavour
        if not is_cuda_device(device):
            raise HwnasError(
                f"{flavour} device {device!r} is not valid; choose one of: cuda, cuda:<index> "
                "(for the CPU use --backend ort-cpu)"
            )
        self.device = device
        self.precision = check_choice(f"{flavour} precision", precision, self.PRECISIONS)
        if precision == "int8":
            raise HwnasError(f"{flavour} int8 (explicit Q/DQ ONNX) is not yet supported; use fp32 or fp16")
        self.threads = check_threads(threads)
        self.batch = int(batch)
        self.sm = sm
        self.workspace_mb = workspace_mb
        self.opt_level = opt_level
        self.timing_cache = timing_cache
        self.opset = opset
        self.roi_impl = choose_roi_impl(backend=flavour)  # the form of the roi unit it times

    def target(self) -> Target:
        if torch.cuda.is_available():
            device = cuda_device_name(self.device)
        elif self.sm is not None:
            device = f"no GPU (ahead-of-time for sm_{self.sm})"
        else:
            device = "no GPU"
        return Target(
            device=device,
            backend=self.name,
            backend_version=self.trt.__version__,
            precision=self.precision,
            batch=self.batch,
            threads=self.threads,
            libraries=library_versions({FLAVOURS[self.flavour][0]: self.trt.__version__}),
        )

    def build(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
        """Export ``module`` at this backend's precision and build an engine (no GPU needed with sm)."""
        onnx_bytes = export_for_precision(module, inputs, self.precision, opset=self.opset, roi_impl=self.roi_impl)
        return build_engine(
            onnx_bytes,
            flavour=self.flavour,
            sm=self.sm,
            workspace_mb=self.workspace_mb,
            opt_level=self.opt_level,
            timing_cache=self.timing_cache,
        )

    def compile(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> TensorRTRunner:
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if not torch.cuda.is_available():
            raise HwnasError(
                f"timing a {self.flavour} engine needs a CUDA GPU (torch.cuda.is_available() is False); "
                "engines can still be built ahead of time here with hwnas.backends.tensorrt.build_engine(..., sm=...), "
                "or time on the CPU with --backend ort-cpu"
            )
        torch.cuda.set_device(torch.device(self.device))
        return TensorRTRunner(self.trt, self.build(module, inputs), inputs, self.device)
