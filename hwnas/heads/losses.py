"""Training targets and losses for every head type, on the raw outputs of ``Detector.forward``.

Targets, one dict per image: ``boxes`` FloatTensor [N, 4] (x1, y1, x2, y2, input pixels),
``labels`` LongTensor [N] in 0..K-1, optional ``crowd`` BoolTensor [N]. Crowd boxes are never
matched; an anchor/point/proposal that is not positive and lies mostly inside a crowd box
(intersection over its own area >= ``crowd_ioa``; for FCOS points: inside) is ignored, neither
positive nor negative. Matching codes: ``>= 0`` index of the matched box in the image's
targets, :data:`NEG` background, :data:`IGNORE` excluded from the loss.

Two-stage head: the exported forward picks its N proposals by objectness alone, so early in
training they hold almost no positives and the RoI head would learn only background. In
training, pass ``extra_boxes=loss.extra_boxes(targets)`` to ``Detector.forward``: the image's
ground-truth boxes are appended to its proposals (outputs then hold N + M rows), as Faster
R-CNN does; the exported graph (no ``extra_boxes``) is unchanged.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

if TYPE_CHECKING:
    from hwnas.spec.arch import Arch

from hwnas.errors import HwnasError
from hwnas.heads.boxes import check_box_loss, decode_deltas, encode_boxes, iou_loss

__all__ = ["ASSIGNERS", "IGNORE", "NEG", "DetectionLoss", "assign_points", "atss_match", "box_ioa",
           "init_head_priors", "level_rows", "match", "sampler_codes", "usable_boxes"]

NEG = Matcher.BELOW_LOW_THRESHOLD  # -1
IGNORE = Matcher.BETWEEN_THRESHOLDS  # -2
# Label assigners of the anchor-based heads (DetectionLoss(assigner=...)): "iou", fixed IoU
# thresholds (:func:`match`); "atss", adaptive per-box thresholds (:func:`atss_match`).
ASSIGNERS = ("iou", "atss")


# ----------------------------------------------------------------------------- matching
def box_ioa(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection over the area of each box: [A, 4] x [R, 4] -> [A, R]."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    return inter / area[:, None]


def usable_boxes(boxes: torch.Tensor, crowd: torch.Tensor) -> torch.Tensor:
    """Boxes that can be matched: not crowd, positive width and height."""
    return ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def match(anchors: torch.Tensor, boxes: torch.Tensor, crowd: torch.Tensor | None = None, *, high: float,
          low: float, allow_low_quality: bool, crowd_ioa: float = 0.5) -> torch.Tensor:
    """Match anchors [A, 4] to ground truth [G, 4] by IoU (torchvision ``Matcher``).

    Returns LongTensor [A]: the index into ``boxes`` (IoU >= high, or an anchor that is some
    box's best, with ``allow_low_quality``), :data:`NEG` (IoU < low) or :data:`IGNORE` (between,
    or mostly inside a crowd box).
    """
    crowd = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device) if crowd is None else crowd.bool()
    out = torch.full((len(anchors),), NEG, dtype=torch.long, device=anchors.device)
    keep = usable_boxes(boxes, crowd).nonzero().squeeze(1)
    if len(keep):
        q = box_iou(boxes[keep], anchors)  # [G, A]
        m = Matcher(high, low, allow_low_quality_matches=allow_low_quality)(q)
        # A box no anchor touches would make every anchor its "best" low-quality match.
        best = q.max(0).values
        m[(m >= 0) & (best <= 0)] = NEG
        out = torch.where(m >= 0, keep[m.clamp(min=0)], m)
    if crowd.any():
        inside = box_ioa(anchors, boxes[crowd]).max(1).values >= crowd_ioa
        out[(out < 0) & inside] = IGNORE
    return out


def atss_match(anchors: torch.Tensor, boxes: torch.Tensor, crowd: torch.Tensor | None = None, *,
               num_per_level: Sequence[int], topk: int = 9, allow_low_quality: bool = True,
               crowd_ioa: float = 0.5) -> torch.Tensor:
    """ATSS (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection")
    of anchors [A, 4] to ground truth [G, 4]; returns LongTensor [A] like :func:`match`.

    ``num_per_level``: the rows of each pyramid level, in row order (sum = A). For each box:

    1. candidates: on each level the ``topk`` anchors whose centres are closest to the box's
       centre (all of a level's anchors when it has fewer; ties go to the lower row, so several
       anchors of one location are taken in anchor order);
    2. threshold: mean + standard deviation of the candidates' IoUs with the box (the sample
       standard deviation, as the reference implementation; 0 for a single candidate);
    3. positives: candidates with IoU >= threshold whose centre lies strictly inside the box;
    4. ``allow_low_quality``: a box left without positive (e.g. one smaller than the spacing of the
       anchor centres, so that no centre lies inside it) gets its highest-IoU candidate, as IoU
       matching's low-quality matches do (not the reference ATSS, where such a box is never learnt).

    An anchor claimed by several boxes goes to the one it overlaps most. Everything else is
    :data:`NEG` (ATSS has no band of ignored anchors), except, as in :func:`match`, anchors mostly
    inside a crowd box (``crowd_ioa``), which are :data:`IGNORE`; crowd boxes are never matched.
    """
    num_per_level = [int(n) for n in num_per_level]
    if sum(num_per_level) != len(anchors) or min(num_per_level, default=0) < 0:
        raise HwnasError(f"atss: levels of {num_per_level} rows do not add up to the {len(anchors)} anchors")
    if topk < 1:
        raise HwnasError(f"atss topk {topk}: must be >= 1")
    crowd = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device) if crowd is None else crowd.bool()
    out = torch.full((len(anchors),), NEG, dtype=torch.long, device=anchors.device)
    keep = usable_boxes(boxes, crowd).nonzero().squeeze(1)
    if len(keep) and len(anchors):
        b = boxes[keep]
        iou = box_iou(b, anchors)  # [G, A]
        ac = (anchors[:, :2] + anchors[:, 2:]) / 2
        bc = (b[:, :2] + b[:, 2:]) / 2
        dist = (bc[:, None, 0] - ac[None, :, 0]) ** 2 + (bc[:, None, 1] - ac[None, :, 1]) ** 2  # [G, A], squared
        cand, start = [], 0
        for n in num_per_level:
            if n:
                cand.append(_nearest(dist[:, start:start + n], min(topk, n)) + start)
            start += n
        cand = torch.cat(cand, 1)  # [G, C] anchor rows
        ciou = iou.gather(1, cand)
        std = ciou.std(1) if ciou.shape[1] > 1 else torch.zeros_like(ciou[:, 0])
        thr = ciou.mean(1) + std
        c = ac[cand]  # [G, C, 2] candidate centres
        inside = torch.stack((c[..., 0] - b[:, None, 0], c[..., 1] - b[:, None, 1],
                              b[:, None, 2] - c[..., 0], b[:, None, 3] - c[..., 1]), -1).amin(-1) > 0
        pos = (ciou >= thr[:, None]) & inside & (ciou > 0)
        if allow_low_quality:
            best = ciou.argmax(1)
            lonely = ~pos.any(1) & (ciou.gather(1, best[:, None]).squeeze(1) > 0)
            pos[lonely, best[lonely]] = True
        claim = torch.full_like(iou, -1.0)  # IoU of each (box, anchor) pair that is positive, else -1
        claim.scatter_(1, cand, torch.where(pos, ciou, torch.full_like(ciou, -1.0)))
        top, gi = claim.max(0)
        out = torch.where(top >= 0, keep[gi], out)
    if crowd.any():
        inside = box_ioa(anchors, boxes[crowd]).max(1).values >= crowd_ioa
        out[(out < 0) & inside] = IGNORE
    return out


def _nearest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``dist`` [G, n] the columns of its k smallest values, ties to the lower column
    ([G, k], in column order): a stable sort's first k, without sorting all n."""
    kth = torch.topk(dist, k, dim=1, largest=False).values[:, -1:]
    below, tie = dist < kth, dist == kth
    take = below | (tie & (tie.cumsum(1) <= k - below.sum(1, keepdim=True)))
    return take.nonzero()[:, 1].view(len(dist), k)


