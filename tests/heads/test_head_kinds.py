"""A head kind is a plugin: one defined here, registered in HEAD_KINDS, runs through everything.

``PointHead`` is a minimal anchor-free head written only in this file: a ``cls`` and a ``box``
3x3 conv per level (shared across levels, after the usual towers), a point positive for the
smallest box it lies in within ``r`` strides of the box centre, sigmoid focal loss on the
classes and GIoU on the boxes (log-distances in strides). Grammar ``point_d<depth>_c<width>_r<radius>``:
its own field ``r`` as well as the common ones. Nothing outside this file knows it: the grammar,
the walk, a real onnxruntime profile, the detector, training, post-processing and the deployable
ONNX graph all reach it through ``HEAD_KINDS``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torchvision.ops import box_iou

from conftest import FAST
from hwnas.spec.arch import Arch
from hwnas.errors import HwnasError
from hwnas.export.deploy import OnnxDetector, TorchDetector, export_deploy_onnx
from hwnas.heads import HEAD_KINDS
from hwnas.heads.anchors import centers, flatten_levels
from hwnas.heads.base import TowerHead, invalid
from hwnas.heads.boxes import decode_fcos, iou_loss
from hwnas.heads.losses import DetectionLoss, assign_points, init_head_priors
from hwnas.heads.postprocess import postprocess
from hwnas.latency.table import profile
from hwnas.models import Detector

K = 2
TEXT = "i64/basic_c8_1-2-2/fpn_p3-4_c16/point_d1_c16_r2/bn"


@dataclass(frozen=True)
class PointHead(TowerHead):
    radius: int = 1  # positives within this many strides of a box's centre

    TOKEN: ClassVar[str] = "point"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("d", "depth"), ("c", "width"), ("r", "radius"))
    EXAMPLE: ClassVar[str] = "point_d1_c16_r2"

    def check(self, arch: Arch) -> None:
        if not 1 <= self.radius <= 3:
            raise invalid(f"point head r{self.radius}: the centre radius must be 1..3 strides")
        super().check(arch)

    def points(self, arch: Arch) -> tuple[torch.Tensor, torch.Tensor]:
        pts = [centers(arch.input_hw, arch.level_hw(lv)) for lv in arch.out_levels]
        strides = [torch.full((len(p),), float(2 ** lv)) for p, lv in zip(pts, arch.out_levels)]
        return torch.cat(pts), torch.cat(strides)

    def loss_components(self) -> tuple[str, ...]:
        return ("loss_cls", "loss_box")

    def loss(self, loss, outputs, targets):
        per = self.per_level(loss.arch, outputs)
        cls, box = flatten_levels(per["cls"], loss.num_classes), flatten_levels(per["box"], 4)
        pts, strides = self.points(loss.arch)
        ranges = torch.tensor([[0.0, math.inf]]).expand(len(pts), 2)
        codes = [assign_points(pts, strides, ranges, t["boxes"], t["crowd"], radius=self.radius) for t in targets]
        pi, pp, gt, loss_cls = loss.focal(cls, targets, codes)
        loss_box = iou_loss(decode_fcos(box[pi, pp], pts[pp], strides[pp]), gt, "giou").sum() / max(1, len(pp))
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def decode(self, outputs, arch, num_classes):
        per = self.per_level(arch, outputs)
        cls = flatten_levels(per["cls"], num_classes)
        pts, strides = self.points(arch)
        return decode_fcos(flatten_levels(per["box"], 4), pts.to(cls), strides.to(cls)), cls.sigmoid()


@pytest.fixture
def point_head():
    """PointHead registered for one test, the registry restored afterwards."""
    assert "point" not in HEAD_KINDS
    HEAD_KINDS["point"] = PointHead
    yield PointHead
    del HEAD_KINDS["point"]


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """Noise images with one or two filled rectangles each; class c paints channel c."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 64, 64, generator=g) * 0.3
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for j in range(1 + i % 2):
            dx, dy = (int(v) for v in torch.randint(0, 6, (2,), generator=g))
            x, y = 4 + 28 * j + dx, 8 + 3 * dy
            w, h = 20 + 4 * j, 24
            c = (i + j) % K
            images[i, c, y:y + h, x:x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def test_grammar_and_checks_belong_to_the_kind(point_head) -> None:
    arch = Arch.parse(TEXT)
    assert isinstance(arch.head, point_head) and arch.head.radius == 2 and arch.head.kind == "point"
    assert str(arch) == TEXT and Arch.parse(str(arch)) == arch and hash(Arch.parse(TEXT)) == hash(arch)
    assert Arch.from_dict(arch.to_dict()) == arch
    for bad, words in ((TEXT.replace("_r2", "_r7"), "centre radius must be 1..3"),
                       (TEXT.replace("_r2", ""), "point head needs the fields d, c, r"),
                       (TEXT.replace("point_d1_c16_r2", "retina_d1_c16_r2"), "only the point head takes r (r2)"),
                       (TEXT.replace("point_d1_c16_r2", "point_d9_c16_r2"), "head depth 9")):
        with pytest.raises(HwnasError, match=words.replace("(", r"\(").replace(")", r"\)")):
            Arch.parse(bad)


def test_unregistered_kind_is_refused() -> None:
    with pytest.raises(HwnasError, match="head 'point': valid heads are retina, fcos, rcnn, face"):
        Arch.parse(TEXT)


def test_walk_profile_detector_training_postprocess_and_export(point_head, ort_cpu, tmp_path) -> None:
    arch = Arch.parse(TEXT)

    # the walk: towers and the two predictions per level, nothing else under head.
    placed = arch.placed_units(K)
    head = [p.role for p in placed if p.role.startswith("head.")]
    assert head == ["head.p3.cls.0", "head.p3.box.0", "head.p3.cls", "head.p3.box",
                    "head.p4.cls.0", "head.p4.box.0", "head.p4.cls", "head.p4.box"]
    assert {p.unit.cout for p in placed if p.role.endswith(".cls")} == {K}

    # a real onnxruntime profile of exactly those units, and the prediction over the walk
    table = profile(ort_cpu, tmp_path / "point.json", resolutions=(64,), num_classes=K, timing=FAST,
                    units=arch.units(K))
    assert {u.key() for u in arch.units(K)} <= set(table.entries)
    pred = table.predict(arch)
    assert pred.n_units == len(placed) and pred.breakdown_ms["head"] > 0 and pred.latency_ms > 0

    # the detector is built from the walk's units
    torch.manual_seed(0)
    det = Detector.from_arch(arch, K)
    assert det.output_names == ["p3_cls", "p3_box", "p4_cls", "p4_box"]
    init_head_priors(det)
    assert torch.allclose(det.module_for("head.p3.cls")[0].bias, torch.full((K,), -math.log(99)))

    # a few real training steps lower the loss
    images, targets = _batch(4)
    crit = DetectionLoss.for_arch(arch, K)
    # lr 2e-3: at 3e-3 some scores saturate at 1.0 within 30 steps, and NMS among exact ties may keep
    # other boxes in onnxruntime than in torch
    opt = torch.optim.Adam(det.parameters(), lr=2e-3)
    det.train()
    hist = []
    for _ in range(30):
        losses = crit(det(images), targets)
        assert set(losses) == {"loss", "loss_cls", "loss_box"}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        hist.append(losses["loss"].item())
    assert all(math.isfinite(v) for v in hist)
    assert sum(hist[-3:]) / 3 < 0.7 * hist[0], hist

    # post-processing through the kind's decode
    det.eval()
    with torch.no_grad():
        dets = postprocess(det(images), arch, K, score_thresh=0.05)
    assert len(dets) == 4 and all(len(d["boxes"]) > 0 for d in dets)
    assert all((d["boxes"] >= 0).all() and (d["boxes"] <= 64).all() for d in dets)

    # the deployable graph (decode + NMS inside) in onnxruntime gives the eager detections
    graph = export_deploy_onnx(det, nms="onnx", batch=2)
    runner = OnnxDetector(graph)
    assert runner.meta["roi_impl"] is None and runner.arch == arch
    got, ref = runner.detect(images), TorchDetector(det).detect(images)
    for g, r in zip(got, ref):
        assert len(g["boxes"]) == len(r["boxes"]) > 0
        # every detection has its twin on the other side (equal scores may come in either order)
        twin = (box_iou(g["boxes"], r["boxes"]) > 0.999) & (g["labels"][:, None] == r["labels"][None]) & (
            (g["scores"][:, None] - r["scores"][None]).abs() < 1e-4)
        assert twin.any(1).all() and twin.any(0).all()
