"""The face head: RetinaNet with face anchors, two-step classification and regression, max-out.

Grammar ``face_d<depth>_c<width>_stc<a>_str<b>_mo<m>``: two-step classification on the ``a``
lowest levels, two-step regression on the ``b`` highest, ``m`` max-out background logits on the
lowest level; 0 turns a trick off, so ``face_d2_c64_stc0_str0_mo0`` is a plain RetinaNet with
face anchors.

After "Accurate Face Detection for High Performance" (AInnoFace, Zhang et al. 2019), which puts
the tricks of SRN (Chi et al. 2019) and S3FD (Zhang et al. 2017) on a RetinaNet:

* **Anchors** (:func:`face_anchors`): two per location, sides ``2 * stride`` and
  ``2 * sqrt(2) * stride``, aspect ratio h/w 1.25 (faces are taller than wide). Row order as
  every other head (:mod:`hwnas.heads.anchors`): level, location row-major, anchor.
* **Two-step classification (STC)** on the ``stc_levels`` lowest levels, where nearly all
  anchors are easy background: a first classifier (``cls1``) learns to reject them; the second
  step (``cls``) ignores the anchors the first step rejects with confidence (face score below
  :data:`STC_REJECT`, i.e. background above 0.99 as in SRN) and learns on what is left. At
  inference a rejected anchor's score is 0.
* **Two-step regression (STR)** on the ``str_levels`` highest levels, where large faces need
  precise boxes: a first regressor (``box1``) refines the anchors; the second step matches and
  regresses from the *refined* anchors, with stricter IoU thresholds.
* **Max-out background** on the lowest level: ``m`` background logits per anchor beside the face
  logit(s); the face's effective logit is ``face - max(background)`` (the sigmoid of that is the
  two-way softmax of the face logit against the strongest background one), so the many small
  anchors of P2 need a face logit above all of them, which suppresses their false positives.

The first steps predict from the neck's features, before the head towers (SRN's first step sees
the less processed backbone features; here the neck output is the less processed feature map,
which keeps the first step cheap: one 3x3 conv per level). ``FaceHead.predictions`` is the one
statement of each level's outputs (walk, forward, output names and :func:`split_outputs` follow it);
:func:`decode` (also in the exported graph) and :meth:`FaceHead.loss` read them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from hwnas.heads.base import Pred, TowerHead, invalid
from hwnas.spec.units import HW

if TYPE_CHECKING:
    import torch

    from hwnas.spec.arch import Arch

__all__ = ["FACE_ANCHORS", "FACE_ANCHOR_RATIO", "FACE_ANCHOR_SCALES", "FaceAssignment", "FaceHead", "FaceOutputs",
           "MAX_MAXOUT", "STC_REJECT", "decode", "face_anchor_sizes", "face_anchors", "outputs_per_level", "split_outputs"]

FACE_ANCHOR_SCALES = (2.0, 2.0 * math.sqrt(2.0))  # anchor side / stride
FACE_ANCHORS = len(FACE_ANCHOR_SCALES)  # 2 scales x 1 aspect ratio per location (after AInnoFace)
FACE_ANCHOR_RATIO = 1.25  # height / width
STC_REJECT = 0.01  # first-step face score under which STC drops an anchor (SRN: background > 0.99)
MAX_MAXOUT = 8


@dataclass(frozen=True)
class FaceHead(TowerHead):
    """Towers of ``depth`` x ``width`` as RetinaNet's; two-step classification on the ``stc_levels``
    lowest levels, two-step regression on the ``str_levels`` highest, ``maxout`` background logits
    on the lowest level."""

    stc_levels: int = 0
    str_levels: int = 0
    maxout: int = 0

    TOKEN: ClassVar[str] = "face"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("d", "depth"), ("c", "width"), ("stc", "stc_levels"),
                                                     ("str", "str_levels"), ("mo", "maxout"))
    EXAMPLE: ClassVar[str] = "face_d2_c64_stc3_str3_mo3"
    ANCHORS: ClassVar[int] = FACE_ANCHORS
    ASSIGNERS: ClassVar[tuple[str, ...]] = ("iou", "atss")  # DetectionLoss(assigner=...), both steps
    NEEDS_NECK: ClassVar[bool] = True
    GENERAL_PURPOSE: ClassVar[bool] = False  # searched in the face space (hwnas search --space face)
    DEFAULT_CLASS_NAMES: ClassVar[tuple[str, ...]] = ("face",)

    # ------------------------------------------------------------------ grammar
    @classmethod
    def missing_fields_hint(cls) -> str:
        return "the face head names its tricks, e.g. face_d2_c64_stc3_str3_mo3 (0 turns one off)"

    def check(self, arch: "Arch") -> None:
        n = len(arch.out_levels)
        if arch.neck == "none":
            raise invalid("the face head needs a neck (fpn or pafpn): its tricks work across pyramid levels")
        if self.stc_levels < 0 or self.str_levels < 0 or self.stc_levels + self.str_levels > n:
            raise invalid(f"face head stc{self.stc_levels} str{self.str_levels}: two-step classification (lowest "
                          f"levels) and regression (highest levels) may not overlap: need stc + str <= {n} levels")
        if not 0 <= self.maxout <= MAX_MAXOUT:
            raise invalid(f"face head mo{self.maxout}: max-out background logits must be 0..{MAX_MAXOUT}")
        super().check(arch)

    def fit(self, space, levels):
        """The space's tricks (``face_tricks``: stc, str, mo) on ``levels``: STC keeps its lowest
        levels, STR gets what is left."""
        stc, str_, mo = space.face_tricks
        n = levels[1] - levels[0] + 1
        stc = min(stc, n)
        return replace(self, stc_levels=stc, str_levels=min(str_, n - stc), maxout=mo)

    # ------------------------------------------------------------------ outputs
    def predictions(self, arch, num_classes, level_index):
        a, k, li, n = FACE_ANCHORS, num_classes, level_index, len(arch.out_levels)
        # max-out: m background logits per anchor beside the K class logits (S3FD)
        cls = Pred("cls", "cls_maxout", "cls", a * (k + self.maxout)) if self.maxout and li == 0 else \
            Pred("cls", "cls", "cls", a * k)
        preds = [cls, Pred("box", "box", "box", a * 4)]
        # The first steps of STC/STR predict from the neck's features, before the towers, as
        # SRN's first step predicts from the less processed backbone features.
        if li < self.stc_levels:
            preds.append(Pred("cls1", "cls1", "neck", a * k))
        if li >= n - self.str_levels:
            preds.append(Pred("box1", "box1", "neck", a * 4))
        return preds

    def init_priors(self, model, prior):
        import torch

        super().init_priors(model, prior)
        if self.maxout:
            with torch.no_grad():  # per anchor: K class logits at the prior, then the background ones at 0
                bias = model.module_for("head.cls_maxout")[0].bias.view(-1, model.num_classes + self.maxout)
                bias[:, model.num_classes:] = 0.0

    def anchor_sizes(self, arch):
        return face_anchor_sizes(arch)

    # ------------------------------------------------------------------ training and decoding
    def loss_components(self):
        steps = ("loss_cls1",) * bool(self.stc_levels) + ("loss_box1",) * bool(self.str_levels)
        return ("loss_cls", "loss_box") + steps

    def match_codes(self, loss, targets, device=None):
        """The first step's codes: every anchor, with ``loss.assigner`` (IoU at ``loss.step1_iou``, or
        ATSS). The second step starts from them (:meth:`assign`)."""
        from hwnas.heads.losses import level_rows

        anchors, rows = face_anchors(loss.arch, device), level_rows(loss.arch)
        hi1, lo1 = loss.step1_iou
        return [loss.match_anchors(anchors, t["boxes"], t["crowd"], rows, high=hi1, low=lo1) for t in targets]

    def assign(self, loss, outputs, targets) -> "FaceAssignment":
        """The match codes of both steps (see :class:`FaceAssignment`), as :meth:`loss` uses them.

        First step: every anchor, with ``loss.assigner`` (IoU at ``loss.step1_iou``, or ATSS).
        Second step: the first step's codes, except on the STR levels and on the STC levels. On
        the STR levels the codes of a second matching (IoU at the stricter ``loss.step2_iou``, or
        ATSS) of *all* the second step's anchors (refined by ``box1`` on the STR levels, the
        others as they are): a box whose best second-step anchor lies below the STR levels gets
        no positive there. (Matching the STR rows alone made each box's best STR anchor its
        low-quality match, so every face, a 4 px one too, got a positive on the lowest STR level
        at IoU ~0.03, and those outnumbered that level's real positives ~10 to 1:
        benchmarks/assignment_stats.py.) A box this leaves without any positive (its refined
        anchors moved off it) keeps its first step's positives on the STR levels. On the STC
        levels the negatives the first step rejects with confidence (face score <
        :data:`STC_REJECT`) are ignored."""
        import torch

        from hwnas.heads.losses import IGNORE, NEG, level_rows

        arch, k = loss.arch, loss.num_classes
        with torch.no_grad():  # the second step learns from the refined anchors, it does not move them
            f = split_outputs(tuple(o.detach() for o in outputs), arch, k)
            anchors = face_anchors(arch, f.cls.device)
            anchors2 = second_step_anchors(f, anchors)
        p, s, r = anchors.shape[0], f.stc_rows, f.str_rows
        rows = level_rows(arch)
        hi2, lo2 = loss.step2_iou
        m1 = self.match_codes(loss, targets, anchors.device)
        m2 = []
        for i, t in enumerate(targets):
            m = m1[i].clone()
            if r:
                m[p - r:] = loss.match_anchors(anchors2[i], t["boxes"], t["crowd"], rows, high=hi2, low=lo2)[p - r:]
                # a box the second matching leaves without positive keeps its first-step ones there
                g = len(t["boxes"])
                had = torch.bincount(m1[i][m1[i] >= 0], minlength=g) > 0
                lost = had & ~(torch.bincount(m[m >= 0], minlength=g) > 0)
                if lost.any():
                    back = (m1[i] >= 0) & lost[m1[i].clamp(min=0)] & (m < 0)
                    back[: p - r] = False
                    m[back] = m1[i][back]
            if s:  # anchors the first step rejects with confidence are easy negatives: out of the second step
                easy = (m[:s] == NEG) & (f.cls1[i].sigmoid().amax(-1) < STC_REJECT)
                m[:s][easy] = IGNORE
            m2.append(m)
        return FaceAssignment(m1, m2, anchors, anchors2)

    def loss(self, loss, outputs, targets):
        """loss_cls and loss_box of the second step (focal on the max-out logits; on the STR
        levels matched to the refined anchors; on the STC levels without the anchors the first
        step rejects), loss_cls1 (first-step focal on the STC levels) and loss_box1 (first-step
        box loss on the STR levels), each / its positives; matching in :meth:`assign`."""
        import torch

        arch, k = loss.arch, loss.num_classes
        f = split_outputs(outputs, arch, k)
        a = self.assign(loss, outputs, targets)
        m1, m2, anchors, anchors2 = a.step1, a.step2, a.anchors, a.anchors2
        p, s, r = anchors.shape[0], f.stc_rows, f.str_rows
        pi, pa, gt, loss_cls = loss.focal(f.cls, targets, m2)
        npos = max(1, len(pa))
        per_box = loss.anchor_box_loss(loss.box_loss, f.box[pi, pa], anchors2[pi, pa], gt)
        loss.by_level("loss_box", pa, per_box / npos)
        parts = {"loss_cls": loss_cls, "loss_box": per_box.sum() / npos}
        if s:
            parts["loss_cls1"] = loss.focal(f.cls1, targets, [m[:s] for m in m1], name="loss_cls1")[3]
        if r:
            rows = [m[p - r:] for m in m1]
            bi = torch.cat([torch.full_like((m >= 0).nonzero().squeeze(1), i) for i, m in enumerate(rows)])
            ai = torch.cat([(m >= 0).nonzero().squeeze(1) for m in rows])
            gt1 = torch.cat([t["boxes"][m[m >= 0]] for t, m in zip(targets, rows)])
            per_box1 = loss.anchor_box_loss(loss.box_loss, f.box1[bi, ai], anchors[p - r:][ai], gt1)
            loss.by_level("loss_box1", ai, per_box1 / max(1, len(ai)), offset=p - r)
            parts["loss_box1"] = per_box1.sum() / max(1, len(ai))
        return parts

    def decode(self, outputs, arch, num_classes):
        return decode(outputs, arch, num_classes)


def face_anchor_sizes(arch: "Arch") -> tuple[float, ...]:
    """The base anchor side (sqrt of the area) of each out level: ``2 * stride``."""
    return tuple(FACE_ANCHOR_SCALES[0] * 2 ** level for level in arch.out_levels)


@lru_cache(maxsize=64)
def _anchors(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]):
    import torch

    from hwnas.heads.anchors import centers

    out = []
    r = math.sqrt(FACE_ANCHOR_RATIO)
    for level, hw in zip(levels, level_hws):
        size = torch.tensor(FACE_ANCHOR_SCALES) * 2 ** level  # sqrt(area)
        hs, ws = size * r, size / r
        base = torch.stack((-ws, -hs, ws, hs), dim=1) / 2  # [A, 4]
        c = centers(image_hw, hw).repeat(1, 2).unsqueeze(1)
        out.append((c + base).reshape(-1, 4))
    return torch.cat(out)


def face_anchors(arch: "Arch", device=None) -> "torch.Tensor":
    """Face anchors [positions, 4] (x1, y1, x2, y2, input pixels), cached per arch."""
    from hwnas.heads.anchors import anchor_key

    return _anchors(*anchor_key(arch)).to(device)


@dataclass
class FaceAssignment:
    """The face head's matching of one batch (:meth:`FaceHead.assign`): per image the codes [P]
    (box index, NEG or IGNORE) of the first step (``step1``: what ``cls1`` learns on the STC
    levels and ``box1`` on the STR levels) and of the second step (``step2``: what ``cls`` and
    ``box`` learn), the anchors [P, 4] and the second step's anchors [B, P, 4] (refined on the
    STR levels)."""

    step1: list["torch.Tensor"]
    step2: list["torch.Tensor"]
    anchors: "torch.Tensor"
    anchors2: "torch.Tensor"


@dataclass
class FaceOutputs:
    """The face head's raw outputs, flattened over levels (rows as :func:`face_anchors`).

    ``cls`` [B, P, K] effective class logits (max-out applied), ``box`` [B, P, 4] second-step
    deltas, ``cls1`` [B, S, K] first-step logits of the first S rows (the STC levels) or None,
    ``box1`` [B, R, 4] first-step deltas of the last R rows (the STR levels) or None.
    """

    cls: "torch.Tensor"
    box: "torch.Tensor"
    cls1: "torch.Tensor | None"
    box1: "torch.Tensor | None"

    @property
    def stc_rows(self) -> int:
        return 0 if self.cls1 is None else self.cls1.shape[1]

    @property
    def str_rows(self) -> int:
        return 0 if self.box1 is None else self.box1.shape[1]


def outputs_per_level(arch: "Arch") -> list[tuple[str, ...]]:
    """The output names of each out level, in ``Detector.forward`` order."""
    return [tuple(p.name for p in arch.head.predictions(arch, 1, li)) for li in range(len(arch.out_levels))]


def split_outputs(outputs: tuple["torch.Tensor", ...], arch: "Arch", num_classes: int) -> FaceOutputs:
    """Read ``Detector.forward``'s face-head outputs (see :class:`FaceOutputs`)."""
    import torch

    from hwnas.heads.anchors import flatten_levels

    k, m, per = num_classes, arch.head.maxout, arch.head.per_level(arch, outputs)
    cls = []
    for li, t in enumerate(per["cls"]):
        if li == 0 and m:
            b = t.shape[0]
            v = t.permute(0, 2, 3, 1).reshape(b, -1, k + m)
            cls.append(v[..., :k] - v[..., k:].amax(-1, keepdim=True))
        else:
            cls.append(flatten_levels([t], k))
    return FaceOutputs(torch.cat(cls, 1), flatten_levels(per["box"], 4),
                       flatten_levels(per["cls1"], k) if "cls1" in per else None,
                       flatten_levels(per["box1"], 4) if "box1" in per else None)


