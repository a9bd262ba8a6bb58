"""Precision conversion of a deployable ONNX graph, the strongly typed way (TensorRT 10/11, TensorRT-RTX).

TensorRT 11 removed the builder's FP16/INT8 flags and calibrators: the precision of every tensor
is read from the graph. So the float export is rewritten here, once, on the CPU:

* :func:`to_fp16`: the network's float tensors in fp16, graph I/O and the decode/NMS tail (nodes
  named ``/post/...``) in fp32, with Cast nodes at every boundary.
* :func:`to_int8`: explicit QuantizeLinear/DequantizeLinear around the network's compute ops,
  calibrated with onnxruntime on real images; the Q/DQ flavour depends on the runtime (``target``).
* :func:`sensitivity`: which activations lost most precision in an int8 graph (SQNR, worst first).

Everything returns serialized ONNX bytes; onnxruntime is imported only when calibrating or running.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwnas.errors import HwnasError
from hwnas.export.manifest import INT8_TARGETS

__all__ = [
    "CALIBRATION_METHODS",
    "INT8_TARGETS",
    "KEEP_FP32_PREFIXES",
    "QUANTIZED_OPS",
    "sensitivity",
    "to_fp16",
    "to_int8",
]

# Decode + NMS of the deployable graph stay fp32: box coordinates in input pixels (fp16 steps
# are 0.5 px past 512, and decode's exp() of the deltas amplifies errors) and score thresholds.
KEEP_FP32_PREFIXES = ("/post/",)

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
ROI_STAGE_PREFIX = "/net/head_roi/"  # the two-stage head's RoI stage (hwnas.models.blocks.RoIStage)
FP16_MAX = float(np.finfo(np.float16).max)


# ====================================================================== fp16
def to_fp16(onnx_bytes: bytes, *, keep_fp32_prefixes: Sequence[str] = KEEP_FP32_PREFIXES) -> bytes:
    """Mixed-precision copy of an ONNX model: network float tensors fp16, the rest fp32.

    Nodes whose name starts with one of ``keep_fp32_prefixes``, and nodes whose operator has no
    fp16 form in the ONNX schema, compute in fp32; graph inputs and outputs keep their types.
    A Cast is inserted wherever an fp16 tensor meets an fp32 consumer (and the reverse), once per
    tensor; float initializers and Constant values get an fp16 copy instead of a Cast.
    Returns serialized ONNX bytes, checked with ``onnx.checker`` (full check).

    The result is for TensorRT: onnxruntime's CPU provider runs it, but it has no fp16 Conv on
    x86 and inserts fp32 fallbacks, so there it is slower than the fp32 graph (about 0.75x).
    """
    model = _load(onnx_bytes)
    graph = model.graph
    _refuse_subgraphs(graph)
    opset = _default_opset(model)
    types = _value_types(model)
    prefixes = _prefixes(keep_fp32_prefixes)

    conv = _Fp16Rewriter(graph, types)
    for node in list(graph.node):
        keep = node.name.startswith(prefixes)
        plan = None if keep else _fp16_plan(node, opset, types)
        conv.emit(node, plan)
    conv.finish()
    _refresh_types(model)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _prefixes(prefixes: str | Sequence[str]) -> tuple[str, ...]:
    # A bare string would otherwise become a tuple of its characters ("/" matches every node).
    return (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)


def _load(onnx_bytes: bytes) -> onnx.ModelProto:
    if not isinstance(onnx_bytes, (bytes, bytearray)) or not onnx_bytes:
        raise HwnasError("expected serialized ONNX bytes (hwnas.backends.onnx_export.to_onnx or the deployable export)")
    try:
        model = onnx.load_from_string(bytes(onnx_bytes))
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise HwnasError(f"not a serialized ONNX model ({len(onnx_bytes)} bytes): {e}") from None
    if not model.graph.output:
        raise HwnasError(f"the ONNX model has no outputs ({len(onnx_bytes)} bytes): not a serialized ONNX model?")
    return model


def _refuse_subgraphs(graph: onnx.GraphProto) -> None:
    # A subgraph reads outer tensors by name with the types it was built for; rewriting those
    # types from outside would silently break it. Detector exports have no control flow.
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise HwnasError(f"to_fp16 does not convert control flow: node {node.name or node.op_type} "
                                 f"({node.op_type}) has a subgraph; export without If/Loop/Scan")


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise HwnasError("the ONNX model imports no default-domain opset")


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, node outputs, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _formal_type(params: Sequence[Any], i: int) -> str | None:
    """Type string of actual argument ``i`` (the last formal parameter may be variadic)."""
    if i < len(params):
        return params[i].type_str
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1].type_str
    return None


def _fp16_plan(node: onnx.NodeProto, opset: int, types: dict[str, int]) -> tuple[list[bool], list[bool]] | None:
    """Which inputs and outputs become fp16 if ``node`` is converted; None keeps it fp32.

    Read from the operator schema: a float input turns fp16 when its type constraint allows
    float16, and an output follows the constraint of the inputs it shares (Resize's ``scales``
    is ``tensor(float)`` and stays fp32). Operators whose float output type is set by an
    attribute (ConstantOfShape, RandomNormal, ...) stay fp32, except Cast (its ``to`` is rewritten).
    """
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    half_params: set[str] = set()
    ins = []
    for i, name in enumerate(node.input):
        t = _formal_type(schema.inputs, i)
        is_float = bool(name) and types.get(name) == FLOAT
        if is_float and t in allowed:
            if "tensor(float16)" not in allowed[t]:
                return None  # e.g. an op defined for float/double only
            half_params.add(t)
        ins.append(is_float and t in allowed)
    outs = []
    for i, name in enumerate(node.output):
        t = _formal_type(schema.outputs, i)
        is_float = bool(name) and types.get(name) == FLOAT
        if is_float and node.op_type == "Cast":
            outs.append(True)
        elif is_float and t in half_params:
            outs.append(True)
        elif is_float and t in allowed:
            return None  # float type chosen by an attribute we do not rewrite
        else:
            outs.append(False)
    if not any(ins) and not any(outs):
        return None  # nothing float to convert (shape arithmetic, integer ops)
    return ins, outs


class _Fp16Rewriter:
    """Rebuilds the node list in order, converting planned nodes and casting at the boundaries.

    ``half[name]`` is True when the tensor called ``name`` is now fp16. Original names are kept
    for converted tensors (fp16) so the graph stays readable; casts get fresh names.
    """

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int]) -> None:
        self.graph = graph
        self.types = types
        self.half: dict[str, bool] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.cast_cache: dict[tuple[str, int], str] = {}
        self.inits = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.output) == 1
                          and any(a.name == "value" for a in n.attribute)}
        self.used = {n.name for n in graph.node} | set(self.types) | {vi.name for vi in graph.input}

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def _as(self, name: str, want_half: bool) -> str:
        """The name of ``name``'s value in the wanted precision (a cast or fp16 copy, made once)."""
        if self.half.get(name, False) == want_half:
            return name
        key = (name, FLOAT16 if want_half else FLOAT)
        if key in self.cast_cache:
            return self.cast_cache[key]
        suffix = "fp16" if want_half else "fp32"
        out = self._fresh(f"{name}_{suffix}")
        src = self.inits.get(name)
        if src is None and name in self.constants:
            src = next(a.t for a in self.constants[name].attribute if a.name == "value")
        if want_half and src is not None:
            # Fold the cast: an fp16 initializer. Values past fp16's range would become inf.
            arr = np.clip(numpy_helper.to_array(src), -FP16_MAX, FP16_MAX).astype(np.float16)
            self.graph.initializer.append(numpy_helper.from_array(arr, out))
        else:
            to = FLOAT16 if want_half else FLOAT
            self.nodes.append(helper.make_node("Cast", [name], [out], name=self._fresh(f"{name}/cast_{suffix}"), to=to))
        self.cast_cache[key] = out
        self.half[out] = want_half
        return out

    def emit(self, node: onnx.NodeProto, plan: tuple[list[bool], list[bool]] | None) -> None:
        if plan is None:
            # fp32 node: every float input it reads must be fp32 again.
            for i, name in enumerate(node.input):
                if name and self.half.get(name, False):
                    node.input[i] = self._as(name, False)
            self.nodes.append(node)
            return
        ins, outs = plan
        for i, name in enumerate(node.input):
            if ins[i]:
                node.input[i] = self._as(name, True)
            elif name and self.half.get(name, False):
                node.input[i] = self._as(name, False)  # a float32-only slot (Resize scales)
        if node.op_type == "Cast" and outs and outs[0]:
            for a in node.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
        for name, h in zip(node.output, outs):
            self.half[name] = h
        self.nodes.append(node)

    def finish(self) -> None:
        """Graph outputs back to fp32 under their own names, then drop what nothing reads."""
        for out in self.graph.output:
            if not self.half.get(out.name, False):
                continue
            # The fp16 tensor gets a new name and the output's name goes to an fp32 Cast of it:
            # the one an fp32 consumer already made if there is one, else a new one at the end.
            renamed = self._fresh(f"{out.name}_fp16")
            existing = self.cast_cache.get((out.name, FLOAT))
            mapping = {out.name: renamed, **({existing: out.name} if existing else {})}
            for n in self.nodes:
                for seq in (n.input, n.output):
                    for i, x in enumerate(seq):
                        seq[i] = mapping.get(x, x)
            self.half[renamed], self.half[out.name] = True, False
            if existing is None:
                self.nodes.append(helper.make_node("Cast", [renamed], [out.name], to=FLOAT,
                                                   name=self._fresh(f"{out.name}/cast_fp32")))
        self.nodes = _drop_dead(self.nodes, {o.name for o in self.graph.output})
        read = {x for n in self.nodes for x in n.input} | {o.name for o in self.graph.output}
        kept = [t for t in self.graph.initializer if t.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)


