"""Searches with different evaluators at an equal wall-clock budget, judged on standalone-trained mAP.

For each seed and method, one ``hwnas search --budget-min M`` on the same data, table and space
(``--trials`` set high, so the budget alone ends the stages); methods are an evaluator name
(``train``, ``train+bn``, ``bn``, ...), optionally with ``@PROBE`` for the structural stage's
``--probe`` (``train@shallow``) and ``-screen`` for ``--screen coverage`` (``train-screen``; without
it ``--screen none``, the search these results were first taken with), or ``random`` (random search,
``train``). The hypervolume of
each final front is computed from ``pareto.json``'s ``map``, the mAP of the detector trained
standalone for ``--epochs`` epochs (for a proxy evaluator the search trains its front so; for
``train`` the candidates were trained so already), never from a proxy; the reference point is
fixed before any run from the space alone (as in search_vs_random.py). ``--budget-min`` bounds the
whole search, a proxy evaluator's standalone front training included (``--front-share`` caps the
reserve kept for it; docs/search.md), so every method gets the same wall clock (each overruns by at
most the evaluation in flight); the report gives each search's wall time. Results written before
the budget covered the front (``front_share`` absent from a row) are kept and marked. With
``--judge-epochs`` every front member with a standalone mAP is then trained as the truth set's
detectors are (``truth_set.train_recorded``, ledger RESULTS.judged.json) and judged by that mAP; a
detector any committed ledger already holds (the truth set's, another search's judging) is read
from there, not trained again.

Searches run one after another with 2 torch threads each: a wall-clock budget is only fair on an
otherwise idle machine. A finished search folder is read, not rerun, and a seed whose folder is gone
(run in another sitting) is taken from the results file, which must hold the same settings. The
data default is the truth set's (made here as truth_set.py makes it when missing), so fronts can
later be judged against it.

    python benchmarks/search_equal_time.py --seeds 4,5 --budget-min 10 --methods train,train+bn --supernet-epochs 4
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

from common import HWNAS, run, search_args, write_results
from search_vs_random import reference_latency
from truth_set import DATA_CMD, committed_runs, recorded_runs, train_recorded

from hwnas.search.pareto import hypervolume


SAME = ("budget_min", "epochs", "supernet_epochs", "front_share", "space", "resolutions", "table", "data", "population")


def recorded_rows(path: Path, a) -> dict[tuple[int, str], dict]:
    """(seed, method) -> its row, from an earlier results file of the same settings, so that seeds
    run in another sitting (whose search folders are gone) stay in the comparison."""
    if not path.exists():
        return {}
    prior = json.loads(path.read_text())
    if any(prior["args"].get(k) != str(getattr(a, k)) for k in SAME):
        raise SystemExit(f"{path} holds searches with other settings; give another --results")
    return {(r["seed"], r["method"]): r for r in prior["rows"]}


def main() -> None:
    ap = search_args(__doc__.splitlines()[0], trials=1000, population=4, epochs=3)
    ap.set_defaults(data="runs/bench/truth/data")
    ap.add_argument("--seeds", default="3")
    ap.add_argument("--budget-min", type=float, default=8.0)
    ap.add_argument("--methods", default="train,train+bn")
    ap.add_argument("--supernet-epochs", type=int, default=12)
    ap.add_argument("--front-share", type=float, default=0.3, help="hwnas search --front-share")
    ap.add_argument("--judge-epochs", type=int, default=12,
                    help="also train every front member with a standalone mAP this long, as the truth set does, and "
                         "give the hypervolume of those mAPs (0: no judging)")
    ap.add_argument("--judge-seed", type=int, default=0)
    ap.add_argument("--judge-work", type=Path, default=Path("runs/bench/truth"),
                    help="where the judging runs are kept (the truth set's folder: a detector of both trains once)")
    ap.add_argument("--ref-quantile", type=float, default=0.95)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/equal-time"))
    ap.add_argument("--results", type=Path, default=None, help="default benchmarks/results/search_equal_time-bM")
    a = ap.parse_args()
    a.results = a.results or Path(f"benchmarks/results/search_equal_time-b{a.budget_min:g}")
    prior = recorded_rows(a.results.with_suffix(".json"), a)
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
            if not wall_file.exists() and (seed, method) in prior:  # run on another machine, its folder gone
                rows.append(prior[seed, method])
                continue
            if not wall_file.exists():
                named, _, flag = method.partition("-")
                if flag not in ("", "screen"):
                    raise SystemExit(f"method {method!r}: the one suffix is -screen (--screen coverage)")
                evaluator, _, probe = named.partition("@")
                stage = (["--stage", "random"] if method == "random" else
                         ["--evaluator", evaluator, *(["--probe", probe] if probe else []),
                          "--screen", "coverage" if flag else "none"])
                t0 = time.perf_counter()
                run([*HWNAS, "search", "--data", a.data, "--table", a.table, "--space", a.space, "--resolutions",
                     a.resolutions, "--trials", str(a.trials), "--population", str(a.population), "--epochs-per-trial",
                     str(a.epochs), "--budget-min", str(a.budget_min), "--front-share", str(a.front_share),
                     "--supernet-epochs", str(a.supernet_epochs),
                     "--seed", str(seed), "--threads", "2", "--no-measure", "--out", str(out), *stage])
                wall_file.write_text(json.dumps({"wall_s": time.perf_counter() - t0, "front_share": a.front_share}))
            s = json.loads((out / "search.json").read_text())
            trained = [r for r in json.loads((out / "pareto.json").read_text()) if r["map"] is not None]
            wall = json.loads(wall_file.read_text())
            rows.append({"seed": seed, "method": method,
                         "hv": hypervolume([(r["map"], r["predicted_latency_ms"]) for r in trained], 0.0, ref),
                         "best_map": max(r["map"] for r in trained), "front": len(trained),
                         "front_archs": [r["arch"] for r in trained], "front_ms": [r["predicted_latency_ms"] for r in trained],
                         "front_map": [r["map"] for r in trained],
                         "scored": s["counts"]["scored"], "trained_standalone": s["counts"]["trained_standalone"],
                         "time_s": s["time_s"], "wall_s": wall["wall_s"],
                         # None: run before --budget-min bounded the front's standalone training
                         "front_share": wall.get("front_share")})
    report(a, rows, ref, methods, {})
    if a.judge_epochs:  # after every search: judging is epoch-based, the machine's load does not matter
        ledger = a.results.with_suffix(".judged.json")
        judged = recorded_runs(ledger, a.judge_epochs)  # this file's own judging runs
        known = committed_runs(a.judge_epochs) | judged  # and every other ledger's: a detector trains once
        todo = list(dict.fromkeys(arch for r in rows for arch in r["front_archs"]))  # seed by seed, as the rows
        for i, arch in enumerate(todo):
            key = (arch, str(a.judge_seed))
            if key not in known:
                known[key] = train_recorded(arch, a.judge_seed, a.judge_epochs, Path(a.data), a.judge_work, ledger,
                                            judged, f"judging [{i + 1}/{len(todo)}]")
                report(a, rows, ref, methods, known)  # a row's judged HV as soon as its front is judged
        report(a, rows, ref, methods, known)


def report(a, rows: list[dict], ref: float, methods: list[str], judged: dict) -> None:
    """The results files: each row's hypervolume and its ratio to the first method's of the same
    seed; with judging, the same for the judged mAPs of every row whose front is judged so far."""
    keys = ["hv", "hv_judged"] if a.judge_epochs else ["hv"]
    for r in rows:
        maps = [judged.get((arch, str(a.judge_seed)), {}).get("map") for arch in r["front_archs"]]
        done = a.judge_epochs and None not in maps
        r["hv_judged"] = hypervolume(list(zip(maps, r["front_ms"])), 0.0, ref) if done else None
        r["best_map_judged"] = max(maps) if done else None
    base = methods[0]
    for r in rows:
        b = next(x for x in rows if x["seed"] == r["seed"] and x["method"] == base)
        for k in keys:
            r[f"{k}_ratio"] = r[k] / b[k] if r[k] is not None and b[k] else None
    summary = {k: {m: statistics.geometric_mean(v) if (v := [r[f"{k}_ratio"] for r in rows if r["method"] == m
                                                              and r[f"{k}_ratio"] is not None]) else None
                   for m in methods} for k in keys}
    result = {"reference": {"map": 0.0, "latency_ms": ref, "quantile": a.ref_quantile}, "rows": rows,
              "geometric_mean_hv_ratio": summary, "args": {k: str(v) for k, v in vars(a).items()}}
    n_judged = sum(r["hv_judged"] is not None for r in rows)
    judge = (f" HV judged: the same front members trained {a.judge_epochs} epochs (seed {a.judge_seed}) as the truth "
             f"set's detectors are ({n_judged} of {len(rows)} searches judged so far)." if a.judge_epochs else "")
    lines = [f"Searches of `{a.space}` at {a.resolutions} px, `--budget-min {a.budget_min:g}` each, "
             f"{a.epochs} epochs a trained candidate, on `{a.data}`; hypervolume of the final front with "
             f"standalone-trained mAP against mAP 0 and {ref:.2f} ms (the {a.ref_quantile:.0%} quantile of predicted "
             f"latency); ratio against `{base}` of the same seed.{judge}", "",
             "| seed | method | HV | ratio | best mAP | " + ("HV judged | ratio | best judged | " if a.judge_epochs else "")
             + "front (trained) | scored | trained standalone | wall (min) |",
             "|---|---|---|---|---|" + ("---|---|---|" if a.judge_epochs else "") + "---|---|---|---|"]

    def num(x, fmt: str = ".4f") -> str:
        return "-" if x is None else format(x, fmt)

    for r in rows:
        judged_cells = (f"{num(r['hv_judged'])} | {num(r['hv_judged_ratio'], '.2f')} | {num(r['best_map_judged'])} | "
                        if a.judge_epochs else "")
        lines.append(f"| {r['seed']} | `{r['method']}`{'' if r['front_share'] is not None else ' (front unbounded)'} | "
                     f"{r['hv']:.4f} | {num(r['hv_ratio'], '.2f')} | {r['best_map']:.4f} | {judged_cells}"
                     f"{r['front']} | {r['scored']} | {r['trained_standalone']} | {r['wall_s'] / 60:.1f} |")
    lines += [""] + [f"Geometric mean of the {k.replace('_', ' ')} ratio: "
                     + ", ".join(f"`{m}` {num(v, '.2f')}" for m, v in summary[k].items()) + "." for k in keys]
    # how well the searches' own score (standalone mAP after --epochs) ranks what they put on their
    # fronts, against the judged mAP: every judged front member once (rows of other sittings may
    # lack their front's mAPs)
    pairs = {arch: (m, judged[arch, str(a.judge_seed)]["map"]) for r in rows
             for arch, m in zip(r["front_archs"], r.get("front_map", [])) if (arch, str(a.judge_seed)) in judged}
    if len(pairs) >= 5:
        short, full = zip(*pairs.values())
        result["front_rank_agreement"] = {"n": len(pairs), "kendall_tau": kendalltau(short, full).statistic,
                                          "spearman": spearmanr(short, full).statistic}
        lines.append(f"Over the {len(pairs)} judged front members, the {a.epochs}-epoch mAP ranks them against the "
                     f"judged mAP with Kendall tau {result['front_rank_agreement']['kendall_tau']:.2f} "
                     f"(Spearman {result['front_rank_agreement']['spearman']:.2f}).")
    write_results(a.results, result, "\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
