"""Engine files with a manifest: build them, check them before use, load them.

``NAME.engine`` is the raw serialized plan exactly as the builder returned it (any TensorRT tool
can load it); ``NAME.json`` beside it is the :class:`~hwnas.export.manifest.EngineManifest`.
:func:`check_engine` refuses, with one line that says what the engine was built for and what is
here, an engine that is corrupt, replaced, or built for another library version or GPU: TensorRT
itself would fail to deserialize it with a long log, or worse, run a stale model.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hwnas
from hwnas.errors import HwnasError
from hwnas.export.manifest import (
    FIX,
    FLAVOURS,
    BuildOptions,
    EngineManifest,
    InputSpec,
    TensorSpec,
    manifest_json,
    manifest_path,
    read_manifest,
)
from hwnas.fileio import check_writable, write_together

__all__ = ["EngineRunner", "build_engine_file", "check_engine", "load_engine", "prepare_engine"]

# What the caller describes; everything else in the manifest is measured here (hashes, sizes,
# versions, build options), so a manifest cannot claim what the build did not do.
CALLER_FIELDS = ("arch", "class_names", "input", "outputs", "form", "roi_impl", "precision", "int8_target")
_REQUIRED_FIELDS = ("arch", "class_names", "form", "precision")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _runtime_module(flavour: str) -> Any:
    """The module that loads this flavour's files (its ``__version__`` is what the manifest records)."""
    if flavour == "onnx":
        from hwnas.backends.ort import import_onnxruntime

        return import_onnxruntime()
    from hwnas.backends.tensorrt import trt_module

    return trt_module(flavour)


def _gpu_sm(device: str | None = None) -> str | None:
    """Compute capability of ``device`` (None: the current CUDA device) as "80", "89", "120"; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


# ------------------------------------------------------------------ build
def _onnx_io(onnx_bytes: bytes) -> tuple[TensorSpec, tuple[TensorSpec, ...], dict]:
    """The graph's one input and its outputs as the ONNX file declares them (dynamic axes by name),
    and its deployment contract (``hwnas.preprocess``/``hwnas.postprocess`` metadata; empty if none)."""
    import onnx

    from hwnas.export.deploy import read_metadata

    try:
        proto = onnx.load_from_string(bytes(onnx_bytes))
    except Exception as e:  # protobuf raises its own DecodeError type
        raise HwnasError(f"build_engine_file needs serialized ONNX bytes ({e.__class__.__name__}: {e})") from None
    graph = proto.graph
    meta = read_metadata({p.key: p.value for p in proto.metadata_props})
    terms = {k: meta[k] for k in ("preprocess", "postprocess") if k in meta}

    def dtype(elem_type: int) -> str:
        try:
            return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name  # "float32", "int32", ...
        except KeyError:
            return str(elem_type)

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.dim_value > 0 else (d.dim_param or "dynamic") for d in t.shape.dim)
        return TensorSpec(v.name, dims, dtype(t.elem_type))

    initializers = {i.name for i in graph.initializer}  # old exports list weights as inputs too
    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise HwnasError(f"an engine takes one image input; the ONNX model has {len(inputs)}: "
                         f"{', '.join(i.name for i in inputs) or 'none'}")
    return inputs[0], tuple(spec(v) for v in graph.output), terms


def _input_spec(given: Any, onnx_input: TensorSpec) -> InputSpec:
    """Name, shape and dtype come from the graph; the caller states the convention (mean/std);
    the rest (layout, channels, value range) defaults to :class:`InputSpec`'s."""
    if isinstance(given, InputSpec):
        given = given.to_dict()
    if not isinstance(given, dict) or "mean" not in given or "std" not in given:
        raise HwnasError("manifest_fields['input'] must give at least mean and std (per-channel lists "
                         "applied in the graph, or None when the graph takes normalized input)")
    defaults = InputSpec(shape=(), mean=None, std=None).to_dict()
    graph = {"name": onnx_input.name, "shape": list(onnx_input.shape), "dtype": onnx_input.dtype}
    return InputSpec.from_dict({**defaults, **given, **graph})


