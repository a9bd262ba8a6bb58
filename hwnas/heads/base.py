"""The head-kind interface: what every kind of :data:`hwnas.heads.HEAD_KINDS` provides.

A head kind is a frozen dataclass class; an instance is the head of one arch, its fields the
kind's parameters (every kind has ``depth`` and ``width``; ``rcnn`` adds ``proposals``, ``face``
its tricks). ``Arch.head`` holds one, so an arch is frozen, hashable and ==-comparable with its
head. The kind owns everything head-specific: its grammar fields (:attr:`Head.FIELDS`) and their
checks, its units in the walk, its output names, its forward over the pyramid, targets and loss,
decode, anchors, deploy specifics (the RoIAlign form) and its search-space choices. Nothing else
compares a head's name.

This module and the kinds import no torch at import time (the arch grammar and the walk use
them); the methods that compute on tensors import what they need when they run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from hwnas.errors import HwnasError
from hwnas.spec.units import Placed, Unit

if TYPE_CHECKING:
    import random

    import torch
    from torch import nn

    from hwnas.heads.losses import DetectionLoss
    from hwnas.spec.arch import Arch
    from hwnas.spec.space import SearchSpace

__all__ = ["Head", "Pred", "TowerHead", "invalid", "parse_fields"]

_FIELD = re.compile(r"([a-z]+)([0-9]+)")


def invalid(msg: str) -> HwnasError:
    """The error of an arch that fails a check: one line, prefixed as every arch check is."""
    return HwnasError(f"invalid arch: {msg}")


@dataclass(frozen=True)
class Head:
    """One head of one arch; the class is its kind. Subclasses set the class variables and
    override the methods whose defaults do not fit (see :class:`TowerHead` for one-stage heads)."""

    depth: int
    width: int

    # ------------------------------------------------------------------ what the kind declares
    TOKEN: ClassVar[str] = ""  # the grammar token, also the HEAD_KINDS key
    # (grammar tag, field) in text order after ``TOKEN``: ``retina_d4_c128`` is d=depth, c=width
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("d", "depth"), ("c", "width"))
    EXAMPLE: ClassVar[str] = ""  # a valid head text, for error messages
    ANCHORS: ClassVar[int] = 1  # anchors (or points) per location of its dense outputs
    NEEDS_NECK: ClassVar[bool] = False
    TWO_STAGE: ClassVar[bool] = False  # proposals then a RoI stage built for one input size
    GENERAL_PURPOSE: ClassVar[bool] = True  # searched by default (hwnas.spec.arch.HEADS)
    DEFAULT_CLASS_NAMES: ClassVar[tuple[str, ...]] = ()  # () : 80 numbered classes

    @property
    def kind(self) -> str:
        return self.TOKEN

    # ------------------------------------------------------------------ grammar
    def __str__(self) -> str:
        return self.TOKEN + "".join(f"_{tag}{getattr(self, name)}" for tag, name in self.FIELDS)

    @classmethod
    def from_text(cls, text: str, fields: list[tuple[str, int]], registry: dict[str, type["Head"]]) -> "Head":
        """The head of ``text`` (``TOKEN`` then ``fields``, the (tag, value) pairs that follow it)."""
        tags = [t for t, _ in fields]
        want = [t for t, _ in cls.FIELDS]
        if tags == want:
            return cls(**{name: v for (_, name), (_, v) in zip(cls.FIELDS, fields)})
        extra = [t for t in tags if t not in want]
        owner = next((k for k, kind in registry.items() if extra and set(extra) <= {t for t, _ in kind.FIELDS}), None)
        if owner is not None:
            given = " ".join(f"{t}{v}" for t, v in fields if t in extra)
            raise HwnasError(f"only the {owner} head takes {'/'.join(extra)} ({given}); head {cls.TOKEN} looks like "
                             f"{cls.EXAMPLE}")
        if not extra and tags == want[:len(tags)]:
            raise HwnasError(cls.missing_fields_hint())
        raise HwnasError(f"head {text!r} should look like {cls.EXAMPLE}")

    @classmethod
    def missing_fields_hint(cls) -> str:
        return f"the {cls.TOKEN} head needs the fields {', '.join(t for t, _ in cls.FIELDS)}, e.g. {cls.EXAMPLE}"

    def check(self, arch: "Arch") -> None:
        """Raise (:func:`invalid`) when this head cannot sit on ``arch``."""
        if self.NEEDS_NECK and arch.neck == "none":
            raise invalid(f"the {self.kind} head needs a neck (fpn or pafpn)")
        self.check_depth()
        if not 8 <= self.width <= 2048 or self.width % 8:
            raise invalid(f"head width {self.width}: must be a multiple of 8 in 8..2048")

    def check_depth(self) -> None:
        if not 0 <= self.depth <= 8:
            raise invalid(f"head depth {self.depth}: must be 0..8")

    # ------------------------------------------------------------------ the walk and the model
    def units(self, arch: "Arch", num_classes: int) -> Iterator[Placed]:
        """This head's units, in build order (roles ``head.p<level>.<name>``, or ``head.<name>``)."""
        raise NotImplementedError

    def output_names(self, arch: "Arch") -> list[str]:
        """Names of ``Detector.forward``'s outputs, in order."""
        raise NotImplementedError

    def forward(self, arch: "Arch", pyramid: dict[int, "torch.Tensor"], module: Callable[[str], "nn.Module"],
                extra_boxes: "torch.Tensor | None" = None) -> tuple["torch.Tensor", ...]:
        """Raw outputs from the pyramid (level -> features); ``module(role)`` is the module of a
        shared role (``head.cls.0``)."""
        raise NotImplementedError

    def init_priors(self, model: "nn.Module", prior: float) -> None:
        """Set class-output biases to ``prior`` (the logit of the prior probability), if the head has any."""

    # ------------------------------------------------------------------ training
    def loss_components(self) -> tuple[str, ...]:
        raise NotImplementedError

    def check_loss(self, loss: "DetectionLoss") -> None:
        """Check the loss options this head uses (raise now, not mid-training)."""

    def check_outputs(self, arch: "Arch", num_classes: int, outputs: tuple["torch.Tensor", ...]) -> None:
        raise NotImplementedError

    def loss(self, loss: "DetectionLoss", outputs: tuple["torch.Tensor", ...],
             targets: list[dict]) -> dict[str, "torch.Tensor"]:
        """The loss components (:meth:`loss_components`) on float outputs and prepared targets."""
        raise NotImplementedError

    def extra_boxes(self, arch: "Arch", targets: list[dict], device: Any = None) -> "torch.Tensor | None":
        """Boxes appended to the proposals in training (``Detector.forward(extra_boxes=...)``), or None."""
        return None

    def match_codes(self, loss: "DetectionLoss", targets: list[dict], device: Any = None) -> list["torch.Tensor"]:
        """Each image's match codes [rows] (the box index, ``NEG`` or ``IGNORE`` of
        :mod:`hwnas.heads.losses`) of the positions the head's first classifier learns from, as its
        :meth:`loss` assigns them before any training: which boxes the head can learn at all
        (:mod:`hwnas.search.coverage`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decoding
    def positions(self, arch: "Arch") -> int:
        """Rows of the flattened per-level outputs: sum over levels of h * w * ANCHORS."""
        return sum(h * w for h, w in (arch.level_hw(lv) for lv in arch.out_levels)) * self.ANCHORS

    def decoded_positions(self, arch: "Arch") -> int:
        """P, the rows of the decoded boxes and scores."""
        return self.positions(arch)

    def decode(self, outputs: tuple["torch.Tensor", ...], arch: "Arch",
               num_classes: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Boxes [B, P, 4] (or class-specific [B, P, K, 4]) and scores [B, P, K], before clipping."""
        raise NotImplementedError

    def decode_lazy(self, outputs: tuple["torch.Tensor", ...], arch: "Arch", num_classes: int):
        """Scores [B, P, K] now, boxes on demand: ``(scores, boxes_of)`` with ``boxes_of(rows [B, M])``
        the boxes [B, M, 4] of those rows (before clipping), exactly as :meth:`decode` computes them.

        A deployed graph keeps the best ~1,000 of up to tens of thousands of rows; decoding only those
        saves most of its decode/NMS tail. Heads whose box of a row depends on that row alone override
        this; the default decodes every row first. Not for class-specific boxes (the two-stage head)."""
        from hwnas.heads.anchors import take_rows

        boxes, scores = self.decode(outputs, arch, num_classes)
        return scores, lambda rows: take_rows(boxes, rows)

    def anchor_sizes(self, arch: "Arch") -> tuple[float, ...] | None:
        """The base anchor side of each out level for data-anchor-sampling, or None without it."""
        return None

    # ------------------------------------------------------------------ deployment
    def roi_impl(self, *, nms: str | None = None, backend: str | None = None, dynamic: bool = False,
                 requested: str | None = None) -> str | None:
        """The RoIAlign form this head exports with (:func:`hwnas.heads.rcnn.choose_roi_impl`); None: no RoIAlign."""
        return None

    def class_names(self, num_classes: int | None = None) -> list[str]:
        """Class names of an untrained detector of this head (``hwnas export --preset``)."""
        if self.DEFAULT_CLASS_NAMES and num_classes in (None, len(self.DEFAULT_CLASS_NAMES)):
            return list(self.DEFAULT_CLASS_NAMES)
        return [f"class{i}" for i in range(num_classes or 80)]

    # ------------------------------------------------------------------ the search space
    @classmethod
    def depth_choices(cls, space: "SearchSpace") -> tuple[int, ...]:
        return space.head_depths

    @classmethod
    def width_choices(cls, space: "SearchSpace") -> tuple[int, ...]:
        return space.head_widths

    @classmethod
    def options(cls, space: "SearchSpace") -> dict[str, tuple[int, ...]]:
        """The choices of the kind's other fields in ``space`` (drawn after depth and width)."""
        return {}

    @classmethod
    def pick(cls, space: "SearchSpace", depth: int, width: int, choose: Callable[[tuple], Any]) -> "Head":
        """A head of depth and width, its other fields chosen from :meth:`options` by ``choose``."""
        return cls(depth, width, **{name: choose(values) for name, values in cls.options(space).items()})

    @classmethod
    def sample(cls, space: "SearchSpace", rng: "random.Random") -> "Head":
        """One head drawn uniformly over each of the space's choices (depth, width, then the rest)."""
        return cls.pick(space, rng.choice(cls.depth_choices(space)), rng.choice(cls.width_choices(space)), rng.choice)

    @classmethod
    def covering(cls, space: "SearchSpace") -> list["Head"]:
        """Every head of this kind in ``space`` (deepest towers contain the shallower ones' units)."""
        out = []
        for d in cls.depth_choices(space):
            for w in cls.width_choices(space):
                combos = [{}]
                for name, values in cls.options(space).items():
                    combos = [{**c, name: v} for c in combos for v in values]
                out += [cls(d, w, **c) for c in combos]
        return out

    def fit(self, space: "SearchSpace", levels: tuple[int, int]) -> "Head":
        """This head as ``space`` places it on pyramid ``levels`` (the face head fits its tricks)."""
        return self

    def moved(self, space: "SearchSpace", field: str, step: Callable[[tuple[int, ...], int], int]) -> "Head":
        """The SM-NAS module move of ``field`` (depth or width) one ``step`` along the space's choices."""
        choices = self.depth_choices(space) if field == "depth" else self.width_choices(space)
        return replace(self, **{field: step(choices, getattr(self, field))})


