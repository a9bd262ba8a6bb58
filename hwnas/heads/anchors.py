"""The one layout that ties anchors (and points) to the detector's output channels.

Layout (the single statement of it; losses, post-processing and export all follow it)
----------------------------------------------------------------------------------------
A per-level head output of shape ``[B, A*C, h, w]`` (``A`` anchors per location, ``C`` values per
anchor: ``K`` class logits or 4 box values) is read with :func:`flatten_levels`::

    t.permute(0, 2, 3, 1).reshape(B, h * w * A, C)    # then concatenated over levels

so output channel ``a*C + c`` is value ``c`` of anchor ``a`` (for ``cls``: channel ``a*K + k``),
and row ``r`` of the flattened tensor is, in order: the level (``arch.out_levels``, level-major),
then the location row-major ``(y, x)``, then the anchor ``a``. Every head kind generates its
anchor/point tensor in exactly this row order (``retina_anchors``, ``fcos_points``,
``face_anchors``, ``rpn_anchors_for`` in :mod:`hwnas.heads.retina`, ``fcos``, ``face`` and
``rcnn``), so row ``r`` of ``flatten_levels(cls)`` and row ``r`` of the anchors describe the same
anchor. ``A`` is the kind's ``ANCHORS``. The cached tensors are shared: do not modify them in place.

Anchor/point centres sit at ``(x + 0.5, y + 0.5) * (input size / level size)`` (:func:`centers`);
anchor sizes and FCOS strides use the nominal stride ``2**level``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hwnas.spec.units import HW

if TYPE_CHECKING:
    from hwnas.spec.arch import Arch

__all__ = ["anchor_key", "anchors_per_location", "centers", "flatten_levels", "num_positions"]


def anchors_per_location(arch: "Arch") -> int:
    return arch.head.ANCHORS


def num_positions(arch: "Arch") -> int:
    """Rows of the flattened per-level outputs: sum over levels of h * w * A."""
    return arch.head.positions(arch)


def flatten_levels(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...], c: int) -> torch.Tensor:
    """Per-level ``[B, A*c, h, w]`` -> ``[B, sum h*w*A, c]`` in the module's documented row order."""
    b = tensors[0].shape[0]
    return torch.cat([t.permute(0, 2, 3, 1).reshape(b, -1, c) for t in tensors], dim=1)


def take_rows(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Rows ``rows`` [B, M] of per-image rows ``t`` [B, P, C] -> [B, M, C]; None: every row."""
    if rows is None:
        return t
    return torch.gather(t, 1, rows.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def centers(image_hw: HW, hw: HW) -> torch.Tensor:
    """Location centres [h*w, 2] (x, y), row-major, in input pixels."""
    h, w = hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (image_hw[0] / h)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (image_hw[1] / w)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((cx, cy), dim=-1).reshape(-1, 2)


def anchor_key(arch: "Arch") -> tuple:
    """(input size, out levels, level sizes): anchors depend on these facts only, so archs that
    share them share one cached tensor."""
    return arch.input_hw, arch.out_levels, tuple(arch.level_hw(level) for level in arch.out_levels)
