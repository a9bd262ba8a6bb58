"""``hwnas export``, ``bench`` and ``infer`` behind the CLI: checkpoint -> deployable files, and any
deployed model (checkpoint, ONNX or engine) opened behind one ``detect(images)`` interface.

Files of an export to ``engines/NAME``:

* ``NAME.onnx``: the deployable graph (decode and NMS inside, or decode only: the ``host`` form),
  at the chosen precision;
* ``NAME.engine``: with ``--format engine``, the raw TensorRT plan built from ``NAME.onnx``;
* ``NAME.json``: the manifest (:mod:`hwnas.export.manifest`) of the engine, or of the ONNX itself.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from hwnas.errors import HwnasError
from hwnas.export.choices import NMS_FORMS, PRECISIONS

if TYPE_CHECKING:
    from hwnas.spec.arch import Arch

FORMATS = ("onnx", "engine")
NMS_CHOICES = ("auto", *NMS_FORMS)
INT8_LOSS_FLAG = 0.01  # 1.0 mAP point: more than this lost by int8 is flagged loudly
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExportConfig:
    weights: Path | None
    out: Path  # engines/NAME (suffixes are added)
    format: str = "onnx"
    precision: str = "fp32"
    nms: str = "auto"
    backend: str = "tensorrt-rtx"
    sm: str | None = None
    batch: int = 1
    dynamic_batch: tuple[int, int, int] | None = None
    calib_data: Path | None = None
    calib_images: int = 64
    int8_target: str | None = None  # None: tensorrt for engines, cpu for ONNX
    workspace_mb: int | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    check: Path | None = None  # a dataset to score the export against the checkpoint on
    threads: int = 1
    preset: str | None = None  # instead of weights: a preset or arch, untrained (latency, engine builds)
    num_classes: int | None = None  # with preset: None means 1 for a face head, else 80
    triton: Path | None = None  # also write a Triton model repository there (hwnas.export.triton)
    # fixed in the graph, recorded in its contract (hwnas.export.contract)
    score_thresh: float = 0.05
    iou_thresh: float = 0.5
    max_dets: int = 100

    def __post_init__(self) -> None:
        if (self.weights is None) == (self.preset is None):
            raise HwnasError("give exactly one of --weights (a checkpoint) or --preset (an untrained preset or arch)")
        if self.preset is not None and self.check is not None:
            raise HwnasError("--check compares the export with trained weights: give --weights, not --preset")
        if self.num_classes is not None and self.preset is None:
            raise HwnasError(f"--num-classes {self.num_classes}: only with --preset (a checkpoint knows its classes)")
        for name, value, valid in (("--format", self.format, FORMATS), ("--precision", self.precision, PRECISIONS),
                                   ("--nms", self.nms, NMS_CHOICES), ("--backend", self.backend, ("tensorrt", "tensorrt-rtx"))):
            if value not in valid:
                raise HwnasError(f"{name} {value!r}: choose one of {', '.join(valid)}")
        if self.precision == "int8" and self.calib_data is None:
            raise HwnasError("--precision int8 needs --calib-data DIR (real images to calibrate on, e.g. the training data)")
        if self.int8_target not in (None, "cpu", "tensorrt"):
            raise HwnasError(f"--int8-target {self.int8_target!r}: choose cpu or tensorrt")
        if self.format == "onnx" and (self.sm or self.version_compatible or self.hardware_compatible):
            raise HwnasError("--sm, --version-compatible and --hardware-compatible are engine options; add --format engine")
        if self.dynamic_batch is not None and self.batch != 1:
            raise HwnasError("give --batch-size or --dynamic-batch, not both")
        if self.triton is not None:
            from hwnas.export.triton import check_flavour

            check_flavour("onnx" if self.format == "onnx" else self.backend)
        from hwnas.limits import MAX_THREADS, check_batch, check_count, check_int, check_num_classes

        check_batch(self.batch, "--batch-size")
        from hwnas.limits import check_float

        check_float("--score-thresh", self.score_thresh, 0.0, 1.0)
        check_float("--iou-thresh", self.iou_thresh, 0.0, 1.0, open_lo=True)
        check_int("--max-dets", self.max_dets, 1, 10_000)
        if self.dynamic_batch is not None:
            check_batch(self.dynamic_batch[2], "--dynamic-batch MAX")
        check_count("--calib-images", self.calib_images)
        check_int("--threads", self.threads, 1, MAX_THREADS)
        if self.num_classes is not None:
            check_num_classes(self.num_classes)
        # build options checked here, before an export of minutes, not by the builder at the end
        if self.opt_level is not None:
            check_int("--opt-level", self.opt_level, 0, 5, "TensorRT's builder optimisation levels")
        if self.workspace_mb is not None:
            check_int("--workspace-mb", self.workspace_mb, 1, 1 << 20)
        if self.format == "onnx" and (self.opt_level is not None or self.workspace_mb is not None
                                      or self.timing_cache is not None):
            raise HwnasError("--opt-level, --workspace-mb and --timing-cache are engine build options; add --format engine")

    @property
    def form(self) -> str:
        """The NMS form: ONNX NonMaxSuppression where the runtime has it (onnxruntime, full TensorRT),
        NMS from plain operators for TensorRT-RTX (it has no NMS layer)."""
        if self.nms != "auto":
            return self.nms
        return "ops" if self.format == "engine" and self.backend == "tensorrt-rtx" else "onnx"

    @property
    def target(self) -> str:
        return self.int8_target or ("tensorrt" if self.format == "engine" else "cpu")


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)
    manifest: Any = None
    parity: dict | None = None
    int8_flag: str | None = None
    sensitivity: list[dict] | None = None
    notes: list[str] = field(default_factory=list)


def _calibration_images(data: Path, input_hw: tuple[int, int], n: int) -> list:
    """The first ``n`` training images, letterboxed to the input size as at inference: float32 arrays
    [1, 3, H, W] in [0, 1], what calibration and the sensitivity hint feed onnxruntime."""
    from hwnas.data.wider import open_dataset
    from hwnas.data.transforms import EvalTransform

    ds = open_dataset(data, "train", EvalTransform(input_hw))
    if len(ds) == 0:
        raise HwnasError(f"{ds.json_path} holds no images to calibrate int8 on")
    return [ds[i][0][None].numpy() for i in range(min(n, len(ds)))]


def export_files(cfg: ExportConfig) -> list[tuple[Path, str, str]]:
    """The files an export writes, as ``(path, kind, what)`` for ``hwnas.fileio.check_outputs``."""
    base = _out_base(cfg.out)
    onnx_path = base.with_name(base.name + ".onnx")
    files = [(onnx_path, "ONNX graph", "ONNX file")]
    if cfg.format == "engine":
        files.append((base.with_name(base.name + ".engine"), "file", "engine"))
    files.append((base.with_name(base.name + ".json"), "export manifest", "manifest"))
    return files


def export(cfg: ExportConfig, progress: Callable[[str], None] = print) -> ExportResult:
    """Checkpoint -> deployable ONNX (fp32, fp16 or int8 Q/DQ) -> optional engine, manifest, parity.

    Everything is built and checked in memory first (graph, engine, parity against the
    checkpoint); the files are written together at the end, so a failure at any step, a bad build
    option or a failing --check included, leaves a previous export under the same name intact."""
    from hwnas.data import dataset_inputs
    from hwnas.data.transforms import MEAN, STD
    from hwnas.export.deploy import export_deploy_onnx
    from hwnas.export.engine import prepare_engine
    from hwnas.export.manifest import manifest_json
    from hwnas.export.triton import triton_files, triton_writes
    from hwnas.fileio import check_outputs, write_together
    from hwnas.train.checkpoint import load_model

    files = export_files(cfg)
    base = _out_base(cfg.out)
    triton = [] if cfg.triton is None else triton_files(cfg.triton, base.name, "onnx" if cfg.format == "onnx" else cfg.backend)
    inputs = [cfg.weights, cfg.timing_cache] + [p for d in (cfg.calib_data, cfg.check) if d for p in dataset_inputs(d)]
    # the timing cache is read and rewritten by the build (any bytes: no kind to check), never an export file
    check_outputs(files + triton + ([(cfg.timing_cache, None, "timing cache")] if cfg.timing_cache else []),
                  inputs=[i for i in inputs if i is not None and i is not cfg.timing_cache])
    for path, _, what in files:
        if cfg.timing_cache is not None and os.path.realpath(cfg.timing_cache) == os.path.realpath(path):
            raise HwnasError(f"--timing-cache {cfg.timing_cache} is the export's {what}; give another file")
    if cfg.weights is not None:
        model, arch, names = load_model(cfg.weights)
    else:
        model, arch, names = untrained_model(cfg.preset, cfg.num_classes)
    if cfg.check is not None:  # the parity set must hold the classes the detector was trained on
        from hwnas.data.wider import open_dataset

        data_names = open_dataset(cfg.check, "val").class_names
        if list(data_names) != list(names):
            raise HwnasError(f"--check {cfg.check} has classes {list(data_names)}, the detector was trained on "
                             f"{list(names)}; give --check the dataset it was trained on")
    onnx_path = files[0][0]
    res = ExportResult()
    if cfg.preset is not None:
        res.notes.append(f"exported an untrained {cfg.preset}: for engine builds and latency only; train it for detections")
    calib = _calibration_images(cfg.calib_data, arch.input_hw, cfg.calib_images) if cfg.precision == "int8" else None

    # The head decides its RoIAlign form (None without one) for the NMS form, batch and engine backend.
    roi = arch.head.roi_impl(nms=cfg.form, backend=cfg.backend if cfg.format == "engine" else None,
                             dynamic=cfg.dynamic_batch is not None)
    progress(f"exporting {arch} ({cfg.form} NMS form) to ONNX")
    fp32 = export_deploy_onnx(model, nms=cfg.form, batch=cfg.batch, dynamic_batch=cfg.dynamic_batch, roi_impl=roi,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.iou_thresh, max_dets=cfg.max_dets,
                              class_names=list(names))
    graph = fp32
    if cfg.precision == "fp16":
        from hwnas.export.precision import to_fp16

        graph = to_fp16(fp32)
    elif cfg.precision == "int8":
        from hwnas.export.precision import to_int8

        progress(f"calibrating int8 ({cfg.target} Q/DQ) on {len(calib)} images of {cfg.calib_data}")
        graph = to_int8(fp32, calib, target=cfg.target)

    fields = {"arch": str(arch), "class_names": list(names), "input": {"mean": list(MEAN), "std": list(STD)},
              "form": cfg.form,
              "roi_impl": roi,
              "precision": cfg.precision, "int8_target": cfg.target if cfg.precision == "int8" else None}
    if cfg.format == "onnx":
        _, res.manifest = prepare_engine(graph, onnx_path, fields, flavour="onnx", batch_profile=cfg.dynamic_batch)
        writes = [(onnx_path, graph)]
    else:
        engine_path = files[1][0]
        progress(f"building a {cfg.backend} engine" + (f" for sm_{cfg.sm}" if cfg.sm else ""))
        plan, res.manifest = prepare_engine(
            graph, engine_path, fields, flavour=cfg.backend, sm=cfg.sm, workspace_mb=cfg.workspace_mb,
            opt_level=cfg.opt_level, timing_cache=cfg.timing_cache, version_compatible=cfg.version_compatible,
            hardware_compatible=cfg.hardware_compatible, batch_profile=cfg.dynamic_batch)
        writes = [(onnx_path, graph), (engine_path, plan)]

    if cfg.check is not None:
        res.parity = check_parity(cfg.weights, graph, cfg.check, threads=cfg.threads)
        if cfg.format == "engine":
            res.notes.append("parity was measured on the engine's ONNX in onnxruntime (running the engine needs a GPU)")
        if cfg.precision == "int8" and res.parity["delta_map"] < -INT8_LOSS_FLAG:
            from hwnas.export.precision import sensitivity

            res.int8_flag = (f"int8 LOST {-res.parity['delta_map_points']:.2f} mAP points (more than "
                             f"{100 * INT8_LOSS_FLAG:.1f}) against the checkpoint")
            res.sensitivity = sensitivity(fp32, graph, calib[:8])
    if triton:  # the served copy of the model file, its labels and configuration
        writes += triton_writes(cfg.triton, base.name, res.manifest, writes[-1][1], cfg.dynamic_batch)
    # the manifest last: a reader that finds it finds the files it describes
    write_together(writes + [(files[-1][0], manifest_json(res.manifest))])
    res.files = [p for p, _ in writes] + [files[-1][0]] + ([cfg.timing_cache] if cfg.timing_cache else [])
    return res


def _out_base(out: Path) -> Path:
    """``engines/NAME`` as given, less a suffix of the export's own files (``NAME.onnx`` -> ``NAME``).
    Any other dot is part of the name: ``with_suffix`` would turn ``retina_v1.5`` into ``retina_v1.onnx``."""
    out = Path(out)
    return out.with_suffix("") if out.suffix.lower() in (".onnx", ".engine", ".plan", ".json") else out


@dataclass(frozen=True)
class MultiscaleExport:
    path: Path  # the graph written
    arch: Arch
    scales: tuple  # hwnas.evaluate.multiscale.TestScale's, one input of the graph each


def export_multiscale(weights: Path, out: Path, scales: tuple, *, nms: str = "onnx", batch: int = 1) -> MultiscaleExport:
    """A checkpoint as one fp32 multi-scale ONNX graph (``hwnas export --test-scales``), written to
    ``out`` (less a suffix of the export's own files) + ``.onnx``; its passes are merged on the host."""
    from hwnas.train.checkpoint import load_model
    from hwnas.export.multiscale import export_multiscale_onnx
    from hwnas.fileio import check_outputs, write_atomic

    base = _out_base(out)
    path = base.with_name(base.name + ".onnx")
    check_outputs([(path, "ONNX graph", "ONNX file")], inputs=[weights])
    model, arch, _ = load_model(weights)
    write_atomic(path, export_multiscale_onnx(model, scales, nms=nms, batch=batch))
    return MultiscaleExport(path, arch, tuple(scales))


def untrained_model(preset: str, num_classes: int | None = None):
    """(Detector in eval mode, Arch, class names) of a preset or arch string with seeded initial
    weights: what its engine costs before any training (``hwnas export --preset``)."""
    from hwnas.heads.losses import init_head_priors
    from hwnas.models import Detector
    from hwnas.spec.presets import resolve_arch

    arch = resolve_arch(preset)
    names = arch.head.class_names(num_classes)
    torch.manual_seed(0)
    model = Detector.from_arch(arch, len(names))
    init_head_priors(model)
    return model.eval(), arch, names


def check_parity(weights: Path, graph: bytes, data: Path, *, threads: int = 1, split: str = "val") -> dict:
    """mAP and box agreement of an exported graph (in onnxruntime) against its checkpoint."""
    from hwnas.data.wider import open_dataset
    from hwnas.data.transforms import EvalTransform
    from hwnas.export.deploy import OnnxDetector, TorchDetector
    from hwnas.export.parity import parity

    ref = TorchDetector.from_checkpoint(weights)
    cand = OnnxDetector(graph, threads=threads)
    ds = open_dataset(data, split, EvalTransform(ref.arch.input_hw))
    return parity(ref, cand, ds)


# ============================================================================ any deployed model
@dataclass
class Opened:
    """A model behind ``detect(images [B,3,H,W] in [0,1]) -> [dict(boxes, scores, labels)]``."""
    kind: str  # checkpoint | onnx | engine
    arch: Any
    class_names: list[str]
    detect: Callable[[torch.Tensor], list[dict]]
    network: Callable[[torch.Tensor], Any] | None  # the network alone (no decode/NMS), for bench
    timer: Any = None
    model: Any = None  # a checkpoint's Detector (None for ONNX and engines)


def open_model(path: Path, *, threads: int = 1, device: str = "cpu", kind: str | None = None,
               batch: int | None = None) -> Opened:
    """A checkpoint (``.pt``), a deployable ONNX (``.onnx``) or an engine (``.engine``/``.plan``);
    ``kind`` ("checkpoint", "onnx", "engine") overrides the guess from the file name. ``batch``: the
    batch size the caller will run the network at (checked against a static ONNX or an engine)."""
    from hwnas.spec.arch import Arch
    from hwnas.backends.base import CpuTimer

    path = Path(path)
    if not path.exists():
        raise HwnasError(f"model {path} does not exist")
    kind = kind or {".pt": "checkpoint", ".onnx": "onnx", ".engine": "engine", ".plan": "engine"}.get(path.suffix.lower())
    # torch's threads too, whatever the kind: the host-side steps around an ONNX graph are torch ops,
    # and torch's spare OpenMP workers would compete with a 1-thread onnxruntime run on a small CPU
    torch.set_num_threads(threads)
    if kind == "checkpoint":
        from hwnas.data.transforms import normalize
        from hwnas.export.deploy import TorchDetector
        from hwnas.train.checkpoint import load_model
        from hwnas.train.loop import resolve_device

        resolve_device(device)
        model, arch, names = load_model(path)
        runner = TorchDetector(model, device=device)

        @torch.no_grad()
        def network(images: torch.Tensor):
            out = model(normalize(images.to(device)))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

        return Opened("checkpoint", arch, names, runner.detect, network, _timer(device), model)
    if kind == "onnx":
        from hwnas.export.deploy import OnnxDetector

        if device != "cpu":  # silently running on the CPU instead would mislabel every figure
            raise HwnasError(f"--device {device}: an ONNX model runs on onnxruntime's CPU provider here; drop "
                             f"--device, or build an engine for the GPU with `hwnas export --format engine`")

        runner = OnnxDetector(path, threads=threads)
        if batch is not None and runner.static_batch not in (None, batch):
            raise HwnasError(f"{path} was exported for batch {runner.static_batch}, not {batch}; export it again "
                             f"with --batch {batch} or a --dynamic-batch profile")
        names = _manifest_names(path) or [str(i) for i in range(runner.num_classes)]
        return Opened("onnx", runner.arch, names, runner.detect, _onnx_network(path, threads), CpuTimer())
    if kind == "engine":
        from hwnas.export.engine import load_engine

        runner = load_engine(path, batch=batch, device=device if device.startswith("cuda") else "cuda")
        m = runner.manifest
        bound = runner.batch  # what load_engine checked and bound
        return Opened("engine", Arch.parse(m.arch), list(m.class_names), _engine_detect(runner, bound), None,
                      _timer("cuda"))
    raise HwnasError(f"model {path}: give a checkpoint (.pt), a deployable ONNX (.onnx) or an engine (.engine)")


def _timer(device: str):
    from hwnas.backends.base import CpuTimer, CudaTimer

    return CudaTimer() if device.startswith("cuda") else CpuTimer()


def _manifest_names(path: Path) -> list[str] | None:
    from hwnas.export.manifest import manifest_path, read_manifest

    mp = manifest_path(path)
    if not mp.exists():
        return None
    m = read_manifest(mp)
    if m.onnx_sha256 != hashlib.sha256(Path(path).read_bytes()).hexdigest():
        # a stale manifest (a re-export killed between its two renames, or a copied graph)
        raise HwnasError(f"{mp} does not describe {path} (its onnx_sha256 differs); export it again with hwnas export")
    return list(m.class_names)


def _onnx_network(path: Path, threads: int) -> Callable[[torch.Tensor], Any]:
    """The deployable graph cut where the network ends (the tensors ``/net/`` hands to ``/post/``),
    so that bench can time the network alone next to the whole graph."""
    import onnx
    from onnx.utils import Extractor

    from hwnas.backends.ort import cpu_session

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))  # the extractor needs the cut's types
    made_by_net = {o for n in model.graph.node if n.name.startswith("/net/") for o in n.output}
    cut = list(dict.fromkeys(i for n in model.graph.node if not n.name.startswith("/net/")
                             for i in n.input if i in made_by_net))
    sub = Extractor(model).extract_model([model.graph.input[0].name], cut)
    sess = cpu_session(sub.SerializeToString(), threads)
    name = sess.get_inputs()[0].name
    return lambda images: sess.run(None, {name: images.numpy()})


