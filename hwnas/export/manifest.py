"""The manifest beside every engine file: what the engine computes, and what it was built for.

An engine file alone cannot say which model, classes, input convention or NMS form it holds, and a
TensorRT plan only loads on the library version (and GPU) it was built for. ``NAME.json`` next to
``NAME.engine`` records both, so :func:`hwnas.export.engine.check_engine` can refuse a mismatch with
a message instead of a crash or wrong detections. Format: ``engines/README.md``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwnas import formats
from hwnas.errors import HwnasError
from hwnas.export.choices import ENGINE_FLAVOURS, INT8_TARGETS, NMS_FORMS, PRECISIONS
from hwnas.fileio import read_json, write_atomic
from hwnas.heads.rcnn import ROI_IMPLS

__all__ = [
    "manifest_json",
    "FLAVOURS",
    "FORMAT",
    "FORMS",
    "INT8_TARGETS",
    "PRECISIONS",
    "BuildOptions",
    "EngineManifest",
    "InputSpec",
    "TensorSpec",
    "manifest_path",
    "read_manifest",
    "write_manifest",
]

FORMAT = formats.ENGINE_MANIFEST
FORMAT_PREFIX = formats.family(FORMAT)
# The choices a manifest may hold, from their torch-free homes (reading a manifest imports no torch).
FORMS = NMS_FORMS
FLAVOURS = (*ENGINE_FLAVOURS, "onnx")

FIX = "rebuild the engine and its manifest (hwnas.export.engine.build_engine_file)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Dim = int | str  # a fixed size, or the name of a dynamic axis ("batch")


class _Bad(HwnasError):
    """A problem with a manifest's content. Alone it reads "engine manifest <problem>";
    read_manifest re-words it with the file name and the fix."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"engine manifest {problem}")
        self.problem = problem