def _check_fields(fields: dict) -> None:
    if not isinstance(fields, dict):
        raise HwnasError(f"manifest_fields must be a dict, got {type(fields).__name__}")
    extra = sorted(set(fields) - set(CALLER_FIELDS))
    if extra:
        raise HwnasError(f"manifest_fields has {', '.join(extra)}, which the build records itself; "
                         f"give only: {', '.join(CALLER_FIELDS)}")
    missing = [k for k in (*_REQUIRED_FIELDS, "input") if k not in fields]
    if missing:
        raise HwnasError(f"manifest_fields needs {', '.join(missing)}")
    if not isinstance(fields["class_names"], (list, tuple)):
        raise HwnasError(f"manifest_fields['class_names'] must be a list of names, got {fields['class_names']!r}")


def _check_batch(onnx_input: TensorSpec, batch_profile: Any) -> tuple[int, int, int] | None:
    """A dynamic batch axis needs a profile and a fixed one refuses it; said before any build."""
    from hwnas.backends.tensorrt import check_batch_profile

    dynamic = not isinstance(onnx_input.shape[0], int) if onnx_input.shape else False
    if dynamic and batch_profile is None:
        raise HwnasError(f"input {onnx_input.name} {list(onnx_input.shape)} has a dynamic batch axis; "
                         "pass batch_profile=(min, opt, max)")
    if not dynamic and batch_profile is not None:
        raise HwnasError(f"batch_profile={batch_profile!r} given but input {onnx_input.name} has a fixed shape "
                         f"{list(onnx_input.shape)}; export with a dynamic batch axis, or drop batch_profile")
    return None if batch_profile is None else check_batch_profile(batch_profile)


def _built_for_sm(flavour: str, sm: str | None) -> str | None:
    """The compute capability the plan is tied to: the chosen one, or the GPU full TensorRT built on."""
    from hwnas.backends.tensorrt import normalize_sm

    if sm is not None:
        return normalize_sm(sm)
    if flavour == "tensorrt":
        return _gpu_sm()
    return None  # RTX without sm (or onnx): not tied to one (RTX specialises on the device at load time)


def _build_plan(onnx_bytes: bytes, flavour: str, sm: str | None, options: dict[str, Any]) -> bytes:
    if flavour == "onnx":
        # The "engine" of the onnx flavour is the ONNX file itself, for onnxruntime.
        # batch_profile only records the batch range onnxruntime will be given.
        # ``is``, not ``in (None, False)``: opt_level=0 == False would pass unnoticed.
        used = [k for k, v in options.items() if v is not None and v is not False and k != "batch_profile"]
        if sm is not None or used:
            drop = ["sm"] * (sm is not None) + used
            raise HwnasError(f"flavour 'onnx' has no engine build; drop {', '.join(drop)}")
        return bytes(onnx_bytes)
    from hwnas.backends.tensorrt import build_engine

    return build_engine(onnx_bytes, flavour=flavour, sm=sm, **options)


def build_engine_file(onnx_bytes: bytes, out: Path, manifest_fields: dict[str, Any], **options: Any) -> EngineManifest:
    """Build ``onnx_bytes`` into ``out`` (the raw plan) and ``out.with_suffix(".json")`` (the
    manifest): :func:`prepare_engine`, then both files written together (nothing is replaced
    unless the build succeeded and both files are on disk)."""
    plan, manifest = prepare_engine(onnx_bytes, out, manifest_fields, **options)
    write_together([(out, plan), (manifest_path(out), manifest_json(manifest))])
    return manifest


