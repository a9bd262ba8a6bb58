"""COCO-style evaluation with pycocotools, and detections in the COCO results format."""
from __future__ import annotations

import contextlib
import copy
import io
import time
from pathlib import Path
from typing import Callable

import torch

from hwnas.errors import HwnasError
from hwnas.fileio import write_json
from hwnas.spec.arch import Arch

# pycocotools' stats vector, in its order
_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


# A runner's detect(): images [B, 3, H, W] in [0, 1] at the arch's input size -> per image
# dict(boxes [M, 4] x1y1x2y2 input pixels, scores [M], labels [M] in 0..K-1).
Detect = Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]


def to_coco_results(det: dict[str, torch.Tensor], target: dict, cat_ids: list[int]) -> list[dict]:
    """One image's detections in COCO results format, mapped back to the original image's pixels
    (the eval letterbox only scales and pads bottom/right: original = returned / scale)."""
    from hwnas.heads.postprocess import clip_boxes

    boxes = clip_boxes(det["boxes"].detach().cpu().float() / target["scale"], target["orig_hw"])
    image_id = int(target["image_id"])
    return [{"image_id": image_id, "category_id": int(cat_ids[int(lab)]),
             "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
             "score": round(float(s), 5)}
            for b, s, lab in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist())]


@torch.no_grad()
def detect_dataset(detect: Detect, dataset, *, batch_size: int = 8, progress=None) -> tuple[list[dict], float]:
    """Run any ``detect`` (a PyTorch model, an ONNX graph, an engine: see :data:`Detect`) over
    ``dataset``; detections in COCO results format (original-image pixels) and images per second
    of the whole loop (pre-processing, inference and post-processing)."""
    from hwnas.data.transforms import collate

    if batch_size < 1:
        raise HwnasError(f"--batch-size must be >= 1, got {batch_size}")
    results: list[dict] = []
    t0 = time.perf_counter()
    n = len(dataset)
    for start in range(0, n, batch_size):
        images, targets = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        for det, tgt in zip(detect(images), targets):
            results += to_coco_results(det, tgt, dataset.cat_ids)
        if progress:
            progress(min(n, start + batch_size), n, "")
    return results, n / max(time.perf_counter() - t0, 1e-9)


def predict_dataset(model: torch.nn.Module, arch: Arch, dataset, *, batch_size: int = 8, device: str = "cpu",
                    score_thresh: float = 0.05, max_dets: int = 100, progress=None) -> tuple[list[dict], float]:
    """:func:`detect_dataset` with ``model`` in eager PyTorch and :func:`hwnas.heads.postprocess`."""
    from hwnas.data.transforms import normalize
    from hwnas.heads.postprocess import postprocess

    model.eval().to(device)

    def detect(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        outputs = model(normalize(images.to(device)))
        return postprocess(outputs, arch, len(dataset.class_names), score_thresh=score_thresh, max_dets=max_dets)

    return detect_dataset(detect, dataset, batch_size=batch_size, progress=progress)


def coco_score(gt: Path | dict, results: list[dict], image_ids: list[int] | None = None) -> dict:
    """pycocotools bbox AP over the given images: map (0.5:0.95), map50, map75, small/medium/large.

    ``gt`` is a COCO instances json file or an already-loaded dict (e.g. ``WiderFace.coco_gt()``;
    scored on a deep copy, since ``COCOeval`` writes into the gt annotations it is given).

    Exactly what ``COCOeval`` reports for ``results`` (``results`` itself is left as it was:
    ``loadRes`` would add area, id and segmentation to its dicts). pycocotools writes -1 where
    nothing can be scored (a size range, or the whole set, without ground truth): kept, it is
    not a zero. No detections at all score 0 where there is ground truth, -1 elsewhere, as
    ``COCOeval`` would (its ``loadRes`` refuses an empty list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, dict):
            doc = copy.deepcopy(gt)
            gt = COCO()
            gt.dataset = doc
            gt.createIndex()
        else:
            gt = COCO(str(gt))
        if results:
            dt = gt.loadRes([dict(r) for r in results])
        else:
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset.get("images", [])), "annotations": [],
                          "categories": copy.deepcopy(gt.dataset.get("categories", []))}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(_STATS, ev.stats[:6])}


def coco_truth(dataset) -> Path | dict:
    """What :func:`coco_score` scores ``dataset`` against: its COCO json, or, for a dataset that is
    not a COCO file (``WiderFace``), the COCO dict it builds (``coco_gt()``)."""
    return dataset.coco_gt() if hasattr(dataset, "coco_gt") else dataset.json_path


def evaluate(model: torch.nn.Module, arch: Arch, dataset, *, detections: Path | None = None, device: str = "cpu",
             batch_size: int = 8, progress=None) -> dict:
    """Score ``model`` on ``dataset`` (a CocoDetection or WiderFace) and optionally write the detections file."""
    if len(dataset) == 0:
        raise HwnasError(f"no images to evaluate in {dataset.json_path}")
    results, ips = predict_dataset(model, arch, dataset, batch_size=batch_size, device=device, progress=progress)
    if detections is not None:
        write_json(detections, results)
    metrics = coco_score(coco_truth(dataset), results, image_ids=dataset.image_ids)
    metrics["images_per_s"] = ips
    metrics["n_images"] = len(dataset)
    metrics["n_detections"] = len(results)
    return metrics


def summarize(metrics: dict) -> str:
    return " ".join(f"{k}={metrics[k]:.4f}" for k in _STATS if k in metrics) + \
        (f" images/s={metrics['images_per_s']:.1f}" if "images_per_s" in metrics else "")
