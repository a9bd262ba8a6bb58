"""Multi-scale RoIAlign written in plain tensor ops ("gather" form), for engines without RoiAlign.

TensorRT-RTX ships no plugin library, so ONNX ``RoiAlign`` does not parse, and the NonZero that
torchvision's level assignment exports (``torch.where(levels == l)``) is a plugin there too.
:class:`GatherMultiScaleRoIAlign` computes the same numbers as
``torchvision.ops.MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)`` (aligned=False,
FPN level rule, scales inferred from the feature sizes exactly as torchvision does) with
static shapes only: every level is pooled for every box (bilinear sampling on a fixed
``out*ratio`` grid via one row ``index_select`` per corner, i.e. ONNX Gather), and each box keeps
the level the FPN rule assigns it (a mask-weighted sum). It does ``len(levels)`` times the
sampling work of torchvision's form, so it is timed as what it is: backends that export this
form time it for the ``roi`` unit (see :class:`hwnas.models.blocks.RoIStage`).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatherMultiScaleRoIAlign", "infer_scale", "level_bounds"]

CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
EPS = 1e-6


def infer_scale(feature_hw: tuple[int, int], image_hw: tuple[int, int]) -> float:
    """torchvision's ``_infer_scale``: 2 ** round(log2(feature height / image height))."""
    approx = float(feature_hw[0]) / float(image_hw[0])
    return 2 ** float(torch.tensor(approx).log2().round())


def level_bounds(scales: list[float]) -> tuple[int, int]:
    """(k_min, k_max) as torchvision's ``_setup_scales`` derives them from the first and last scale."""
    k_min = -torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item()
    k_max = -torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item()
    return int(k_min), int(k_max)


def _axis_weights(start: torch.Tensor, length: torch.Tensor, size: int, out: int, ratio: int):
    """Sampling along one axis. start/length [..., 1] in feature pixels -> (low, high, w_low, w_high)
    each [..., out*ratio], matching torchvision's bilinear_interpolate (aligned=False)."""
    grid = (torch.arange(out * ratio, dtype=start.dtype, device=start.device) + 0.5) / ratio  # bin units
    p = start + grid * (length / out)
    valid = ((p >= -1.0) & (p <= size)).to(start.dtype)  # outside [-1, size]: the sample is 0
    p = p.clamp(min=0)
    low = p.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    p = torch.where(at_edge, low, p)
    frac = p - low
    return low.to(torch.int64), high.to(torch.int64), (1 - frac) * valid, frac * valid


def roi_align_gather(feat: torch.Tensor, boxes: torch.Tensor, scale: float, out: int = 7,
                     ratio: int = 2) -> torch.Tensor:
    """RoIAlign of ``boxes`` [B, N, 4] (image coordinates, x1 y1 x2 y2) on ``feat`` [B, C, H, W]
    with a fixed ``ratio`` x ``ratio`` sampling grid per bin. Returns [B, N, C, out, out]."""
    b, c, h, w = feat.shape
    n = boxes.shape[1]
    x1, y1, x2, y2 = (boxes * scale).unbind(-1)
    rw = (x2 - x1).clamp(min=1.0).unsqueeze(-1)
    rh = (y2 - y1).clamp(min=1.0).unsqueeze(-1)
    ylo, yhi, wylo, wyhi = _axis_weights(y1.unsqueeze(-1), rh, h, out, ratio)  # [B, N, S]
    xlo, xhi, wxlo, wxhi = _axis_weights(x1.unsqueeze(-1), rw, w, out, ratio)
    rows = feat.permute(0, 2, 3, 1).reshape(b * h * w, c)  # one row per pixel, channels last
    base = (torch.arange(b, device=feat.device) * (h * w)).view(b, 1, 1, 1)
    acc = None
    for yi, wy in ((ylo, wylo), (yhi, wyhi)):
        for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
            idx = base + (yi * w).unsqueeze(-1) + xi.unsqueeze(-2)  # [B, N, S, S]
            v = rows.index_select(0, idx.reshape(-1)).view(b, n, out * ratio, out * ratio, c)
            v = v * (wy.unsqueeze(-1) * wx.unsqueeze(-2)).unsqueeze(-1)
            acc = v if acc is None else acc + v
    # Average the ratio x ratio samples of each bin (count = ratio * ratio, as torchvision).
    acc = acc.view(b, n, out, ratio, out, ratio, c).mean(dim=(3, 5))
    return acc.permute(0, 1, 4, 2, 3)


class GatherMultiScaleRoIAlign(nn.Module):
    """Static-shape twin of ``MultiScaleRoIAlign(output_size=out, sampling_ratio=ratio)`` for fixed
    level sizes. forward(feats, boxes [B, N, 4]) -> [B * N, C, out, out] (torchvision's order)."""

    def __init__(self, level_hws: tuple[tuple[int, int], ...], image_hw: tuple[int, int],
                 out: int = 7, ratio: int = 2) -> None:
        super().__init__()
        self.scales = [infer_scale(hw, image_hw) for hw in level_hws]
        self.k_min, self.k_max = level_bounds(self.scales)
        self.out, self.ratio = out, ratio

    def forward(self, feats: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        b, n = boxes.shape[:2]
        c = feats[0].shape[1]
        if len(feats) == 1:
            pooled = roi_align_gather(feats[0], boxes, self.scales[0], self.out, self.ratio)
            return pooled.reshape(b * n, c, self.out, self.out)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        s = area.sqrt()
        lvl = torch.floor(CANONICAL_LEVEL + torch.log2(s / CANONICAL_SCALE) + EPS)
        lvl = lvl.clamp(min=self.k_min, max=self.k_max) - self.k_min  # [B, N]
        result = None
        for i, (f, scale) in enumerate(zip(feats, self.scales)):
            mask = (lvl == i).to(f.dtype).view(b, n, 1, 1, 1)
            v = roi_align_gather(f, boxes, scale, self.out, self.ratio) * mask
            result = v if result is None else result + v
        return result.reshape(b * n, c, self.out, self.out)