def prepare_engine(
    onnx_bytes: bytes,
    out: Path,
    manifest_fields: dict[str, Any],
    *,
    flavour: str = "tensorrt-rtx",
    sm: str | None = None,
    workspace_mb: int | None = None,
    opt_level: int | None = None,
    timing_cache: Path | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    batch_profile: tuple[int, int, int] | None = None,
) -> tuple[bytes, EngineManifest]:
    """The engine of ``onnx_bytes`` bound for ``out`` and its manifest, built in memory: nothing is
    written (the caller writes them with whatever else belongs to the same export).

    manifest_fields: what only the caller knows: arch (str), class_names, input ({"mean": [...],
    "std": [...]} or None each; name/shape/dtype are read from the graph), form, roi_impl,
    precision, int8_target; outputs default to the graph's. The build options are those of
    :func:`hwnas.backends.tensorrt.build_engine`.
    """
    from hwnas.backends.base import check_choice

    out = Path(out)
    check_choice("flavour", flavour, FLAVOURS)
    if out.suffix == ".json":
        raise HwnasError(f"engine path {out} ends in .json, the manifest's name; use e.g. {out.with_suffix('.engine')}")
    _check_fields(manifest_fields)
    check_writable(out, "engine")
    check_writable(manifest_path(out), "engine manifest")
    onnx_input, onnx_outputs, terms = _onnx_io(onnx_bytes)
    batch_profile = _check_batch(onnx_input, batch_profile)
    fields = dict(manifest_fields)
    given_outputs = fields.pop("outputs", None)
    outputs = onnx_outputs if given_outputs is None else tuple(
        o if isinstance(o, TensorSpec) else TensorSpec.from_dict(o) for o in given_outputs)
    input_spec = _input_spec(fields.pop("input"), onnx_input)
    options = dict(workspace_mb=workspace_mb, opt_level=opt_level, timing_cache=timing_cache,
                   version_compatible=version_compatible, hardware_compatible=hardware_compatible,
                   batch_profile=batch_profile)
    static_batch = input_spec.shape[0] if isinstance(input_spec.shape[0], int) else None
    onnx_sha256 = _sha256(onnx_bytes)
    # Checked on construction, so a bad field (form, precision, ...) fails before a build of
    # minutes. The engine fields hold the ONNX's until the build replaces them (as for "onnx").
    draft = EngineManifest(
        arch=str(fields["arch"]),
        class_names=tuple(fields["class_names"]),
        input=input_spec,
        outputs=outputs,
        form=fields["form"],
        roi_impl=fields.get("roi_impl"),
        precision=fields["precision"],
        int8_target=fields.get("int8_target"),
        flavour=flavour,
        library_version=_runtime_module(flavour).__version__,
        sm=_built_for_sm(flavour, sm),
        build=BuildOptions(
            batch=static_batch,
            dynamic_batch=batch_profile,
            workspace_mb=workspace_mb, opt_level=opt_level,
            version_compatible=version_compatible, hardware_compatible=hardware_compatible,
            timing_cache=None if timing_cache is None else str(timing_cache),
        ),
        onnx_sha256=onnx_sha256,
        engine_sha256=onnx_sha256,
        engine_bytes=len(onnx_bytes),
        build_s=0.0,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        hwnas_version=hwnas.__version__,
        preprocess=terms.get("preprocess"),
        postprocess=terms.get("postprocess"),
    )

    t0 = time.perf_counter()
    plan = _build_plan(onnx_bytes, flavour, sm, options)
    build_s = time.perf_counter() - t0
    manifest = replace(draft, engine_sha256=_sha256(plan), engine_bytes=len(plan), build_s=round(build_s, 3))
    return plan, manifest


# ------------------------------------------------------------------ check
def _built_for(m: EngineManifest) -> str:
    sm = f" for sm_{m.sm}" if m.sm else ""
    return f"{m.flavour} {m.library_version}{sm}"


def _check_plan(path: Path, m: EngineManifest, plan: bytes) -> None:
    """``plan``: the engine file's bytes, read once for the check and the load that follows."""
    if len(plan) != m.engine_bytes:
        raise HwnasError(f"engine {path} is {len(plan)} bytes but its manifest says {m.engine_bytes} "
                         f"(truncated or replaced); {FIX}")
    digest = _sha256(plan)
    if digest != m.engine_sha256:
        raise HwnasError(f"engine {path} does not match its manifest (sha256 {digest[:12]}... vs "
                         f"{m.engine_sha256[:12]}...: corrupt or replaced); {FIX}")


