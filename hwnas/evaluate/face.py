"""Scoring a face detector the WIDER FACE way, on WIDER FACE or on generated faces.

Glue between a detector (any ``detect``: checkpoint, ONNX or engine), a dataset
(:class:`hwnas.data.wider.WiderFace` or a COCO faces set from ``hwnas data synth --kind faces``),
optional multi-scale testing (:mod:`hwnas.evaluate.multiscale`), the official-layout prediction files and
the WIDER evaluator (:mod:`hwnas.evaluate.wider`), with COCO mAP from the same detections.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hwnas.errors import HwnasError

# WIDER FACE images hold up to ~1,000 faces and the protocol ranks every prediction: keep many,
# down to a low score (the evaluator's 1000 thresholds span the normalised score range).
WIDER_SCORE_THRESH = 0.02
WIDER_MAX_DETS = 750


def wider_truth(dataset) -> tuple[list, dict | None, dict[int, str]]:
    """``(gt images, official keep-lists or None, image_id -> WIDER name)`` of ``dataset``.

    Faces the dataset dropped as outside their image (``on_error="skip"``) are dropped from the gt
    too, keep-lists renumbered: what is not trained on as broken is not scored either."""
    from hwnas.data.wider import WiderFace, coco_to_wider, faces_outside
    from hwnas.evaluate.wider import drop_faces, load_gt

    if isinstance(dataset, WiderFace):
        gt, keep = load_gt(dataset.gt_path)
        loaded = {im.name for im in dataset.wider_images()}
        gt = [im for im in gt if im.name in loaded]  # images skipped by on_error="skip" are not scored
        names = {iid: im.name for iid, im in zip(dataset.image_ids, dataset.wider_images())}
        # the same gt file parsed again: the same faces in the same order as the dataset's
        dropped = {im.name: dataset.dropped_faces(i) for i, im in enumerate(dataset.wider_images())}
    else:
        gt, keep = coco_to_wider(dataset.json_path), None
        # coco_to_wider keeps the json's image order, as CocoDetection's image_ids do
        all_names = {im["id"]: f"synth/{im['file_name']}" for im in _coco_images(dataset.json_path)}
        names = {i: all_names[i] for i in dataset.image_ids}
        kept = set(names.values())
        gt = [im for im in gt if im.name in kept]
        dropped = {}
        if getattr(dataset, "on_error", "raise") == "skip":  # CocoDetection dropped them as box_outside
            sizes = image_sizes(dataset)
            dropped = {im.name: faces_outside(im.boxes, sizes[im.name]) for im in gt}
    gt, keep = drop_faces(gt, keep, dropped)
    return gt, keep, names


def image_sizes(dataset) -> dict[str, tuple[int, int]]:
    """WIDER name -> (h, w) of every image of ``dataset`` (WiderFace: from the file headers read at
    construction; CocoDetection: from the json, checked against the file when it is read)."""
    from hwnas.data.wider import WiderFace

    if isinstance(dataset, WiderFace):
        return {im.name: dataset.image_hw(i) for i, im in enumerate(dataset.wider_images())}
    all_names = {im["id"]: f"synth/{im['file_name']}" for im in _coco_images(dataset.json_path)}
    return {all_names[iid]: dataset.image_hw(i) for i, iid in enumerate(dataset.image_ids)}


def _coco_images(path: Path) -> list[dict]:
    from hwnas.data.coco import load_json

    return load_json(path)["images"]


def to_wider_predictions(results: list[dict], names: dict[int, str]) -> dict[str, np.ndarray]:
    """COCO results (bbox x, y, w, h in original pixels) -> WIDER ``name -> [N, 5]`` (every
    scored image gets an entry, empty when it has no detection)."""
    out: dict[str, list] = {name: [] for name in names.values()}
    for r in results:
        out[names[r["image_id"]]].append([*r["bbox"], r["score"]])
    return {k: np.asarray(v, np.float64).reshape(-1, 5) for k, v in out.items()}


def torch_multiscale(model: torch.nn.Module, scales: Sequence, *, device: str = "cpu",
                     score_thresh: float = WIDER_SCORE_THRESH, max_dets: int = WIDER_MAX_DETS):
    """``detect_original(images)`` of a PyTorch detector with multi-scale testing: original images
    ([3, h, w] in [0, 1]) -> merged detections in original pixels (:mod:`hwnas.evaluate.multiscale`)."""
    from hwnas.data.transforms import normalize
    from hwnas.evaluate.multiscale import multi_scale_detect
    from hwnas.heads.postprocess import postprocess

    arch, k = model.arch, model.num_classes
    if arch.head.TWO_STAGE:
        raise HwnasError(f"multi-scale testing needs a one-stage head: the {arch.head.kind} head's RoI stage is "
                         f"built for one input size")
    model = model.eval().to(device)
    sized: dict[tuple[int, int], torch.nn.Module] = {}

    @torch.no_grad()
    def run(batch: torch.Tensor, hw: tuple[int, int]) -> list[dict]:
        net = sized.setdefault(hw, model.at_size(hw))
        out = net(normalize(batch.to(device)))
        return postprocess(out, net.arch, k, score_thresh=score_thresh, max_dets=max_dets)

    return lambda images: multi_scale_detect(images, run, arch.input_hw, scales, max_dets=max_dets)


def original_results(detect_original, dataset, *, batch_size: int = 4, progress=None) -> tuple[list[dict], float]:
    """COCO results of ``detect_original`` (original images -> detections in original pixels, e.g.
    :func:`torch_multiscale` or a multi-scale graph) over ``dataset``; images per second."""
    from hwnas.evaluate.coco import to_coco_results

    results: list[dict] = []
    n, t0 = len(dataset), time.perf_counter()
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        images = [dataset.load_image(i) for i in idx]
        for i, im, det in zip(idx, images, detect_original(images)):
            # boxes are in original pixels already: scale 1
            target = {"image_id": dataset.image_ids[i], "scale": 1.0, "orig_hw": tuple(im.shape[-2:])}
            results += to_coco_results(det, target, dataset.cat_ids)
        if progress:
            progress(idx[-1] + 1, n, "")
    return results, n / max(time.perf_counter() - t0, 1e-9)


def score_faces(results: list[dict], dataset, predictions_dir: Path | None = None) -> dict:
    """WIDER easy/medium/hard AP (official protocol) and COCO mAP of ``results`` on ``dataset``;
    writes the official per-image prediction files to ``predictions_dir`` when given."""
    from hwnas.evaluate.coco import coco_score
    from hwnas.evaluate.wider import check_inside, evaluate_wider, write_predictions

    gt, keep, names = wider_truth(dataset)
    preds = to_wider_predictions(results, names)
    sizes = image_sizes(dataset)
    check_inside(gt, sizes)  # before the prediction files are written: a refused gt leaves nothing behind
    if predictions_dir is not None:
        write_predictions(predictions_dir, preds)
    metrics = evaluate_wider(preds, gt, keep, image_hw=sizes)
    gt_coco = dataset.coco_gt() if hasattr(dataset, "coco_gt") else dataset.json_path
    metrics.update(coco_score(gt_coco, results, image_ids=dataset.image_ids))
    return metrics