def _drop_dead(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes that still feed a graph output (the fp32 Constants replaced by fp16 copies do not)."""
    live = set(outputs)
    kept = []
    for n in reversed(nodes):
        if any(o in live for o in n.output):
            kept.append(n)
            live.update(x for x in n.input if x)
    return kept[::-1]


def _refresh_types(model: onnx.ModelProto) -> None:
    # value_info still holds the pre-conversion float32 types; infer them again from scratch.
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.value_info.extend(inferred.graph.value_info)


# ====================================================================== int8
# INT8_TARGETS ("cpu", "tensorrt") comes from the manifest, which records the target of an int8 engine.
CALIBRATION_METHODS = ("percentile", "minmax", "entropy")

# Ops with weights: where int8 pays off on every runtime.
_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
QUANTIZED_OPS: dict[str, tuple[str, ...]] = {
    # onnxruntime CPU: also the ops between convs, so int8 flows from one QLinearConv to the next
    # and ReLU/ReLU6 vanish into the uint8 range (Q/DQ around them would cost a requantize each).
    "cpu": _COMPUTE_OPS + ("Relu", "Clip", "Add", "MaxPool", "AveragePool", "GlobalAveragePool",
                           "Resize", "Concat"),
    # TensorRT: Q/DQ on the inputs of weighted ops, plus residual Adds so conv + add fuse (NVIDIA's
    # Q/DQ placement advice); TensorRT moves Q/DQ across ReLU/pooling itself.
    "tensorrt": _COMPUTE_OPS + ("Add",),
}


def to_int8(onnx_bytes: bytes, calib_images: Iterable[Any], *, target: str,
            exclude_prefixes: Sequence[str] = KEEP_FP32_PREFIXES, per_channel: bool = True,
            method: str = "percentile", chunk: int = 8) -> bytes:
    """Int8 Q/DQ copy of a float ONNX model, calibrated with onnxruntime on ``calib_images``.

    calib_images: float32 arrays (or CPU tensors) [1, 3, H, W] or [3, H, W] in [0, 1], H x W the
        model's input size (e.g. ``EvalTransform`` outputs); a few dozen to a few hundred images.
    target: "cpu" = onnxruntime on x86 (uint8 asymmetric activations, int8 symmetric weights,
        what is fast there: 2.4-3.2x over fp32 at 1 thread on ResNet-style detectors); "tensorrt" =
        signed int8 symmetric activations and weights, zero point 0, fp32 biases (slower than fp32
        in onnxruntime: it is for TensorRT engines only).
    exclude_prefixes: nodes named so (decode/NMS) are never quantized.
    per_channel: per-output-channel weight scales (a must for depthwise convs).
    method: activation range calibration, one of :data:`CALIBRATION_METHODS`; "percentile" keeps
        99.999% of the values of each tensor, so a few outliers do not stretch the int8 step.
    chunk: images per calibration pass; histograms/ranges are merged across passes, so memory
        stays at ``chunk`` images' activations whatever the number of images.
    Calibration runs with onnxruntime's default thread count.
    """
    from hwnas.backends.base import check_choice  # torch: imported here, as onnxruntime is below

    check_choice("int8 target", target, INT8_TARGETS)
    check_choice("calibration method", method, CALIBRATION_METHODS)
    if not isinstance(chunk, int) or chunk < 1:
        raise HwnasError(f"chunk must be a positive number of images, got {chunk!r}")
    model = _load(onnx_bytes)
    if any(t.data_type == FLOAT16 for t in model.graph.initializer):
        raise HwnasError("to_int8 takes the fp32 graph (this one has fp16 weights): quantize the fp32 export")
    feeds = _Feeds(_calibration_feeds(model, calib_images))
    q = _import_quantization()
    with tempfile.TemporaryDirectory(prefix="hwnas-int8-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        with _quiet():
            # onnxruntime's recommended step: shape inference (the quantizer needs every tensor's
            # type) and basic graph optimisations (constant folding, BN/conv fusions) so that
            # what gets calibrated is the graph that runs. Standard ONNX ops only, so TensorRT
            # parses the result too. (On torch exports, where BN is already folded, it does not
            # change the CPU speed-up: 2.68x with, 2.69x without; the u8 activations do.)
            q.shape_inference.quant_pre_process(model, src)
        prepared = onnx.load(src)
        excluded = _excluded_nodes(prepared, _prefixes(exclude_prefixes))
        ops = QUANTIZED_OPS[target]
        if any(n.name.startswith(ROI_STAGE_PREFIX) for n in prepared.graph.node):
            # A two-stage head decodes proposals and assigns pyramid levels with Add/Mul/Div inside
            # the network: box arithmetic that must stay float. onnxruntime calibrates every tensor
            # of every op type it quantizes, excluded nodes included (a near-constant box size
            # breaks its histograms), so such graphs quantize the weighted ops only.
            ops = _COMPUTE_OPS
        try:
            with _quiet():
                q.quantize_static(
                    src, dst, feeds,
                    quant_format=q.QuantFormat.QDQ,
                    per_channel=per_channel,
                    calibrate_method=_calibration_method(q, method),
                    op_types_to_quantize=list(ops),
                    nodes_to_exclude=excluded,
                    **_target_options(q, target, feeds.stride(chunk)),
                )
        except ValueError as e:  # onnxruntime's calibrators refuse degenerate or infinite ranges
            raise HwnasError(f"int8 calibration failed ({' '.join(str(e).split())[:200]}); calibrate on more "
                             f"or other images (--calib-images), or export fp16") from None
        return dst.read_bytes()


def _excluded_nodes(model: onnx.ModelProto, prefixes: tuple[str, ...]) -> list[str]:
    """Nodes to leave in float: the excluded prefixes, and Adds with a constant operand.

    An Add of a constant is an affine or bias step (GroupNorm's beta), not a residual or FPN
    merge: quantizing it adds a rounding step and fuses nothing (its input comes from a float
    op). Measured on a MobileNet + GroupNorm detector: head-output error 0.21 -> 0.15 relative.
    """
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.name.startswith(prefixes) or (n.op_type == "Add" and any(x in consts for x in n.input))]


def _import_quantization() -> Any:
    from hwnas.backends.ort import import_onnxruntime

    import_onnxruntime()  # says what to install when missing
    import onnxruntime.quantization as q
    import onnxruntime.quantization.shape_inference  # noqa: F401  (a submodule, not imported by the package)

    return q


def _calibration_method(q: Any, method: str) -> Any:
    return {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
            "entropy": q.CalibrationMethod.Entropy}[method]


def _target_options(q: Any, target: str, stride: int) -> dict[str, Any]:
    """quantize_static keyword arguments of one int8 target."""
    # CalibStridedMinMax runs calibration in passes of ``stride`` images (any method, despite its
    # name): histogram calibrators otherwise keep every image's activations in memory.
    calib = {"CalibStridedMinMax": stride}
    if target == "cpu":
        # u8 activations x s8 weights is the VNNI/AMX fast path of onnxruntime's QLinearConv;
        # s8 activations are not fused there (measured 2.9x over fp32 for u8, 0.94x for s8).
        return dict(activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                    extra_options={**calib, "ActivationSymmetric": False, "WeightSymmetric": True})
    return dict(
        activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
        extra_options={
            **calib,
            "ActivationSymmetric": True,  # zero point 0: TensorRT only takes symmetric int8
            "WeightSymmetric": True,
            # A symmetric grid covers [-t, t]: take the percentile/entropy threshold t of |x|
            # rather than of each tail separately.
            "CalibTensorRangeSymmetric": True,
            # TensorRT's DequantizeLinear takes int8/uint8/fp8/int4 only (TensorRT-RTX 1.7 refuses
            # onnxruntime's int32 bias DQ at parse time); it adds the fp32 bias in the conv itself.
            "QuantizeBias": False,
            # Quantize inputs of weighted ops, not their outputs (TensorRT's placement advice):
            # the next op's input Q/DQ already fixes the output precision where it matters.
            "OpTypesToExcludeOutputQuantization": list(_COMPUTE_OPS),
        })


def _input_spec(model: onnx.ModelProto) -> tuple[str, tuple[int, int, int, int]]:
    """Name and static [B, 3, H, W] of the model's one image input (a dynamic batch counts as 1)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise HwnasError(f"expected a model with one image input, got {len(inputs)}: {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if len(shape) != 4 or shape[1] != 3 or min(shape[2:]) < 1:
        raise HwnasError(f"input {inputs[0].name!r} has shape {shape}; expected a static [B, 3, H, W] image input")
    return inputs[0].name, (max(shape[0], 1), 3, shape[2], shape[3])


def _as_image(x: Any, hw: tuple[int, int], index: int) -> np.ndarray:
    """One checked [1, 3, H, W] float32 image in [0, 1]."""
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.float32:
        raise HwnasError(f"calibration image {index} has dtype {arr.dtype}; expected float32 in [0, 1] "
                         "(e.g. from hwnas.data.transforms.EvalTransform)")
    if arr.shape != (1, 3, *hw):
        raise HwnasError(f"calibration image {index} has shape {list(arr.shape)}; the model takes "
                         f"[1, 3, {hw[0]}, {hw[1]}] (letterbox it with EvalTransform(input_hw))")
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
        # The graph normalises itself: 0..255 or pre-normalised inputs would calibrate wrong ranges.
        raise HwnasError(f"calibration image {index} spans [{lo:.3g}, {hi:.3g}]; expected raw pixels in [0, 1] "
                         "(the graph normalises with MEAN/STD itself)")
    return arr


def _calibration_feeds(model: onnx.ModelProto, images: Iterable[Any]) -> list[dict[str, np.ndarray]]:
    """Input feeds of the model's batch size built from the checked images (a partial batch is dropped)."""
    name, (b, _, h, w) = _input_spec(model)
    feeds, batch = [], []
    for i, x in enumerate(images):
        batch.append(_as_image(x, (h, w), i))
        if len(batch) == b:
            feeds.append({name: np.concatenate(batch)})
            batch = []
    if not feeds:
        raise HwnasError(f"no calibration images (need at least {b} of [1, 3, {h}, {w}] float32 in [0, 1])")
    return feeds


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol (get_next, len, set_range) over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.set_range(0, len(feeds))

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __iter__(self) -> "_Feeds":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def stride(self, chunk: int) -> int:
        # onnxruntime wants the number of feeds divisible by the pass size: the largest divisor <= chunk.
        n = len(self.feeds)
        return max(d for d in range(1, min(chunk, n) + 1) if n % d == 0)


@contextlib.contextmanager
def _quiet():
    """Silence onnxruntime.quantization's prints and root-logger warnings (not errors)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


# ====================================================================== sensitivity
def sensitivity(float_bytes: bytes, int8_bytes: bytes, images: Iterable[Any], top: int = 5, *,
                threads: int | None = None) -> list[dict[str, Any]]:
    """Where an int8 graph lost precision: the ``top`` activations with the lowest SQNR, worst first.

    Runs both models on ``images`` (as for :func:`to_int8`; a handful is enough) with every float
    tensor exposed as an output, and compares the quantized tensors both graphs have by name.
    Each entry: ``name`` (tensor) and ``sqnr_db`` = 20 log10(|float| / |float - int8|) of the
    int8 graph's value against the float graph's over all images: the error accumulated up to
    that tensor, so a sharp drop from one layer to the next marks the culprit. Around 20 dB and
    up is usually harmless for detection; single digits point at a layer to keep in higher
    precision (``exclude_prefixes`` of :func:`to_int8`).
    threads: onnxruntime intra-op threads (None: its default).
    """
    if not isinstance(top, int) or top < 1:
        raise HwnasError(f"top must be a positive integer, got {top!r}")
    _import_quantization()
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from hwnas.backends.ort import session_options

    float_model = _load(float_bytes)
    _load(int8_bytes)  # one clear line for bytes that are not ONNX, before onnxruntime's
    feeds = _calibration_feeds(float_model, images)
    with tempfile.TemporaryDirectory(prefix="hwnas-sens-") as tmp:
        acts = {}
        for tag, data in (("float", float_bytes), ("int8", int8_bytes)):
            path, augmented = Path(tmp) / f"{tag}.onnx", Path(tmp) / f"{tag}.aug.onnx"
            path.write_bytes(bytes(data))  # as given (checked by _load above): no re-serialization
            dbg.modify_model_output_intermediate_tensors(path, augmented)
            # unoptimised, as qdq_loss_debug's default: fusions would hide the tensors being compared
            options = session_options(threads, optimize=False)
            acts[tag] = dbg.collect_activations(str(augmented), _Feeds(feeds), session_options=options)
    matched = {k: v for k, v in dbg.create_activation_matching(acts["int8"], acts["float"]).items() if "float" in v}
    if not matched:
        raise HwnasError("no quantized activation of the int8 model has a same-named tensor in the float model; "
                         "pass the float model the int8 one was made from (hwnas.export.precision.to_int8)")
    # Only the float-vs-int8 error: the per-tensor "qdq_err" is meaningless where the cpu target
    # folded a ReLU into the Q range (it then counts the ReLU itself as quantization error).
    errors = dbg.compute_activation_error(matched)
    rows = [{"name": k, "sqnr_db": float(v["xmodel_err"])} for k, v in errors.items()]
    rows.sort(key=lambda r: (r["sqnr_db"], r["name"]))
    return rows[:top]