def second_step_anchors(f: FaceOutputs, anchors: "torch.Tensor") -> "torch.Tensor":
    """Anchors of the second step [B, P, 4]: the STR levels' anchors refined by ``box1``."""
    import torch

    from hwnas.heads.boxes import decode_deltas

    b = f.box.shape[0]
    base = anchors.to(f.box.dtype).expand(b, *anchors.shape)
    if f.box1 is None:
        return base
    r = f.str_rows
    refined = decode_deltas(f.box1, anchors[-r:].to(f.box1.dtype))
    return torch.cat((base[:, : anchors.shape[0] - r], refined), 1)


def decode(outputs: tuple["torch.Tensor", ...], arch: "Arch",
           num_classes: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Boxes [B, P, 4] (second-step deltas on the refined anchors) and scores [B, P, K]
    (sigmoid of the effective logits, 0 where the first step of STC rejected the anchor)."""
    import torch

    from hwnas.heads.boxes import decode_deltas

    f = split_outputs(outputs, arch, num_classes)
    anchors = face_anchors(arch, f.box.device)
    boxes = decode_deltas(f.box, second_step_anchors(f, anchors))
    scores = f.cls.sigmoid()
    if f.cls1 is not None:
        s = f.stc_rows
        kept = scores[:, :s] * (f.cls1.sigmoid() >= STC_REJECT).to(scores.dtype)
        scores = torch.cat((kept, scores[:, s:]), 1)
    return boxes, scores
