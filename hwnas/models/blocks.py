"""The module builders of the units (:mod:`hwnas.spec.units`): one ``nn.Module`` per unit kind.

``build(unit)`` returns the ``nn.Module`` the detector uses at a unit's place and
``example_inputs(unit)`` the tensors it is timed on; ``Detector.from_arch`` assembles these and
the profiler times these, so a latency table keyed by ``unit.key()`` cannot drift from the model.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.errors import HwnasError
from hwnas.heads.boxes import decode_boxes
from hwnas.heads.rcnn import RPN_ANCHORS, check_roi_impl, rpn_anchors
from hwnas.models.roi_align import GatherMultiScaleRoIAlign
from hwnas.spec.units import HW, Unit, out_hw

MBCONV_EXPANSION = 6


# ----------------------------------------------------------------------------- primitives
def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        # At least two channels a group: a one-channel group on a 1x1 map (the top level of a
        # small input) has a single value to normalise and PyTorch refuses to run it.
        groups = next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 2), 1)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def act_layer(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "relu6": nn.ReLU6(inplace=True)}.get(kind, nn.Identity())


class ConvNormAct(nn.Sequential):
    """conv (bias only without a norm) -> norm -> activation: the basic fused kernel."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "bn",
                 act: str = "relu", groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=norm == "none"),
            norm_layer(norm, cout),
            act_layer(act),
        )


