"""Two-objective Pareto helpers: maximise mAP, minimise latency.

Points are ``(map, latency_ms)`` pairs. The non-dominated sort and crowding distance are
NSGA-II's (Deb et al. 2002): rank first, crowding second, which is the rule both search
stages select survivors by. The hypervolume is the area dominated by a front inside a fixed
reference box ``[ref_map, +inf) x (-inf, ref_latency_ms]``, the figure the benchmarks compare.
"""
from __future__ import annotations

import math
from typing import Sequence

Point = tuple[float, float]  # (map, latency_ms)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as accurate and as fast as ``b`` and strictly better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Front index of every point (0: non-dominated), by repeated peeling of the front."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def pareto_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, fastest first (exact duplicates all kept)."""
    front = [i for i, r in enumerate(nondominated_ranks(points)) if r == 0]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def crowding(points: Sequence[Point]) -> list[float]:
    """NSGA-II crowding distance within one front: the ends are infinite, inner points get
    the normalised side lengths of the box spanned by their neighbours."""
    n = len(points)
    dist = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in (0, 1):
        order = sorted(range(n), key=lambda i: points[i][k])
        lo, hi = points[order[0]][k], points[order[-1]][k]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, i, b in zip(order, order[1:], order[2:]):
            dist[i] += (points[b][k] - points[a][k]) / (hi - lo)
    return dist


def rank_and_crowding(points: Sequence[Point]) -> tuple[list[int], list[float]]:
    """Front index and crowding distance (within its own front) of every point."""
    ranks = nondominated_ranks(points)
    crowd = [0.0] * len(points)
    for r in set(ranks):
        members = [i for i in range(len(points)) if ranks[i] == r]
        for i, d in zip(members, crowding([points[i] for i in members])):
            crowd[i] = d
    return ranks, crowd


def select_survivors(points: Sequence[Point], k: int) -> list[int]:
    """NSGA-II elitist selection: the ``k`` best indices by (rank, -crowding)."""
    ranks = nondominated_ranks(points)
    chosen: list[int] = []
    for r in range(max(ranks, default=-1) + 1):
        members = [i for i in range(len(points)) if ranks[i] == r]
        if len(chosen) + len(members) <= k:
            chosen += members
            continue
        cd = crowding([points[i] for i in members])
        by_spread = sorted(range(len(members)), key=lambda j: -cd[j])
        chosen += [members[j] for j in by_spread[: k - len(chosen)]]
        break
    return chosen


def hypervolume(points: Sequence[Point], ref_map: float, ref_latency_ms: float) -> float:
    """Area (mAP x ms) dominated by ``points`` and bounded by the reference point.

    Points slower than ``ref_latency_ms`` or less accurate than ``ref_map`` add nothing.
    """
    inside = sorted((lat, m) for m, lat in points if m > ref_map and lat < ref_latency_ms)
    area, best_map = 0.0, ref_map
    # Sweep from the fastest: each point adds the strip between its latency and the reference
    # that its accuracy raises above everything faster.
    for lat, m in inside:
        if m > best_map:
            area += (m - best_map) * (ref_latency_ms - lat)
            best_map = m
    return area


def nadir_reference(latencies_ms: Sequence[float]) -> float:
    """The latency reference when no budget is given: 10 % beyond the slowest candidate seen,
    so every evaluated point, the slowest included, adds area."""
    return 1.1 * max(latencies_ms) if latencies_ms else 1.0


def hypervolume_gain(front: Sequence[Point], point: Point, ref_map: float, ref_latency_ms: float) -> float:
    """How much area ``point`` would add to ``front`` (0 when it is dominated or outside the box)."""
    return hypervolume([*front, point], ref_map, ref_latency_ms) - hypervolume(front, ref_map, ref_latency_ms)
