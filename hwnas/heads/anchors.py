"""Anchors, FCOS points and the one layout that ties them to the detector's output channels.

Layout (the single statement of it; losses, post-processing and export all follow it)
----------------------------------------------------------------------------------------
A per-level head output of shape ``[B, A*C, h, w]`` (``A`` anchors per location, ``C`` values per
anchor: ``K`` class logits or 4 box values) is read with :func:`flatten_levels`::

    t.permute(0, 2, 3, 1).reshape(B, h * w * A, C)    # then concatenated over levels

so output channel ``a*C + c`` is value ``c`` of anchor ``a`` (for ``cls``: channel ``a*K + k``),
and row ``r`` of the flattened tensor is, in order: the level (``arch.out_levels``, level-major),
then the location row-major ``(y, x)``, then the anchor ``a``. Every anchor/point tensor below is
generated in exactly this row order, so row ``r`` of ``flatten_levels(cls)`` and row ``r`` of
``retina_anchors(arch)`` describe the same anchor. The cached tensors are shared: do not modify
them in place.

* retina: ``A = RETINA_ANCHORS = 9``, ``a = ratio_index * 3 + scale_index``; sizes
  ``4 * 2**level * {2^0, 2^(1/3), 2^(2/3)}``, ratios (h/w) ``{0.5, 1, 2}``.
* fcos: ``A = 1``; one point per location; ``box`` holds log-distances (l, t, r, b) in units of
  the level stride (:func:`hwnas.heads.postprocess.decode_fcos`).
* face: ``A = FACE_ANCHORS = 2``, sizes and ratio in :mod:`hwnas.heads.face`.
* rcnn RPN: ``A = RPN_ANCHORS``; anchors from :func:`hwnas.units.rpn_anchors` (the same tensor
  the exported :class:`~hwnas.units.RoIStage` uses), same row order.

Anchor/point centres sit at ``(x + 0.5, y + 0.5) * (input size / level size)`` as in
``rpn_anchors``; anchor sizes and FCOS strides use the nominal stride ``2**level``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.units import FACE_ANCHORS, HW, RETINA_ANCHORS, RPN_ANCHORS, rpn_anchors

__all__ = [
    "RETINA_RATIOS", "RETINA_SCALES", "RETINA_SIZE_PER_STRIDE", "anchors_per_location", "default_fcos_ranges",
    "flatten_levels", "fcos_points", "fcos_ranges", "num_positions", "retina_anchors", "rpn_anchors_for",
]

RETINA_RATIOS = (0.5, 1.0, 2.0)
RETINA_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RETINA_SIZE_PER_STRIDE = 4
assert len(RETINA_RATIOS) * len(RETINA_SCALES) == RETINA_ANCHORS


def anchors_per_location(arch: Arch) -> int:
    return {"retina": RETINA_ANCHORS, "fcos": 1, "rcnn": RPN_ANCHORS, "face": FACE_ANCHORS}[arch.head]


def num_positions(arch: Arch) -> int:
    """Rows of the flattened per-level outputs: sum over levels of h * w * A."""
    return sum(h * w for h, w in _level_hws(arch)) * anchors_per_location(arch)


def flatten_levels(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...], c: int) -> torch.Tensor:
    """Per-level ``[B, A*c, h, w]`` -> ``[B, sum h*w*A, c]`` in the module's documented row order."""
    b = tensors[0].shape[0]
    return torch.cat([t.permute(0, 2, 3, 1).reshape(b, -1, c) for t in tensors], dim=1)


def _level_hws(arch: Arch) -> tuple[HW, ...]:
    return tuple(arch.level_hw(level) for level in arch.out_levels)


def _centers(image_hw: HW, hw: HW) -> torch.Tensor:
    """Location centres [h*w, 2] (x, y), row-major, in input pixels."""
    h, w = hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (image_hw[0] / h)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (image_hw[1] / w)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((cx, cy), dim=-1).reshape(-1, 2)


def _key(arch: Arch) -> tuple:
    # Anchors depend on these facts only; archs that share them share one cached tensor.
    return arch.input_hw, arch.out_levels, _level_hws(arch)


@lru_cache(maxsize=64)
def _retina(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]) -> torch.Tensor:
    out = []
    ratios = torch.tensor(RETINA_RATIOS).repeat_interleave(len(RETINA_SCALES))  # ratio-major
    scales = torch.tensor(RETINA_SCALES).repeat(len(RETINA_RATIOS))  # scale-minor
    for level, hw in zip(levels, level_hws):
        size = RETINA_SIZE_PER_STRIDE * 2 ** level * scales
        hs, ws = size * ratios.sqrt(), size / ratios.sqrt()
        base = torch.stack((-ws, -hs, ws, hs), dim=1) / 2  # [A, 4]
        c = _centers(image_hw, hw).repeat(1, 2).unsqueeze(1)  # [hw, 1, 4]
        out.append((c + base).reshape(-1, 4))
    return torch.cat(out)


@lru_cache(maxsize=64)
def _rpn(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]) -> torch.Tensor:
    return rpn_anchors(image_hw, levels, level_hws)


@lru_cache(maxsize=64)
def _points(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    pts = [_centers(image_hw, hw) for hw in level_hws]
    strides = [torch.full((len(p),), float(2 ** level)) for p, level in zip(pts, levels)]
    return torch.cat(pts), torch.cat(strides)


def retina_anchors(arch: Arch, device: torch.device | str | None = None) -> torch.Tensor:
    """RetinaNet anchors [num_positions(arch), 4] (x1, y1, x2, y2, input pixels), cached per arch."""
    return _retina(*_key(arch)).to(device)


def rpn_anchors_for(arch: Arch, device: torch.device | str | None = None) -> torch.Tensor:
    """RPN anchors [num_positions(arch), 4]: :func:`hwnas.units.rpn_anchors` for this arch, cached."""
    return _rpn(*_key(arch)).to(device)


def fcos_points(arch: Arch, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS points [P, 2] (x, y, input pixels) and their level strides [P], cached per arch."""
    pts, strides = _points(*_key(arch))
    return pts.to(device), strides.to(device)


def default_fcos_ranges(arch: Arch) -> tuple[tuple[float, float], ...]:
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


def fcos_ranges(arch: Arch, ranges: tuple[tuple[float, float], ...] | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Per-point (lo, hi] range of max(l, t, r, b) [P, 2]; ``ranges`` has one pair per out level."""
    ranges = tuple(ranges) if ranges is not None else default_fcos_ranges(arch)
    if len(ranges) != len(arch.out_levels):
        raise HwnasError(f"fcos ranges: need one (lo, hi) pair per level {arch.out_levels}, got {len(ranges)}")
    counts = [h * w for h, w in _level_hws(arch)]
    r = torch.tensor(ranges, dtype=torch.float32)
    return r.repeat_interleave(torch.tensor(counts), dim=0).to(device)