def level_rows(arch: "Arch") -> list[int]:
    """Rows of each out level in the flattened outputs (h * w * anchors per location), in row order."""
    return [h * w * arch.head.ANCHORS for h, w in (arch.level_hw(lv) for lv in arch.out_levels)]


def assign_points(points: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor, boxes: torch.Tensor,
                  crowd: torch.Tensor | None = None, *, radius: float | None = 1.5) -> torch.Tensor:
    """FCOS assignment of points [P, 2] (strides [P], size ranges [P, 2]) to boxes [G, 4].

    A point is positive for a box when it lies inside the box (and, with ``radius``, within
    ``radius * stride`` of its centre) and the box's largest distance max(l, t, r, b) is in the
    point's range; among several, the smallest box wins. Returns LongTensor [P] like :func:`match`.
    """
    crowd = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device) if crowd is None else crowd.bool()
    out = torch.full((len(points),), NEG, dtype=torch.long, device=points.device)
    keep = usable_boxes(boxes, crowd).nonzero().squeeze(1)
    x, y = points[:, 0:1], points[:, 1:2]
    if len(keep):
        b = boxes[keep]
        ltrb = torch.stack((x - b[:, 0], y - b[:, 1], b[:, 2] - x, b[:, 3] - y), -1)  # [P, G, 4]
        ok = ltrb.min(-1).values > 0
        if radius:
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            r = strides[:, None] * radius
            ok &= ((x - cx).abs() < r) & ((y - cy).abs() < r)
        reach = ltrb.max(-1).values
        ok &= (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None].expand_as(ok)
        area = torch.where(ok, area, torch.full_like(area, math.inf))
        best, idx = area.min(1)
        out = torch.where(best < math.inf, keep[idx], out)
    if crowd.any():
        c = boxes[crowd]
        inside = ((x > c[:, 0]) & (y > c[:, 1]) & (x < c[:, 2]) & (y < c[:, 3])).any(1)
        out[(out < 0) & inside] = IGNORE
    return out


