"""The two-stage search against random search at an equal budget of trained candidates.

For each seed, ``hwnas search --stage both`` and ``hwnas search --stage random`` train the same
number of candidates with the same recipe on the same generated data; the hypervolume of each
final front (mAP x predicted latency) is taken against one fixed reference point, chosen before
any run from the space alone (the --ref-quantile of predicted latency over sampled archs).
Each seed's search also trains the hand-designed baselines with the same recipe and seed, and the
report says, for each, which searched detector is as fast (or faster) and as accurate (or more).

Runs are resumable (each is an ordinary search folder): rerunning the command finishes what is
missing and rewrites the figures.
"""
from __future__ import annotations

import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import HWNAS, run, search_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwnas.spec.space import get_space  # noqa: E402
from hwnas.latency.table import LatencyTable  # noqa: E402
from hwnas.search.pareto import hypervolume  # noqa: E402
from hwnas.search.records import TrialRecord  # noqa: E402
from hwnas.search.report import final_front, searched  # noqa: E402


def reference_latency(table: Path, space: str, resolutions: tuple[int, ...], q: float, n: int = 2000) -> float:
    t = LatencyTable.load(table)
    sp = get_space(space).with_resolutions(resolutions)
    lat = [t.predict(sp.sample(1_000_000 + i)).latency_ms for i in range(n)]
    return float(np.quantile(lat, q))


def summary(run_dir: Path) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """(every trial, the baselines) of a search folder's search.json."""
    s = json.loads((run_dir / "search.json").read_text())
    return [TrialRecord.from_dict(t) for t in s["trials"]], [TrialRecord.from_dict(b) for b in s["baselines"]]


