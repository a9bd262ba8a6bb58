"""Scoring a trained model on a dataset (``hwnas eval``): a checkpoint, a deployable ONNX graph, a
multi-scale graph or an engine, by pycocotools mAP or the WIDER FACE protocol.

Two steps, so that the caller can say what an interrupt keeps between them: :func:`open_eval`
loads the model and the dataset and checks they fit; :func:`run_eval` detects, scores and writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hwnas.errors import HwnasError

PROTOCOLS = ("coco", "wider")  # hwnas eval --protocol


@dataclass(frozen=True)
class EvalConfig:
    """What to score and where the results go; the paths are checked by the caller."""

    model: Path  # a checkpoint (.pt), a deployable or multi-scale ONNX graph, or an engine
    data: Path  # dataset folder
    out: Path  # metrics json
    detections: Path  # COCO results json
    checkpoint: bool = False  # read ``model`` as a checkpoint whatever its suffix (--weights)
    split: str = "val"
    protocol: str = "coco"  # one of PROTOCOLS
    predictions: Path | None = None  # wider: the folder the official per-image files are written to
    scales: tuple | None = None  # multi-scale testing of a checkpoint: hwnas.evaluate.multiscale.TestScale's
    device: str = "cpu"
    threads: int = 1  # onnxruntime threads
    batch_size: int = 8
    on_error: str = "raise"  # broken dataset entries: raise, or skip and count


@dataclass(frozen=True)
class OpenEval:
    """A model and the dataset it is scored on, checked to fit each other."""

    cfg: EvalConfig
    model: Any  # an open_model runner, or a MultiScaleOnnxDetector
    dataset: Any
    multiscale_graph: bool


def open_eval(cfg: EvalConfig, say: Callable[[str], None] = print) -> OpenEval:
    """Load the model and the dataset (``say`` hears of skipped broken entries)."""
    from hwnas.data.transforms import EvalTransform
    from hwnas.data.wider import open_dataset
    from hwnas.export.multiscale import MultiScaleOnnxDetector, is_multiscale_onnx
    from hwnas.export.pipeline import open_model

    multiscale_graph = not cfg.checkpoint and is_multiscale_onnx(cfg.model)
    if multiscale_graph:
        m = MultiScaleOnnxDetector(cfg.model, threads=cfg.threads)
    else:
        m = open_model(cfg.model, threads=cfg.threads, device=cfg.device, kind="checkpoint" if cfg.checkpoint else None)
    ds = open_dataset(cfg.data, cfg.split, EvalTransform(m.arch.input_hw), cfg.on_error)
    if ds.num_skipped():
        say(f"skipped {ds.num_skipped()} broken entries of {ds.json_path}: "
            + ", ".join(f"{k} {v}" for k, v in ds.skipped.items() if v))
    # a graph carries only the number of classes; a checkpoint and an engine's manifest their names
    if len(m.class_names) != len(ds.class_names) or (not m.kind.startswith("onnx") and m.class_names != ds.class_names):
        raise HwnasError(f"{cfg.model} was trained on classes {m.class_names}, the data has {ds.class_names}")
    if len(ds) == 0:
        raise HwnasError(f"no images to evaluate in {ds.json_path}")
    return OpenEval(cfg, m, ds, multiscale_graph)


def run_eval(run: OpenEval, progress=None) -> dict:
    """Detect on every image, score, and write the detections and the metrics (both after the
    scoring: a run that fails leaves no lone detections file). Returns the metrics."""
    from hwnas.evaluate.coco import coco_score, coco_truth, detect_dataset
    from hwnas.evaluate.face import WIDER_MAX_DETS, WIDER_SCORE_THRESH, original_results, torch_multiscale
    from hwnas.fileio import write_json

    cfg, m, ds = run.cfg, run.model, run.dataset
    if run.multiscale_graph or cfg.scales is not None:  # whole original images in, merged passes out
        detect_original = m.detect_original if run.multiscale_graph else \
            torch_multiscale(m.model, cfg.scales, device=cfg.device)
        results, ips = original_results(detect_original, ds, batch_size=cfg.batch_size, progress=progress)
    else:
        detect = m.detect
        if cfg.checkpoint and cfg.protocol == "wider":
            # the WIDER protocol ranks many low-scoring predictions: keep more than mAP needs
            from hwnas.export.deploy import TorchDetector

            detect = TorchDetector(m.model, device=cfg.device, score_thresh=WIDER_SCORE_THRESH,
                                   max_dets=WIDER_MAX_DETS).detect
        results, ips = detect_dataset(detect, ds, batch_size=cfg.batch_size, progress=progress)
    if cfg.protocol == "wider":
        from hwnas.evaluate.face import score_faces

        metrics = score_faces(results, ds, cfg.predictions)
        metrics["predictions"] = str(cfg.predictions)
    else:
        metrics = coco_score(coco_truth(ds), results, image_ids=ds.image_ids)
    metrics.update({"images_per_s": ips, "n_images": len(ds), "n_detections": len(results), "arch": str(m.arch),
                    "model": str(cfg.model), "kind": m.kind, "data": str(cfg.data), "split": cfg.split,
                    "detections": str(cfg.detections), "protocol": cfg.protocol})
    if cfg.scales is not None:
        from hwnas.evaluate.multiscale import describe

        metrics["test_scales"] = describe(cfg.scales)
    write_json(cfg.detections, results)
    write_json(cfg.out, metrics)
    return metrics


def score_prediction_files(predictions: Path, gt: Path, out: Path) -> dict:
    """Score existing WIDER FACE prediction files against ground truth by the official protocol;
    write the metrics to ``out`` (checked to replace nothing but metrics) and return them."""
    from hwnas.evaluate.wider import evaluate_wider, load_gt, read_predictions
    from hwnas.fileio import check_outputs, write_json

    truth, keep = load_gt(gt)
    preds = read_predictions(predictions)
    check_outputs([(out, "metrics", "metrics file")], inputs=[gt, predictions])
    metrics = evaluate_wider(preds, truth, keep)
    metrics.update({"predictions": str(predictions), "gt": str(gt)})
    write_json(out, metrics)
    return metrics
