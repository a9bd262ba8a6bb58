"""A Triton Inference Server model repository for an export (``hwnas export --triton DIR``).

Triton serves a folder per model: ``DIR/NAME/config.pbtxt`` (the model configuration, protobuf
text format of Triton's ``ModelConfig``), ``DIR/NAME/1/model.onnx`` or ``model.plan`` (version 1
of the model) and, here, ``DIR/NAME/labels.txt`` (one class name a line, index order: the
``classes`` output's values index into it). Everything the configuration says is read from the
export's manifest (the graph's own input and outputs), so the two cannot disagree.

* An ONNX export is served by the ``onnxruntime`` backend, a full-TensorRT engine by the
  ``tensorrt`` backend (``tensorrt_plan``). Triton has no TensorRT-RTX backend: an RTX engine is
  refused (export the ONNX, or build with ``--backend tensorrt``).
* A static batch gives ``max_batch_size: 0`` and the full input shape; ``--dynamic-batch
  MIN:OPT:MAX`` gives ``max_batch_size: MAX``, shapes without the batch axis and Triton's dynamic
  batcher preferring OPT.
"""
from __future__ import annotations

from pathlib import Path

from hwnas.errors import HwnasError

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
              "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
LABELS = "labels.txt"


def check_flavour(flavour: str) -> None:
    if flavour not in PLATFORMS:
        raise HwnasError(f"--triton: Triton has no backend for {flavour} engines; export --format onnx (served by "
                         f"onnxruntime) or build with --backend tensorrt")


def triton_files(repo: Path, name: str, flavour: str) -> list[tuple[Path, str, str]]:
    """The files of model ``name`` in repository ``repo``, as ``(path, kind, what)`` for
    ``hwnas.fileio.check_outputs``; the model file second."""
    check_flavour(flavour)
    folder = Path(repo) / name
    model_kind = "ONNX graph" if flavour == "onnx" else "file"
    return [(folder / "config.pbtxt", "file", "Triton model configuration"),
            (folder / "1" / PLATFORMS[flavour][1], model_kind, "Triton model file"),
            (folder / LABELS, "file", "Triton labels file")]


def _dims(shape, batched: bool) -> str:
    dims = [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]
    return "[" + ", ".join(map(str, dims)) + "]"


def _tensor(spec, batched: bool, extra: str = "") -> str:
    if spec.dtype not in DATA_TYPES:
        raise HwnasError(f"--triton: tensor {spec.name} has dtype {spec.dtype}, which Triton's configuration cannot name")
    return (f'  {{\n    name: "{spec.name}"\n    data_type: {DATA_TYPES[spec.dtype]}\n'
            f"    dims: {_dims(spec.shape, batched)}\n{extra}  }}")


def model_config(manifest, name: str, dynamic_batch: tuple[int, int, int] | None) -> str:
    """``config.pbtxt`` for the export ``manifest`` served as model ``name``."""
    check_flavour(manifest.flavour)
    batched = dynamic_batch is not None
    if batched and any(isinstance(d, int) for d in (manifest.input.shape[0], *(o.shape[0] for o in manifest.outputs))):
        raise HwnasError("--triton with --dynamic-batch needs a graph whose first axis is the batch on every tensor")
    outputs = ",\n".join(_tensor(o, batched, f'    label_filename: "{LABELS}"\n' if o.name == "classes" else "")
                         for o in manifest.outputs)
    lines = [f'name: "{name}"', f'platform: "{PLATFORMS[manifest.flavour][0]}"',
             f"max_batch_size: {dynamic_batch[2] if batched else 0}",
             f"input [\n{_tensor(manifest.input, batched)}\n]", f"output [\n{outputs}\n]"]
    if batched:
        lines.append(f"dynamic_batching {{\n  preferred_batch_size: [{dynamic_batch[1]}]\n}}")
    # no instance_group: Triton puts an instance on each GPU it has, else on the CPU
    lines.append(f'parameters {{\n  key: "hwnas_arch"\n  value: {{ string_value: "{manifest.arch}" }}\n}}')
    return "\n".join(lines) + "\n"


def triton_writes(repo: Path, name: str, manifest, model_bytes: bytes,
                  dynamic_batch: tuple[int, int, int] | None) -> list[tuple[Path, bytes | str]]:
    """The repository's files with their contents, for ``hwnas.fileio.write_together``."""
    config, model, labels = (p for p, _, _ in triton_files(repo, name, manifest.flavour))
    return [(model, model_bytes), (labels, "".join(f"{c}\n" for c in manifest.class_names)),
            (config, model_config(manifest, name, dynamic_batch))]
