"""Search spaces: the choices a search may make over :class:`~hwnas.spec.arch.Arch`, seeded sampling
and SM-NAS moves (one step at a time), and the named spaces (``SPACES``, :func:`get_space`).
Imports no torch."""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Iterator

from hwnas.errors import HwnasError
from hwnas.heads import HEAD_KINDS, Head
from hwnas.spec.arch import BLOCK_TYPES, HEADS, NECKS, Arch
from hwnas.spec.units import Unit

__all__ = ["SPACES", "SearchSpace", "get_space", "head_kind"]


@dataclass(frozen=True)
class SearchSpace:
    """The choices a search may make. Sampling and mutation are seeded and capped."""

    resolutions: tuple[int, ...] = (256, 320, 384, 512)
    blocks: tuple[str, ...] = BLOCK_TYPES
    widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    num_stages: int = 4
    max_blocks: tuple[int, ...] = (3, 4, 5, 3)
    necks: tuple[str, ...] = NECKS
    level_ranges: tuple[tuple[int, int], ...] = ((3, 5), (3, 6), (3, 7), (4, 6), (4, 7))
    neck_widths: tuple[int, ...] = (64, 96, 128)
    heads: tuple[str, ...] = HEADS
    head_depths: tuple[int, ...] = (1, 2, 3, 4)
    head_widths: tuple[int, ...] = (64, 96, 128)
    rcnn_depths: tuple[int, ...] = (1, 2)
    rcnn_widths: tuple[int, ...] = (256, 512)
    proposals: tuple[int, ...] = (100,)
    norms: tuple[str, ...] = ("bn", "gn")
    # The face head's tricks (stc levels, str levels, max-out logits), fitted to each level range.
    face_tricks: tuple[int, int, int] = (3, 3, 3)
    name: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        if len(self.max_blocks) != self.num_stages:
            raise HwnasError(f"space {self.name}: max_blocks needs one entry per stage ({self.num_stages})")
        for attr in ("resolutions", "blocks", "widths", "necks", "heads", "norms", "level_ranges"):
            if not getattr(self, attr):
                raise HwnasError(f"space {self.name}: {attr} is empty")

    def arch(self, hw: int, block: str, width: int, stages: tuple[str, ...], neck: str, levels: tuple[int, int],
             neck_width: int, head: Head, norm: str) -> Arch:
        """An arch of this space's choices; the head as the space places it on ``levels`` (``Head.fit``:
        a face head gets the space's tricks fitted to its levels)."""
        return Arch((hw, hw), block, width, stages, neck, levels, neck_width, head.fit(self, levels), norm)

    def with_resolutions(self, resolutions: tuple[int, ...]) -> "SearchSpace":
        return replace(self, resolutions=tuple(resolutions))

    # -------------------------------------------------------------- sampling
    def sample(self, seed: int) -> Arch:
        """One architecture drawn uniformly over each choice, reproducible from ``seed``."""
        rng = random.Random(seed)
        stages = [self._stage(rng, i) for i in range(self.num_stages)]
        neck = rng.choice(self.necks)
        kind = head_kind(rng.choice(self.heads))
        if kind.NEEDS_NECK and neck == "none":
            neck = rng.choice([n for n in self.necks if n != "none"] or ["fpn"])
        top = self.num_stages + 1
        ranges = [r for r in self.level_ranges if r[0] <= top]
        levels = rng.choice(ranges) if neck != "none" else (top, top)
        r = rng.choice(self.resolutions)
        head = kind.sample(self, rng)
        return self.arch(r, rng.choice(self.blocks), rng.choice(self.widths), tuple(stages), neck, levels,
                         rng.choice(self.neck_widths), head, rng.choice(self.norms))

    def _stage(self, rng: random.Random, i: int) -> str:
        n = rng.randint(1, self.max_blocks[i])
        if i == 0:
            return "1" * n
        pos = rng.randrange(n)
        return "1" * pos + "2" + "1" * (n - pos - 1)

    # -------------------------------------------------------------- mutation
    def mutate(self, arch: Arch, seed: int, max_tries: int = 100) -> Arch:
        """A different, valid neighbour of ``arch`` by one SM-NAS move.

        Backbone moves: insert a '1', remove a '1', move a '2' within its stage, change the
        base width. Module moves: neck width, head depth or width. Retries are capped.
        """
        rng = random.Random(seed)
        for _ in range(max_tries):
            move = rng.choice(("insert", "remove", "move2", "width", "neck_width", "head_depth", "head_width"))
            stages = list(arch.stages)
            si = rng.randrange(len(stages))
            s = stages[si]
            try:
                if move == "insert":
                    cap = self.max_blocks[si] if si < len(self.max_blocks) else 6
                    if len(s) >= cap:
                        continue
                    p = rng.randint(0, len(s))
                    stages[si] = s[:p] + "1" + s[p:]
                    cand = replace(arch, stages=tuple(stages))
                elif move == "remove":
                    ones = [j for j, ch in enumerate(s) if ch == "1"]
                    if not ones or len(s) == 1:
                        continue
                    j = rng.choice(ones)
                    stages[si] = s[:j] + s[j + 1:]
                    cand = replace(arch, stages=tuple(stages))
                elif move == "move2":
                    if "2" not in s or len(s) == 1:
                        continue
                    j = s.index("2")
                    k = rng.choice([x for x in (j - 1, j + 1) if 0 <= x < len(s)])
                    lst = list(s)
                    lst[j], lst[k] = lst[k], lst[j]
                    stages[si] = "".join(lst)
                    cand = replace(arch, stages=tuple(stages))
                elif move == "width":
                    cand = replace(arch, width=_neighbour(rng, self.widths, arch.width))
                elif move == "neck_width":
                    if arch.neck == "none":
                        continue
                    cand = replace(arch, neck_width=_neighbour(rng, self.neck_widths, arch.neck_width))
                else:  # head_depth or head_width, along the head kind's choices
                    cand = replace(arch, head=arch.head.moved(self, move[len("head_"):], partial(_neighbour, rng)))
            except HwnasError:
                continue
            if cand != arch:
                return cand
        raise HwnasError(f"no valid mutation of {arch} found in {max_tries} tries; widen the search space")

    # -------------------------------------------------------------- enumeration for profiling
    def covering_archs(self) -> Iterator[Arch]:
        """Archs whose units, together, are every unit any arch of this space contains.

        Walking these through ``Arch.units`` (the one walk) gives the profiling set. It
        relies on two facts of the walk: the backbone encoding ``1..1-121-121-...`` contains
        every backbone unit of its block/width/norm/resolution (with at most two
        blocks a stage, ``12`` and ``21`` together do) (a '1' before the '2' runs at
        the previous stage's shape, one after it at this stage's), and the deepest head
        contains every tower unit of the shallower ones. ``tests/test_arch.py`` checks the
        claim against random samples.
        """
        opts = [["1" * min(2, self.max_blocks[0])]] + [
            ["121"] if m >= 3 else ["12", "21"] if m == 2 else ["2"] for m in self.max_blocks[1:]]
        encs = list(dict.fromkeys((tuple(o[0] for o in opts), tuple(o[-1] for o in opts))))
        # one-stage heads first: the first of them is the cheap head the backbones are walked with
        kinds = [head_kind(h) for h in self.heads]
        heads = [h for kind in sorted(kinds, key=lambda k: k.TWO_STAGE) for h in kind.covering(self)]
        top = self.num_stages + 1
        necks = [(neck, lv, nw) for neck in self.necks if neck != "none"
                 for lv in self.level_ranges if lv[0] <= top for nw in self.neck_widths]
        first_one_stage = next((h for h in heads if not h.TWO_STAGE), heads[0])
        for r in self.resolutions:
            for norm in self.norms:
                def arch(block, width, neck, levels, nw, head, enc=encs[0]):
                    return self.arch(r, block, width, enc, neck, levels, nw, head, norm)

                for block in self.blocks:
                    for width in self.widths:
                        # Backbone and neck units depend on the backbone; head units behind a
                        # neck do not, but without a neck the head sees the backbone's channels.
                        for neck, levels, nw in necks:
                            for enc in encs:
                                yield arch(block, width, neck, levels, nw, first_one_stage, enc)
                        if "none" in self.necks:
                            for head in heads:
                                if not head.NEEDS_NECK:
                                    yield arch(block, width, "none", (top, top), self.neck_widths[0], head)
                for neck, levels, nw in necks:
                    for head in heads:
                        yield arch(self.blocks[0], self.widths[0], neck, levels, nw, head)

    def all_units(self, num_classes: int) -> list[Unit]:
        """Every distinct unit any arch of this space can contain, deduplicated, in a stable order."""
        seen: dict[str, Unit] = {}
        for arch in self.covering_archs():
            for u in arch.units(num_classes):
                seen.setdefault(u.key(), u)
        return list(seen.values())


