"""The face head: RetinaNet with face anchors, two-step classification and regression, max-out.

After "Accurate Face Detection for High Performance" (AInnoFace, Zhang et al. 2019), which puts
the tricks of SRN (Chi et al. 2019) and S3FD (Zhang et al. 2017) on a RetinaNet:

* **Anchors** (:func:`face_anchors`): two per location, sides ``2 * stride`` and
  ``2 * sqrt(2) * stride``, aspect ratio h/w 1.25 (faces are taller than wide). Row order as
  every other head (:mod:`hwnas.heads.anchors`): level, location row-major, anchor.
* **Two-step classification (STC)** on the ``arch.stc_levels`` lowest levels, where nearly all
  anchors are easy background: a first classifier (``cls1``) learns to reject them; the second
  step (``cls``) ignores the anchors the first step rejects with confidence (face score below
  :data:`STC_REJECT`, i.e. background above 0.99 as in SRN) and learns on what is left. At
  inference a rejected anchor's score is 0.
* **Two-step regression (STR)** on the ``arch.str_levels`` highest levels, where large faces need
  precise boxes: a first regressor (``box1``) refines the anchors; the second step matches and
  regresses from the *refined* anchors, with stricter IoU thresholds.
* **Max-out background** on the lowest level: ``m`` background logits per anchor beside the face
  logit(s); the face's effective logit is ``face - max(background)`` (the sigmoid of that is the
  two-way softmax of the face logit against the strongest background one), so the many small
  anchors of P2 need a face logit above all of them, which suppresses their false positives.

The first steps predict from the neck's features, before the head towers (SRN's first step sees
the less processed backbone features; here the neck output is the less processed feature map,
which keeps the first step cheap: one 3x3 conv per level). ``Detector.forward`` returns the raw
outputs; :func:`split_outputs` reads them, :func:`decode` (also in the exported graph) and
:class:`hwnas.heads.losses.DetectionLoss` use them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from hwnas.arch import Arch
from hwnas.heads.anchors import _centers, _key, flatten_levels
from hwnas.heads.boxes import decode_deltas
from hwnas.units import FACE_ANCHORS, HW

__all__ = ["FACE_ANCHOR_RATIO", "FACE_ANCHOR_SCALES", "FaceOutputs", "STC_REJECT", "decode", "face_anchor_sizes",
           "face_anchors", "split_outputs"]

FACE_ANCHOR_SCALES = (2.0, 2.0 * math.sqrt(2.0))  # anchor side / stride
FACE_ANCHOR_RATIO = 1.25  # height / width
STC_REJECT = 0.01  # first-step face score under which STC drops an anchor (SRN: background > 0.99)
assert len(FACE_ANCHOR_SCALES) == FACE_ANCHORS


def face_anchor_sizes(arch: Arch) -> tuple[float, ...]:
    """The base anchor side (sqrt of the area) of each out level: ``2 * stride``."""
    return tuple(FACE_ANCHOR_SCALES[0] * 2 ** level for level in arch.out_levels)


@lru_cache(maxsize=64)
def _anchors(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]) -> torch.Tensor:
    out = []
    r = math.sqrt(FACE_ANCHOR_RATIO)
    for level, hw in zip(levels, level_hws):
        size = torch.tensor(FACE_ANCHOR_SCALES) * 2 ** level  # sqrt(area)
        hs, ws = size * r, size / r
        base = torch.stack((-ws, -hs, ws, hs), dim=1) / 2  # [A, 4]
        c = _centers(image_hw, hw).repeat(1, 2).unsqueeze(1)
        out.append((c + base).reshape(-1, 4))
    return torch.cat(out)


def face_anchors(arch: Arch, device: torch.device | str | None = None) -> torch.Tensor:
    """Face anchors [num_positions(arch), 4] (x1, y1, x2, y2, input pixels), cached per arch."""
    return _anchors(*_key(arch)).to(device)


@dataclass
class FaceOutputs:
    """The face head's raw outputs, flattened over levels (rows as :func:`face_anchors`).

    ``cls`` [B, P, K] effective class logits (max-out applied), ``box`` [B, P, 4] second-step
    deltas, ``cls1`` [B, S, K] first-step logits of the first S rows (the STC levels) or None,
    ``box1`` [B, R, 4] first-step deltas of the last R rows (the STR levels) or None.
    """

    cls: torch.Tensor
    box: torch.Tensor
    cls1: torch.Tensor | None
    box1: torch.Tensor | None

    @property
    def stc_rows(self) -> int:
        return 0 if self.cls1 is None else self.cls1.shape[1]

    @property
    def str_rows(self) -> int:
        return 0 if self.box1 is None else self.box1.shape[1]


def outputs_per_level(arch: Arch) -> list[tuple[str, ...]]:
    """The output names of each out level, in ``Detector.forward`` order."""
    n = len(arch.out_levels)
    return [("cls", "box") + (("cls1",) if li < arch.stc_levels else ()) + (("box1",) if li >= n - arch.str_levels else ())
            for li in range(n)]


def split_outputs(outputs: tuple[torch.Tensor, ...], arch: Arch, num_classes: int) -> FaceOutputs:
    """Read ``Detector.forward``'s face-head outputs (see :class:`FaceOutputs`)."""
    k, it = num_classes, iter(outputs)
    per: dict[str, list[torch.Tensor]] = {"cls": [], "box": [], "cls1": [], "box1": []}
    for names in outputs_per_level(arch):
        for name in names:
            per[name].append(next(it))
    cls = []
    for li, t in enumerate(per["cls"]):
        if li == 0 and arch.maxout:
            b = t.shape[0]
            v = t.permute(0, 2, 3, 1).reshape(b, -1, k + arch.maxout)
            cls.append(v[..., :k] - v[..., k:].amax(-1, keepdim=True))
        else:
            cls.append(flatten_levels([t], k))
    return FaceOutputs(torch.cat(cls, 1), flatten_levels(per["box"], 4),
                       flatten_levels(per["cls1"], k) if per["cls1"] else None,
                       flatten_levels(per["box1"], 4) if per["box1"] else None)


def second_step_anchors(f: FaceOutputs, anchors: torch.Tensor) -> torch.Tensor:
    """Anchors of the second step [B, P, 4]: the STR levels' anchors refined by ``box1``."""
    b = f.box.shape[0]
    base = anchors.to(f.box.dtype).expand(b, *anchors.shape)
    if f.box1 is None:
        return base
    r = f.str_rows
    refined = decode_deltas(f.box1, anchors[-r:].to(f.box1.dtype))
    return torch.cat((base[:, : anchors.shape[0] - r], refined), 1)


def decode(outputs: tuple[torch.Tensor, ...], arch: Arch, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [B, P, 4] (second-step deltas on the refined anchors) and scores [B, P, K]
    (sigmoid of the effective logits, 0 where the first step of STC rejected the anchor)."""
    f = split_outputs(outputs, arch, num_classes)
    anchors = face_anchors(arch, f.box.device)
    boxes = decode_deltas(f.box, second_step_anchors(f, anchors))
    scores = f.cls.sigmoid()
    if f.cls1 is not None:
        s = f.stc_rows
        kept = scores[:, :s] * (f.cls1.sigmoid() >= STC_REJECT).to(scores.dtype)
        scores = torch.cat((kept, scores[:, s:]), 1)
    return boxes, scores
