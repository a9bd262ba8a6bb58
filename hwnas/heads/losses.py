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

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.heads.anchors import (
    anchors_per_location, fcos_points, flatten_levels, num_positions, retina_anchors, rpn_anchors_for,
)
from hwnas.heads.anchors import fcos_ranges as point_ranges
from hwnas.units import FACE_ANCHORS
from hwnas.heads.boxes import (
    ROI_BOX_WEIGHTS, check_box_loss, decode_deltas, decode_fcos, encode_boxes, encode_fcos, iou_loss,
)

__all__ = ["IGNORE", "NEG", "DetectionLoss", "assign_points", "box_ioa", "init_head_priors", "match"]

NEG = Matcher.BELOW_LOW_THRESHOLD  # -1
IGNORE = Matcher.BETWEEN_THRESHOLDS  # -2
_COMPONENTS = {
    "retina": ("loss_cls", "loss_box"),
    "fcos": ("loss_cls", "loss_box", "loss_ctr"),
    "rcnn": ("loss_rpn_obj", "loss_rpn_box", "loss_roi_cls", "loss_roi_box"),
    "face": ("loss_cls", "loss_box"),  # + loss_cls1 with STC, loss_box1 with STR
}


# ----------------------------------------------------------------------------- matching
def box_ioa(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection over the area of each box: [A, 4] x [R, 4] -> [A, R]."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    return inter / area[:, None]


def _usable(boxes: torch.Tensor, crowd: torch.Tensor) -> torch.Tensor:
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
    keep = _usable(boxes, crowd).nonzero().squeeze(1)
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


def assign_points(points: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor, boxes: torch.Tensor,
                  crowd: torch.Tensor | None = None, *, radius: float | None = 1.5) -> torch.Tensor:
    """FCOS assignment of points [P, 2] (strides [P], size ranges [P, 2]) to boxes [G, 4].

    A point is positive for a box when it lies inside the box (and, with ``radius``, within
    ``radius * stride`` of its centre) and the box's largest distance max(l, t, r, b) is in the
    point's range; among several, the smallest box wins. Returns LongTensor [P] like :func:`match`.
    """
    crowd = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device) if crowd is None else crowd.bool()
    out = torch.full((len(points),), NEG, dtype=torch.long, device=points.device)
    keep = _usable(boxes, crowd).nonzero().squeeze(1)
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

    ``loss(outputs, targets)`` returns ``{"loss": total, <component>: value, ...}`` with components
    retina: loss_cls (sigmoid focal, / positives), loss_box (/ positives);
    fcos: loss_cls (focal, / positives), loss_box (weighted by the centerness target, / its sum),
    loss_ctr (BCE, / positives);
    rcnn: loss_rpn_obj (BCE over sampled anchors), loss_rpn_box, loss_roi_cls (cross-entropy over
    sampled proposals, background = class index K), loss_roi_box (class-specific deltas with
    weights (10, 10, 5, 5)); both box terms / sampled count, as in Faster R-CNN;
    face (:mod:`hwnas.heads.face`): loss_cls and loss_box of the second step (focal on the
    max-out logits; on the STR levels matched to the refined anchors at ``step2_iou``; on the STC
    levels without the anchors the first step rejects), loss_cls1 (first-step focal on the STC
    levels) and loss_box1 (first-step box loss on the STR levels), each / its positives.

    ``box_loss`` (iou | giou | diou | ciou on decoded boxes, or smooth_l1 on encoded deltas)
    is used by the one-stage heads and the RPN; the RoI head uses ``roi_box_loss``.
    ``weights`` scales components by name. Use :meth:`for_arch` to build one.
    """

    def __init__(self, arch: Arch, num_classes: int, *, box_loss: str = "giou", focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, smooth_l1_beta: float = 1 / 9,
                 fcos_ranges: tuple[tuple[float, float], ...] | None = None, center_radius: float | None = 1.5,
                 rpn_batch: int = 256, rpn_pos_fraction: float = 0.5, roi_batch: int = 128,
                 roi_pos_fraction: float = 0.25, roi_box_loss: str = "smooth_l1", crowd_ioa: float = 0.5,
                 step1_iou: tuple[float, float] = (0.5, 0.4), step2_iou: tuple[float, float] = (0.6, 0.5),
                 weights: dict[str, float] | None = None) -> None:
        if num_classes < 1:
            raise HwnasError(f"num_classes must be >= 1, got {num_classes}")
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
        self.components = _COMPONENTS[arch.head]
        if arch.head == "face":
            self.components += ("loss_cls1",) * bool(arch.stc_levels) + ("loss_box1",) * bool(arch.str_levels)
        self.weights = dict(weights or {})
        unknown = set(self.weights) - set(self.components)
        if unknown:
            raise HwnasError(f"loss weights {sorted(unknown)}: the {arch.head} head's components are "
                             f"{', '.join(self.components)}")
        self.fcos_ranges = None
        if arch.head == "fcos":
            self.fcos_ranges = fcos_ranges and tuple(tuple(map(float, r)) for r in fcos_ranges)
            point_ranges(arch, self.fcos_ranges)  # validate now, not mid-training

    @classmethod
    def for_arch(cls, arch: Arch | str, num_classes: int, **kwargs) -> "DetectionLoss":
        """The loss for ``arch`` (an :class:`Arch` or its text form); keyword options as in the class."""
        return cls(Arch.parse(arch) if isinstance(arch, str) else arch, num_classes, **kwargs)

    # ------------------------------------------------------------------ public
    def __call__(self, outputs: tuple[torch.Tensor, ...], targets: list[dict]) -> dict[str, torch.Tensor]:
        outputs = tuple(o.float() for o in outputs)
        self._check_outputs(outputs)
        b, dev = outputs[0].shape[0], outputs[0].device
        targets = _prepare_targets(targets, b, self.num_classes, dev)
        parts = getattr(self, f"_{self.arch.head}")(outputs, targets)
        parts = {k: v * self.weights.get(k, 1.0) for k, v in parts.items()}
        return {"loss": sum(parts.values()), **parts}

    def extra_boxes(self, targets: list[dict], device: torch.device | str | None = None) -> torch.Tensor | None:
        """Ground-truth boxes to append to the proposals in training, [B, M, 4], or None.

        For the rcnn head: each image's non-crowd boxes, padded to the batch's largest count M
        with the whole-image box (a background or low-quality proposal). None for one-stage
        heads or a batch without boxes. Pass it as ``Detector.forward(images, extra_boxes=...)``.
        """
        if self.arch.head != "rcnn":
            return None
        h, w = self.arch.input_hw
        gts = []
        for t in targets:
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
            crowd = torch.as_tensor(t.get("crowd", torch.zeros(len(boxes))), dtype=torch.bool).reshape(-1)
            gts.append(boxes[_usable(boxes, crowd)])
        m = max((len(g) for g in gts), default=0)
        if m == 0:
            return None
        pad = torch.tensor([0.0, 0.0, float(w), float(h)])
        out = torch.stack([torch.cat((g, pad.expand(m - len(g), 4))) for g in gts])
        return out.to(device if device is not None else gts[0].device)

    # ------------------------------------------------------------------ checks
    def _check_outputs(self, outputs: tuple[torch.Tensor, ...]) -> None:
        a, k = self.arch, self.num_classes
        if a.head == "face":
            return self._check_face_outputs(outputs)
        per = {"retina": 2, "fcos": 3, "rcnn": 2}[a.head]
        want = per * len(a.out_levels) + (3 if a.head == "rcnn" else 0)
        if len(outputs) != want:
            raise HwnasError(f"{a.head} loss of {a}: expected {want} outputs (Detector.output_names), "
                             f"got {len(outputs)}")
        if a.head != "rcnn":
            cls_ch = anchors_per_location(a) * k
            if outputs[0].shape[1] != cls_ch:
                raise HwnasError(f"class output has {outputs[0].shape[1]} channels, expected {cls_ch} for "
                                 f"num_classes={k}: build the loss with the detector's num_classes")
        elif outputs[-2].shape[-1] != k + 1:
            raise HwnasError(f"roi_cls has {outputs[-2].shape[-1]} columns, expected num_classes + 1 = {k + 1}")
        rows = sum(o.shape[2] * o.shape[3] for o in outputs[:per * len(a.out_levels):per]) * anchors_per_location(a)
        if rows != num_positions(a):
            raise HwnasError(f"outputs cover {rows} positions, the arch {a} has {num_positions(a)}: "
                             f"images must be {a.input_hw[0]}x{a.input_hw[1]}")

    def _check_face_outputs(self, outputs: tuple[torch.Tensor, ...]) -> None:
        from hwnas.heads.face import outputs_per_level

        a, k = self.arch, self.num_classes
        names = [n for level in outputs_per_level(a) for n in level]
        if len(outputs) != len(names):
            raise HwnasError(f"face loss of {a}: expected {len(names)} outputs (Detector.output_names), got {len(outputs)}")
        cls_ch = FACE_ANCHORS * (k + a.maxout)
        if outputs[0].shape[1] != cls_ch:
            raise HwnasError(f"class output has {outputs[0].shape[1]} channels, expected {cls_ch} for "
                             f"num_classes={k}: build the loss with the detector's num_classes")
        rows = sum(o.shape[2] * o.shape[3] for o, n in zip(outputs, names) if n == "box") * FACE_ANCHORS
        if rows != num_positions(a):
            raise HwnasError(f"outputs cover {rows} positions, the arch {a} has {num_positions(a)}: "
                             f"images must be {a.input_hw[0]}x{a.input_hw[1]}")

    # ------------------------------------------------------------------ retina
    def _anchor_box_loss(self, kind: str, deltas: torch.Tensor, anchors: torch.Tensor, gt: torch.Tensor,
                         weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
        """Per-positive loss [N]: IoU-family on decoded boxes, smooth-L1 (summed over 4) on deltas."""
        if kind == "smooth_l1":
            return F.smooth_l1_loss(deltas, encode_boxes(gt, anchors, weights), beta=self.beta,
                                    reduction="none").sum(-1)
        return iou_loss(decode_deltas(deltas, anchors, weights), gt, kind)

    def _dense_cls(self, cls: torch.Tensor, targets: list[dict], assign):
        """One-stage targets and focal loss. ``assign(target)`` gives each anchor/point its box
        index, NEG or IGNORE. Returns (image index, anchor index, gt box) of every positive and
        the focal loss normalised by the number of positives."""
        return self._focal(cls, targets, [assign(t) for t in targets])

    def _focal(self, cls: torch.Tensor, targets: list[dict], codes: list[torch.Tensor]):
        """:meth:`_dense_cls` on given match codes (one [rows] tensor per image)."""
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
        return pi, pa, gt, loss

    def _retina(self, outputs, targets):
        k = self.num_classes
        cls = flatten_levels(outputs[0::2], k)
        box = flatten_levels(outputs[1::2], 4)
        anchors = retina_anchors(self.arch, cls.device)
        pi, pa, gt, loss_cls = self._dense_cls(cls, targets, lambda t: match(
            anchors, t["boxes"], t["crowd"], high=0.5, low=0.4, allow_low_quality=True, crowd_ioa=self.crowd_ioa))
        npos = max(1, len(pa))
        loss_box = self._anchor_box_loss(self.box_loss, box[pi, pa], anchors[pa], gt).sum() / npos
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    # ------------------------------------------------------------------ face
    def _face(self, outputs, targets):
        from hwnas.heads.face import STC_REJECT, face_anchors, second_step_anchors, split_outputs

        f = split_outputs(outputs, self.arch, self.num_classes)
        anchors = face_anchors(self.arch, f.cls.device)
        p, s, r = anchors.shape[0], f.stc_rows, f.str_rows
        hi1, lo1 = self.step1_iou
        hi2, lo2 = self.step2_iou
        m1 = [match(anchors, t["boxes"], t["crowd"], high=hi1, low=lo1, allow_low_quality=True,
                    crowd_ioa=self.crowd_ioa) for t in targets]
        with torch.no_grad():  # the second step learns from the refined anchors, it does not move them
            anchors2 = second_step_anchors(split_outputs(tuple(o.detach() for o in outputs), self.arch,
                                                         self.num_classes), anchors)
        m2 = []
        for i, t in enumerate(targets):
            m = m1[i].clone()
            if r:
                m[p - r:] = match(anchors2[i, p - r:], t["boxes"], t["crowd"], high=hi2, low=lo2,
                                  allow_low_quality=True, crowd_ioa=self.crowd_ioa)
            if s:  # anchors the first step rejects with confidence are easy negatives: out of the second step
                easy = (m[:s] == NEG) & (f.cls1[i].detach().sigmoid().amax(-1) < STC_REJECT)
                m[:s][easy] = IGNORE
            m2.append(m)
        pi, pa, gt, loss_cls = self._focal(f.cls, targets, m2)
        npos = max(1, len(pa))
        parts = {"loss_cls": loss_cls,
                 "loss_box": self._anchor_box_loss(self.box_loss, f.box[pi, pa], anchors2[pi, pa], gt).sum() / npos}
        if s:
            parts["loss_cls1"] = self._focal(f.cls1, targets, [m[:s] for m in m1])[3]
        if r:
            rows = [m[p - r:] for m in m1]
            bi = torch.cat([torch.full_like((m >= 0).nonzero().squeeze(1), i) for i, m in enumerate(rows)])
            ai = torch.cat([(m >= 0).nonzero().squeeze(1) for m in rows])
            gt1 = torch.cat([t["boxes"][m[m >= 0]] for t, m in zip(targets, rows)])
            parts["loss_box1"] = self._anchor_box_loss(self.box_loss, f.box1[bi, ai], anchors[p - r:][ai],
                                                       gt1).sum() / max(1, len(ai))
        return parts

    # ------------------------------------------------------------------ fcos
    def _fcos(self, outputs, targets):
        k = self.num_classes
        cls = flatten_levels(outputs[0::3], k)
        raw = flatten_levels(outputs[1::3], 4)
        ctr = flatten_levels(outputs[2::3], 1).squeeze(-1)
        points, strides = fcos_points(self.arch, cls.device)
        ranges = point_ranges(self.arch, self.fcos_ranges, cls.device)
        pi, pp, gt, loss_cls = self._dense_cls(cls, targets, lambda t: assign_points(
            points, strides, ranges, t["boxes"], t["crowd"], radius=self.center_radius))
        npos = max(1, len(pp))
        pts, st = points[pp], strides[pp]
        x, y = pts[:, 0], pts[:, 1]
        lr = torch.stack((x - gt[:, 0], gt[:, 2] - x), -1).clamp(min=0)
        tb = torch.stack((y - gt[:, 1], gt[:, 3] - y), -1).clamp(min=0)
        ctr_t = ((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6))
                 * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6))).sqrt()
        pred = raw[pi, pp]
        if self.box_loss == "smooth_l1":
            per = F.smooth_l1_loss(pred, encode_fcos(gt, pts, st), beta=self.beta, reduction="none").sum(-1)
        else:
            per = iou_loss(decode_fcos(pred, pts, st), gt, self.box_loss)
        loss_box = (per * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[pi, pp], ctr_t, reduction="sum") / npos
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}

    # ------------------------------------------------------------------ rcnn
    def _rcnn(self, outputs, targets):
        n_lv = len(self.arch.out_levels)
        obj = flatten_levels(outputs[0:2 * n_lv:2], 1).squeeze(-1)
        deltas = flatten_levels(outputs[1:2 * n_lv:2], 4)
        proposals, roi_cls, roi_box = outputs[2 * n_lv:]
        anchors = rpn_anchors_for(self.arch, obj.device)

        # RPN: match 0.7 / 0.3 (plus each box's best anchor), sample rpn_batch at rpn_pos_fraction.
        obj_t, sampled = torch.zeros_like(obj), []
        for i, t in enumerate(targets):
            m = match(anchors, t["boxes"], t["crowd"], high=0.7, low=0.3, allow_low_quality=True,
                      crowd_ioa=self.crowd_ioa)
            pos_mask, neg_mask = self.rpn_sampler([_sampler_codes(m)])
            obj_t[i] = (m >= 0).float()
            sampled.append((pos_mask[0].bool(), neg_mask[0].bool(), m))
        pos = torch.stack([s[0] for s in sampled])
        both = pos | torch.stack([s[1] for s in sampled])
        n_sampled = max(1, int(both.sum()))
        loss_obj = F.binary_cross_entropy_with_logits(obj[both], obj_t[both], reduction="sum") / n_sampled
        pi, pa = pos.nonzero().unbind(1)
        gt = torch.cat([targets[i]["boxes"][s[2][s[0]]] for i, s in enumerate(sampled)])
        loss_rpn_box = self._anchor_box_loss(self.box_loss, deltas[pi, pa], anchors[pa], gt).sum() / n_sampled

        # RoI head on the forward's proposals (plus appended gt in training): match 0.5, sample.
        k = self.num_classes
        props = proposals.detach()
        roi_t = torch.full(props.shape[:2], -1, dtype=torch.long, device=props.device)
        gt_rows = torch.zeros_like(props)
        for i, t in enumerate(targets):
            m = match(props[i], t["boxes"], t["crowd"], high=0.5, low=0.5, allow_low_quality=False,
                      crowd_ioa=self.crowd_ioa)
            pos_mask, neg_mask = self.roi_sampler([_sampler_codes(m)])
            p, n = pos_mask[0].bool(), neg_mask[0].bool()
            roi_t[i][n] = k
            roi_t[i][p] = t["labels"][m[p]]
            gt_rows[i][p] = t["boxes"][m[p]]
        chosen = roi_t >= 0
        n_roi = max(1, int(chosen.sum()))
        loss_roi_cls = F.cross_entropy(roi_cls[chosen], roi_t[chosen], reduction="sum") / n_roi
        bi, ni = ((roi_t >= 0) & (roi_t < k)).nonzero().unbind(1)
        lab = roi_t[bi, ni]
        pred = roi_box.reshape(*roi_box.shape[:2], k, 4)[bi, ni, lab]
        loss_roi_box = self._anchor_box_loss(self.roi_box_loss, pred, props[bi, ni], gt_rows[bi, ni],
                                             ROI_BOX_WEIGHTS).sum() / n_roi
        return {"loss_rpn_obj": loss_obj, "loss_rpn_box": loss_rpn_box,
                "loss_roi_cls": loss_roi_cls, "loss_roi_box": loss_roi_box}


def _sampler_codes(m: torch.Tensor) -> torch.Tensor:
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
    """Set the class-output bias of a one-stage head to ``-log((1 - p) / p)`` (RetinaNet's prior), so
    the focal loss starts near its background level instead of being swamped by easy negatives.
    Does nothing for the rcnn head."""
    arch = getattr(model, "arch", None)
    if arch is None or arch.head == "rcnn":
        return
    prior = -math.log((1 - prior_prob) / prior_prob)
    with torch.no_grad():
        for level in arch.out_levels:  # the face head has several class predictors
            for name in ("cls", "cls1", "cls_maxout"):
                try:
                    conv = model.module_for(f"head.p{level}.{name}")[0]
                except KeyError:
                    continue
                if name == "cls_maxout":  # per anchor: K class logits, then the background ones at 0
                    k = model.num_classes
                    bias = conv.bias.view(-1, k + arch.maxout)
                    bias[:, :k] = prior
                    bias[:, k:] = 0.0
                else:
                    conv.bias.fill_(prior)
