"""Multi-scale (and flip) testing with box voting, as in S3FD, PyramidBox and AInnoFace.

One detector pass per :class:`TestScale`: every image is letterboxed into the model input size
times the scale, the detections are mapped back to original image pixels, and each pass keeps the
faces whose size it sees well (up-scaled passes small faces, down-scaled passes large ones). The
passes are then merged per image with :func:`hwnas.heads.voting.box_vote`.

The CLI form of a scale list is ``SCALE[f][:MIN-MAX]`` items joined by commas, e.g.
``"0.5:64-,1,1f,2:-128"``: scale 0.5 keeping faces of at least 64 px, scale 1 plain and flipped,
scale 2 keeping faces of at most 128 px (sizes are sqrt(w * h) in original image pixels; an
empty end is unbounded).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from hwnas.data.transforms import HW, as_hw, letterbox
from hwnas.errors import HwnasError
from hwnas.heads.postprocess import clip_boxes
from hwnas.heads.voting import box_vote

__all__ = [
    "DEFAULT_SCALES", "MAX_SCALE", "TestScale", "describe", "letterbox_passes", "merge_passes", "multi_scale_detect",
    "parse_scales", "scale_hws", "scaled_hw",
]

MAX_SCALE = 8.0  # 8 x a 640 input is 5120 px a side: past that a value is a typo, not a test scale
SIZE_MULTIPLE = 32  # the detector's largest backbone stride before the extra levels
MIN_SCALED_SIDE = 64  # the smallest input side the detector's pyramid is built for

RunFn = Callable[[torch.Tensor, HW], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class TestScale:
    """One test pass: input size ``scale`` x the model input, keeping faces with
    ``min_size <= sqrt(w * h) <= max_size`` in *original* image pixels, on the mirrored image
    when ``flip``."""

    __test__ = False  # a "Test*" class to pytest's collector; not a test

    scale: float
    min_size: float = 0.0
    max_size: float = math.inf
    flip: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and 0 < self.scale <= MAX_SCALE):
            raise HwnasError(f"test scale {self.scale} must lie in (0, {MAX_SCALE:g}] (times the model input size)")
        if not (math.isfinite(self.min_size) and self.min_size >= 0 and self.max_size > self.min_size):
            raise HwnasError(f"test scale {self.scale:g}: face size range {self.min_size:g}-{self.max_size:g} px "
                             f"needs 0 <= min < max (leave an end empty for no bound)")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "min_size", float(self.min_size))
        object.__setattr__(self, "max_size", float(self.max_size))
        object.__setattr__(self, "flip", bool(self.flip))

    @property
    def unbounded(self) -> bool:
        """Whether this pass keeps every size (and so filters nothing by size)."""
        return self.min_size == 0 and self.max_size == math.inf


_ITEM = re.compile(r"(?P<scale>[^:f]*)(?P<flip>f?)(?::(?P<min>[^-]*)-(?P<max>[^-]*))?")
_FORM = "write SCALE[f][:MIN-MAX] items joined by commas, e.g. '0.5:64-,1,1f,2:-128'"


def parse_scales(text: str) -> tuple[TestScale, ...]:
    """``"0.5:64-,1,1f,2:-128"`` -> TestScales (see the module docstring for the form)."""
    items = [t.strip() for t in str(text).split(",")]
    if items == [""]:
        raise HwnasError(f"no test scales given; {_FORM}")
    out: list[TestScale] = []
    for item in items:
        m = _ITEM.fullmatch(item)
        if not item or m is None:
            raise HwnasError(f"test scale {item!r} in {text!r}: {_FORM}")
        lo, hi = m["min"], m["max"]
        if m["min"] is not None and not lo and not hi:
            raise HwnasError(f"test scale {item!r}: the range '-' bounds nothing; drop ':-' or give MIN and/or MAX")
        try:
            scale = float(m["scale"])
            min_size = float(lo) if lo else 0.0
            max_size = float(hi) if hi else math.inf
        except ValueError:
            raise HwnasError(f"test scale {item!r} in {text!r}: not a number; {_FORM}") from None
        ts = TestScale(scale, min_size, max_size, flip=bool(m["flip"]))
        if ts in out:
            raise HwnasError(f"test scale {item!r} appears twice in {text!r}; list each scale once")
        out.append(ts)
    return tuple(out)


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def describe(scales: Iterable[TestScale]) -> str:
    """The CLI form of ``scales``; :func:`parse_scales` reads it back to the same scales."""
    parts = []
    for s in scales:
        text = _num(s.scale) + ("f" if s.flip else "")
        if not s.unbounded:
            text += ":" + (_num(s.min_size) if s.min_size > 0 else "") + "-" \
                + (_num(s.max_size) if s.max_size < math.inf else "")
        parts.append(text)
    return ",".join(parts)


# Chosen for a 640 x 640 model input and WIDER FACE-sized images (~1024 px longest side, so the
# scale-1 letterbox factor is ~0.625); sizes in original pixels, anchors 8..256 (strides 4..128):
#  * 0.5 (320 px input, ~0.31x): keeps faces >= 64 px, i.e. >= ~20 input px, above the ~16 px
#    (2 x the smallest anchor) where anchor detectors turn unreliable; this pass sees the largest
#    faces whole and with context, well inside the top anchors' range.
#  * 1 and 1 flipped: the whole range; the mirrored pass averages out left/right placement errors.
#  * 2 (1280 px input, ~1.25x): keeps faces <= 128 px (<= 160 input px): an 8 px face becomes
#    10 px, inside the smallest anchor's reach, while larger faces are left to the passes that
#    see them at moderate size (at 2x a 400 px face would sit at the top anchor's edge).
# Cost: 0.25 + 1 + 1 + 4 = 6.25 single-scale passes.
DEFAULT_SCALES = parse_scales("0.5:64-,1,1f,2:-128")


def scaled_hw(input_hw: int | Sequence[int], scale: float) -> HW:
    """``input_hw`` x ``scale``, each side rounded to a multiple of 32 and at least 64: the pyramid's
    strides must divide the input and its top levels need a few cells."""
    hw = as_hw(input_hw)
    if not (math.isfinite(scale) and scale > 0):
        raise HwnasError(f"test scale {scale} must be a positive number")
    h, w = (max(MIN_SCALED_SIDE, round(v * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for v in hw)
    return h, w


def scale_hws(input_hw: int | Sequence[int], scales: Iterable[TestScale]) -> list[HW]:
    """The distinct input sizes ``scales`` run at, in first-use order (one fixed-size graph each)."""
    out: list[HW] = []
    for s in scales:
        hw = scaled_hw(input_hw, s.scale)
        if hw not in out:
            out.append(hw)
    return out


def multi_scale_detect(images: Sequence[torch.Tensor], run: RunFn, input_hw: int | Sequence[int],
                       scales: Sequence[TestScale] = DEFAULT_SCALES, vote_iou: float = 0.5,
                       max_dets: int | None = 750) -> list[dict[str, torch.Tensor]]:
    """Detections per image, in original image pixels, from one ``run`` per test scale.

    ``images``: original [3, h, w] images in [0, 1] (sizes may differ). ``run(batch [B, 3, H, W],
    (H, W))`` returns one ``dict(boxes [M, 4] xyxy in the batch's pixels, scores [M], labels [M]
    optional)`` per image, after its own NMS. Per scale the images are (mirrored when the scale
    flips, *before* the letterbox so the padding stays bottom/right as in training) letterboxed to
    :func:`scaled_hw`; the boxes are divided by the letterbox factor, unmirrored, clipped to the
    image, dropped when clipping left them empty (they lay in the padding), and kept when their
    size is in the scale's range (no size test for unbounded scales). All scales' boxes of an
    image are merged by :func:`box_vote` at ``vote_iou``, keeping ``max_dets``.

    One batch of all images per scale: callers with many or large images pass them in chunks.
    """
    hw = as_hw(input_hw)
    scales = tuple(scales)
    if not scales:
        raise HwnasError(f"no test scales given; pass e.g. parse_scales({describe(DEFAULT_SCALES)!r})")
    # Checked before any pass runs, not by box_vote after all of them.
    if not 0 < vote_iou <= 1 or (max_dets is not None and max_dets < 1):
        raise HwnasError(f"vote_iou {vote_iou} must lie in (0, 1] and max_dets {max_dets} be >= 1 (or None)")
    if not images:
        return []
    passes = letterbox_passes(images, hw, scales)
    with torch.no_grad():
        dets = [run(batch, size) for batch, size, _ in passes]
    return merge_passes(images, scales, passes, dets, vote_iou, max_dets)


Pass = tuple[torch.Tensor, HW, list[float]]


def letterbox_passes(images: Sequence[torch.Tensor], input_hw: int | Sequence[int],
                     scales: Sequence[TestScale]) -> list[Pass]:
    """Per scale: ``(batch [B, 3, H, W], (H, W), letterbox factor of each image)``; a flipping
    pass mirrors each image *before* the letterbox, so the padding stays bottom/right as in training."""
    for k, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != 3:
            raise HwnasError(f"image {k} has shape {list(im.shape)}; pass [3, H, W] RGB tensors")
    out = []
    for ts in scales:
        size = scaled_hw(input_hw, ts.scale)
        boxed = [letterbox(im.flip(-1) if ts.flip else im, size) for im in images]
        out.append((torch.stack([b for b, _ in boxed]), size, [f for _, f in boxed]))
    return out


def merge_passes(images: Sequence[torch.Tensor], scales: Sequence[TestScale], passes: Sequence[Pass],
                 dets: Sequence[list[dict[str, torch.Tensor]]], vote_iou: float = 0.5,
                 max_dets: int | None = 750) -> list[dict[str, torch.Tensor]]:
    """Each pass's detections (``dets[pass][image]``, in that pass's input pixels) mapped back to
    the original images, filtered to each scale's size range, merged per image by box voting."""
    found: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in images]
    for ts, (_, _, factors), per_image in zip(scales, passes, dets):
        if len(per_image) != len(images):
            raise HwnasError(f"the detector returned {len(per_image)} results for a batch of {len(images)} images "
                             f"at scale {ts.scale:g}; return one dict per image")
        for k, (im, factor, det) in enumerate(zip(images, factors, per_image)):
            found[k].append(_to_original(det, factor, tuple(im.shape[-2:]), ts))
    results = []
    for parts in found:
        b, s, lab = (torch.cat([p[i] for p in parts]) for i in range(3))
        results.append(box_vote(b, s, lab, iou_thresh=vote_iou, max_dets=max_dets))
    return results


def _to_original(det: dict[str, torch.Tensor], factor: float, image_hw: HW,
                 ts: TestScale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's detections of one pass, in original pixels, filtered to the scale's range."""
    boxes, scores = det.get("boxes"), det.get("scores")
    if boxes is None or scores is None or boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in det.items() if isinstance(v, torch.Tensor))
        raise HwnasError(f"the detector must return per image a dict with boxes [M, 4] and scores [M]; "
                         f"got {shapes or 'neither'}")
    labels = det.get("labels")
    labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device) if labels is None else labels.long()
    b = boxes.float() / factor
    if ts.flip:
        w = image_hw[1]
        b = torch.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), 1)
    b = clip_boxes(b, image_hw)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ok = (bw > 0) & (bh > 0)
    if not ts.unbounded:
        size = (bw * bh).clamp_min(0).sqrt()
        ok &= (size >= ts.min_size) & (size <= ts.max_size)
    return b[ok], scores[ok], labels[ok]
