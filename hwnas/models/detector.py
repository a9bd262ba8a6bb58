"""The detector, assembled from the units of ``Arch.placed_units`` and nothing else."""
from __future__ import annotations

import re

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.models.blocks import build
from hwnas.spec.arch import Arch
from hwnas.spec.units import Placed, Unit

_LEVEL = re.compile(r"^head\.p\d+\.")
_LEVEL_KEY = re.compile(r"^blocks\.head_p\d+_")  # the same, in state_dict keys


def _shared_role(role: str) -> str:
    """Head units are shared across levels: ``head.p4.cls.0`` and ``head.p3.cls.0`` are one module."""
    return _LEVEL.sub("head.", role)


_LEVEL_CONV = re.compile(r"^blocks\.head_p\d+_(\w+?)\.0\.")  # the conv of a per-level head module


def level_free_key(key: str) -> str:
    """A state-dict key named as it is shared across pyramid levels: a head unit's conv is one
    module for all levels (``blocks.head_p3_cls_0.0.weight`` and ``blocks.head_p4_cls_0.0.weight``
    are one tensor, ``blocks.head_cls_0.0.weight``) while its BatchNorm is per level and keeps the
    level. The same key then names the same tensor in a detector with one level or with five
    (the weight-sharing supernet relies on it: :mod:`hwnas.search.supernet`)."""
    return _LEVEL_CONV.sub(r"blocks.head_\1.0.", key)


def _same_but_size(a: Unit, b: Unit) -> bool:
    return a.kind == b.kind and a.cin == b.cin and a.cout == b.cout and a.kernel == b.kernel \
        and a.stride == b.stride and a.norm == b.norm and a.act == b.act


class Detector(nn.Module):
    """A whole detector whose ``forward`` returns raw tensors only (exportable as is).

    The outputs are the head kind's (``arch.head.output_names``; e.g. a one-stage head: per level
    ``cls`` [B, A*K, h, w] and ``box`` [B, A*4, h, w]; the two-stage head: per level RPN ``obj``
    and ``box``, then ``proposals`` [B, N, 4], ``roi_cls`` [B, N, K+1] and ``roi_box`` [B, N, 4K]:
    see :mod:`hwnas.heads`). ``output_names`` lists them. Decoding, NMS and losses live outside.
    """

    def __init__(self, arch: Arch, num_classes: int, placed: list[Placed]) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.placed = placed
        self.blocks = nn.ModuleDict()
        first: dict[str, Unit] = {}
        convs: dict[str, nn.Module] = {}
        for p in placed:
            key = _shared_role(p.role)
            if key in first and not _same_but_size(first[key], p.unit):
                raise HwnasError(f"shared head unit {p.role} differs from {key}: {p.unit.key()}")
            first.setdefault(key, p.unit)
            if key != p.role and p.unit.norm == "bn":
                # A head unit shared across levels keeps one conv but a BatchNorm per level (the
                # "domain-specific norm" of detectron2's RetinaNet head, EfficientDet's per-level BN):
                # pyramid levels have different feature statistics, and one set of running statistics
                # for all of them scored a trained face-s's P5-P7 positives at 0.02 in eval mode
                # against 0.30 with batch statistics (docs/training.md).
                m = build(p.unit)
                m[0] = convs.setdefault(key, m[0])
                self.blocks[p.role.replace(".", "_")] = m
            elif key == p.role or key.replace(".", "_") not in self.blocks:
                self.blocks[key.replace(".", "_")] = build(p.unit)
        self.stage_lengths = [len(s) for s in arch.stages]
        self.output_names = arch.head.output_names(arch)

    @classmethod
    def from_arch(cls, arch: Arch, num_classes: int) -> "Detector":
        if not isinstance(arch, Arch):  # strings are parsed once, at the boundary (Arch.parse)
            raise TypeError(f"Detector.from_arch takes an Arch, not {type(arch).__name__}: use Arch.parse(...)")
        return cls(arch, num_classes, arch.placed_units(num_classes))

    def at_size(self, input_hw: tuple[int, int]) -> "Detector":
        """This detector, with its weights, built for another input size (multi-scale testing):
        units carry the sizes they run at (the FPN's upsampling, the RoI stage), the weights do not."""
        if tuple(input_hw) == self.arch.input_hw:
            return self
        from dataclasses import replace

        other = Detector.from_arch(replace(self.arch, input_hw=tuple(input_hw)), self.num_classes)
        other.load_state_dict(self.state_dict())
        p = next(self.parameters())
        return other.to(p.device, p.dtype).train(self.training)

    def module_for(self, role: str) -> nn.Module:
        """The module that runs at ``role`` (a role of ``arch.placed_units``): its own where it has
        one (the stem, the backbone, the neck, a head unit with a norm per level), else the head's
        module shared across levels."""
        own = role.replace(".", "_")
        return self.blocks[own] if own in self.blocks else self.blocks[_shared_role(role).replace(".", "_")]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also reads weights saved before the head's BatchNorms were per level (one shared module,
        ``blocks.head_cls_0.*``): each level's module gets the shared one's weights and statistics,
        so such a detector computes exactly what it did."""
        state_dict = dict(state_dict)
        mine = self.state_dict()
        shared = {k: _LEVEL_KEY.sub("blocks.head_", k) for k in mine}  # per-level key -> the old shared one
        for k, old in shared.items():
            if k not in state_dict and old in state_dict:
                state_dict[k] = state_dict[old]
        for old in set(shared.values()) - mine.keys():
            state_dict.pop(old, None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    _m = module_for

    # ------------------------------------------------------------------ forward
    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The pyramid the head runs on, keyed by level."""
        a = self.arch
        x = self._m("stem.1")(self._m("stem.0")(x))
        feats = {}
        for si, n in enumerate(self.stage_lengths):
            for bi in range(n):
                x = self._m(f"stage{si + 1}.{bi}")(x)
            feats[si + 2] = x
        top = a.backbone_top_level
        if a.neck == "none":
            return {top: feats[top]}
        lo, hi = a.levels
        outs, inner = {}, None
        for level in range(min(hi, top), lo - 1, -1):
            inner, outs[level] = self._m(f"neck.p{level}")(feats[level], inner)
        for level in range(top + 1, hi + 1):
            outs[level] = self._m(f"neck.p{level}")(outs[level - 1])
        if a.neck == "pafpn":
            for level in range(lo + 1, hi + 1):
                outs[level] = self._m(f"neck.n{level}")(outs[level - 1], outs[level])
        return outs

    def forward(self, x: torch.Tensor, extra_boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Raw outputs (see the class). ``extra_boxes`` [B, M, 4]: training only, two-stage heads only:
        boxes appended to the RoI stage's proposals (``hwnas.heads.losses.DetectionLoss.extra_boxes``)."""
        return self.arch.head.forward(self.arch, self.features(x), self._m, extra_boxes)
