"""COCO-style evaluation with pycocotools, and detections in the COCO results format."""
from __future__ import annotations

import contextlib
import copy
import io
import time
from pathlib import Path

import torch

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.fileio import write_json

# pycocotools' stats vector, in its order
_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, arch: Arch, dataset, *, batch_size: int = 8, device: str = "cpu",
                    score_thresh: float = 0.05, max_dets: int = 100, progress=None) -> tuple[list[dict], float]:
    """Run the model over ``dataset``; detections in COCO results format (original-image pixels)
    and images per second of the whole loop (pre-processing, network and post-processing)."""
    from hwnas.data.transforms import collate, normalize
    from hwnas.heads import postprocess

    if batch_size < 1:
        raise HwnasError(f"--batch-size must be >= 1, got {batch_size}")
    model.eval().to(device)
    results: list[dict] = []
    t0 = time.perf_counter()
    n = len(dataset)
    for start in range(0, n, batch_size):
        images, targets = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        outputs = model(normalize(images.to(device)))
        dets = postprocess(outputs, arch, len(dataset.class_names), score_thresh=score_thresh, max_dets=max_dets)
        for det, tgt in zip(dets, targets):
            boxes = det["boxes"].cpu() / tgt["scale"]  # back to the original image
            h, w = tgt["orig_hw"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            for b, s, lab in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": int(tgt["image_id"]), "category_id": int(dataset.cat_ids[lab]),
                                "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
                                "score": round(float(s), 5)})
        if progress:
            progress(min(n, start + batch_size), n, "")
    return results, n / max(time.perf_counter() - t0, 1e-9)


def coco_score(gt_json: Path, results: list[dict], image_ids: list[int] | None = None) -> dict:
    """pycocotools bbox AP over the given images: map (0.5:0.95), map50, map75, small/medium/large.

    Exactly what ``COCOeval`` reports for ``results`` (``results`` itself is left as it was:
    ``loadRes`` would add area, id and segmentation to its dicts). pycocotools writes -1 where
    nothing can be scored (a size range, or the whole set, without ground truth): kept, it is
    not a zero. No detections at all score 0 where there is ground truth, -1 elsewhere, as
    ``COCOeval`` would (its ``loadRes`` refuses an empty list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
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


def evaluate(model: torch.nn.Module, arch: Arch, dataset, *, detections: Path | None = None, device: str = "cpu",
             batch_size: int = 8, progress=None) -> dict:
    """Score ``model`` on ``dataset`` (a CocoDetection) and optionally write the detections file."""
    if len(dataset) == 0:
        raise HwnasError(f"no images to evaluate in {dataset.json_path}")
    results, ips = predict_dataset(model, arch, dataset, batch_size=batch_size, device=device, progress=progress)
    if detections is not None:
        write_json(detections, results)
    metrics = coco_score(dataset.json_path, results, image_ids=dataset.image_ids)
    metrics["images_per_s"] = ips
    metrics["n_images"] = len(dataset)
    metrics["n_detections"] = len(results)
    return metrics


def summarize(metrics: dict) -> str:
    return " ".join(f"{k}={metrics[k]:.4f}" for k in _STATS if k in metrics) + \
        (f" images/s={metrics['images_per_s']:.1f}" if "images_per_s" in metrics else "")