def _engine_detect(runner, bound: int) -> Callable[[torch.Tensor], list[dict]]:
    """detect() of an engine bound to ``bound`` images, fed in chunks of that size (eval and infer
    pass any number). The engine manifest keeps no thresholds: a host-form engine gets NMS with
    the defaults ``hwnas export`` exports with. Needs a GPU (not run in CI)."""
    from hwnas.export.deploy import DeployConfig, run_in_chunks, to_detections

    m = runner.manifest
    config = DeployConfig(nms=m.form)

    def run(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v).cpu() for k, v in runner(chunk).items()}

    return lambda images: to_detections(run_in_chunks(run, images, bound), config, len(m.class_names))


# ============================================================================ bench and infer
def load_images(paths: list[Path], input_hw: tuple[int, int]) -> tuple[torch.Tensor, list[dict]]:
    """Image files -> a letterboxed batch [B,3,H,W] in [0,1] and, per image, what maps boxes back."""
    from hwnas.data.images import read_rgb
    from hwnas.data.transforms import EvalTransform

    tf = EvalTransform(input_hw)
    batch, info = [], []
    for p in paths:
        arr = read_rgb(p)
        img = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        out, _, _, scale = tf(img, torch.zeros(0, 4), 0, 0)
        batch.append(out)
        info.append({"path": p, "scale": scale, "orig_hw": arr.shape[:2], "pixels": arr})
    return torch.stack(batch), info


