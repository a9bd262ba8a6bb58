"""What a test can check of a TensorRT-RTX plan on a machine without a GPU.

Deserializing a plan (``trt.Runtime.deserialize_cuda_engine``) needs CUDA, so an engine cannot be
loaded or run here. What can be checked without one, with the real ``tensorrt_rtx`` module:

* the network the builder is given: the ONNX parsed by TensorRT's own parser, its inputs' shapes
  and types and its outputs' names (:func:`network_io`);
* that the plan is the build of that network: it stores the name of every input and output tensor
  (the runtime looks tensors up by name) and at least the graph's weights, at the graph's precision
  (:func:`check_plan`); an empty, truncated or unrelated byte string fails both;
* the timing cache file: on TensorRT-RTX timing caches are no-ops, and the file is TensorRT's own
  serialization of an empty cache (:func:`empty_timing_cache`).
"""
from __future__ import annotations

import re
import warnings

import onnx
import onnx.numpy_helper


def _trt():
    import tensorrt_rtx

    return tensorrt_rtx


def network_io(onnx_bytes: bytes) -> tuple[list[tuple[str, tuple[int, ...], str]], list[str]]:
    """([(input name, shape, dtype)], [output names]) of the network TensorRT-RTX's parser makes of the
    graph; dtype as TensorRT names it ("FLOAT", "HALF", ...)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(bytes(onnx_bytes)), [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    ins = [(t.name, tuple(t.shape), t.dtype.name) for t in map(network.get_input, range(network.num_inputs))]
    outs = [network.get_output(i).name for i in range(network.num_outputs)]
    return ins, outs


def weight_bytes(onnx_bytes: bytes) -> int:
    """Bytes of the graph's initializers as stored (fp32 4 a value, fp16 2, int8 1)."""
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load_from_string(onnx_bytes).graph.initializer)


def plan_io_numbers(plan: bytes, prefix: str) -> set[int]:
    """The N of every tensor name ``<prefix>N`` the plan stores (hwnas.backends.onnx_export names them
    input0.., output0..): how many inputs or outputs the built network has."""
    return {int(m) for m in re.findall(rb"(?<![A-Za-z0-9_])" + prefix.encode() + rb"([0-9]+)", plan)}


def check_plan(plan: bytes, onnx_bytes: bytes) -> None:
    """``plan`` is a build of ``onnx_bytes``: it names every graph input and output and holds its weights."""
    assert isinstance(plan, bytes)
    g = onnx.load_from_string(onnx_bytes).graph
    inits = {t.name for t in g.initializer}
    names = [v.name for v in g.input if v.name not in inits] + [v.name for v in g.output]
    missing = [n for n in names if n.encode() not in plan]
    assert not missing, f"the plan does not name the graph's tensors {missing}"
    assert len(plan) >= weight_bytes(onnx_bytes), (len(plan), weight_bytes(onnx_bytes))


def empty_timing_cache() -> bytes:
    """TensorRT-RTX's serialization of an empty timing cache."""
    trt = _trt()
    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bytes(config.create_timing_cache(b"").serialize())