# ----------------------------------------------------------------------------- the loss
class DetectionLoss:
    """The training loss of one architecture's head, on the raw outputs of ``Detector.forward``.

    ``loss(outputs, targets)`` returns ``{"loss": total, <component>: value, ...}``: the head kind's
    components (``arch.head.loss_components()``), computed by its ``loss`` with the options and
    helpers held here (see each kind's ``loss`` in :mod:`hwnas.heads.retina`, ``fcos``, ``rcnn``
    and ``face``).

    ``box_loss`` (iou | giou | diou | ciou on decoded boxes, or smooth_l1 on encoded deltas)
    is used by the one-stage heads and the RPN; the RoI head uses ``roi_box_loss``.
    ``weights`` scales components by name. ``assigner`` picks the label assignment of the
    anchor-based one-stage heads (:data:`ASSIGNERS`): ``iou`` (default) matches at fixed IoU
    thresholds (retina 0.5 / 0.4, the face head's ``step1_iou`` and ``step2_iou``), ``atss`` with
    ATSS's adaptive per-box threshold over the ``atss_topk`` nearest anchors of each level
    (:func:`atss_match`; the IoU thresholds are then unused). A head kind lists the assigners it
    takes in its ``ASSIGNERS`` class variable (none: ``iou``, its own assignment). Use
    :meth:`for_arch` to build one.
    """

    def __init__(self, arch: "Arch", num_classes: int, *, box_loss: str = "giou", focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, smooth_l1_beta: float = 1 / 9,
                 fcos_ranges: tuple[tuple[float, float], ...] | None = None, center_radius: float | None = 1.5,
                 rpn_batch: int = 256, rpn_pos_fraction: float = 0.5, roi_batch: int = 128,
                 roi_pos_fraction: float = 0.25, roi_box_loss: str = "smooth_l1", crowd_ioa: float = 0.5,
                 step1_iou: tuple[float, float] = (0.5, 0.4), step2_iou: tuple[float, float] = (0.6, 0.5),
                 weights: dict[str, float] | None = None, assigner: str = "iou", atss_topk: int = 9) -> None:
        if num_classes < 1:
            raise HwnasError(f"num_classes must be >= 1, got {num_classes}")
        if assigner not in ASSIGNERS:
            raise HwnasError(f"assigner {assigner!r}: valid assigners are {', '.join(ASSIGNERS)}")
        takes = getattr(arch.head, "ASSIGNERS", ("iou",))
        if assigner not in takes:
            raise HwnasError(f"assigner {assigner!r}: the {arch.head.kind} head assigns with {', '.join(takes)} only")
        if isinstance(atss_topk, bool) or not isinstance(atss_topk, int) or atss_topk < 1:
            raise HwnasError(f"atss_topk {atss_topk!r}: must be an integer >= 1")
        self.assigner, self.atss_topk = assigner, atss_topk
        self.arch, self.num_classes = arch, num_classes
        self.box_loss = check_box_loss(box_loss)
        self.roi_box_loss = check_box_loss(roi_box_loss, "roi_box_loss")
        self.focal_alpha, self.focal_gamma, self.beta = focal_alpha, focal_gamma, smooth_l1_beta
        self.center_radius, self.crowd_ioa = center_radius, crowd_ioa
        for name, frac in (("rpn_pos_fraction", rpn_pos_fraction), ("roi_pos_fraction", roi_pos_fraction)):
            if not 0 < frac <= 1:
                raise HwnasError(f"{name} {frac}: must be in (0, 1]")
        if rpn_batch < 1 or roi_batch < 1:
            raise HwnasError(f"rpn_batch {rpn_batch} and roi_batch {roi_batch} must be >= 1")
        self.rpn_sampler = BalancedPositiveNegativeSampler(rpn_batch, rpn_pos_fraction)
        self.roi_sampler = BalancedPositiveNegativeSampler(roi_batch, roi_pos_fraction)
        for name, (hi, lo) in (("step1_iou", step1_iou), ("step2_iou", step2_iou)):
            if not 0 < lo <= hi <= 1:
                raise HwnasError(f"{name} {(hi, lo)}: give (positive, negative) IoU thresholds with 0 < negative <= positive <= 1")
        self.step1_iou, self.step2_iou = tuple(step1_iou), tuple(step2_iou)
        self.components = arch.head.loss_components()
        self.weights = dict(weights or {})
        unknown = set(self.weights) - set(self.components)
        if unknown:
            raise HwnasError(f"loss weights {sorted(unknown)}: the {arch.head.kind} head's components are "
                             f"{', '.join(self.components)}")
        self.fcos_ranges = fcos_ranges and tuple(tuple(map(float, r)) for r in fcos_ranges)
        arch.head.check_loss(self)  # now, not mid-training
        # ``record_levels``: each call also leaves, in ``levels``, every component's share per
        # pyramid level (``loss_cls/p3``: the sum over that level's rows with the component's own
        # normaliser, so a component's levels add up to it) and the positives per level
        # (``positives/p3``); detached, for the training's per-level loss curves.
        self.record_levels = False
        self.levels: dict[str, torch.Tensor] = {}

    @classmethod
    def for_arch(cls, arch: "Arch", num_classes: int, **kwargs) -> "DetectionLoss":
        """The loss for ``arch``; keyword options as in the class."""
        return cls(arch, num_classes, **kwargs)

    # ------------------------------------------------------------------ public
    def __call__(self, outputs: tuple[torch.Tensor, ...], targets: list[dict]) -> dict[str, torch.Tensor]:
        outputs = tuple(o.float() for o in outputs)
        self.arch.head.check_outputs(self.arch, self.num_classes, outputs)
        b, dev = outputs[0].shape[0], outputs[0].device
        targets = _prepare_targets(targets, b, self.num_classes, dev)
        self.levels = {}
        parts = self.arch.head.loss(self, outputs, targets)
        parts = {k: v * self.weights.get(k, 1.0) for k, v in parts.items()}
        for k in list(self.levels):
            self.levels[k] = self.levels[k] * self.weights.get(k.split("/")[0], 1.0)
        return {"loss": sum(parts.values()), **parts}

    def by_level(self, name: str, rows: torch.Tensor, values: torch.Tensor | None = None, offset: int = 0) -> None:
        """With ``record_levels``: add ``values`` [N] (one per item, already divided by the
        component's normaliser; None: count the items) into ``levels[name/p<level>]`` by the pyramid
        level of each item's row (``rows`` [N] of the flattened outputs, plus ``offset`` for a head
        that indexes a slice of them)."""
        if not self.record_levels:
            return
        with torch.no_grad():
            ends = torch.tensor(level_rows(self.arch), device=rows.device).cumsum(0)
            lv = torch.bucketize(rows + offset, ends, right=True)
            vals = torch.ones(len(rows), device=rows.device) if values is None else values.detach().float()
            sums = torch.zeros(len(ends), device=rows.device).index_add_(0, lv, vals)
            for i, level in enumerate(self.arch.out_levels):
                key = f"{name}/p{level}"
                self.levels[key] = self.levels.get(key, 0.0) + sums[i]

    def extra_boxes(self, targets: list[dict], device: torch.device | str | None = None) -> torch.Tensor | None:
        """Ground-truth boxes to append to the proposals in training, [B, M, 4], or None.

        For a two-stage head (``arch.head.extra_boxes``): each image's non-crowd boxes, padded to
        the batch's largest count; None for one-stage heads or a batch without boxes. Pass it as
        ``Detector.forward(images, extra_boxes=...)``.
        """
        return self.arch.head.extra_boxes(self.arch, targets, device)

    # ------------------------------------------------------------------ helpers of the heads' losses
    def match_anchors(self, anchors: torch.Tensor, boxes: torch.Tensor, crowd: torch.Tensor | None,
                      num_per_level: Sequence[int], *, high: float, low: float) -> torch.Tensor:
        """Match codes [A] of anchors [A, 4] (``num_per_level`` rows per level, in order) to one
        image's boxes with this loss's ``assigner``: IoU matching at ``high`` / ``low`` (each box's
        best anchor kept), or ATSS (``high`` and ``low`` unused)."""
        if self.assigner == "atss":
            return atss_match(anchors, boxes, crowd, num_per_level=num_per_level, topk=self.atss_topk,
                              crowd_ioa=self.crowd_ioa)
        return match(anchors, boxes, crowd, high=high, low=low, allow_low_quality=True, crowd_ioa=self.crowd_ioa)

    def anchor_box_loss(self, kind: str, deltas: torch.Tensor, anchors: torch.Tensor, gt: torch.Tensor,
                        weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
        """Per-positive loss [N]: IoU-family on decoded boxes, smooth-L1 (summed over 4) on deltas."""
        if kind == "smooth_l1":
            return F.smooth_l1_loss(deltas, encode_boxes(gt, anchors, weights), beta=self.beta,
                                    reduction="none").sum(-1)
        return iou_loss(decode_deltas(deltas, anchors, weights), gt, kind)

    def focal(self, cls: torch.Tensor, targets: list[dict], codes: list[torch.Tensor], name: str = "loss_cls"):
        """Dense targets and the sigmoid focal loss of class logits ``cls`` [B, rows, K] given each
        image's match codes (one [rows] tensor per image: box index, NEG or IGNORE). Returns
        (image index, row index, gt box) of every positive and the loss / the number of positives.
        ``name``: the component it is, for :meth:`by_level`."""
        cls_t = torch.zeros_like(cls)
        valid = torch.ones(cls.shape[:2], dtype=torch.bool, device=cls.device)
        pos_img, pos_idx, pos_gt = [], [], []
        for i, (t, m) in enumerate(zip(targets, codes)):
            pos = (m >= 0).nonzero().squeeze(1)
            cls_t[i][pos, t["labels"][m[pos]]] = 1.0
            valid[i] = m != IGNORE
            pos_img.append(torch.full_like(pos, i))
            pos_idx.append(pos)
            pos_gt.append(t["boxes"][m[pos]])
        pi, pa, gt = torch.cat(pos_img), torch.cat(pos_idx), torch.cat(pos_gt)
        npos = max(1, len(pa))
        loss = sigmoid_focal_loss(cls[valid], cls_t[valid], self.focal_alpha, self.focal_gamma, "sum") / npos
        if self.record_levels:
            with torch.no_grad():
                per_row = sigmoid_focal_loss(cls.detach(), cls_t, self.focal_alpha, self.focal_gamma, "none").sum(-1)
                rows = torch.arange(cls.shape[1], device=cls.device).expand_as(valid)[valid]
                self.by_level(name, rows, per_row[valid] / npos)
                self.by_level(f"positives_{name}" if name != "loss_cls" else "positives", pa)
        return pi, pa, gt, loss


def sampler_codes(m: torch.Tensor) -> torch.Tensor:
    """Match codes -> the sampler's convention: 1 positive, 0 negative, -1 ignored."""
    return torch.where(m >= 0, 1, torch.where(m == NEG, 0, -1))


def _prepare_targets(targets: list[dict], batch: int, k: int, device: torch.device) -> list[dict]:
    if len(targets) != batch:
        raise HwnasError(f"{len(targets)} target dicts for a batch of {batch} images: need one per image")
    out = []
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], dtype=torch.long, device=device).reshape(-1)
        crowd = t.get("crowd")
        crowd = (torch.zeros(len(boxes), dtype=torch.bool, device=device) if crowd is None
                 else torch.as_tensor(crowd, dtype=torch.bool, device=device).reshape(-1))
        if len(labels) != len(boxes) or len(crowd) != len(boxes):
            raise HwnasError(f"target {i}: {len(boxes)} boxes, {len(labels)} labels, {len(crowd)} crowd flags; "
                             "need one of each per box")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise HwnasError(f"target {i}: labels must be in 0..{k - 1}, "
                             f"got {labels.min().item()}..{labels.max().item()}")
        out.append({"boxes": boxes, "labels": labels, "crowd": crowd})
    return out


def init_head_priors(model: nn.Module, prior_prob: float = 0.01) -> None:
    """Set the class-output biases of the head to ``-log((1 - p) / p)`` (RetinaNet's prior), so
    the focal loss starts near its background level instead of being swamped by easy negatives.
    The head kind says which outputs are class logits (none for the rcnn head)."""
    arch = getattr(model, "arch", None)
    if arch is not None:
        arch.head.init_priors(model, -math.log((1 - prior_prob) / prior_prob))