def _neighbour(rng: random.Random, choices: tuple[int, ...], current: int) -> int:
    """The next smaller or larger choice (SM-NAS moves widths and depths one step at a time)."""
    ordered = sorted(set(choices) | {current})
    i = ordered.index(current)
    options = [ordered[j] for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
    if not options:
        raise HwnasError(f"only one choice ({current}) in the space")
    return rng.choice(options)


SPACES: dict[str, SearchSpace] = {
    "default": SearchSpace(),
    # CPU-sized: candidates train in about a minute on 2 cores; holds the small presets (the
    # training baselines) so the search can be compared with them on one table.
    "small": SearchSpace(resolutions=(128, 192, 256), widths=(16, 24, 32), max_blocks=(2, 3, 3, 2),
                         level_ranges=((3, 5), (3, 6), (4, 6)), neck_widths=(32, 48, 64), head_depths=(1, 2, 3),
                         head_widths=(32, 48, 64), rcnn_depths=(1, 2), rcnn_widths=(128, 256), proposals=(64, 128),
                         norms=("bn",), name="small"),
    # A small space for tests and quick demos: two block types, narrow widths, small inputs.
    # Face detectors (hwnas search --space face): the face head on 5- or 6-level pyramids from P2,
    # where the small faces are, around the face presets of hwnas.spec.presets.
    "face": SearchSpace(resolutions=(256, 320, 384), blocks=("mbconv", "basic", "shuffle"), widths=(16, 24, 32),
                        max_blocks=(2, 3, 3, 2), necks=("fpn", "pafpn"), level_ranges=((2, 6), (2, 7)),
                        neck_widths=(32, 48, 64), heads=("face",), head_depths=(1, 2, 3), head_widths=(32, 48, 64),
                        norms=("bn",), name="face"),
    "tiny": SearchSpace(resolutions=(128,), blocks=("basic", "mbconv"), widths=(16, 24), max_blocks=(2, 2, 2, 2),
                        level_ranges=((3, 5), (4, 6)), neck_widths=(32,), head_depths=(1, 2), head_widths=(32,),
                        rcnn_depths=(1,), rcnn_widths=(128,), proposals=(32,), norms=("bn", "gn"), name="tiny"),
}


def head_kind(token: str) -> type[Head]:
    """The head kind of a space's ``heads`` entry."""
    try:
        return HEAD_KINDS[token]
    except KeyError:
        raise HwnasError(f"unknown head {token!r} in the search space; valid heads: {', '.join(HEAD_KINDS)}") from None


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise HwnasError(f"unknown search space {name!r}; valid spaces: {', '.join(SPACES)}") from None
