"""Where candidates come from in each stage.

* **structural** (SM-NAS stage 1): a candidate is a combination of backbone family and depth,
  neck (with its pyramid levels), head type, input resolution and size (every width of the
  detector at the narrowest, middle or widest choice of the space); the head depth sits at the
  middle of the space's choices (the lower middle of an even number). Optuna's NSGA-II sampler
  proposes the combination as six categorical parameters, so its crossover and mutation act on
  whole modules.
* **modular** (SM-NAS stage 2): a child is one SM-NAS move (insert a '1', remove a '1', move a
  '2', base width, neck width, head depth or width: ``SearchSpace.mutate``) of a parent chosen by
  binary tournament from the NSGA-II survivors (rank, then crowding distance) of everything
  evaluated in earlier generations, the structural front included, or a module-wise crossover of
  two such parents. Latency is free (the table predicts it) while mAP costs a training, so each
  child is the best of many draws: the one whose point would add the most hypervolume, its mAP
  estimated from its parents' (``AccuracyModel``, ``ranked_children``). Optuna's
  fixed-dimension samplers cannot express moves on an architecture string, so the child is
  proposed here and Optuna records it.
* **random**: the baseline search, ``SearchSpace.sample`` with a fresh seed per draw.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from hwnas.errors import HwnasError
from hwnas.search.assessor import module_onehot, ridge_weights
from hwnas.search.pareto import Point, hypervolume_gain, pareto_indices, rank_and_crowding, select_survivors
from hwnas.spec.arch import Arch
from hwnas.spec.space import SearchSpace, head_kind

DEPTHS = ("shallow", "medium", "deep")
# A coarse scale of the whole detector: backbone, neck and head widths together, as compound
# scaling does. Widths were left to the modular stage at first, and on held-out seeds random search
# won by drawing the narrow and wide detectors the structural stage never tried (docs/benchmarks.md
# section 4); the modular stage then refines each module's width one step at a time.
SIZES = ("narrow", "middle", "wide")
# How the structural stage sizes a structure's probe. "spread": the depths and sizes above, balanced
# over the structures, so the stage also spans latency. "shallow": every probe at one block per stage
# and the narrowest widths, so structures are compared at one setting. Inside a structure three
# epochs rank the deeper detectors below the shallower ones, the reverse of twelve (Kendall tau -0.27,
# docs/benchmarks.md section 9), so probes of mixed depths mix that bias into the comparison of
# structures: a structure first drawn deep scored low and was dropped. Shallow probes are also the
# cheapest to train. With "shallow" the modular stage's moves add the depth and width.
PROBES = ("spread", "shallow")


def probe_choices(probe: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The backbone depths and sizes the structural stage may give a probe."""
    if probe not in PROBES:
        raise HwnasError(f"--probe {probe!r}: valid probes are {', '.join(PROBES)}")
    return (DEPTHS, SIZES) if probe == "spread" else (("shallow",), ("narrow",))