def _runtime(path: Path, m: EngineManifest) -> Any:
    """The module that loads this flavour; a missing one says what the engine needs and how to get it."""
    try:
        return _runtime_module(m.flavour)
    except HwnasError as e:
        raise HwnasError(f"engine {path} was built with {_built_for(m)}, which cannot be loaded here: {e}") from None


def _version_ok(built: str, here: str, version_compatible: bool) -> bool:
    if not version_compatible:
        return built == here
    # A version-compatible plan loads on the same major version, built-with or newer.
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".") if p.isdigit())

    return key(here)[:1] == key(built)[:1] and key(here) >= key(built)


def _check_version(path: Path, m: EngineManifest, here: str) -> None:
    if m.flavour == "onnx":
        return  # an ONNX file is portable across onnxruntime versions (its opset decides)
    if not _version_ok(m.library_version, here, m.build.version_compatible):
        rule = ("the same major version, built-with or newer" if m.build.version_compatible
                else "the exact version it was built with")
        raise HwnasError(f"engine {path} was built with {_built_for(m)} but this machine has {m.flavour} {here}; "
                         f"a TensorRT engine loads only on {rule}: rebuild it here, or install {m.flavour} "
                         f"{m.library_version}")


def _check_gpu(path: Path, m: EngineManifest, device: str | None) -> None:
    """The compute capability of ``device`` (None: the current CUDA device) against the engine's."""
    if m.flavour == "onnx":
        return
    from hwnas.backends.base import is_cuda_device

    if device is not None and not is_cuda_device(device):
        raise HwnasError(f"device {device!r} is not valid for a {m.flavour} engine; choose cuda or cuda:<index>")
    here = None if m.sm is None else _gpu_sm(device)
    if here is None:
        return  # not tied to one GPU, or no GPU here (load_engine says a GPU is needed)
    if m.build.hardware_compatible:
        if int(here) < 80:  # HardwareCompatibilityLevel.AMPERE_PLUS
            raise HwnasError(f"engine {path} was built hardware-compatible for Ampere and newer (sm_80+) "
                             f"but this GPU is sm_{here}; rebuild it on this GPU")
        return
    if here != m.sm:
        alt = " (or hardware_compatible=True)" if m.flavour == "tensorrt" else ""
        raise HwnasError(f"engine {path} was built with {_built_for(m)} but this GPU is sm_{here}; "
                         f"rebuild it with sm={here}{alt}")


def check_engine(path: Path) -> EngineManifest:
    """The manifest of the engine at ``path``, after checking that the engine is the one the
    manifest describes (size, sha256) and that this machine can load it (runtime installed, same
    version unless version-compatible, same compute capability where a GPU is present unless
    hardware-compatible). Each failure is a one-line HwnasError."""
    return _checked(Path(path), None)[0]


def _checked(path: Path, device: str | None) -> tuple[EngineManifest, Any, bytes]:
    """:func:`check_engine` for ``device``; also the flavour's runtime module and the checked file bytes."""
    if not path.is_file():
        raise HwnasError(f"engine {path} does not exist; {FIX}")
    m = read_manifest(manifest_path(path))
    plan = path.read_bytes()
    _check_plan(path, m, plan)
    runtime = _runtime(path, m)
    _check_version(path, m, runtime.__version__)
    _check_gpu(path, m, device)
    return m, runtime, plan


