"""The detector, assembled from the units of ``Arch.placed_units`` and nothing else."""
from __future__ import annotations

import re

import torch
from torch import nn

from hwnas.arch import Arch, Placed
from hwnas.errors import HwnasError
from hwnas.units import Unit, build

_LEVEL = re.compile(r"^head\.p\d+\.")


def _shared_role(role: str) -> str:
    """Head units are shared across levels: ``head.p4.cls.0`` and ``head.p3.cls.0`` are one module."""
    return _LEVEL.sub("head.", role)


def _same_but_size(a: Unit, b: Unit) -> bool:
    return a.kind == b.kind and a.cin == b.cin and a.cout == b.cout and a.kernel == b.kernel \
        and a.stride == b.stride and a.norm == b.norm and a.act == b.act


class Detector(nn.Module):
    """A whole detector whose ``forward`` returns raw tensors only (exportable as is).

    Outputs, in order, for a one-stage head: per level ``cls`` [B, A*K, h, w], ``box``
    [B, A*4, h, w] (and ``ctr`` [B, 1, h, w] for FCOS; the face head's lowest level ``cls`` holds
    A*(K+m) channels with max-out, and its two-step levels add ``cls1`` [B, A*K, h, w] or ``box1``
    [B, A*4, h, w]: :mod:`hwnas.heads.face`). For the two-stage head: per level RPN
    ``obj`` and ``box``, then ``proposals`` [B, N, 4], ``roi_cls`` [B, N, K+1] and
    ``roi_box`` [B, N, 4K]. ``output_names`` lists them. Decoding, NMS and losses live outside.
    """

    def __init__(self, arch: Arch, num_classes: int, placed: list[Placed]) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.placed = placed
        self.blocks = nn.ModuleDict()
        first: dict[str, Unit] = {}
        for p in placed:
            key = _shared_role(p.role)
            if key in first:
                if not _same_but_size(first[key], p.unit):
                    raise HwnasError(f"shared head unit {p.role} differs from {key}: {p.unit.key()}")
                continue
            first[key] = p.unit
            self.blocks[key.replace(".", "_")] = build(p.unit)
        self.stage_lengths = [len(s) for s in arch.stages]
        self.output_names = self._output_names()

    @classmethod
    def from_arch(cls, arch: Arch | str, num_classes: int) -> "Detector":
        if isinstance(arch, str):
            arch = Arch.parse(arch)
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
        """The module that runs at ``role`` (a role of ``arch.placed_units``)."""
        return self.blocks[_shared_role(role).replace(".", "_")]

    def _m(self, role: str) -> nn.Module:
        return self.blocks[role.replace(".", "_")]

    def _output_names(self) -> list[str]:
        a = self.arch
        if a.head == "rcnn":
            per = [f"p{lv}_{n}" for lv in a.out_levels for n in ("obj", "box")]
            return per + ["proposals", "roi_cls", "roi_box"]
        if a.head == "face":
            return [f"p{lv}_{n}" for lv, names in zip(a.out_levels, self._face_preds()) for n, _ in names]
        preds = ("cls", "box") if a.head == "retina" else ("cls", "box", "ctr")
        return [f"p{lv}_{n}" for lv in a.out_levels for n in preds]

    def _face_preds(self) -> list[list[tuple[str, str]]]:
        """Per level of the face head: (output name, module role) of each prediction, in output order."""
        a = self.arch
        n = len(a.out_levels)
        out = []
        for li in range(n):
            preds = [("cls", "head.cls_maxout" if a.maxout and li == 0 else "head.cls"), ("box", "head.box")]
            if li < a.stc_levels:
                preds.append(("cls1", "head.cls1"))
            if li >= n - a.str_levels:
                preds.append(("box1", "head.box1"))
            out.append(preds)
        return out

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
        """Raw outputs (see the class). ``extra_boxes`` [B, M, 4]: training only, rcnn head only:
        boxes appended to the RoI stage's proposals (``hwnas.heads.DetectionLoss.extra_boxes``)."""
        a = self.arch
        pyramid = self.features(x)
        out: list[torch.Tensor] = []
        if a.head == "rcnn":
            objs, deltas = [], []
            for level in a.out_levels:
                t = self._m("head.rpn")(pyramid[level])
                objs.append(self._m("head.obj")(t))
                deltas.append(self._m("head.box")(t))
                out += [objs[-1], deltas[-1]]
            feats = [pyramid[level] for level in a.out_levels]
            roi = self._m("head.roi")
            extra = {} if extra_boxes is None else {"extra_boxes": extra_boxes}
            return (*out, *roi(*feats, *objs, *deltas, **extra))
        d = a.head_depth
        face = self._face_preds() if a.head == "face" else None
        for li, level in enumerate(a.out_levels):
            f = pyramid[level]
            cls_t, box_t = f, f
            for i in range(d):
                cls_t = self._m(f"head.cls.{i}")(cls_t)
                box_t = self._m(f"head.box.{i}")(box_t)
            if face is not None:
                # first steps (cls1, box1) predict from the neck's features, the second from the towers
                src = {"cls": cls_t, "box": box_t, "cls1": f, "box1": f}
                out += [self._m(role)(src[name]) for name, role in face[li]]
                continue
            out.append(self._m("head.cls")(cls_t))
            out.append(self._m("head.box")(box_t))
            if a.head == "fcos":
                out.append(self._m("head.ctr")(box_t))  # centerness shares the box tower (FCOS)
        return tuple(out)