# ----------------------------------------------------------------------------- blocks
class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a (projected when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, stride, norm)
        self.conv2 = ConvNormAct(cout, cout, 3, 1, norm, act="none")
        self.shortcut = (ConvNormAct(cin, cout, 1, stride, norm, act="none")
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce to cout/4, 3x3 (carrying the stride), 1x1 expand."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        mid = cout // 4
        self.conv1 = ConvNormAct(cin, mid, 1, 1, norm)
        self.conv2 = ConvNormAct(mid, mid, 3, stride, norm)
        self.conv3 = ConvNormAct(mid, cout, 1, 1, norm, act="none")
        self.shortcut = (ConvNormAct(cin, cout, 1, stride, norm, act="none")
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        mid = cin * MBCONV_EXPANSION
        self.block = nn.Sequential(
            ConvNormAct(cin, mid, 1, 1, norm, "relu6"),
            ConvNormAct(mid, mid, 3, stride, norm, "relu6", groups=mid),
            ConvNormAct(mid, cout, 1, 1, norm, act="none"),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two strided branches (stride 2), concat, channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        if stride == 1 and cin != cout:
            raise HwnasError(f"shuffle unit with stride 1 needs cin == cout, got {cin} -> {cout}")
        half = cout // 2
        bin_ = cin if stride == 2 else cin // 2
        self.stride = stride
        self.branch2 = nn.Sequential(
            ConvNormAct(bin_, half, 1, 1, norm),
            ConvNormAct(half, half, 3, stride, norm, act="none", groups=half),
            ConvNormAct(half, half, 1, 1, norm),
        )
        self.branch1 = (nn.Sequential(
            ConvNormAct(cin, cin, 3, stride, norm, act="none", groups=cin),
            ConvNormAct(cin, half, 1, 1, norm),
        ) if stride == 2 else None)

    def forward(self, x):
        if self.branch1 is None:
            a, b = x.chunk(2, dim=1)
            y = torch.cat((a, self.branch2(b)), dim=1)
        else:
            y = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "mbconv": InvertedResidual,
    "shuffle": ShuffleUnit,
}


# ----------------------------------------------------------------------------- neck nodes
class FPNNode(nn.Module):
    """One FPN level: 1x1 lateral, plus the upsampled coarser level when there is one, then a 3x3
    output conv. Returns (inner, out): ``inner`` feeds the next finer level, ``out`` is P_l."""

    def __init__(self, cin: int, cout: int, hw: HW, top: bool) -> None:
        super().__init__()
        self.lateral = nn.Conv2d(cin, cout, 1)
        self.output = nn.Conv2d(cout, cout, 3, padding=1)
        self.hw = hw
        self.top = top

    def forward(self, c, coarser=None):
        inner = self.lateral(c)
        if coarser is not None:
            # A static output size keeps the exported graph free of shape arithmetic.
            inner = inner + F.interpolate(coarser, size=self.hw, mode="nearest")
        return inner, self.output(inner)


class PANNode(nn.Module):
    """One bottom-up PAFPN level: strided 3x3 on the finer output, add the FPN level, 3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, channels, 3, 2, 1)
        self.output = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, finer, p):
        return self.output(F.relu(self.down(finer) + p))


# ----------------------------------------------------------------------------- RoI stage
def set_roi_impl(module: nn.Module, impl: str) -> int:
    """Switch every :class:`RoIStage` inside ``module`` (a unit or a whole detector) to ``impl``;
    returns how many were switched."""
    check_roi_impl(impl)
    stages = [m for m in module.modules() if isinstance(m, RoIStage)]
    for m in stages:
        m.roi_impl = impl
    return len(stages)


class RoIStage(nn.Module):
    """Second stage of a two-stage detector at a fixed proposal count N.

    Takes the pyramid and the RPN outputs of every level, keeps the top-N anchors by
    objectness (decoded and clipped), pools 7x7 per proposal with multi-scale RoIAlign and
    runs the fully connected box head. Returns (proposals [B,N,4], class logits
    [B,N,K+1], box deltas [B,N,4K]). NMS on proposals belongs to post-processing.

    ``roi_impl`` picks the RoIAlign form (same weights, same numbers to ~1e-5):
    ``"torchvision"`` (default; exports ONNX RoiAlign + NonZero) or ``"gather"``
    (:mod:`hwnas.models.roi_align`: plain Gather/arithmetic, every level pooled for every box, about
    ``len(levels)`` times the sampling work). It is a property of the backend, not of the unit,
    decided in one place (:func:`hwnas.heads.rcnn.choose_roi_impl`) and switched with :func:`set_roi_impl`.
    """

    def __init__(self, u: Unit, roi_impl: str = "torchvision") -> None:
        super().__init__()
        from torchvision.ops import MultiScaleRoIAlign

        self.n = u.proposals
        self.image_hw = u.image_hw
        self.names = [f"p{level}" for level in u.levels]
        self.register_buffer("anchors", rpn_anchors(u.image_hw, u.levels, u.level_hws), persistent=False)
        self.pool = MultiScaleRoIAlign(self.names, output_size=7, sampling_ratio=2)
        self.gather_pool = GatherMultiScaleRoIAlign(u.level_hws, u.image_hw, out=7, ratio=2)
        self.roi_impl = check_roi_impl(roi_impl)
        layers, cin = [], u.cin * 49
        for _ in range(u.depth):
            layers += [nn.Linear(cin, u.width), nn.ReLU(inplace=True)]
            cin = u.width
        self.fc = nn.Sequential(*layers)
        self.cls = nn.Linear(cin, u.classes + 1)
        self.box = nn.Linear(cin, 4 * u.classes)

    def forward(self, *xs: torch.Tensor, extra_boxes: torch.Tensor | None = None):
        # Flat inputs (features, then objectness, then deltas, one per level) keep export and
        # timing simple: every backend takes a flat tuple of tensors. ``extra_boxes`` [B, M, 4]
        # is for training only (hwnas.heads.losses.DetectionLoss.extra_boxes): ground truth appended to
        # the proposals so the box head sees positives before the RPN is any good; the outputs
        # then hold N + M rows. Export and timing never pass it.
        n = len(self.names)
        feats, objs, deltas = xs[:n], xs[n:2 * n], xs[2 * n:]
        b = feats[0].shape[0]
        obj = torch.cat([o.permute(0, 2, 3, 1).reshape(b, -1) for o in objs], dim=1)
        dlt = torch.cat([d.permute(0, 2, 3, 1).reshape(b, -1, 4) for d in deltas], dim=1)
        k = min(self.n, obj.shape[1])
        _, idx = obj.topk(k, dim=1)
        sel = torch.gather(dlt, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = decode_boxes(sel, self.anchors[idx])
        h, w = self.image_hw
        boxes = torch.stack((boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                             boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)), dim=-1)
        if extra_boxes is not None:
            # Proposals are inputs to the box head, not something it trains through (Faster R-CNN).
            boxes = torch.cat((boxes.detach(), extra_boxes.to(boxes)), dim=1)
            k = boxes.shape[1]
        # Proposals clamped at the image border can have no area; the level assignment takes the
        # log of the area (-inf, which int8 calibration cannot range). Pool at least 1 px instead:
        # the same level and nearly the same samples.
        pool_boxes = torch.cat((boxes[..., :2], torch.maximum(boxes[..., 2:], boxes[..., :2] + 1.0)), dim=-1)
        if self.roi_impl == "gather":
            pooled = self.gather_pool(list(feats), pool_boxes)
        else:
            pooled = self.pool(dict(zip(self.names, feats)), list(pool_boxes.unbind(0)), [self.image_hw] * b)
        x = self.fc(pooled.flatten(1))
        return boxes, self.cls(x).reshape(b, k, -1), self.box(x).reshape(b, k, -1)


# ----------------------------------------------------------------------------- the builders
def _block(u: Unit) -> nn.Module:
    return BLOCKS[u.kind](u.cin, u.cout, u.stride, u.norm)


def _x(c: int, hw: HW) -> torch.Tensor:
    return torch.randn(1, c, *hw)


BUILDERS: dict[str, tuple[Callable[[Unit], nn.Module], Callable[[Unit], tuple]]] = {
    # kind: (build, example inputs at batch 1)
    "conv": (lambda u: ConvNormAct(u.cin, u.cout, u.kernel, u.stride, u.norm, u.act),
             lambda u: (_x(u.cin, u.hw),)),
    **{name: (_block, lambda u: (_x(u.cin, u.hw),)) for name in BLOCKS},
    "fpn_node": (lambda u: FPNNode(u.cin, u.cout, u.hw, u.top),
                 lambda u: (_x(u.cin, u.hw),) if u.top else (_x(u.cin, u.hw), _x(u.cout, out_hw(u.hw, 2)))),
    "pan_node": (lambda u: PANNode(u.cin),
                 lambda u: (_x(u.cin, u.hw), _x(u.cin, out_hw(u.hw, 2)))),
    "roi": (RoIStage,
            lambda u: (*[_x(u.cin, hw) for hw in u.level_hws],
                       *[_x(RPN_ANCHORS, hw) for hw in u.level_hws],
                       *[_x(4 * RPN_ANCHORS, hw) for hw in u.level_hws])),
}


def build(unit: Unit) -> nn.Module:
    """The module the detector uses for this unit (freshly initialised, eval mode not set)."""
    return BUILDERS[unit.kind][0](unit)


def example_inputs(unit: Unit, batch: int = 1) -> tuple:
    """Random inputs of the shapes the unit runs at inside its detector."""
    torch.manual_seed(0)
    xs = BUILDERS[unit.kind][1](unit)
    if batch == 1:
        return xs
    return tuple(x.expand(batch, *x.shape[1:]).contiguous() for x in xs)