# ------------------------------------------------------------------ load and run
class EngineRunner:
    """A checked engine ready to run: ``runner(images)`` -> {output name: array}.

    images: [B, 3, H, W] RGB in the manifest's value range (mean/std are applied in the graph).
    TensorRT flavours run on a CUDA GPU through :class:`hwnas.backends.tensorrt.TensorRTRunner`
    (torch CUDA tensors as buffers, bound once for one batch size); the onnx flavour runs in
    onnxruntime on the CPU. The TensorRT path cannot run on the machines CI uses (no GPU).
    batch: the batch size :func:`load_engine` checked and bound (a TensorRT engine takes only it).
    """

    def __init__(self, manifest: EngineManifest, session: Any, batch: int) -> None:
        self.manifest = manifest
        self.batch = batch
        self._session = session  # TensorRTRunner or onnxruntime.InferenceSession

    @property
    def output_names(self) -> list[str]:
        if self.manifest.flavour == "onnx":
            return [o.name for o in self._session.get_outputs()]
        return list(self._session.output_names)

    def __call__(self, images: Any) -> dict[str, Any]:
        if self.manifest.flavour == "onnx":
            import numpy as np

            arr = np.ascontiguousarray(np.asarray(images, dtype=self.manifest.input.dtype))
            outs = self._session.run(None, {self.manifest.input.name: arr})
            return dict(zip(self.output_names, outs))
        # GPU only (cannot run in CI): copy into the bound buffer, run, read back by name.
        import torch

        self._session.set_inputs(torch.as_tensor(images))
        return self._session.named_outputs()


def _check_outputs(path: Path, m: EngineManifest) -> None:
    """The runner hands outputs back by name: they must be the deploy graph's (hwnas.export.deploy)."""
    from hwnas.export.deploy import FIXED_OUTPUTS, HOST_OUTPUTS

    names = tuple(o.name for o in m.outputs)
    want = HOST_OUTPUTS if m.form == "host" else FIXED_OUTPUTS
    if sorted(names) != sorted(want):
        raise HwnasError(f"engine {path} has outputs {', '.join(names)}, but a {m.form}-form deploy engine "
                         f"has {', '.join(want)}; export it with hwnas.export")


def _load_batch(path: Path, m: EngineManifest, batch: int | None) -> int:
    if m.build.dynamic_batch is None:
        if batch not in (None, m.build.batch):
            raise HwnasError(f"engine {path} was built for batch {m.build.batch}, not {batch}; rebuild it with "
                             "a batch profile to run other batch sizes")
        return m.build.batch
    lo, opt, hi = m.build.dynamic_batch
    batch = opt if batch is None else batch
    if not (isinstance(batch, int) and lo <= batch <= hi):
        raise HwnasError(f"batch {batch!r} is outside the batch profile {lo}..{hi} of engine {path}")
    return batch


def _tensorrt_runner(path: Path, m: EngineManifest, trt: Any, plan: bytes, batch: int, device: str) -> Any:
    import torch

    from hwnas.backends.tensorrt import TensorRTRunner

    if not torch.cuda.is_available():
        raise HwnasError(f"engine {path} passed its checks (built with {_built_for(m)}), but running it needs "
                         "a CUDA GPU and torch.cuda.is_available() is False here; load it on a GPU machine")
    torch.cuda.set_device(torch.device(device))
    # Zeros bind the input buffer; TensorRTRunner makes it the engine's input dtype itself.
    return TensorRTRunner(trt, plan, (torch.zeros((batch, *m.input.shape[1:])),), device)


def load_engine(path: Path, *, batch: int | None = None, device: str = "cuda") -> EngineRunner:
    """:func:`check_engine` (the compute capability of ``device``), then deserialize the checked
    bytes with the flavour's runtime.

    batch: the batch size to bind (a dynamic-batch engine: within its profile, default its opt).
    device: the CUDA device of a TensorRT flavour (the onnx flavour runs on the CPU).
    TensorRT flavours need a CUDA GPU: without one this is a one-line HwnasError after the checks.
    """
    path = Path(path)
    m, runtime, plan = _checked(path, device)
    _check_outputs(path, m)
    batch = _load_batch(path, m, batch)
    if m.flavour == "onnx":
        # A plain session, not OrtCpuBackend: that one pins torch to its timing thread count.
        from hwnas.backends.ort import cpu_session

        return EngineRunner(m, cpu_session(plan), batch)
    return EngineRunner(m, _tensorrt_runner(path, m, runtime, plan, batch, device), batch)