def parse_fields(text: str) -> tuple[str, list[tuple[str, int]]] | None:
    """``retina_d4_c128`` -> ("retina", [("d", 4), ("c", 128)]), or None when it is not of that shape."""
    token, *rest = text.split("_")
    fields = []
    for part in rest:
        m = _FIELD.fullmatch(part)
        if not m:
            return None
        fields.append((m[1], int(m[2])))
    return (token, fields) if re.fullmatch(r"[a-z]+", token) and fields[:2] and \
        [t for t, _ in fields[:2]] == ["d", "c"] else None


# =============================================================================== one-stage heads
@dataclass(frozen=True)
class Pred:
    """One prediction conv of a tower head at one level: output ``p<level>_<name>``, module role
    ``head.<role>`` (shared across levels), reading ``source`` (the ``cls`` or ``box`` tower's
    output, or ``neck``: the pyramid feature itself), ``cout`` channels."""

    name: str
    role: str
    source: str
    cout: int


@dataclass(frozen=True)
class TowerHead(Head):
    """A one-stage head: per level a ``cls`` and a ``box`` tower of ``depth`` 3x3 conv+norm+relu
    (``width`` channels, shared across levels), then 3x3 prediction convs (:meth:`predictions`).

    Outputs per level, in order, are the predictions' (:meth:`output_names`); the walk, the
    forward, the loss checks and the kinds' readers all follow :meth:`predictions`, the one
    statement of a level's outputs.
    """

    def predictions(self, arch: "Arch", num_classes: int, level_index: int) -> list[Pred]:
        """The prediction convs of the ``level_index``-th out level, in output order."""
        a, k = self.ANCHORS, num_classes
        return [Pred("cls", "cls", "cls", a * k), Pred("box", "box", "box", a * 4)]

    def units(self, arch: "Arch", num_classes: int) -> Iterator[Placed]:
        cin, w, d = arch.head_in_channels(), self.width, self.depth
        for li, level in enumerate(arch.out_levels):
            hw = arch.level_hw(level)
            for tower in ("cls", "box"):
                c = cin
                for i in range(d):
                    yield Placed(f"head.p{level}.{tower}.{i}", Unit("conv", c, w, hw, 3, 1, arch.head_norm, "relu"))
                    c = w
            c_tower = w if d else cin
            for p in self.predictions(arch, num_classes, li):
                c = cin if p.source == "neck" else c_tower
                yield Placed(f"head.p{level}.{p.role}", Unit("conv", c, p.cout, hw, 3, 1))

    def output_names(self, arch: "Arch") -> list[str]:
        # The names do not depend on the class count (1 stands in for it).
        return [f"p{level}_{p.name}" for li, level in enumerate(arch.out_levels)
                for p in self.predictions(arch, 1, li)]

    def forward(self, arch, pyramid, module, extra_boxes=None):
        out = []
        for li, level in enumerate(arch.out_levels):
            f = pyramid[level]
            src = {"cls": f, "box": f, "neck": f}
            for i in range(self.depth):  # the two towers interleaved, as the exported graphs record them
                src["cls"] = module(f"head.p{level}.cls.{i}")(src["cls"])
                src["box"] = module(f"head.p{level}.box.{i}")(src["box"])
            out += [module(f"head.p{level}.{p.role}")(src[p.source]) for p in self.predictions(arch, 1, li)]
        return tuple(out)

    def init_priors(self, model, prior):
        import torch

        with torch.no_grad():
            for li in range(len(model.arch.out_levels)):
                for p in self.predictions(model.arch, model.num_classes, li):
                    if p.name.startswith("cls"):
                        model.module_for(f"head.{p.role}")[0].bias.fill_(prior)

    def check_outputs(self, arch, num_classes, outputs):
        names = self.output_names(arch)
        if len(outputs) != len(names):
            raise HwnasError(f"{self.kind} loss of {arch}: expected {len(names)} outputs (Detector.output_names), "
                             f"got {len(outputs)}")
        cls_ch = self.predictions(arch, num_classes, 0)[0].cout
        if outputs[0].shape[1] != cls_ch:
            raise HwnasError(f"class output has {outputs[0].shape[1]} channels, expected {cls_ch} for "
                             f"num_classes={num_classes}: build the loss with the detector's num_classes")
        rows = sum(o.shape[2] * o.shape[3] for o, n in zip(outputs, names) if n.endswith("_box")) * self.ANCHORS
        if rows != self.positions(arch):
            raise HwnasError(f"outputs cover {rows} positions, the arch {arch} has {self.positions(arch)}: "
                             f"images must be {arch.input_hw[0]}x{arch.input_hw[1]}")

    def per_level(self, arch: "Arch", outputs: tuple["torch.Tensor", ...]) -> dict[str, list["torch.Tensor"]]:
        """``outputs`` grouped by prediction name, each list in level order."""
        names = self.output_names(arch)
        per: dict[str, list] = {}
        for name, t in zip(names, outputs):
            per.setdefault(name.split("_", 1)[1], []).append(t)
        return per
