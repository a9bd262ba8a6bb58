"""Architectures: one frozen description of a whole detector, its text grammar, and the one walk.

Grammar (five fields separated by ``/``; see docs/arch-grammar.md)::

    i<H>[x<W>] / <block>_c<width>_<stages> / <neck> / <head> / <norm>

    i256/basic_c64_11-21-21-21/fpn_p3-5_c128/retina_d4_c128/bn

* backbone: ``block`` is basic | bottleneck | mbconv | shuffle; ``width`` the stage-1 channels
  (bottleneck outputs 4x); ``stages`` the SM-NAS encoding: stages separated by ``-``, ``1`` a
  block, ``2`` a block that doubles the channels and halves the resolution. Stage 1 holds only
  ``1``s (it runs at stride 4 after the stem); every later stage holds exactly one ``2``, so
  stage k ends at pyramid level k+1 (stride 2^(k+1)). ResNet-18 = ``11-21-21-21``.
* neck: ``none`` (the head runs on the last backbone level) | ``fpn_p<lo>-<hi>_c<width>`` |
  ``pafpn_p<lo>-<hi>_c<width>``; levels above the backbone's last come from strided 3x3 convs.
* head: ``<kind>_d<depth>_c<width>`` then the kind's own fields, one kind of
  :data:`hwnas.heads.HEAD_KINDS` (``Arch.head`` holds it): ``retina_d4_c128`` (anchor-based) |
  ``fcos_d4_c128`` (anchor-free) | ``rcnn_d<fc layers>_c<fc width>_n<proposals>`` (RPN + RoI box
  head at N proposals) | ``face_d<depth>_c<width>_stc<a>_str<b>_mo<m>`` (:mod:`hwnas.heads.face`).
* norm: ``bn`` | ``gn`` (backbone and head towers) | ``gnhead`` (BatchNorm in the backbone, which
  folds into its convs at export, GroupNorm in the head towers, as FCOS and ATSS place them).

``Arch.units(num_classes)`` yields the units the detector is assembled from, in build order;
the latency table, the predictor and ``Detector.from_arch`` all use that walk and no other.
The search spaces over archs are :mod:`hwnas.spec.space`. This module imports no torch: the
description layer (arch, units, head kinds, search space) stands without it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from hwnas.errors import HwnasError
from hwnas.heads import HEAD_KINDS, Head, parse_head
from hwnas.heads.retina import RetinaHead
from hwnas.limits import MAX_INPUT_SIDE
from hwnas.spec.units import HW, Placed, Unit, out_hw

__all__ = ["BLOCK_TYPES", "HEADS", "NECKS", "NORMS", "Arch", "Placed"]

BLOCK_TYPES = ("basic", "bottleneck", "mbconv", "shuffle")
NECKS = ("none", "fpn", "pafpn")
# the general-purpose heads: what the spaces search by default
HEADS = tuple(token for token, kind in HEAD_KINDS.items() if kind.GENERAL_PURPOSE)
NORMS = ("bn", "gn", "gnhead")
MAX_LEVEL = 7
GRAMMAR_HINT = "expected e.g. i256/basic_c64_11-21-21-21/fpn_p3-5_c128/retina_d4_c128/bn (see docs/arch-grammar.md)"


@dataclass(frozen=True)
class Arch:
    input_hw: HW
    block: str
    width: int
    stages: tuple[str, ...]
    neck: str = "fpn"
    levels: tuple[int, int] = (3, 5)
    neck_width: int = 128
    head: Head = RetinaHead(4, 128)  # a kind of hwnas.heads.HEAD_KINDS with its parameters
    norm: str = "bn"

    def __post_init__(self) -> None:
        if self.neck == "none":
            # Without a neck its width means nothing; one canonical value keeps equality == text equality.
            object.__setattr__(self, "neck_width", 0)
        self._check()

    # ------------------------------------------------------------------ validation
    def _check(self) -> None:
        def bad(msg: str) -> HwnasError:
            return HwnasError(f"invalid arch: {msg}")

        h, w = self.input_hw
        if h < 64 or w < 64 or h % 32 or w % 32 or max(h, w) > MAX_INPUT_SIDE:
            raise bad(f"input {h}x{w}: both sides must be multiples of 32 in 64..{MAX_INPUT_SIDE}")
        if self.block not in BLOCK_TYPES:
            raise bad(f"block {self.block!r}: valid blocks are {', '.join(BLOCK_TYPES)}")
        if not 8 <= self.width <= 512 or self.width % 8:
            raise bad(f"width {self.width}: must be a multiple of 8 in 8..512")
        if not 2 <= len(self.stages) <= 5:
            raise bad(f"{len(self.stages)} stages: use 2 to 5 stages separated by '-'")
        for i, s in enumerate(self.stages):
            if not s or set(s) - {"1", "2"}:
                raise bad(f"stage {i + 1} {s!r}: a stage is a non-empty string of '1' and '2'")
            if i == 0 and "2" in s:
                raise bad(f"stage 1 {s!r}: stage 1 runs at stride 4 and holds only '1' blocks")
            if i > 0 and s.count("2") != 1:
                raise bad(f"stage {i + 1} {s!r}: every stage after the first holds exactly one '2'")
        if self.neck not in NECKS:
            raise bad(f"neck {self.neck!r}: valid necks are {', '.join(NECKS)}")
        lo, hi = self.levels
        top = self.backbone_top_level
        if self.neck == "none":
            if self.levels != (top, top):
                raise bad(f"neck none runs the head on level {top} only, got levels {lo}-{hi}")
        else:
            if not (2 <= lo <= top and lo <= hi <= MAX_LEVEL):
                raise bad(f"levels p{lo}-{hi}: need 2 <= lo <= {top} (last backbone level) and lo <= hi <= {MAX_LEVEL}")
            if not 16 <= self.neck_width <= 512 or self.neck_width % 8:
                raise bad(f"neck width {self.neck_width}: must be a multiple of 8 in 16..512")
        if not isinstance(self.head, Head):
            raise bad(f"head {self.head!r}: give a head of hwnas.heads.HEAD_KINDS, e.g. "
                      f"hwnas.heads.parse_head('retina_d4_c128')")
        self.head.check(self)
        if self.norm not in NORMS:
            raise bad(f"norm {self.norm!r}: valid norms are {', '.join(NORMS)}")
        if out_hw(self.input_hw, 2 ** hi)[0] < 1:
            raise bad(f"input {h}x{w} is too small for level {hi}")

    # ------------------------------------------------------------------ text form
    def __str__(self) -> str:
        h, w = self.input_hw
        size = f"i{h}" if h == w else f"i{h}x{w}"
        bb = f"{self.block}_c{self.width}_{'-'.join(self.stages)}"
        if self.neck == "none":
            neck = "none"
        else:
            neck = f"{self.neck}_p{self.levels[0]}-{self.levels[1]}_c{self.neck_width}"
        return "/".join((size, bb, neck, str(self.head), self.norm))

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Parse the text form; any error is one HwnasError line naming the bad part."""
        text = text.strip()
        if not text.isascii():  # int() would read fullwidth or other Unicode digits as numbers
            raise HwnasError(f"invalid arch {text!r}: only ASCII letters, digits and _-/ may appear; {GRAMMAR_HINT}")
        parts = text.split("/")
        if len(parts) != 5:
            raise HwnasError(f"invalid arch {text!r}: {len(parts)} '/'-separated fields, need 5; {GRAMMAR_HINT}")
        size, bb, neck, head, norm = parts
        m = re.fullmatch(r"i([0-9]+)(?:x([0-9]+))?", size)
        if not m:
            raise HwnasError(f"invalid arch {text!r}: input {size!r} should look like i256 or i320x256")
        hw = (int(m[1]), int(m[2] or m[1]))
        m = re.fullmatch(r"([a-z]+)_c([0-9]+)_([12-]+)", bb)
        if not m:
            raise HwnasError(f"invalid arch {text!r}: backbone {bb!r} should look like basic_c64_11-21-21-21")
        block, width, stages = m[1], int(m[2]), tuple(m[3].split("-"))
        if neck == "none":
            neck_kind, levels, neck_width = "none", None, 0
        else:
            m = re.fullmatch(r"([a-z]+)_p([0-9])-([0-9])_c([0-9]+)", neck)
            if not m:
                raise HwnasError(f"invalid arch {text!r}: neck {neck!r} should look like fpn_p3-5_c128 or none")
            neck_kind, levels, neck_width = m[1], (int(m[2]), int(m[3])), int(m[4])
        try:
            head_spec = parse_head(head)
        except HwnasError as e:
            raise HwnasError(f"invalid arch {text!r}: {e}") from None
        if levels is None:
            levels = (len(stages) + 1,) * 2
        return cls(hw, block, width, stages, neck_kind, levels, neck_width, head_spec, norm)

    def to_dict(self) -> dict:
        return {"arch": str(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        return cls.parse(d["arch"])

    # ------------------------------------------------------------------ derived facts
    @property
    def backbone_top_level(self) -> int:
        return len(self.stages) + 1

    @property
    def out_levels(self) -> tuple[int, ...]:
        """Pyramid levels the head runs on."""
        return tuple(range(self.levels[0], self.levels[1] + 1))

    def level_hw(self, level: int) -> HW:
        hw = self.input_hw
        for _ in range(level):
            hw = out_hw(hw, 2)
        return hw

    def stage_channels(self) -> list[int]:
        """Output channels of each backbone stage (level 2, 3, ...)."""
        mult = 4 if self.block == "bottleneck" else 1
        return [self.width * 2 ** i * mult for i in range(len(self.stages))]

    def head_in_channels(self) -> int:
        return self.stage_channels()[-1] if self.neck == "none" else self.neck_width

    # ------------------------------------------------------------------ the one walk
    def placed_units(self, num_classes: int) -> list[Placed]:
        """Every unit of the detector with its role, in the order the detector is built.

        Units of a shared head appear once per level (same weights, different input size):
        each is a separate run of kernels and so a separate latency entry.
        """
        if num_classes < 1:
            raise HwnasError(f"num_classes must be >= 1, got {num_classes}")
        return list(self._walk(num_classes))

    def units(self, num_classes: int = 80) -> list[Unit]:
        return [p.unit for p in self.placed_units(num_classes)]

    @property
    def body_norm(self) -> str:
        """The norm of the stem and backbone units."""
        return "gn" if self.norm == "gn" else "bn"

    @property
    def head_norm(self) -> str:
        """The norm of the head towers."""
        return "bn" if self.norm == "bn" else "gn"

    def _walk(self, k: int) -> Iterator[Placed]:
        hw, c = self.input_hw, self.width
        yield Placed("stem.0", Unit("conv", 3, c, hw, 3, 2, self.body_norm, "relu"))
        hw = out_hw(hw, 2)
        yield Placed("stem.1", Unit("conv", c, c, hw, 3, 2, self.body_norm, "relu"))
        hw = out_hw(hw, 2)
        cin = c
        for si, (enc, cout) in enumerate(zip(self.stages, self.stage_channels())):
            for bi, ch in enumerate(enc):
                # Blocks before this stage's '2' still run at the previous stage's shape.
                stride = 2 if ch == "2" else 1
                c_this = cout if si == 0 or "2" in enc[: bi + 1] else cin
                yield Placed(f"stage{si + 1}.{bi}", Unit(self.block, cin, c_this, hw, stride=stride, norm=self.body_norm))
                hw, cin = out_hw(hw, stride), c_this
        if self.neck != "none":
            yield from self._walk_neck(self.stage_channels())
        yield from self.head.units(self, k)

    def _walk_neck(self, chans: list[int]) -> Iterator[Placed]:
        lo, hi = self.levels
        top = self.backbone_top_level
        w = self.neck_width
        for level in range(min(hi, top), lo - 1, -1):
            yield Placed(f"neck.p{level}", Unit("fpn_node", chans[level - 2], w, self.level_hw(level),
                                                top=level == min(hi, top)))
        for level in range(top + 1, hi + 1):
            yield Placed(f"neck.p{level}", Unit("conv", w, w, self.level_hw(level - 1), 3, 2, "none", "relu"))
        if self.neck == "pafpn":
            for level in range(lo + 1, hi + 1):
                yield Placed(f"neck.n{level}", Unit("pan_node", w, w, self.level_hw(level - 1)))
