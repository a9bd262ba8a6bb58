"""Where candidates come from in each stage.

* **structural** (SM-NAS stage 1): a candidate is a combination of backbone family and depth,
  neck (with its pyramid levels), head type and input resolution; widths and the head depth sit
  at the middle of the space's choices. Optuna's NSGA-II sampler proposes the combination as
  five categorical parameters, so its crossover and mutation act on whole modules.
* **modular** (SM-NAS stage 2): a child is one SM-NAS move (insert a '1', remove a '1', move a
  '2', base width, neck width, head depth or width: ``SearchSpace.mutate``) applied to a parent
  chosen by binary tournament from the NSGA-II survivors (rank, then crowding distance) of
  everything evaluated in earlier generations, the structural front included. Latency is free
  (the table predicts it) while mAP costs a training, so each child is the best of many drawn
  moves: the one whose point would add the most hypervolume, its mAP estimated from its parent's
  (``ranked_children``). Optuna's fixed-dimension samplers cannot express moves on an
  architecture string, so the child is proposed here and Optuna records it.
* **random**: the baseline search, ``SearchSpace.sample`` with a fresh seed per draw.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from hwnas.arch import Arch, SearchSpace
from hwnas.errors import HwnasError
from hwnas.search.pareto import Point, hypervolume_gain, pareto_indices, rank_and_crowding, select_survivors

DEPTHS = ("shallow", "medium", "deep")


def middle(choices: Sequence[int]) -> int:
    ordered = sorted(choices)
    return ordered[len(ordered) // 2]


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


def structural_arch(space: SearchSpace, resolution: int, block: str, depth: str, neck: str, head: str) -> Arch:
    """The structural candidate for one combination. A two-stage head needs a neck: paired with
    ``none`` it gets the space's first neck instead (a repair, so every combination is valid), and
    so does the face head."""
    top = space.num_stages + 1
    if neck == "none" and head in ("rcnn", "face"):
        neck = next(c for c in neck_choices(space) if c != "none")
    if neck == "none":
        kind, levels = "none", (top, top)
    else:
        kind, lv = neck.split("_p")
        lo, hi = lv.split("-")
        levels = (int(lo), int(hi))
    if head == "rcnn":
        depth_h, width_h, props = middle(space.rcnn_depths), middle(space.rcnn_widths), middle(space.proposals)
    else:
        depth_h, width_h, props = middle(space.head_depths), middle(space.head_widths), 0
    return space.arch(resolution, block, middle(space.widths), stage_encoding(space, depth), kind, levels,
                       middle(space.neck_widths), head, depth_h, width_h, props, space.norms[0])


def initial_structures(space: SearchSpace, population: int, seed: int) -> list[dict]:
    """The structural stage's first generation as Optuna parameters, stratified rather than drawn
    at random: each choice cycles through a shuffled list of its options (a Latin-hypercube design
    over categories), so a population of 4 already holds every block family and every head type,
    where random draws of so few often miss the best family altogether."""
    rng = random.Random(seed)
    dims = {"resolution": list(space.resolutions), "block": list(space.blocks), "depth": list(DEPTHS),
            "neck": neck_choices(space), "head": list(space.heads)}
    for options in dims.values():
        rng.shuffle(options)
    return [{name: options[i % len(options)] for name, options in dims.items()} for i in range(population)]


def suggest_structural(trial, space: SearchSpace) -> Arch:
    """Ask an Optuna trial for the five structural choices."""
    return structural_arch(
        space,
        trial.suggest_categorical("resolution", list(space.resolutions)),
        trial.suggest_categorical("block", list(space.blocks)),
        trial.suggest_categorical("depth", list(DEPTHS)),
        trial.suggest_categorical("neck", neck_choices(space)),
        trial.suggest_categorical("head", list(space.heads)))


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


def accuracy_slope(points: Sequence[Point]) -> float:
    """mAP gained per unit of ln(latency) across the evaluated candidates: the least-squares slope,
    never below 0. It is how much a move that makes a detector faster is expected to cost."""
    xs = [math.log(lat) for _, lat in points]
    if len(points) < 3 or max(xs) - min(xs) < 1e-9:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(m for m, _ in points) / len(points)
    cov = sum((x - mx) * (m - my) for x, (m, _) in zip(xs, points))
    return max(0.0, cov / sum((x - mx) ** 2 for x in xs))


@dataclass(frozen=True)
class Child:
    arch: Arch
    parent: Parent
    latency_ms: float
    estimated_map: float
    gain: float  # hypervolume the child would add at its estimated mAP


def ranked_children(space: SearchSpace, pool: Sequence[Parent], population: int, known: Sequence[Point],
                    ref_latency_ms: float, predict: Callable[[Arch], float], rng: random.Random, draws: int = 32,
                    latency_max_ms: float | None = None) -> list[Child]:
    """``draws`` children (tournament parent, one SM-NAS move), best first by the hypervolume each
    would add to the front of ``known`` points.

    A child's mAP is estimated as its parent's, moved along the slope of mAP on ln(latency)
    (``accuracy_slope``): one move changes a detector little, and a faster one is usually a
    little less accurate. Only latency is predicted exactly. Children with no estimated gain keep
    their random draw order behind the rest, so without any signal this is the plain tournament
    and mutation of NSGA-II. Children over ``latency_max_ms`` are left out.
    """
    slope = accuracy_slope(known)
    front = [known[i] for i in pareto_indices(known)]
    seen: set[str] = set()
    out = []
    for _ in range(draws):
        parent = choose_parent(pool, population, rng)
        try:
            child = mutate(space, parent, rng.randrange(2**31))
        except HwnasError:
            continue
        if str(child) in seen:
            continue
        seen.add(str(child))
        lat = predict(child)
        if latency_max_ms is not None and lat > latency_max_ms:
            continue
        est = max(0.0, parent.map + slope * math.log(lat / parent.latency_ms))
        out.append(Child(child, parent, lat, est, hypervolume_gain(front, (est, lat), 0.0, ref_latency_ms)))
    return sorted(out, key=lambda c: -c.gain)  # a stable sort: ties keep the draw order