# ------------------------------------------------------------------ typed field readers
# ``where`` is the enclosing object ("" at the top level), for messages such as "build.batch".
def _label(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _get(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise _Bad(f"is incomplete: it has no {_label(where, key)!r} (written by another hwnas version?)")
    return d[key]


def _str(d: dict, key: str, where: str, choices: tuple[str, ...] | None = None, optional: bool = False) -> str | None:
    v = _get(d, key, where)
    if v is None and optional:
        return None
    or_null = " or null" if optional else ""
    if not isinstance(v, str) or not v:
        raise _Bad(f"has a bad {_label(where, key)}: {_short(v)} (expected a non-empty string{or_null})")
    if choices is not None and v not in choices:
        raise _Bad(f"has a bad {_label(where, key)}: {_short(v)} (expected one of: {', '.join(choices)}{or_null})")
    return v


def _int(d: dict, key: str, where: str, optional: bool = False, minimum: int = 0) -> int | None:
    v = _get(d, key, where)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _Bad(f"has a bad {_label(where, key)}: {_short(v)} (expected an integer >= {minimum})")
    return v


def _bool(d: dict, key: str, where: str) -> bool:
    v = _get(d, key, where)
    if not isinstance(v, bool):
        raise _Bad(f"has a bad {_label(where, key)}: {_short(v)} (expected true or false)")
    return v


def _floats(d: dict, key: str, where: str, n: int, optional: bool = False) -> tuple[float, ...] | None:
    v = _get(d, key, where)
    if v is None and optional:
        return None
    numbers = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    if not numbers or len(v) != n:
        raise _Bad(f"has a bad {_label(where, key)}: {_short(v)} (expected a list of {n} numbers)")
    return tuple(float(x) for x in v)


def _shape(d: dict, key: str, where: str) -> tuple[Dim, ...]:
    v = _get(d, key, where)
    ok = isinstance(v, list) and all((isinstance(x, int) and not isinstance(x, bool) and x > 0)
                                     or (isinstance(x, str) and x) for x in v)
    if not ok:
        raise _Bad(f"has a bad {_label(where, key)}: {_short(v)} (expected a list of positive sizes or axis names)")
    return tuple(v)


def _obj(d: dict, key: str, where: str) -> dict:
    v = _get(d, key, where)
    if not isinstance(v, dict):
        raise _Bad(f"has a bad {_label(where, key)}: expected an object, got {type(v).__name__}")
    return v


# ------------------------------------------------------------------ the parts
@dataclass(frozen=True)
class TensorSpec:
    """One engine output: its name, shape (ints, or axis names such as "batch") and dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict, where: str = "output") -> "TensorSpec":
        if not isinstance(d, dict):
            raise _Bad(f"has a bad {where}: expected an object, got {type(d).__name__}")
        return cls(_str(d, "name", where), _shape(d, "shape", where), _str(d, "dtype", where))


@dataclass(frozen=True)
class InputSpec:
    """The one image input and the convention a caller must follow to feed it.

    Images are RGB, NCHW, scaled to ``value_range``; ``mean``/``std`` (per channel, in that
    scale) are applied inside the graph, so the caller must NOT normalize. ``mean``/``std`` None:
    the graph expects already normalized input (a raw detector export).
    """

    shape: tuple[Dim, ...]
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    name: str = "images"
    dtype: str = "float32"
    layout: str = "NCHW"
    channels: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "channels": self.channels,
            "value_range": list(self.value_range),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        w = "input"
        spec = cls(
            shape=_shape(d, "shape", w),
            mean=_floats(d, "mean", w, 3, optional=True),
            std=_floats(d, "std", w, 3, optional=True),
            name=_str(d, "name", w),
            dtype=_str(d, "dtype", w, ("float32", "float16")),
            layout=_str(d, "layout", w, ("NCHW",)),
            channels=_str(d, "channels", w, ("RGB",)),
            value_range=_floats(d, "value_range", w, 2),
        )
        if len(spec.shape) != 4 or spec.shape[1] != 3:
            raise _Bad(f"has a bad input.shape {list(spec.shape)} (expected [batch, 3, height, width])")
        if (spec.mean is None) != (spec.std is None):
            raise _Bad("has input.mean and input.std disagreeing (both lists of 3, or both null)")
        return spec


@dataclass(frozen=True)
class BuildOptions:
    """How the engine was built; enough to rebuild it the same way.

    batch: the fixed batch size, or None with ``dynamic_batch`` = (min, opt, max) of the
    optimisation profile. timing_cache: the path as given to the build (None: none used).
    """

    batch: int | None = 1
    dynamic_batch: tuple[int, int, int] | None = None
    workspace_mb: int | None = None
    opt_level: int | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    timing_cache: str | None = None

    def to_dict(self) -> dict[str, Any]:
        dyn = None if self.dynamic_batch is None else dict(zip(("min", "opt", "max"), self.dynamic_batch))
        return {
            "batch": self.batch,
            "dynamic_batch": dyn,
            "workspace_mb": self.workspace_mb,
            "opt_level": self.opt_level,
            "version_compatible": self.version_compatible,
            "hardware_compatible": self.hardware_compatible,
            "timing_cache": self.timing_cache,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BuildOptions":
        w = "build"
        dyn = _get(d, "dynamic_batch", w)
        if dyn is not None:
            if not isinstance(dyn, dict):
                raise _Bad(f"has a bad build.dynamic_batch: {dyn!r} (expected {{min, opt, max}} or null)")
            dyn = tuple(_int(dyn, k, "build.dynamic_batch", minimum=1) for k in ("min", "opt", "max"))
            if not dyn[0] <= dyn[1] <= dyn[2]:
                raise _Bad(f"has a bad build.dynamic_batch {list(dyn)} (expected min <= opt <= max)")
        opts = cls(
            batch=_int(d, "batch", w, optional=True, minimum=1),
            dynamic_batch=dyn,
            workspace_mb=_int(d, "workspace_mb", w, optional=True, minimum=1),
            opt_level=_int(d, "opt_level", w, optional=True),
            version_compatible=_bool(d, "version_compatible", w),
            hardware_compatible=_bool(d, "hardware_compatible", w),
            timing_cache=_str(d, "timing_cache", w, optional=True),
        )
        if (opts.batch is None) == (opts.dynamic_batch is None):
            raise _Bad("has build.batch and build.dynamic_batch both set or both null (exactly one is)")
        return opts


# ------------------------------------------------------------------ the manifest
@dataclass(frozen=True)
class EngineManifest:
    """Everything needed to use an engine file correctly and to refuse it where it cannot run.

    flavour: the runtime that loads the file ("tensorrt", "tensorrt-rtx", or "onnx" for an ONNX
    file run by onnxruntime); library_version: that runtime's version at build time. sm: compute
    capability the engine was built for ("80", "89", "120"...), None where it is not tied to one.
    form: the NMS form (:data:`FORMS`); roi_impl: RoIAlign form of a two-stage head, else None.
    int8_target: "cpu" or "tensorrt" when precision is int8, else None.
    engine_sha256 / engine_bytes: of the engine file exactly as written (a raw plan, no header).
    created: UTC ISO 8601. build_s: seconds the build itself took.
    """

    arch: str
    class_names: tuple[str, ...]
    input: InputSpec
    outputs: tuple[TensorSpec, ...]
    form: str
    roi_impl: str | None
    precision: str
    int8_target: str | None
    flavour: str
    library_version: str
    sm: str | None
    build: BuildOptions
    onnx_sha256: str
    engine_sha256: str
    engine_bytes: int
    build_s: float
    created: str
    hwnas_version: str
    # the deployment contract (hwnas.export.contract), as the graph's metadata holds it; None in
    # manifests written before it existed
    preprocess: dict | None = None
    postprocess: dict | None = None
    format: str = field(default=FORMAT)

    def __post_init__(self) -> None:
        # Construction from code (and dataclasses.replace) gets the same checks as reading a file.
        if self.format != FORMAT:
            raise _Bad(f"has format {self.format!r}, expected {FORMAT!r}")
        d = vars(self)
        for key, choices in (("form", FORMS), ("precision", PRECISIONS), ("flavour", FLAVOURS)):
            _str(d, key, "", choices)
        for key, choices in (("roi_impl", ROI_IMPLS), ("int8_target", INT8_TARGETS)):
            _str(d, key, "", choices, optional=True)
        if (self.precision == "int8") != (self.int8_target is not None):
            raise _Bad("has int8_target set without int8 precision, or int8 precision without int8_target")
        if not self.class_names or not all(isinstance(c, str) and c for c in self.class_names):
            raise _Bad("has no class_names, or an empty one")
        if not self.outputs:
            raise _Bad("lists no outputs")
        for key in ("onnx_sha256", "engine_sha256"):
            if not isinstance(getattr(self, key), str) or not _SHA256.match(getattr(self, key)):
                raise _Bad(f"has a bad {key} (expected 64 lowercase hex digits)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "arch": self.arch,
            "class_names": list(self.class_names),
            "input": self.input.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "form": self.form,
            "roi_impl": self.roi_impl,
            "precision": self.precision,
            "int8_target": self.int8_target,
            "flavour": self.flavour,
            "library_version": self.library_version,
            "sm": self.sm,
            "build": self.build.to_dict(),
            "onnx_sha256": self.onnx_sha256,
            "engine_sha256": self.engine_sha256,
            "engine_bytes": self.engine_bytes,
            "build_s": self.build_s,
            "created": self.created,
            "hwnas_version": self.hwnas_version,
            "preprocess": self.preprocess,
            "postprocess": self.postprocess,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "EngineManifest":
        """Checked parse; HwnasError("engine manifest <what is wrong>") on a bad dict."""
        fmt = d.get("format") if isinstance(d, dict) else None
        if not isinstance(fmt, str) or not fmt.startswith(FORMAT_PREFIX):
            raise _Bad(f"is not an hwnas engine manifest (no \"format\": {FORMAT!r})")
        if fmt != FORMAT:
            raise _Bad(f"has format {fmt!r}, this hwnas reads {FORMAT!r} (written by another hwnas version)")
        w = ""
        outs = _get(d, "outputs", w)
        if not isinstance(outs, list):
            raise _Bad("has a bad outputs (expected a list)")
        names = _get(d, "class_names", w)
        if not isinstance(names, list):
            raise _Bad("has a bad class_names (expected a list of strings)")
        build_s = _get(d, "build_s", w)
        if isinstance(build_s, bool) or not isinstance(build_s, (int, float)) or build_s < 0:
            raise _Bad(f"has a bad build_s {build_s!r} (expected seconds >= 0)")
        return cls(
            arch=_str(d, "arch", w),
            class_names=tuple(names),
            input=InputSpec.from_dict(_obj(d, "input", w)),
            outputs=tuple(TensorSpec.from_dict(o, f"outputs[{i}]") for i, o in enumerate(outs)),
            form=_str(d, "form", w),
            roi_impl=_str(d, "roi_impl", w, optional=True),
            precision=_str(d, "precision", w),
            int8_target=_str(d, "int8_target", w, optional=True),
            flavour=_str(d, "flavour", w),
            library_version=_str(d, "library_version", w),
            sm=_str(d, "sm", w, optional=True),
            build=BuildOptions.from_dict(_obj(d, "build", w)),
            onnx_sha256=_str(d, "onnx_sha256", w),
            engine_sha256=_str(d, "engine_sha256", w),
            engine_bytes=_int(d, "engine_bytes", w, minimum=1),
            build_s=float(build_s),
            created=_str(d, "created", w),
            hwnas_version=_str(d, "hwnas_version", w),
            preprocess=_contract_part(d, "preprocess"),
            postprocess=_contract_part(d, "postprocess"),
            format=fmt,
        )


def _contract_part(d: dict, key: str) -> dict | None:
    """An optional part of the deployment contract: absent or null in manifests written before it."""
    v = d.get(key)
    if v is not None and not isinstance(v, dict):
        raise _Bad(f"has a bad {key} (expected an object or null)")
    return v


# ------------------------------------------------------------------ files
def manifest_path(engine_path: Path) -> Path:
    """``NAME.json`` beside ``NAME.engine`` (one place for the naming rule)."""
    return Path(engine_path).with_suffix(".json")


def manifest_json(manifest: EngineManifest) -> str:
    """The manifest file's text (the one serialisation ``write_manifest`` and exports use)."""
    return json.dumps(manifest.to_dict(), indent=1) + "\n"


def write_manifest(path: Path, manifest: EngineManifest) -> None:
    """Atomic write: a reader sees the old manifest or the new one, never half of one."""
    write_atomic(Path(path), manifest_json(manifest))


def read_manifest(path: Path) -> EngineManifest:
    """The checked manifest at ``path``; a missing, corrupt, foreign or incomplete file is a
    one-line HwnasError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise HwnasError(f"engine manifest {path} does not exist; {FIX}")
    try:
        d = read_json(path, "engine manifest")
    except (HwnasError, OSError):
        # read_json's own fix ("recreate it") is vague here: the fix is a rebuild.
        raise HwnasError(f"engine manifest {path} is unreadable, corrupt or truncated (not JSON); {FIX}") from None
    try:
        return EngineManifest.from_dict(d)
    except _Bad as e:
        raise HwnasError(f"engine manifest {path} {e.problem}; {FIX}") from None
