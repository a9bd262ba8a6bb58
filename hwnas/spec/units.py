"""Units: the fused pieces a detector is literally built from, described without torch.

A :class:`Unit` is a frozen, hashable description of one fused kernel group (conv+norm+act,
a whole residual block, an FPN merge node, the RoI stage at N proposals) *including the
shapes it runs at*; a :class:`Placed` unit adds where it sits in the detector. The builders
(``build(unit)`` and ``example_inputs(unit)``, one per kind) live with the models in
:mod:`hwnas.models.blocks`, so a latency table keyed by ``unit.key()`` can never drift from the
model while this module, and the arch grammar above it, import no torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from hwnas.errors import HwnasError

# The unit kinds, in the order errors list them; hwnas.models.blocks.BUILDERS has one builder each.
UNIT_KINDS = ("conv", "basic", "bottleneck", "mbconv", "shuffle", "fpn_node", "pan_node", "roi")
NORMS = ("bn", "gn", "none")
ACTS = ("relu", "relu6", "none")

HW = tuple[int, int]


def out_hw(hw: HW, stride: int) -> HW:
    """Spatial size after a 'same'-padded conv of this stride (ceil division, as PyTorch does)."""
    return (-(-hw[0] // stride), -(-hw[1] // stride))


@dataclass(frozen=True)
class Unit:
    """One fused unit and the shapes it runs at. Fields a kind does not use stay at their default.

    ``hw`` is the (height, width) of the unit's main input. ``classes`` is the number of
    object classes for predictor units. Multi-level units (``roi``) list their levels in
    ``levels`` and the level sizes in ``level_hws``.
    """

    kind: str
    cin: int = 0
    cout: int = 0
    hw: HW = (0, 0)
    kernel: int = 1
    stride: int = 1
    norm: str = "none"
    act: str = "none"
    depth: int = 0
    width: int = 0
    classes: int = 0
    proposals: int = 0
    levels: tuple[int, ...] = ()
    level_hws: tuple[HW, ...] = ()
    image_hw: HW = (0, 0)
    top: bool = False

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise HwnasError(f"unknown unit kind {self.kind!r}; valid kinds: {', '.join(UNIT_KINDS)}")
        if self.norm not in NORMS or self.act not in ACTS:
            raise HwnasError(f"unit {self.kind}: norm must be one of {NORMS} and act one of {ACTS}")

    def key(self) -> str:
        """Stable, readable table key, e.g. ``basic[cin=32,cout=64,hw=64x64,stride=2,norm=bn]``."""
        parts = []
        for f in fields(self):
            if f.name == "kind":
                continue
            v = getattr(self, f.name)
            if v == f.default:
                continue
            # Levels are a list, not a size: keep them from printing as HxW.
            parts.append(f"{f.name}={'-'.join(map(str, v)) if f.name == 'levels' else _fmt(v)}")
        return f"{self.kind}[{','.join(parts)}]"

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v != _DEFAULTS[k] or k == "kind"}

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        try:
            kw = dict(d)
            for k in ("hw", "image_hw"):
                if k in kw:
                    kw[k] = tuple(kw[k])
            if "levels" in kw:
                kw["levels"] = tuple(kw["levels"])
            if "level_hws" in kw:
                kw["level_hws"] = tuple(tuple(x) for x in kw["level_hws"])
            return cls(**kw)
        except TypeError as e:
            raise HwnasError(f"malformed unit record {d!r}: {e}") from None

    @property
    def out_hw(self) -> HW:
        return out_hw(self.hw, self.stride)


_DEFAULTS = {f.name: f.default for f in fields(Unit)}


def _fmt(v) -> str:
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return f"{v[0]}x{v[1]}"
    if isinstance(v, tuple):
        return "(" + ";".join(_fmt(x) for x in v) + ")"
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


@dataclass(frozen=True)
class Placed:
    """A unit and where it sits in the detector (``role``: stem.0, stage2.1, neck.p4, head.p3.cls.0 ...)."""

    role: str
    unit: Unit