def bench(model: Opened, images: torch.Tensor, timing) -> dict:
    """Latency (median, p90, p99) and throughput, network only and end to end (the one timing
    protocol: warm-up, repeats, outlier rejection)."""
    from hwnas.backends.base import measure

    out = {}
    runs = {"end_to_end": lambda: model.detect(images)}
    if model.network is not None:
        runs = {"network": lambda: model.network(images), **runs}
    for name, fn in runs.items():
        samples: list[float] = []
        lat = measure(fn, _Recording(model.timer, samples), timing)
        q = sorted(samples)
        out[name] = {"median_ms": lat.median_ms, "spread_ms": lat.spread_ms, "n": lat.n,
                     "p90_ms": q[int(0.9 * (len(q) - 1))], "p99_ms": q[int(0.99 * (len(q) - 1))],
                     "images_per_s": 1e3 * len(images) / lat.median_ms}
    return out


class _Recording:
    """A timer that also keeps every sample, for percentiles."""

    def __init__(self, timer, samples: list[float]):
        self.timer, self.samples = timer, samples

    def time_once(self, run):
        ms = self.timer.time_once(run)
        self.samples.append(ms)
        return ms


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_files(paths: list[Path]) -> list[Path]:
    """Image files and folders -> the image files, a folder's in name order (not recursive)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise HwnasError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)}); give image files "
                                 f"or a folder of them")
            files += inside
        else:
            files.append(p)
    return files


def infer(model: Opened, paths: list[Path], out: Path, *, score_thresh: float = 0.3, batch_size: int = 8) -> list[dict]:
    """Detections of each image (original pixels) as ``out/detections.json`` and ``out/<name>.jpg`` with
    the boxes drawn. Images are read, run and drawn ``batch_size`` at a time (a folder of any size
    fits in memory); every file's header is checked first, so a bad image stops the run before
    anything is written."""
    import io

    from PIL import Image, ImageDraw

    from hwnas.data.images import image_size
    from hwnas.fileio import check_writable, write_atomic, write_json
    from hwnas.heads.postprocess import clip_boxes

    paths = image_files(paths)
    for p in paths:  # every image readable (its header: nothing decoded) before anything is written
        image_size(p)
    inputs = {Path(p).resolve() for p in paths}
    drawn: dict[Path, Path] = {}
    for p in paths:
        dst = (out / (Path(p).stem + ".jpg")).resolve()
        if dst in inputs:
            raise HwnasError(f"--out {out} would overwrite the input image {dst} with the boxes drawn; "
                             "choose another --out folder")
        if dst in drawn and drawn[dst].resolve() != Path(p).resolve():
            raise HwnasError(f"images {drawn[dst]} and {p} would both be drawn to {dst}; give images with "
                             "distinct names")
        drawn[dst] = Path(p)
    check_writable(out / "detections.json", "output folder")
    records = []
    for first in range(0, len(paths), batch_size):
        images, info = load_images(paths[first:first + batch_size], model.arch.input_hw)
        dets = model.detect(images)
        for det, meta in zip(dets, info):
            boxes = clip_boxes(det["boxes"] / meta["scale"], meta["orig_hw"])
            rows = [{"box": [round(v, 1) for v in b], "score": round(float(s), 4), "class": model.class_names[int(c)]}
                    for b, s, c in zip(boxes.tolist(), det["scores"], det["labels"])]
            records.append({"image": str(meta["path"]), "detections": rows})
            canvas = Image.fromarray(meta["pixels"])  # the pixels load_images read: each file is read once
            draw = ImageDraw.Draw(canvas)
            for r in rows:
                if r["score"] >= score_thresh:
                    draw.rectangle(r["box"], outline=(255, 40, 40), width=2)
                    draw.text((r["box"][0] + 2, r["box"][1] + 1), f"{r['class']} {r['score']:.2f}", fill=(255, 255, 0))
            buf = io.BytesIO()  # written whole or not at all: a killed run leaves no half image
            canvas.save(buf, format="JPEG", quality=92)
            write_atomic(out / (Path(meta["path"]).stem + ".jpg"), buf.getvalue())
    write_json(out / "detections.json", records)
    return records
