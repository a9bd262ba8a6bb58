"""How much hypervolume the equal-time searches could reach: every detector judged so far, against the targets.

The equal-time searches (benchmarks/search_equal_time.py) are judged by the hypervolume of their
fronts at 12-epoch, seed-0 mAP. Over all of them and the truth set, many detectors have such an mAP;
the front of all of them is the best this benchmark has ever seen, found over many CPU-hours. This
puts a search's target in that scale: for each seed, the judged hypervolume a method needs to reach
a given ratio to random search, as a share of that front's. A share above 1 asks a search to beat
everything found so far. Reads committed results only. The 10-minute searches by default; the
20-minute ones (the same reference latency, so the same scale):

    python benchmarks/hv_ceiling.py
    python benchmarks/hv_ceiling.py --searches search_equal_time-b20-s13,search_equal_time-b20-s14-15 \
        --results benchmarks/results/hv_ceiling-b20
"""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from common import write_results
from truth_set import committed_runs

from hwnas.search.pareto import hypervolume

RESULTS = Path("benchmarks/results")


def judged_points(truth: dict) -> tuple[dict[str, tuple[float, float]], float]:
    """Every detector with a seed-0 mAP of the truth set's length (the committed ledgers: the truth
    set's runs, the searches' judging), as arch -> (mAP, table latency); and the searches' reference
    latency (they share one)."""
    latency = {r["arch"]: r["predicted_latency_ms"] for r in truth["rows"]}
    runs = committed_runs(truth["epochs"])
    refs = set()
    for f in sorted(RESULTS.glob("search_equal_time-b*.json")):  # every budget: one reference latency
        if f.name.endswith(".judged.json"):
            continue
        d = json.loads(f.read_text())
        refs.add(round(d["reference"]["latency_ms"], 9))
        for r in d["rows"]:
            latency.update(zip(r["front_archs"], r["front_ms"]))
    if len(refs) != 1:
        raise SystemExit(f"the searches' results use {len(refs)} reference latencies; expected one")
    return {a: (v["map"], latency[a]) for (a, seed), v in runs.items() if seed == "0" and a in latency}, refs.pop()


def interval(logs: list[float], draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentile of the geometric mean of ratios (given as logs) over seeds resampled
    with replacement: how much the seeds' draw alone moves the figure the target is read from."""
    rng = random.Random(seed)
    means = sorted(math.exp(sum(rng.choices(logs, k=len(logs))) / len(logs)) for _ in range(draws))
    return means[int(0.05 * draws)], means[int(0.95 * draws) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", type=Path, default=RESULTS / "truth-small-128.json")
    ap.add_argument("--searches", default=",".join(f"search_equal_time-b10-{n}" for n in ("screen", "screen-s9", "s10-12")),
                    help="results whose judged rows are compared (the latest of each seed and method wins)")
    ap.add_argument("--ratio", type=float, default=1.3, help="the target ratio to random search")
    ap.add_argument("--results", type=Path, default=RESULTS / "hv_ceiling")
    args = ap.parse_args()
    truth = json.loads(args.truth.read_text())
    points, ref = judged_points(truth)
    everything = hypervolume(list(points.values()), 0.0, ref)
    truth_only = hypervolume([points[r["arch"]] for r in truth["rows"]], 0.0, ref)
    rows: dict[tuple[int, str], float] = {}
    for name in args.searches.split(","):
        for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"]:
            if r.get("hv_judged") is not None:
                rows[(r["seed"], r["method"])] = r["hv_judged"]
    seeds = sorted({s for s, m in rows if m == "random"})
    methods = sorted({m for _, m in rows})
    lines = [f"{len(points)} detectors have a 12-epoch seed-0 mAP (the truth set's and every judged front member's); "
             f"the front of all of them has hypervolume **{everything:.3f}** (the truth set's alone "
             f"{truth_only:.3f}; reference mAP 0, {ref:.2f} ms).", "",
             f"| seed | random | {args.ratio:g}x random | as a share of the best front known | "
             + " | ".join(methods) + " |", "|---" * (4 + len(methods)) + "|"]
    for s in seeds:
        need = args.ratio * rows[(s, "random")]
        cells = [f"{rows[(s, m)] / everything:.2f}" if (s, m) in rows else "" for m in methods]
        lines.append(f"| {s} | {rows[(s, 'random')]:.3f} | {need:.3f} | {need / everything:.2f} | " + " | ".join(cells) + " |")
    gm = math.exp(sum(math.log(rows[(s, "random")]) for s in seeds) / len(seeds))
    lines += ["", f"Over seeds {seeds[0]}-{seeds[-1]}: random search's geometric mean {gm:.3f}; {args.ratio:g}x of it "
              f"is {args.ratio * gm:.3f}, {args.ratio * gm / everything:.2f} of the best front known. The method "
              "columns give each method's judged hypervolume as a share of that front."]
    # the target itself, per method: its judged hypervolume over random search's, seed by seed
    to_random = {m: {s: rows[(s, m)] / rows[(s, "random")] for s in seeds if (s, m) in rows}
                 for m in methods if m != "random"}
    lines += ["", "| method | seeds | ratio to random search, seed by seed | geometric mean | 90 % interval "
              "(seeds resampled) | seeds won |", "|---|---|---|---|---|---|"]
    spread = {}
    for m, by_seed in to_random.items():
        logs = [math.log(v) for v in by_seed.values()]
        spread[m] = interval(logs)
        lines.append(f"| {m} | {len(logs)} | " + ", ".join(f"{s}: {v:.2f}" for s, v in by_seed.items())
                     + f" | **{math.exp(sum(logs) / len(logs)):.2f}** | {spread[m][0]:.2f}-{spread[m][1]:.2f} | "
                     f"{sum(v > 1 for v in by_seed.values())} |")
    lines += ["", "The interval: the geometric mean over the seeds drawn again with replacement, 10,000 times "
              "(bootstrap percentiles); how far these seeds pin the ratio down, not a test."]
    write_results(args.results, {"detectors": len(points), "hv_all_judged": everything, "hv_truth_set": truth_only,
                                 "reference_ms": ref, "rows": [{"seed": s, "method": m, "hv_judged": v}
                                                               for (s, m), v in sorted(rows.items())],
                                 "ratio_to_random": {m: {str(s): v for s, v in d.items()} for m, d in to_random.items()},
                                 "ratio_interval_90": spread},
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
