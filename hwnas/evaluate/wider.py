"""The official WIDER FACE evaluation protocol (``wider_eval.m`` of the WIDER FACE eval tools).

Per subset (easy, medium, hard) and image, following ``evaluation.m`` / ``image_evaluation``:

* Predictions ``[x, y, w, h, score]`` are sorted by score, descending (stable, as MATLAB's
  ``sort(..., 'descend')``), and scores normalised over all predictions of all images:
  ``(s - min) / (max - min)`` (``evaluate_wider``, ``_normalise_scores``).
* Every gt face of the image takes part in matching; the subset's keep-list says which ones
  count. Overlap is IoU with the +1 pixel convention of ``boxoverlap.m`` (``overlaps``).
* Each prediction, in order, goes to the gt of largest overlap; at overlap >= 0.5 a gt outside
  the keep-list makes the prediction ignored (neither hit nor false positive), a kept gt found
  for the first time becomes recalled (``image_eval``).
* At 1000 score thresholds ``1 - t/1000`` an image contributes (proposals kept so far, gt
  recalled so far) (``image_pr``); images without gt or without predictions contribute nothing
  but their kept faces still count in the recall denominator (``evaluate_wider``).
* Precision = recalled / proposals, recall = recalled / kept faces, AP = VOC area (``voc_ap``).

Keep-lists are the official ``wider_{easy,medium,hard}_val.mat``. Without them (the train split,
generated data) subsets are derived from face height (``MIN_HEIGHT``, ``derive_subsets``) and
the result says so: the derived numbers approximate, and are not comparable with, official ones.

Prediction files follow the official submission layout: ``DIR/<event>/<image stem>.txt`` holding
the image name, the box count, then ``x y w h score`` lines. They never leave ``DIR``: names with
``..`` are refused (``image_key``), every path written is checked after resolving links
(``write_predictions``), and links leading out of ``DIR`` are not read (``read_predictions``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hwnas.data.coco import EDGE_TOLERANCE_PX
from hwnas.data.wider import ATTRS, WiderImage, coco_to_wider, faces_outside, read_wider_gt, wider_image
from hwnas.errors import HwnasError
from hwnas.fileio import write_atomic

SUBSETS = ("easy", "medium", "hard")
IOU_THRESH = 0.5
THRESHOLDS = 1000
# Derived subsets (no official keep-lists): a face counts in a subset when it is not invalid,
# has area, and is at least this tall. The official lists rank faces by an EdgeBox detection
# rate that mostly tracks size; these heights mimic their nesting (easy in medium in hard).
MIN_HEIGHT = {"easy": 50.0, "medium": 30.0, "hard": 10.0}
OFFICIAL_RULE = "official keep-lists"
DERIVED_RULE = (f"derived from face height: easy>={MIN_HEIGHT['easy']:g}px, medium>={MIN_HEIGHT['medium']:g}px, "
                f"hard>={MIN_HEIGHT['hard']:g}px (no official keep-lists)")
KEEP_MAT = "wider_{}_val.mat"
# Extensions stripped when matching a gt image to its prediction file by event + stem.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Keep = dict[str, dict[str, np.ndarray]]  # subset -> image name -> 0-based indices of the kept faces


# ---------------------------------------------------------------------------- names
def _stem(filename: str) -> str:
    # Only an image extension goes: a bare stem may hold dots of its own.
    for ext in IMAGE_EXTS + (".txt",):
        if filename.lower().endswith(ext):
            return filename[:-len(ext)]
    return filename


def image_key(name: str) -> tuple[str, str]:
    """``(event, stem)``: how gt images, prediction keys and prediction files are matched, as the
    official tools find ``DIR/<event>/<stem>.txt`` (``0--Parade/x.jpg`` and ``0--Parade/x`` agree)."""
    parts = str(name).replace("\\", "/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[-1]:
        raise HwnasError(f"image name {name!r} must be '<event>/<file>' (e.g. '0--Parade/0_Parade_x_465.jpg')")
    # the key names a prediction file DIR/<event>/<stem>.txt: no part may lead out of DIR
    if ".." in parts or parts[0] == "." or "\x00" in str(name):
        raise HwnasError(f"image name {name!r} has a '..' or '.' component or a NUL character; names must stay "
                         f"inside the prediction folder: give '<event>/<file>'")
    return parts[0], _stem(parts[-1])


# ---------------------------------------------------------------------------- subsets
def derive_subsets(gt: list[WiderImage]) -> Keep:
    """Keep-lists from face height (``MIN_HEIGHT``): never invalid faces nor faces without area."""
    keep: Keep = {s: {} for s in SUBSETS}
    for im in gt:
        w, h = im.boxes[:, 2], im.boxes[:, 3]
        usable = (w > 0) & (h > 0) & ~im.invalid
        for s in SUBSETS:
            keep[s][im.name] = np.flatnonzero(usable & (h >= MIN_HEIGHT[s]))
    return keep


# ---------------------------------------------------------------------------- predictions
def _as_dets(dets: Any, where: str) -> np.ndarray:
    """``dets`` as float64 [N, 5] x, y, w, h, score; one-line error naming ``where`` otherwise."""
    try:
        arr = np.asarray(dets, np.float64)
    except (TypeError, ValueError):
        raise HwnasError(f"predictions of {where} are not numbers; give an array [N, 5] of x y w h score") from None
    if arr.size == 0:
        return np.zeros((0, 5))
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise HwnasError(f"predictions of {where} have shape {list(arr.shape)}; give an array [N, 5] of x y w h score")
    if not np.isfinite(arr).all():
        raise HwnasError(f"predictions of {where} hold NaN or infinity; drop or fix those boxes")
    if (arr[:, 2:4] < 0).any():
        raise HwnasError(f"predictions of {where} have a negative width or height; boxes are x y w h, not x1 y1 x2 y2")
    return arr


def write_predictions(directory: Path, dets: dict[str, Any]) -> list[Path]:
    """Write the official layout: ``directory/<event>/<stem>.txt`` per image (line 1 the stem,
    line 2 the count, then ``x y w h score``), each file atomically. Every array is checked
    before the first file is written. Files of images not in ``dets`` are left alone."""
    directory = Path(directory)
    jobs: dict[tuple[str, str], tuple[str, np.ndarray]] = {}
    for name, d in dets.items():
        key = image_key(name)
        if key in jobs:
            raise HwnasError(f"predictions {jobs[key][0]!r} and {name!r} would both go to {key[0]}/{key[1]}.txt; "
                             f"give each image once")
        jobs[key] = (name, _as_dets(d, name))
    # Belt and braces after image_key's check: every file must resolve (links followed) inside the
    # folder, checked for all before the first is written.
    base = directory.resolve()
    for (event, stem), (name, _) in jobs.items():
        target = (directory / event / f"{stem}.txt").resolve()
        if base not in target.parents:
            raise HwnasError(f"the prediction file of {name!r} would be written to {target}, which leads outside the "
                             f"prediction folder {directory}; give names '<event>/<file>' and no links out of it")
    written = []
    for (event, stem), (_, arr) in jobs.items():
        folder = directory / event
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HwnasError(f"cannot create prediction folder {folder}: {e.strerror}; choose another folder") from None
        rows = [" ".join(repr(float(v)) for v in row) for row in arr]  # repr: the shortest exact round trip
        path = folder / f"{stem}.txt"
        write_atomic(path, "\n".join([stem, str(len(arr))] + rows) + "\n")
        written.append(path)
    return written


def _read_pred_file(path: Path) -> np.ndarray:
    """One prediction file. Line 1 (the image name) is not checked: the file's place names the
    image, as in ``read_pred.m``. More or fewer box lines than line 2 announces is an error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise HwnasError(f"cannot read prediction file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise HwnasError(f"{path} is not a prediction file (not UTF-8 text at byte {e.start}); rewrite it") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise HwnasError(f"{path}: {len(lines)} line(s); a prediction file holds the image name (line 1), the box "
                         f"count (line 2), then 'x y w h score' lines")
    try:
        count = int(lines[1].strip())
    except ValueError:
        count = -1
    if count < 0:
        raise HwnasError(f"{path} line 2: box count {lines[1].strip()[:40]!r} is not a whole number >= 0; fix it")
    body = lines[2:]
    if len(body) < count:
        raise HwnasError(f"{path} line {len(lines) + 1}: the file ends after {len(body)} of the {count} boxes line 2 "
                         f"announces; fix the count or the boxes")
    if len(body) > count:
        raise HwnasError(f"{path} line {count + 3}: more box lines than the {count} line 2 announces; fix the count")
    rows = []
    for k, line in enumerate(body):
        tokens = line.split()
        try:
            row = [float(t) for t in tokens]
        except ValueError:
            row = []
        if len(tokens) != 5 or len(row) != 5 or not all(math.isfinite(v) for v in row):
            raise HwnasError(f"{path} line {k + 3}: expected five numbers 'x y w h score', got {line.strip()[:60]!r}")
        if row[2] < 0 or row[3] < 0:
            raise HwnasError(f"{path} line {k + 3}: negative width or height in {line.strip()[:60]!r}; "
                             f"boxes are x y w h, not x1 y1 x2 y2")
        rows.append(row)
    return np.asarray(rows, np.float64).reshape(-1, 5)


