"""Searches with different evaluators at an equal wall-clock budget, judged on standalone-trained mAP.

For each seed and method, one ``hwnas search --budget-min M`` on the same data, table and space
(``--trials`` set high, so the budget alone ends the stages); methods are an evaluator name
(``train``, ``train+bn``, ``bn``, ...) or ``random`` (random search, ``train``). The hypervolume of
each final front is computed from ``pareto.json``'s ``map``, the mAP of the detector trained
standalone for ``--epochs`` epochs (for a proxy evaluator the search trains its front so; for
``train`` the candidates were trained so already), never from a proxy; the reference point is
fixed before any run from the space alone (as in search_vs_random.py). The report gives each
search's wall time including the front's standalone training, which ``--budget-min`` does not
bound, so the comparison shows what a proxy's front costs on top.

Searches run one after another with 2 torch threads each: a wall-clock budget is only fair on an
otherwise idle machine. A finished search folder is read, not rerun. The data default is the truth
set's (made here as truth_set.py makes it when missing), so fronts can later be judged against it.

    python benchmarks/search_equal_time.py --seeds 3 --budget-min 8 --methods train,train+bn
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from common import HWNAS, run, search_args, write_results
from search_vs_random import reference_latency
from truth_set import DATA_CMD

from hwnas.search.pareto import hypervolume


def main() -> None:
    ap = search_args(__doc__.splitlines()[0], trials=1000, population=4, epochs=3)
    ap.set_defaults(data="runs/bench/truth/data")
    ap.add_argument("--seeds", default="3")
    ap.add_argument("--budget-min", type=float, default=8.0)
    ap.add_argument("--methods", default="train,train+bn")
    ap.add_argument("--supernet-epochs", type=int, default=12)
    ap.add_argument("--ref-quantile", type=float, default=0.95)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/equal-time"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/search_equal_time"))
    a = ap.parse_args()
    if not (Path(a.data) / "val.json").exists():
        run([*HWNAS, *DATA_CMD, "--out", a.data])
    res = tuple(int(r) for r in a.resolutions.split(","))
    ref = reference_latency(Path(a.table), a.space, res, a.ref_quantile)
    seeds, methods = [int(s) for s in a.seeds.split(",")], a.methods.split(",")
    rows = []
    for seed in seeds:
        for method in methods:
            out = a.work / f"b{a.budget_min:g}-{method}-s{seed}"
            wall_file = out / "bench_wall.json"
            if not wall_file.exists():
                stage = ["--stage", "random"] if method == "random" else ["--evaluator", method]
                t0 = time.perf_counter()
                run([*HWNAS, "search", "--data", a.data, "--table", a.table, "--space", a.space, "--resolutions",
                     a.resolutions, "--trials", str(a.trials), "--population", str(a.population), "--epochs-per-trial",
                     str(a.epochs), "--budget-min", str(a.budget_min), "--supernet-epochs", str(a.supernet_epochs),
                     "--seed", str(seed), "--threads", "2", "--no-measure", "--out", str(out), *stage])
                wall_file.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
            s = json.loads((out / "search.json").read_text())
            front = json.loads((out / "pareto.json").read_text())
            points = [(r["map"], r["predicted_latency_ms"]) for r in front if r["map"] is not None]
            rows.append({"seed": seed, "method": method, "hv": hypervolume(points, 0.0, ref),
                         "best_map": max(m for m, _ in points), "front": len(points),
                         "scored": s["counts"]["scored"], "trained_standalone": s["counts"]["trained_standalone"],
                         "time_s": s["time_s"], "wall_s": json.loads(wall_file.read_text())["wall_s"]})
    base = methods[0]
    for r in rows:
        b = next(x for x in rows if x["seed"] == r["seed"] and x["method"] == base)
        r["hv_ratio"] = r["hv"] / b["hv"] if b["hv"] else float("inf")
    summary = {m: statistics.geometric_mean([r["hv_ratio"] for r in rows if r["method"] == m]) for m in methods}
    result = {"reference": {"map": 0.0, "latency_ms": ref, "quantile": a.ref_quantile}, "rows": rows,
              "geometric_mean_hv_ratio": summary, "args": {k: str(v) for k, v in vars(a).items()}}
    lines = [f"Searches of `{a.space}` at {a.resolutions} px, `--budget-min {a.budget_min:g}` each, "
             f"{a.epochs} epochs a trained candidate, on `{a.data}`; hypervolume of the final front with "
             f"standalone-trained mAP against mAP 0 and {ref:.2f} ms (the {a.ref_quantile:.0%} quantile of predicted "
             f"latency); ratio against `{base}` of the same seed.", "",
             "| seed | method | HV | ratio | best mAP | front | scored | trained standalone | wall (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | `{r['method']}` | {r['hv']:.4f} | {r['hv_ratio']:.2f} | {r['best_map']:.4f} | "
                     f"{r['front']} | {r['scored']} | {r['trained_standalone']} | {r['wall_s'] / 60:.1f} |")
    lines += ["", "Geometric mean of the ratio: " + ", ".join(f"`{m}` {v:.2f}" for m, v in summary.items()) + "."]
    write_results(a.results, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
