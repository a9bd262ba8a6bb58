"""The FCOS head (Tian et al. 2019): ``fcos_d<depth>_c<width>``, anchor-free, one stage.

One point per location (rows in the layout of :mod:`hwnas.heads.anchors`); per level ``cls``
[B, K, h, w], ``box`` [B, 4, h, w] (log-distances (l, t, r, b) in units of the level stride,
:func:`hwnas.heads.boxes.decode_fcos`) and ``ctr`` [B, 1, h, w], the centerness, predicted from the
box tower. A point is assigned to the smallest box it lies in (near its centre, with
``center_radius``) whose size falls in the level's range (:func:`default_fcos_ranges`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from hwnas.errors import HwnasError
from hwnas.heads.base import Pred, TowerHead
from hwnas.spec.units import HW

__all__ = ["FcosHead", "default_fcos_ranges", "fcos_points", "fcos_ranges"]


@lru_cache(maxsize=64)
def _points(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]):
    import torch

    from hwnas.heads.anchors import centers

    pts = [centers(image_hw, hw) for hw in level_hws]
    strides = [torch.full((len(p),), float(2 ** level)) for p, level in zip(pts, levels)]
    return torch.cat(pts), torch.cat(strides)


def fcos_points(arch, device=None):
    """FCOS points [P, 2] (x, y, input pixels) and their level strides [P], cached per arch."""
    from hwnas.heads.anchors import anchor_key

    pts, strides = _points(*anchor_key(arch))
    return pts.to(device), strides.to(device)


def default_fcos_ranges(arch) -> tuple[tuple[float, float], ...]:
    """Regression ranges per level: ``(4*s, 8*s]`` for stride ``s = 2**level``, opened to 0 on the
    first level and to infinity on the last. For P3-P7 this is FCOS's [0,64], [64,128], [128,256],
    [256,512], [512,inf]; fewer levels widen the ends so every object size has a level."""
    levels = arch.out_levels
    out = []
    for i, level in enumerate(levels):
        s = 2 ** level
        lo = 0.0 if i == 0 else 4.0 * s
        hi = math.inf if i == len(levels) - 1 else 8.0 * s
        out.append((lo, hi))
    return tuple(out)


def fcos_ranges(arch, ranges: tuple[tuple[float, float], ...] | None = None, device=None):
    """Per-point (lo, hi] range of max(l, t, r, b) [P, 2]; ``ranges`` has one pair per out level."""
    import torch

    ranges = tuple(ranges) if ranges is not None else default_fcos_ranges(arch)
    if len(ranges) != len(arch.out_levels):
        raise HwnasError(f"fcos ranges: need one (lo, hi) pair per level {arch.out_levels}, got {len(ranges)}")
    counts = [h * w for h, w in (arch.level_hw(lv) for lv in arch.out_levels)]
    r = torch.tensor(ranges, dtype=torch.float32)
    return r.repeat_interleave(torch.tensor(counts), dim=0).to(device)


@dataclass(frozen=True)
class FcosHead(TowerHead):
    TOKEN: ClassVar[str] = "fcos"
    EXAMPLE: ClassVar[str] = "fcos_d4_c128"

    def predictions(self, arch, num_classes, level_index):
        # centerness shares the box tower (FCOS)
        return [Pred("cls", "cls", "cls", num_classes), Pred("box", "box", "box", 4), Pred("ctr", "ctr", "box", 1)]

    def loss_components(self) -> tuple[str, ...]:
        return ("loss_cls", "loss_box", "loss_ctr")

    def check_loss(self, loss) -> None:
        fcos_ranges(loss.arch, loss.fcos_ranges)

    def match_codes(self, loss, targets, device=None):
        """Each image's point assignment (:func:`hwnas.heads.losses.assign_points`): inside a box, near
        its centre, and in the level's size range (``loss.fcos_ranges`` or :func:`default_fcos_ranges`)."""
        from hwnas.heads.losses import assign_points

        points, strides = fcos_points(loss.arch, device)
        ranges = fcos_ranges(loss.arch, loss.fcos_ranges, device)
        return [assign_points(points, strides, ranges, t["boxes"], t["crowd"], radius=loss.center_radius)
                for t in targets]

    def loss(self, loss, outputs, targets):
        """loss_cls (focal, / positives), loss_box (weighted by the centerness target, / its sum),
        loss_ctr (BCE, / positives)."""
        import torch
        import torch.nn.functional as F

        from hwnas.heads.anchors import flatten_levels
        from hwnas.heads.boxes import decode_fcos, encode_fcos, iou_loss

        per = self.per_level(loss.arch, outputs)
        cls = flatten_levels(per["cls"], loss.num_classes)
        raw = flatten_levels(per["box"], 4)
        ctr = flatten_levels(per["ctr"], 1).squeeze(-1)
        points, strides = fcos_points(loss.arch, cls.device)
        pi, pp, gt, loss_cls = loss.focal(cls, targets, self.match_codes(loss, targets, cls.device))
        npos = max(1, len(pp))
        pts, st = points[pp], strides[pp]
        x, y = pts[:, 0], pts[:, 1]
        lr = torch.stack((x - gt[:, 0], gt[:, 2] - x), -1).clamp(min=0)
        tb = torch.stack((y - gt[:, 1], gt[:, 3] - y), -1).clamp(min=0)
        ctr_t = ((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6))
                 * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6))).sqrt()
        pred = raw[pi, pp]
        if loss.box_loss == "smooth_l1":
            per_box = F.smooth_l1_loss(pred, encode_fcos(gt, pts, st), beta=loss.beta, reduction="none").sum(-1)
        else:
            per_box = iou_loss(decode_fcos(pred, pts, st), gt, loss.box_loss)
        loss_box = (per_box * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[pi, pp], ctr_t, reduction="sum") / npos
        if loss.record_levels:
            loss.by_level("loss_box", pp, per_box * ctr_t / ctr_t.sum().clamp(min=1e-6))
            loss.by_level("loss_ctr", pp, F.binary_cross_entropy_with_logits(ctr[pi, pp], ctr_t, reduction="none") / npos)
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}

    def decode(self, outputs, arch, num_classes):
        """Boxes [B, P, 4] from the points, scores sqrt(sigmoid(cls) * sigmoid(ctr)) [B, P, K]."""
        scores, boxes_of = self.decode_lazy(outputs, arch, num_classes)
        return boxes_of(None), scores

    def decode_lazy(self, outputs, arch, num_classes):
        from hwnas.heads.anchors import flatten_levels, take_rows
        from hwnas.heads.boxes import decode_fcos

        per = self.per_level(arch, outputs)
        cls = flatten_levels(per["cls"], num_classes)
        raw = flatten_levels(per["box"], 4)
        points, strides = fcos_points(arch, cls.device)
        points, strides = points.to(cls.dtype), strides.to(cls.dtype)

        def boxes_of(rows):
            if rows is None:
                return decode_fcos(raw, points, strides)
            return decode_fcos(take_rows(raw, rows), points[rows], strides[rows])

        return (cls.sigmoid() * flatten_levels(per["ctr"], 1).sigmoid()).sqrt(), boxes_of