def middle(choices: Sequence[int]) -> int:
    """The middle choice; of two middle ones the lower, so that a structural candidate with a
    two-option module (the RoI head's depth and width) does not start at its slowest and spend
    the stage near the latency limit: the modular stage grows modules as readily as it shrinks them."""
    ordered = sorted(choices)
    return ordered[(len(ordered) - 1) // 2]


def sized(choices: Sequence[int], size: str) -> int:
    """The choice of ``choices`` for a structural ``size``: the smallest, the ``middle`` or the largest."""
    if size not in SIZES:
        raise HwnasError(f"size {size!r}: valid sizes are {', '.join(SIZES)}")
    return {"narrow": min(choices), "middle": middle(choices), "wide": max(choices)}[size]


def neck_choices(space: SearchSpace) -> list[str]:
    top = space.num_stages + 1
    out = ["none"] if "none" in space.necks else []
    return out + [f"{n}_p{lo}-{hi}" for n in space.necks if n != "none" for lo, hi in space.level_ranges if lo <= top]


def stage_encoding(space: SearchSpace, depth: str) -> tuple[str, ...]:
    """Blocks per stage: one (shallow), half the stage's maximum (medium) or its maximum (deep);
    the downsampling '2' first in each later stage, as in ResNet."""
    stages = []
    for i, cap in enumerate(space.max_blocks):
        n = {"shallow": 1, "medium": (cap + 1) // 2, "deep": cap}[depth]
        stages.append("1" * n if i == 0 else "2" + "1" * (n - 1))
    return tuple(stages)


def structural_arch(space: SearchSpace, resolution: int, block: str, depth: str, neck: str, head: str,
                    size: str = "middle") -> Arch:
    """The structural candidate for one combination. A head that needs a neck (the two-stage and
    the face head), paired with ``none``, gets the space's first neck instead (a repair, so every
    combination is valid). ``size`` sets the backbone, neck and head widths together; the head's
    depth and its other choices sit at the middle of the space's (``Head.pick``)."""
    top = space.num_stages + 1
    kind = head_kind(head)
    if neck == "none" and kind.NEEDS_NECK:
        neck = next(c for c in neck_choices(space) if c != "none")
    if neck == "none":
        neck_kind, levels = "none", (top, top)
    else:
        neck_kind, lv = neck.split("_p")
        lo, hi = lv.split("-")
        levels = (int(lo), int(hi))
    spec = kind.pick(space, middle(kind.depth_choices(space)), sized(kind.width_choices(space), size), middle)
    return space.arch(resolution, block, sized(space.widths, size), stage_encoding(space, depth), neck_kind, levels,
                      sized(space.neck_widths, size), spec, space.norms[0])


def neck_options(space: SearchSpace, necks: Sequence[str] | None) -> list[str]:
    """The neck choices the structural stage draws from: ``necks`` (``--screen coverage`` passes
    fewer), else every one of the space's."""
    return list(necks or neck_choices(space))


def initial_structures(space: SearchSpace, population: int, seed: int, budget: int = 0,
                       probe: str = "spread", necks: Sequence[str] | None = None) -> list[dict]:
    """The structural stage's first candidates as Optuna parameters, stratified rather than drawn
    at random.

    When the stage's ``budget`` holds every pair of block family and head type, the design covers
    every pair once: which backbone family works with which head is the interaction that matters
    most, and NSGA-II's selection on a few noisy short trainings drops a family or a pairing after
    one unlucky score (measured in docs/benchmarks.md section 4). A family's candidates then also
    take its backbone depths and sizes in turn. Otherwise it is ``population`` candidates in which
    every choice is balanced (a Latin-hypercube design over categories), so a population of 4
    still holds every block family and every head type. The other choices (resolution, neck;
    depth and size outside the pair design) are balanced columns, each shuffled on its own:
    cycling them in step would tie choices with equally many options together (every shallow
    backbone narrow, say) and leave most of their combinations untried. ``necks``: the neck choices
    the stage draws from (default: every one, ``neck_choices``; ``--screen coverage`` passes fewer).
    """
    rng = random.Random(seed)
    depths, sizes = probe_choices(probe)
    dims = {"resolution": list(space.resolutions), "block": list(space.blocks), "depth": list(depths),
            "neck": neck_options(space, necks), "head": list(space.heads), "size": list(sizes)}
    heads = dims["head"]
    pair_design = budget >= len(dims["block"]) * len(heads)
    n = len(dims["block"]) * len(heads) if pair_design else population
    columns = {name: balanced(options, n, rng) for name, options in dims.items()}  # the pair design replaces four
    design = [{name: col[i] for name, col in columns.items()} for i in range(n)]
    if pair_design:
        # Each family's candidates also spread over the backbone depths and sizes, the choices that
        # set a backbone's cost: a family tried only narrow and shallow would be judged on that alone.
        pairs = []
        for b in dims["block"]:
            ds, zs = balanced(depths, len(heads), rng), balanced(sizes, len(heads), rng)
            pairs += [{"block": b, "head": h, "depth": d, "size": z} for h, d, z in zip(heads, ds, zs)]
        rng.shuffle(pairs)
        design = [{**row, **pair} for row, pair in zip(design, pairs)]
    return design


def balanced(options: Sequence, n: int, rng: random.Random) -> list:
    """``n`` picks of ``options``, each as often as possible (counts differ by at most one), in a random order;
    which options get the extra picks is random too."""
    shuffled = list(options)
    rng.shuffle(shuffled)
    column = [shuffled[i % len(shuffled)] for i in range(n)]
    rng.shuffle(column)
    return column


def suggest_structural(trial, space: SearchSpace, probe: str = "spread", necks: Sequence[str] | None = None) -> Arch:
    """Ask an Optuna trial for the six structural choices (depth and size of one option each with
    ``probe`` "shallow", so every study records the same six parameters), the neck among ``necks``
    (default: every choice)."""
    depths, sizes = probe_choices(probe)
    return structural_arch(
        space,
        trial.suggest_categorical("resolution", list(space.resolutions)),
        trial.suggest_categorical("block", list(space.blocks)),
        trial.suggest_categorical("depth", list(depths)),
        trial.suggest_categorical("neck", neck_options(space, necks)),
        trial.suggest_categorical("head", list(space.heads)),
        trial.suggest_categorical("size", list(sizes)))


@dataclass(frozen=True)
class Parent:
    arch: str
    map: float
    latency_ms: float
    trial: str  # "stage#number", for the record


def choose_parent(pool: Sequence[Parent], population: int, rng: random.Random) -> Parent:
    """Binary tournament among the NSGA-II survivors of ``pool`` (rank first, crowding second)."""
    points = [(p.map, p.latency_ms) for p in pool]
    survivors = select_survivors(points, population)
    ranks, crowd = rank_and_crowding([points[i] for i in survivors])
    a, b = rng.randrange(len(survivors)), rng.randrange(len(survivors))
    best = min((a, b), key=lambda i: (ranks[i], -crowd[i]))
    return pool[survivors[best]]


def mutate(space: SearchSpace, parent: Parent, seed: int) -> Arch:
    return space.mutate(Arch.parse(parent.arch), seed)


def crossover(space: SearchSpace, a: Arch, b: Arch) -> Arch:
    """Module-wise crossover: ``a``'s input size and backbone under ``b``'s neck and head."""
    return space.arch(a.input_hw[0], a.block, a.width, a.stages, b.neck, b.levels, b.neck_width, b.head, a.norm)


class AccuracyModel:
    """What the search expects of a candidate's mAP before training it: a ridge regression of mAP
    on the module types (block family, neck, head; one-hot) and ln(predicted latency), fitted to
    every candidate evaluated so far. Only its differences are used, from a trained relative whose
    mAP anchors the estimate: the relative brings what the model cannot see (widths, depths, luck),
    the model what the move changes. With fewer than 3 candidates it predicts no change."""

    def __init__(self, space: SearchSpace, evaluated: Sequence[tuple[Arch, float, float]], l2: float = 1.0):
        import numpy as np

        self.space = space
        self.w = None
        if len(evaluated) >= 3:
            x = np.array([self.features(a, lat) for a, _, lat in evaluated])
            y = np.array([m for _, m, _ in evaluated])
            self.w = ridge_weights(x - x.mean(0), y - y.mean(), l2)  # centred: the intercept is not shrunk

    def features(self, arch: Arch, latency_ms: float) -> list[float]:
        return module_onehot(self.space, arch) + [math.log(latency_ms)]

    def change(self, child: Arch, child_ms: float, anchor: Arch, anchor_ms: float) -> float:
        """Expected mAP of ``child`` minus that of ``anchor``."""
        if self.w is None:
            return 0.0
        diff = [c - a for c, a in zip(self.features(child, child_ms), self.features(anchor, anchor_ms))]
        return float(sum(w * d for w, d in zip(self.w, diff)))


@dataclass(frozen=True)
class Child:
    arch: Arch
    parents: tuple[Parent, ...]  # one for a move, two for a crossover (backbone donor first)
    latency_ms: float
    estimated_map: float
    gain: float  # hypervolume the child would add at its estimated mAP


def ranked_children(space: SearchSpace, pool: Sequence[Parent], population: int, known: Sequence[Point],
                    ref_latency_ms: float, predict: Callable[[Arch], float], rng: random.Random, draws: int = 32,
                    latency_max_ms: float | None = None, crossover_share: float = 0.25,
                    taken: frozenset[str] = frozenset()) -> list[Child]:
    """``draws`` children, best first by the hypervolume each would add to the front of ``known``.

    A child is one SM-NAS move of a tournament parent or, for ``crossover_share`` of the draws, a
    module-wise crossover of two (one parent's backbone, the other's neck and head). Its latency
    is predicted exactly; its mAP is estimated from its parents' through ``AccuracyModel`` fitted
    to the pool. Children with no estimated gain keep their random draw order behind the rest, so
    without any signal this is the plain tournament and mutation of NSGA-II. Children over
    ``latency_max_ms`` are left out, and so are those in ``taken`` (already scored or claimed):
    a move that repeats one would cost a draw of the stage's ``max_draws`` and bring nothing.
    """
    archs = {p.arch: Arch.parse(p.arch) for p in pool}
    model = AccuracyModel(space, [(archs[p.arch], p.map, p.latency_ms) for p in pool])
    front = [known[i] for i in pareto_indices(known)]
    seen: set[str] = set(archs) | taken
    out = []
    for _ in range(draws):
        parents = (choose_parent(pool, population, rng),)
        if len(archs) > 1 and rng.random() < crossover_share:
            other = choose_parent(pool, population, rng)
            parents = parents + (other,) if other.arch != parents[0].arch else parents
        try:
            if len(parents) == 2:
                child = crossover(space, archs[parents[0].arch], archs[parents[1].arch])
            else:
                child = mutate(space, parents[0], rng.randrange(2**31))
        except HwnasError:
            continue
        if str(child) in seen:
            continue
        seen.add(str(child))
        lat = predict(child)
        if latency_max_ms is not None and lat > latency_max_ms:
            continue
        est = sum(p.map + model.change(child, lat, archs[p.arch], p.latency_ms) for p in parents) / len(parents)
        est = max(0.0, est)
        out.append(Child(child, parents, lat, est, hypervolume_gain(front, (est, lat), 0.0, ref_latency_ms)))
    return sorted(out, key=lambda c: -c.gain)  # a stable sort: ties keep the draw order
