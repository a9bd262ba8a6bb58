"""The RetinaNet head (Lin et al. 2017): ``retina_d<depth>_c<width>``, anchor-based, one stage.

Nine anchors per location (:data:`RETINA_ANCHORS`, ``a = ratio_index * 3 + scale_index``), sides
``4 * 2**level * {2^0, 2^(1/3), 2^(2/3)}``, ratios (h/w) ``{0.5, 1, 2}``; rows in the layout of
:mod:`hwnas.heads.anchors`. Loss: sigmoid focal on the class logits, the box loss on anchor deltas
of the anchors matched at IoU 0.5 (background below 0.4, each box's best anchor kept), or with
ATSS (``DetectionLoss(assigner="atss")``), see :meth:`RetinaHead.assign`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from hwnas.heads.base import TowerHead
from hwnas.spec.units import HW

__all__ = ["RETINA_ANCHORS", "RETINA_RATIOS", "RETINA_SCALES", "RETINA_SIZE_PER_STRIDE", "RetinaHead",
           "retina_anchors"]

RETINA_RATIOS = (0.5, 1.0, 2.0)
RETINA_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RETINA_ANCHORS = len(RETINA_RATIOS) * len(RETINA_SCALES)  # 3 scales x 3 aspect ratios per location
RETINA_SIZE_PER_STRIDE = 4


@lru_cache(maxsize=64)
def _anchors(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]):
    import torch

    from hwnas.heads.anchors import centers

    out = []
    ratios = torch.tensor(RETINA_RATIOS).repeat_interleave(len(RETINA_SCALES))  # ratio-major
    scales = torch.tensor(RETINA_SCALES).repeat(len(RETINA_RATIOS))  # scale-minor
    for level, hw in zip(levels, level_hws):
        size = RETINA_SIZE_PER_STRIDE * 2 ** level * scales
        hs, ws = size * ratios.sqrt(), size / ratios.sqrt()
        base = torch.stack((-ws, -hs, ws, hs), dim=1) / 2  # [A, 4]
        c = centers(image_hw, hw).repeat(1, 2).unsqueeze(1)  # [hw, 1, 4]
        out.append((c + base).reshape(-1, 4))
    return torch.cat(out)


def retina_anchors(arch, device=None):
    """RetinaNet anchors [positions, 4] (x1, y1, x2, y2, input pixels) of ``arch``, cached per arch."""
    from hwnas.heads.anchors import anchor_key

    return _anchors(*anchor_key(arch)).to(device)


@dataclass(frozen=True)
class RetinaHead(TowerHead):
    TOKEN: ClassVar[str] = "retina"
    EXAMPLE: ClassVar[str] = "retina_d4_c128"
    ANCHORS: ClassVar[int] = RETINA_ANCHORS
    ASSIGNERS: ClassVar[tuple[str, ...]] = ("iou", "atss")  # DetectionLoss(assigner=...)
    MATCH_IOU: ClassVar[tuple[float, float]] = (0.5, 0.4)  # (positive, negative) of the IoU assigner

    def loss_components(self) -> tuple[str, ...]:
        return ("loss_cls", "loss_box")

    def match_codes(self, loss, targets, device=None):
        """Each image's match codes [positions] (box index, NEG or IGNORE) on :func:`retina_anchors`,
        with ``loss.assigner``: IoU at :attr:`MATCH_IOU` (each box's best anchor kept), or ATSS."""
        from hwnas.heads.losses import level_rows

        anchors = retina_anchors(loss.arch, device)
        rows = level_rows(loss.arch)
        hi, lo = self.MATCH_IOU
        return [loss.match_anchors(anchors, t["boxes"], t["crowd"], rows, high=hi, low=lo) for t in targets]

    def loss(self, loss, outputs, targets):
        from hwnas.heads.anchors import flatten_levels

        per = self.per_level(loss.arch, outputs)
        cls, box = flatten_levels(per["cls"], loss.num_classes), flatten_levels(per["box"], 4)
        anchors = retina_anchors(loss.arch, cls.device)
        pi, pa, gt, loss_cls = loss.focal(cls, targets, self.match_codes(loss, targets, cls.device))
        npos = max(1, len(pa))
        per_box = loss.anchor_box_loss(loss.box_loss, box[pi, pa], anchors[pa], gt)
        loss.by_level("loss_box", pa, per_box / npos)
        return {"loss_cls": loss_cls, "loss_box": per_box.sum() / npos}

    def decode(self, outputs, arch, num_classes):
        """Boxes [B, P, 4] (deltas on the anchors), scores sigmoid(cls) [B, P, K]."""
        scores, boxes_of = self.decode_lazy(outputs, arch, num_classes)
        return boxes_of(None), scores

    def decode_lazy(self, outputs, arch, num_classes):
        from hwnas.heads.anchors import flatten_levels, take_rows
        from hwnas.heads.boxes import decode_deltas

        per = self.per_level(arch, outputs)
        cls = flatten_levels(per["cls"], num_classes)
        deltas = flatten_levels(per["box"], 4)
        anchors = retina_anchors(arch, cls.device).to(cls.dtype)
        return cls.sigmoid(), lambda rows: decode_deltas(take_rows(deltas, rows),
                                                         anchors if rows is None else anchors[rows])