def read_predictions(directory: Path) -> dict[str, np.ndarray]:
    """Every ``directory/<event>/<stem>.txt`` as ``{"<event>/<stem>": float64 [N, 5]}``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HwnasError(f"prediction folder {directory} does not exist; write predictions there as "
                         f"<event>/<image stem>.txt (hwnas.evaluate.wider.write_predictions)")
    files = sorted(p for p in directory.glob("*/*.txt") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise HwnasError(f"prediction folder {directory} holds no prediction files; expected "
                         f"{directory}/<event>/<image stem>.txt")
    base = directory.resolve()
    for p in files:
        # glob follows links: a file or event folder linking out would read files from elsewhere
        real = p.resolve()
        if base not in real.parents:
            raise HwnasError(f"prediction file {p} leads outside the prediction folder {directory} (a link to "
                             f"{real}); copy the files into {directory} instead of linking them")
    return {f"{p.parent.name}/{p.name[:-4]}": _read_pred_file(p) for p in files}


# ---------------------------------------------------------------------------- the protocol
def overlaps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU [P, G] of x1 y1 x2 y2 boxes with the +1 pixel convention of ``boxoverlap.m``: a box
    covers x2 - x1 + 1 pixels, intersections of width or height <= 0 overlap 0."""
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = iw * ih
    area_p = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    area_g = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_p[:, None] + area_g[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    """x2 = x + w as the official tools convert (no -1: the +1 lives in ``overlaps``)."""
    out = np.array(xywh[:, :4], np.float64)
    out[:, 2:] += out[:, :2]
    return out


def image_eval(iou: np.ndarray, kept: np.ndarray, iou_thresh: float = IOU_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """``(pred_recall [P], proposal [P])`` of ``image_evaluation`` for predictions in score order.

    ``iou`` [P, G] against every gt face, ``kept`` [G] bool (in the subset's keep-list). The
    official loop takes each prediction h in turn to its best gt m (first on ties, as MATLAB's
    max); at overlap >= ``iou_thresh``: m not kept -> proposal[h] = -1 (ignored), m kept and not
    yet recalled -> recalled. pred_recall[h] = gt recalled after h. Ignored gts never become
    recalled and no flag depends on a later prediction, so this equals the loop: a kept gt is
    recalled at the first prediction that hits it, and pred_recall is the running count of such
    first hits.
    """
    n = iou.shape[0]
    best = iou.argmax(1)
    hit = iou[np.arange(n), best] >= iou_thresh
    on_kept = kept[best]
    proposal = np.where(hit & ~on_kept, -1, 1)
    hits = np.flatnonzero(hit & on_kept)
    first = np.zeros(n, bool)
    if hits.size:
        _, at = np.unique(best[hits], return_index=True)  # first prediction to reach each kept gt
        first[hits[at]] = True
    return np.cumsum(first), proposal


def thresholds_of(n: int) -> np.ndarray:
    """``1 - t/n`` for t = 1..n, computed as ``image_pr_info`` does (same float rounding)."""
    return 1.0 - np.arange(1, n + 1, dtype=np.float64) / n


def image_pr(scores: np.ndarray, proposal: np.ndarray, pred_recall: np.ndarray, thresh: np.ndarray) -> np.ndarray:
    """[T, 2] of ``image_pr_info``: at each threshold, the last prediction r with score >= it
    (scores are descending) gives (proposals flagged 1 among 0..r, pred_recall[r]); none: (0, 0)."""
    n_above = np.searchsorted(-scores, -thresh, side="right")  # count of scores >= thresh
    out = np.zeros((len(thresh), 2))
    has = n_above > 0
    r = n_above[has] - 1
    out[has, 0] = np.cumsum(proposal == 1)[r]
    out[has, 1] = pred_recall[r]
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """``VOCap.m``: recall 0 / precision 0 before, recall 1 / precision 0 after, precision made
    non-increasing from the right, area summed where recall changes."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _normalise_scores(dets: list[Optional[np.ndarray]]) -> None:
    """``norm_score.m`` in place: min-max over every prediction of every gt image. MATLAB seeds the
    max with the smallest positive single, which only matters when no score is positive. Where all
    scores are equal MATLAB would divide by zero (NaN scores, AP 0): they are left as they are."""
    scores = [d[:, 4] for d in dets if d is not None and len(d)]
    if not scores:
        return
    lo = min(float(s.min()) for s in scores)
    hi = max(float(s.max()) for s in scores)
    if hi > lo:
        for d in dets:
            if d is not None and len(d):
                d[:, 4] = (d[:, 4] - lo) / (hi - lo)


def _keep_masks(keep: Keep, gt: list[WiderImage]) -> list[dict[str, tuple[np.ndarray, int]]]:
    """Per image and subset: (kept bool [G], length of the keep-list) with every index checked."""
    missing = [s for s in SUBSETS if s not in keep]
    if missing:
        raise HwnasError(f"keep-lists lack subset(s) {', '.join(missing)}; give {', '.join(SUBSETS)}")
    out = []
    for im in gt:
        per = {}
        for s in SUBSETS:
            if im.name not in keep[s]:
                raise HwnasError(f"the {s} keep-list has no entry for image {im.name}; the keep-lists and the gt "
                                 f"describe different images")
            idx = np.asarray(keep[s][im.name]).ravel()
            if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(im.boxes)):
                raise HwnasError(f"the {s} keep-list of image {im.name} holds {idx.tolist()[:8]}, not face indices "
                                 f"0..{len(im.boxes) - 1}; the keep-lists and the gt do not match")
            mask = np.zeros(len(im.boxes), bool)
            mask[idx.astype(np.int64)] = True
            per[s] = (mask, int(idx.size))
        out.append(per)
    return out


def check_inside(gt: list[WiderImage], image_hw: dict[str, tuple[int, int]]) -> None:
    """Refuse a gt face with area lying outside its image by more than the loaders' tolerance
    (``hwnas.data.wider.faces_outside``), for the images whose ``(h, w)`` ``image_hw`` knows."""
    for im in gt:
        hw = image_hw.get(im.name)
        if hw is None:
            continue
        outside = np.flatnonzero(faces_outside(im.boxes, hw))
        if outside.size:
            k = int(outside[0])
            box = " ".join(f"{float(v):g}" for v in im.boxes[k])
            raise HwnasError(f"gt face {k + 1} of {im.name} ({box}) lies outside the {hw[1]}x{hw[0]} image by more "
                             f"than {EDGE_TOLERANCE_PX:g} px; fix the face in the gt, or load the dataset with "
                             f"on_error='skip' to drop such faces")


def drop_faces(gt: list[WiderImage], keep: Optional[Keep], drop: dict[str, np.ndarray]) -> tuple[list[WiderImage],
                                                                                                Optional[Keep]]:
    """``gt`` without the faces ``drop`` marks (image name -> bool [N]) and ``keep`` renumbered to
    match: a dropped face leaves every subset, the faces after it move up one index."""
    out, new_keep = [], ({s: dict(v) for s, v in keep.items()} if keep is not None else None)
    for im in gt:
        mask = drop.get(im.name)
        if mask is None or not mask.any():
            out.append(im)
            continue
        out.append(WiderImage(im.name, im.event, im.boxes[~mask], im.attrs[~mask]))
        new_index = np.cumsum(~mask) - 1
        for lists in (new_keep or {}).values():
            idx = np.asarray(lists.get(im.name, [])).ravel()
            if idx.size and idx.dtype.kind in "iu" and idx.min() >= 0 and idx.max() < len(mask):
                lists[im.name] = new_index[idx[~mask[idx]]]
            # other lists are left as they are, for _keep_masks to name what is wrong with them
    return out, new_keep


def evaluate_wider(predictions: dict[str, Any], gt: list[WiderImage], keep: Optional[Keep] = None,
                   iou_thresh: float = IOU_THRESH, thresholds: int = THRESHOLDS,
                   image_hw: Optional[dict[str, tuple[int, int]]] = None) -> dict:
    """Official WIDER FACE AP of each subset.

    ``predictions``: image name (``<event>/<file>`` or ``<event>/<stem>``, matched to ``gt`` by
    event + stem) -> [N, 5] x, y, w, h, score; images without an entry have no predictions and
    entries for images not in ``gt`` are not used (nor in the score normalisation), as in
    ``read_pred.m``. ``keep``: subset -> image name -> 0-based face indices (``load_gt`` reads the
    official lists); None derives them (``derive_subsets``). ``image_hw``: gt image name -> (h, w)
    where the caller knows the sizes: a face outside its image is then refused (``check_inside``;
    faces within the tolerance are scored as written, as the official tools do). Returns
    ``{"easy", "medium", "hard"}`` APs, ``subsets`` (which rule), ``n_images``, ``n_faces`` per
    subset and ``n_images_with_predictions``.
    """
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise HwnasError(f"iou_thresh {iou_thresh} must lie in (0, 1]")
    if isinstance(thresholds, bool) or not isinstance(thresholds, (int, np.integer)) or thresholds < 1:
        raise HwnasError(f"thresholds {thresholds!r} must be a whole number >= 1 (the official value is {THRESHOLDS})")
    if image_hw is not None:
        check_inside(gt, image_hw)
    rule = OFFICIAL_RULE if keep is not None else DERIVED_RULE
    masks = _keep_masks(keep if keep is not None else derive_subsets(gt), gt)

    names: dict[tuple[str, str], str] = {}
    for name in predictions:
        key = image_key(name)
        if key in names:
            raise HwnasError(f"predictions {names[key]!r} and {name!r} are the same image ({key[0]}/{key[1]}); "
                             f"give each image once")
        names[key] = name
    dets: list[Optional[np.ndarray]] = []
    seen: dict[tuple[str, str], str] = {}
    for im in gt:
        key = image_key(im.name)
        if key in seen:
            raise HwnasError(f"gt images {seen[key]} and {im.name} share event and stem; prediction files could not "
                             f"tell them apart")
        seen[key] = im.name
        name = names.get(key)
        if name is None:
            dets.append(None)
            continue
        d = _as_dets(predictions[name], name)
        # Sorted on the raw scores before normalising, as read_pred.m does: rounding in the
        # normalisation could tie two different scores. A fancy-indexed copy: the caller's array stays.
        dets.append(d[np.argsort(-d[:, 4], kind="stable")])
    matched = sum(d is not None for d in dets)
    if predictions and not matched:
        example_p, example_g = next(iter(predictions)), gt[0].name if gt else "none"
        raise HwnasError(f"none of the {len(predictions)} predicted images is in the gt (e.g. {example_p!r}; gt has "
                         f"{example_g!r}); predictions are matched by '<event>/<image stem>'")
    _normalise_scores(dets)

    thresh = thresholds_of(int(thresholds))
    pr = {s: np.zeros((len(thresh), 2)) for s in SUBSETS}
    n_faces = {s: 0 for s in SUBSETS}
    for im, d, per in zip(gt, dets, masks):
        for s in SUBSETS:
            n_faces[s] += per[s][1]  # counted even when the image is skipped below
        if len(im.boxes) == 0 or d is None or len(d) == 0:
            continue
        iou = overlaps(_xyxy(d), _xyxy(im.boxes))
        for s in SUBSETS:
            pred_recall, proposal = image_eval(iou, per[s][0], iou_thresh)
            pr[s] += image_pr(d[:, 4], proposal, pred_recall, thresh)

    out: dict[str, Any] = {}
    for s in SUBSETS:
        found, proposed = pr[s][:, 1], pr[s][:, 0]
        # 0/0 -> 0: MATLAB gets NaN where no prediction passes a threshold, and its max() skips
        # NaN in the monotone pass, which 0 reproduces (precisions are >= 0 and recall there is 0).
        # No kept face at all: AP 0 (MATLAB: NaN).
        precision = np.divide(found, proposed, out=np.zeros_like(found), where=proposed > 0)
        recall = found / n_faces[s] if n_faces[s] else np.zeros_like(found)
        out[s] = voc_ap(recall, precision)
    out.update({"subsets": rule, "n_images": len(gt), "n_faces": n_faces, "n_images_with_predictions": matched})
    return out


def summarize(metrics: dict) -> str:
    return " ".join(f"{s}={metrics[s]:.4f}" for s in SUBSETS if s in metrics) + \
        (f" ({metrics['subsets']})" if "subsets" in metrics else "")


# ---------------------------------------------------------------------------- ground truth
def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(str(path))
    except NotImplementedError:
        raise HwnasError(f"{path} is a MATLAB v7.3 (HDF5) file; save it as v7 (save(..., '-v7')) or use the "
                         f"official files") from None
    except (MatReadError, ValueError, TypeError, OSError) as e:
        raise HwnasError(f"cannot read {path} as a MATLAB file ({e}); replace it with the official file") from None


def _cells(mat: dict, key: str, path: Path) -> list:
    """A MATLAB cell array (any shape) as a list, in MATLAB's (column-major) order."""
    x = mat.get(key)
    if not isinstance(x, np.ndarray) or x.dtype != object:
        raise HwnasError(f"{path} has no cell array {key!r}; not an official WIDER FACE .mat file")
    return list(x.ravel(order="F"))


def _unwrap(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    while arr.dtype == object and arr.size == 1:  # a cell holding one value
        arr = np.asarray(arr.ravel()[0])
    return arr


def _text(x: Any, what: str, path: Path) -> str:
    arr = _unwrap(x)
    if arr.dtype.kind != "U":
        raise HwnasError(f"{path}: {what} is not text; not an official WIDER FACE .mat file")
    return "".join(arr.ravel().tolist())


def _nested(mat: dict, key: str, path: Path, sizes: Optional[list[int]] = None) -> list[list]:
    """A cell of cells (per event, per image) as lists, checked against ``sizes`` when given."""
    out = [_unwrap_cell(c, key, path) for c in _cells(mat, key, path)]
    if sizes is not None:
        counts = [len(c) for c in out]
        if len(counts) != len(sizes):
            raise HwnasError(f"{path}: {key} has {len(counts)} events but the file list {len(sizes)}; "
                             f"the .mat files do not belong together")
        for e, (n, m) in enumerate(zip(counts, sizes)):
            if n != m:
                raise HwnasError(f"{path}: {key} has {n} images in event {e + 1} but the file list {m}; "
                                 f"the .mat files do not belong together")
    return out


def _unwrap_cell(c: Any, key: str, path: Path) -> list:
    arr = np.asarray(c)
    if arr.dtype != object:
        raise HwnasError(f"{path}: {key} is not a cell of cells (per event, per image); not an official file")
    return list(arr.ravel(order="F"))


def _events_files(mat: dict, path: Path) -> tuple[list[str], list[list[str]]]:
    events = [_text(e, "an event_list entry", path) for e in _cells(mat, "event_list", path)]
    files = [[_text(f, "a file_list entry", path) for f in fl] for fl in _nested(mat, "file_list", path)]
    if len(files) != len(events):
        raise HwnasError(f"{path}: {len(events)} events but {len(files)} file lists; not an official file")
    return events, files


def _read_gt_mat(path: Path) -> list[WiderImage]:
    """The official ``wider_face_val.mat`` (event_list, file_list, face_bbx_list and, when
    present, the ``<attr>_label_list`` cells) as WIDER images named ``<event>/<file>.jpg``."""
    mat = _loadmat(path)
    events, files = _events_files(mat, path)
    sizes = [len(f) for f in files]
    boxes = _nested(mat, "face_bbx_list", path, sizes)
    labels = {a: _nested(mat, f"{a}_label_list", path, sizes) for a in ATTRS if f"{a}_label_list" in mat}
    out = []
    for e, event in enumerate(events):
        for j, stem in enumerate(files[e]):
            b = _unwrap(boxes[e][j]).astype(np.float64)
            b = b.reshape(-1, 4) if b.size else np.zeros((0, 4))
            attrs = np.zeros((len(b), len(ATTRS)), np.int32)
            for a, cells in labels.items():
                col = _unwrap(cells[e][j]).ravel()
                if col.size == len(b):
                    attrs[:, ATTRS.index(a)] = col.astype(np.int32)
            out.append(wider_image(f"{event}/{stem}.jpg", b, attrs))
    return out


def _read_keep_mat(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """An official ``wider_<subset>_val.mat``: (event, stem) -> 0-based kept face indices. Its
    ``gt_list`` is matched to images through its own event_list / file_list or, failing those,
    those of ``wider_face_val.mat`` next to it."""
    mat = _loadmat(path)
    if "gt_list" not in mat:
        raise HwnasError(f"{path} has no 'gt_list'; not an official WIDER FACE keep-list")
    source, names = path, mat
    if "event_list" not in mat or "file_list" not in mat:
        source = path.parent / "wider_face_val.mat"
        if not source.is_file():
            raise HwnasError(f"{path} has no event_list / file_list and there is no {source.name} next to it to "
                             f"match its gt_list to images")
        names = _loadmat(source)
    events, files = _events_files(names, source)
    lists = _nested(mat, "gt_list", path, [len(f) for f in files])
    out = {}
    for e, event in enumerate(events):
        for j, stem in enumerate(files[e]):
            idx = _unwrap(lists[e][j]).ravel()
            if idx.size and (idx.dtype.kind not in "iuf" or not np.all(idx == np.round(idx)) or idx.min() < 1):
                raise HwnasError(f"{path}: gt_list of {event}/{stem} holds {idx.tolist()[:8]}, not 1-based face "
                                 f"indices; replace it with the official file")
            out[(event, _stem(stem))] = idx.astype(np.int64) - 1
    return out


def keep_folders(gt_path: Path) -> list[Path]:
    """Where the keep-lists of ``gt_path`` are looked for, in order: its own folder, then
    ``eval_tools/ground_truth`` beside it and one level up (where the official eval_tools.zip
    unpacks when extracted into the dataset root next to ``wider_face_split/``)."""
    folder = Path(gt_path).parent
    return [folder, folder / "eval_tools" / "ground_truth", folder.parent / "eval_tools" / "ground_truth"]


def _find_keep(gt_path: Path, gt: list[WiderImage]) -> Optional[Keep]:
    if "train" in Path(gt_path).name.lower():
        return None  # the official keep-lists are the val split's; train subsets are derived
    for folder in keep_folders(gt_path):
        paths = {s: folder / KEEP_MAT.format(s) for s in SUBSETS}
        present = [s for s, p in paths.items() if p.is_file()]
        if present:
            break
    else:
        return None
    if len(present) < len(SUBSETS):
        lacking = ", ".join(paths[s].name for s in SUBSETS if s not in present)
        raise HwnasError(f"{folder} holds {', '.join(paths[s].name for s in present)} but not {lacking}; put all "
                         f"three official keep-lists there, or none to derive subsets from face height")
    keep: Keep = {}
    for s, p in paths.items():
        lists = _read_keep_mat(p)
        by_gt = {}
        for im in gt:
            idx = lists.pop(image_key(im.name), None)
            if idx is None:
                raise HwnasError(f"{p} has no keep-list for gt image {im.name}; use the keep-lists of this gt, or "
                                 f"remove them to derive subsets from face height")
            if idx.size and idx.max() >= len(im.boxes):
                raise HwnasError(f"{p}: keep-list of {im.name} names face {int(idx.max()) + 1} but the gt has "
                                 f"{len(im.boxes)}; use the keep-lists of this gt")
            by_gt[im.name] = idx
        if lists:
            (event, stem) = next(iter(lists))
            raise HwnasError(f"{p} lists {len(lists)} image(s) the gt lacks (e.g. {event}/{stem}); use the gt of "
                             f"these keep-lists")
        keep[s] = by_gt
    return keep


def load_gt(path: Path) -> tuple[list[WiderImage], Optional[Keep]]:
    """``(gt images, keep-lists or None)`` from the official ``wider_face_*_bbx_gt.txt`` or
    ``wider_face_val.mat`` (keep-lists ``wider_{easy,medium,hard}_val.mat`` looked up in the same
    folder, then in ``eval_tools/ground_truth``: see ``keep_folders``; never for a train gt, the
    lists being the val split's), or from a COCO json (generated faces; ``coco_to_wider``, no
    keep-lists)."""
    path = Path(path)
    if not path.is_file():
        raise HwnasError(f"WIDER gt {path} does not exist; give wider_face_val_bbx_gt.txt, wider_face_val.mat "
                         f"or a COCO json")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return coco_to_wider(path), None
    gt = _read_gt_mat(path) if suffix == ".mat" else read_wider_gt(path)
    return gt, _find_keep(path, gt)


def evaluate_dir(pred_dir: Path, gt_path: Path, iou_thresh: float = IOU_THRESH, thresholds: int = THRESHOLDS) -> dict:
    """``evaluate_wider`` of the prediction files in ``pred_dir`` against ``load_gt(gt_path)``."""
    gt, keep = load_gt(gt_path)
    return evaluate_wider(read_predictions(pred_dir), gt, keep, iou_thresh, thresholds)