def main() -> None:
    ap = search_args(__doc__.splitlines()[0], trials=12, population=4, epochs=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--baselines", default="i128/basic_c32_11-21-21-21/fpn_p3-5_c64/retina_d2_c64/bn,"
                                           "i128/basic_c32_11-21-21-21/fpn_p3-5_c64/fcos_d2_c64/bn,"
                                           "i128/basic_c32_11-21-21-21/fpn_p3-5_c64/rcnn_d2_c256_n128/bn,"
                                           "i128/mbconv_c16_1-21-21-21/fpn_p3-5_c64/retina_d2_c64/bn")
    ap.add_argument("--ref-quantile", type=float, default=0.95)
    ap.add_argument("--methods", default="sm,random", help="which searches to run now (both are reported)")
    ap.add_argument("--jobs", type=int, default=2, help="searches run side by side (one torch thread each)")
    ap.add_argument("--runs", default="runs/bench/search")
    ap.add_argument("--out", default="benchmarks/results/search_vs_random")
    a = ap.parse_args()

    res = tuple(int(r) for r in a.resolutions.split(","))
    ref = reference_latency(Path(a.table), a.space, res, a.ref_quantile)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = Path(a.runs)
    common = ["--data", a.data, "--table", a.table, "--space", a.space, "--resolutions", a.resolutions,
              "--trials", str(a.trials), "--population", str(a.population), "--epochs-per-trial", str(a.epochs),
              "--threads", "1", "--no-measure"]
    jobs = []
    for s in seeds:
        base = ["--baselines", a.baselines] if a.baselines else []
        jobs.append([*HWNAS, "search", "--stage", "both", "--seed", str(s), "--out", str(runs / f"sm-s{s}"), *common, *base])
        jobs.append([*HWNAS, "search", "--stage", "random", "--seed", str(s), "--out", str(runs / f"random-s{s}"), *common])
    wanted = set(a.methods.split(","))
    jobs = [j for j in jobs if ("both" in j and "sm" in wanted) or ("random" in j and "random" in wanted)]
    with ThreadPoolExecutor(a.jobs) as pool:
        walls = list(pool.map(run, jobs))

    sm = {s: summary(runs / f"sm-s{s}") for s in seeds}
    hv = lambda front: hypervolume([t.objectives for t in front], 0.0, ref)  # noqa: E731
    best = lambda front: max(t.score for t in front)  # noqa: E731
    rows, ratios = [], []
    for s in seeds:
        rand, _ = summary(runs / f"random-s{s}")
        trials = sm[s][0]
        f_sm, f_rand = final_front(trials), final_front(rand)
        hv_sm, hv_rand = hv(f_sm), hv(f_rand)
        ratios.append(hv_sm / hv_rand if hv_rand else float("inf"))
        # Halfway: the structural stage against random search's first draws, as many as it trained.
        struct = [t for t in trials if t.stage == "structural"]
        n_struct = sum(t.complete for t in struct)
        first = sorted((t for t in rand if t.complete), key=lambda t: int(t.trial.split("#")[1]))
        # Which way the modular moves went: children faster than their (first) parent.
        lat = {str(t.arch): t.predicted_latency_ms for t in trials}
        kids = [t for t in trials if t.stage == "modular" and t.complete]
        rows.append({"seed": s, "hv_search": hv_sm, "hv_random": hv_rand, "ratio": ratios[-1],
                     "hv_structural": hv(final_front(struct)), "hv_random_first": hv(final_front(first[:n_struct])),
                     "n_structural": n_struct, "front_search": len(f_sm), "front_random": len(f_rand),
                     "best_map_search": best(f_sm), "best_map_random": best(f_rand), "children": len(kids),
                     "children_faster": sum(t.predicted_latency_ms < lat[t.parent] for t in kids)})

    baselines = []
    for s in seeds:
        sm_done = searched(sm[s][0])
        for b in sm[s][1]:
            better = [t for t in sm_done if t.predicted_latency_ms <= b.predicted_latency_ms and t.score >= b.score]
            baselines.append((s, b, min(better, key=lambda t: t.predicted_latency_ms) if better else None))

    book = [json.loads(line) for s in seeds for kind in ("sm", "random")
            for line in (runs / f"{kind}-s{s}" / "bookkeeping.jsonl").read_text().splitlines() if line.strip()]
    over = [r["overhead_s"] for r in book]
    frac = [r["overhead_s"] / (r["train_s"] + r["overhead_s"]) for r in book]
    result = {"reference": {"map": 0.0, "latency_ms": ref, "quantile": a.ref_quantile}, "seeds": rows,
              "ratio_mean": statistics.mean(ratios), "ratio_min": min(ratios),
              "ratio_geometric_mean": statistics.geometric_mean(ratios), "seeds_won": sum(r > 1 for r in ratios),
              "hv_mean_search": statistics.mean(r["hv_search"] for r in rows),
              "hv_mean_random": statistics.mean(r["hv_random"] for r in rows),
              "baselines": [{**b.to_dict(), "seed": s, "matched": m.to_dict() if m else None} for s, b, m in baselines],
              "bookkeeping": {"n": len(book), "overhead_ms_median": 1e3 * statistics.median(over),
                                                     "fraction_mean": statistics.mean(frac), "fraction_max": max(frac)},
              "walls_s": walls, "args": vars(a)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Reference point: mAP 0, {ref:.2f} ms (the {a.ref_quantile:.0%} quantile of predicted latency over "
             f"2000 archs of space `{a.space}` at {a.resolutions} px).", "",
             "| seed | HV search | HV random | ratio | front size (search / random) | best mAP (search / random) "
             "| HV structural stage / random's first as many |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['hv_search']:.4f} | {r['hv_random']:.4f} | {r['ratio']:.2f} | "
                     f"{r['front_search']} / {r['front_random']} | {r['best_map_search']:.4f} / {r['best_map_random']:.4f} "
                     f"| {r['hv_structural']:.4f} / {r['hv_random_first']:.4f} ({r['n_structural']}) |")
    lines += ["", f"Mean ratio {result['ratio_mean']:.2f} (geometric {result['ratio_geometric_mean']:.2f}), smallest "
              f"{result['ratio_min']:.2f}; {result['seeds_won']} of {len(rows)} seeds won; mean HV "
              f"{result['hv_mean_search']:.4f} (search) against {result['hv_mean_random']:.4f} (random); "
              f"{sum(r['children_faster'] for r in rows)} of {sum(r['children'] for r in rows)} modular children are "
              "faster than their parent.",
              "Second half's gain in HV, per seed: modular stage over the structural front "
              + ", ".join(f"{r['hv_search'] / r['hv_structural'] - 1:+.0%}" for r in rows)
              + "; random search's later draws over its first ones "
              + ", ".join(f"{r['hv_random'] / r['hv_random_first'] - 1:+.0%}" for r in rows) + ".", "",
              "| seed | baseline | mAP | predicted ms | searched detector at <= its latency with >= its mAP | its mAP | its ms |",
              "|---|---|---|---|---|---|---|"]
    for s, b, m in baselines:
        lines.append(f"| {s} | `{b.arch}` | {b.score:.4f} | {b.predicted_latency_ms:.2f} | "
                     + (f"`{m.arch}` | {m.score:.4f} | {m.predicted_latency_ms:.2f} |" if m else "none | - | - |"))
    bk = result["bookkeeping"]
    lines += ["", f"Bookkeeping over {bk['n']} trials: median {bk['overhead_ms_median']:.0f} ms a trial, "
              f"mean {100 * bk['fraction_mean']:.3f} % of a trial's cost, worst {100 * bk['fraction_max']:.3f} %."]
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
