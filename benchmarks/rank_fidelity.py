"""How well each search evaluator ranks detectors: its scores on the truth set
(benchmarks/truth_set.py) against the truth set's fully trained mAP, and what it cost.

Evaluators (each through hwnas's own code, as the search calls it):
* ``trainE``: every detector trained from scratch for E epochs (``train`` with ``--epochs-per-trial
  E``; train3 is the search's default and the baseline);
* ``halving``: successive halving over epochs (hwnas.search.halving), rungs up to the truth set's
  epochs / 1, eta 3, promotion by non-dominated rank on (mAP, table latency);
* ``supernet:E:STRATEGY[:SPAN]``: the ``supernet`` evaluator, one supernet per neighbourhood
  (span family: resolution, block family, head kind, norm, 12 for the small space's truth set;
  span structure: the neck and its levels fixed too) trained E epochs with STRATEGY (uniform |
  sandwich), every detector scored with inherited weights;
* ``bn:E[:SPAN]``: BN-NAS, the same supernets with only BatchNorm trained for E epochs, every
  detector scored by its BN scale factors.

``--truth`` takes either truth set: the global one or one neighbourhood's (``truth_set.py --hood``).

Figures per evaluator: Kendall tau and Spearman rho between its ranking and the truth (mean mAP of
the truth set's seeds), how many of the truth's 5 best it puts in its own 5 best, the hypervolume of
the front it would hand over (its front's members at their true mAP and table latency) as a share
of the true front's, and the wall time it spent. The evaluators' training uses seed 0; the truth's
mAP is the mean over its seeds.

    python benchmarks/truth_set.py --seeds 0,1
    python benchmarks/rank_fidelity.py --evaluators train3,train1,halving
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

from common import write_results

from hwnas.search.evaluators import Budget, make_evaluator
from hwnas.search.halving import halving_rank_key, rung_epochs, successive_halving
from hwnas.search.pareto import hypervolume, nadir_reference, pareto_indices
from hwnas.search.runner import SearchConfig, slug
from hwnas.spec.arch import Arch


def evaluate(name: str, truth: dict, data: Path, work: Path, eta: int, known: dict[str, float] | None = None) -> dict:
    """Per arch a ranking key (higher: better) and the evaluator's raw scores; the wall time spent.
    ``known``: a trainE's scores stored by an earlier run, kept rather than trained again (a truth
    set that grows across sittings adds detectors; the stored ones' folders may be gone)."""
    cfg = SearchConfig(data=data, table=Path(truth["table"]), out=work, batch_size=16, lr=2e-3, seed=0)
    if name.startswith(("supernet:", "bn:")):
        kind, epochs, *rest = name.split(":")
        strategy = rest.pop(0) if kind == "supernet" and rest else "uniform"
        span = rest[0] if rest else "family"
        cfg = replace(cfg, out=work / name.replace(":", "-"), evaluator=kind, space=truth["space"],
                      resolutions=(truth["resolution"],), supernet_epochs=int(epochs), supernet_strategy=strategy,
                      supernet_span=span)
    train = make_evaluator(cfg)
    archs = [r["arch"] for r in truth["rows"] if r["map"] is not None]  # only what can be compared
    latency = {r["arch"]: r["predicted_latency_ms"] for r in truth["rows"]}
    spent = 0.0

    def score(arch: str, epochs: int, folder: Path) -> float | None:
        nonlocal spent
        t0 = time.perf_counter()
        print(f"{name}: {arch} to {epochs} epoch(s)", flush=True)
        ev = train(Arch.parse(arch), Budget(epochs=max(1, epochs)), folder)
        spent += time.perf_counter() - t0
        return ev.score

    if name.startswith("train"):
        epochs = int(name[len("train"):])
        known = known or {}
        scores = {a: known[a] if a in known else score(a, epochs, work / name / slug(a)) for a in archs}
        keys = {a: (-1.0 if s is None else s) for a, s in scores.items()}
        detail = {a: {epochs: s} for a, s in scores.items()}
    elif name == "halving":
        rungs = rung_epochs(truth["epochs"], eta)
        detail = successive_halving(archs, latency.get, lambda a, e: score(a, e, work / name / slug(a)), rungs, eta)
        order = sorted(archs, key=lambda a: halving_rank_key(detail[a]))
        keys = {a: float(i) for i, a in enumerate(order)}  # the rank position: only the order matters
    elif name.startswith(("supernet:", "bn:")):
        scores = {a: score(a, 0, cfg.out / "trials" / slug(a)) for a in archs}
        keys = {a: (-1.0 if s is None else s) for a, s in scores.items()}
        detail = {a: {"proxy": s} for a, s in scores.items()}
        nets = [json.loads(p.read_text()) for p in sorted(cfg.out.glob("*supernets/*/supernet.json"))]
        return {"keys": keys, "detail": detail, "cost_s": spent, "supernets": len(nets),
                "supernet_train_s": sum(n["train_s"] for n in nets)}
    else:
        raise SystemExit(f"unknown evaluator {name!r}: trainE (E epochs), halving, supernet:E:STRATEGY[:SPAN] or "
                         "bn:E[:SPAN]")
    return {"keys": keys, "detail": {a: {str(k): v for k, v in d.items()} for a, d in detail.items()}, "cost_s": spent}


def fidelity(truth: dict, keys: dict[str, float]) -> dict:
    """Rank agreement with the truth over the detectors that have both a truth mAP and a score."""
    rows = [r for r in truth["rows"] if r["map"] is not None and r["arch"] in keys]
    true = [r["map"] for r in rows]
    proxy = [keys[r["arch"]] for r in rows]
    lat = [r["predicted_latency_ms"] for r in rows]
    top_true = set(sorted(range(len(rows)), key=lambda i: -true[i])[:5])
    top_proxy = set(sorted(range(len(rows)), key=lambda i: -proxy[i])[:5])
    ref = nadir_reference(lat)
    hv_true = hypervolume([(true[i], lat[i]) for i in pareto_indices(list(zip(true, lat)))], 0.0, ref)
    picked = pareto_indices(list(zip(proxy, lat)))
    hv_picked = hypervolume([(true[i], lat[i]) for i in picked], 0.0, ref)
    # Within one block family and head type (the truth set's narrow, random and wide detector of a
    # pair; a structural probe stands for such a group): does the evaluator order them as the truth?
    group = [(a.block, a.head.kind) for a in (Arch.parse(r["arch"]) for r in rows)]
    pairs = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows)) if group[i] == group[j]
             and true[i] != true[j]]
    agree = sum((proxy[i] - proxy[j]) * (true[i] - true[j]) > 0 for i, j in pairs)
    return {"n": len(rows), "kendall_tau": kendalltau(proxy, true).statistic, "spearman": spearmanr(proxy, true).statistic,
            "top5_in_top5": len(top_true & top_proxy), "front_size": len(picked),
            "front_hv_share": hv_picked / hv_true if hv_true else None,
            "pairs_within_group": len(pairs), "ordered_within_group": agree}


def truth_or_plan(path: Path, work: Path = Path("runs/bench/truth")) -> dict:
    """The truth set; while it is still training, its plan (archs and table latency) with the mAP of
    the detectors finished so far (mean over the seeds finished; from the set's ledger and this
    machine's runs), so evaluators can be scored meanwhile and compared on the finished part (the
    table says how many)."""
    if path.exists():
        return json.loads(path.read_text())
    from truth_set import recorded_runs, truth_archs

    from hwnas.latency.table import LatencyTable
    from hwnas.spec.space import get_space

    table = "latency_tables/intel-xeon-ort-cpu-fp32-1t-small-3cls.json"
    lat = LatencyTable.load(Path(table))
    rows, seeds = [], set()
    ledger: dict[str, dict[str, float]] = {}  # arch -> seed -> mAP, runs of earlier sittings
    for (arch, seed), v in recorded_runs(path.with_suffix(".runs.json"), 12).items():
        ledger.setdefault(arch, {})[seed] = v["map"]
    for a in truth_archs(get_space("small"), 128):
        maps = dict(ledger.get(str(a), {}))
        for run in sorted(work.glob(f"e12-s*/{slug(str(a))}/metrics.json")):
            maps[run.parts[-3].removeprefix("e12-s")] = json.loads(run.read_text())["map"]
        seeds |= set(maps)
        rows.append({"arch": str(a), "predicted_latency_ms": lat.predict(a).latency_ms,
                     "map": sum(maps.values()) / len(maps) if maps else None, "seeds_done": sorted(maps)})
    return {"space": "small", "resolution": 128, "epochs": 12, "table": table, "seeds": sorted(seeds),
            "partial": True, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", type=Path, default=Path("benchmarks/results/truth-small-128.json"))
    ap.add_argument("--data", type=Path, default=Path("runs/bench/truth/data"), help="the truth set's data")
    ap.add_argument("--evaluators", default="train3,halving")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/fidelity"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/rank_fidelity"))
    ap.add_argument("--report-only", action="store_true", help="recompute the figures of the stored scores")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="results files of other runs to add")
    ap.add_argument("--collect", action="store_true", help="trainE: read the runs finished so far, train nothing")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    truth = truth_or_plan(args.truth)
    sizes = size_keys(truth, args.data)
    path = args.results.with_suffix(".json")
    result = json.loads(path.read_text()) if path.exists() else {"truth": str(args.truth), "evaluators": {}}
    for extra in args.merge:  # scores another run of this script stored elsewhere
        result["evaluators"].update(json.loads(extra.read_text())["evaluators"])
    if args.collect:  # trainE runs finished so far, read from their folders (nothing is trained)
        for name in [e for e in args.evaluators.split(",") if e.startswith("train")]:
            keys, cost = {}, 0.0
            for r in truth["rows"]:
                m = args.work / name / slug(r["arch"]) / "metrics.json"
                if m.exists():
                    d = json.loads(m.read_text())
                    keys[r["arch"]], cost = d["map"], cost + d["train_seconds"]
            result["evaluators"][name] = {"keys": keys, "scores": {a: {"map": v} for a, v in keys.items()},
                                          "cost_s": cost, "partial": len(keys)}
    for name in [] if args.report_only or args.collect else [e for e in args.evaluators.split(",") if e]:
        stored = result["evaluators"].get(name, {}) if name.startswith("train") else {}
        ev = evaluate(name, truth, args.data, args.work, args.eta, stored.get("keys"))
        result["evaluators"][name] = {**{k: v for k, v in ev.items() if k not in ("keys", "detail")},
                                      "cost_s": ev["cost_s"] + stored.get("cost_s", 0.0),  # the kept ones' cost
                                      "keys": {**stored.get("keys", {}), **ev["keys"]},
                                      "scores": {**stored.get("scores", {}), **ev["detail"]}}
        write_results(args.results, result, table(result, truth, sizes))
    write_results(args.results, result, table(result, truth, sizes))


def table(result: dict, truth: dict, sizes: dict[str, dict[str, float]]) -> str:
    """The figures of every stored evaluator against the truth, over the detectors both have, then
    the rankings by size alone (``size_keys``) and what a BN-NAS indicator holds beyond depth."""
    done = sum(r["map"] is not None for r in truth["rows"])
    if done < 5:
        return f"Scores stored for {', '.join(result['evaluators'])}; the truth set has {done} trained detectors.\n"
    part = f"{done} of {len(truth['rows'])} detectors trained so far" if truth.get("partial") else \
        f"{len(truth['rows'])} detectors"
    lines = [f"Rank fidelity on the truth set ({part}, seeds {', '.join(map(str, truth['seeds']))}).", "",
             "| evaluator | detectors compared | Kendall tau | Spearman | truth's top 5 in its top 5 | front HV share "
             "| front size | pairs of one family and head ordered right | wall time here (min) |",
             "|---|---|---|---|---|---|---|---|---|"]

    def within(f: dict) -> str:
        return f"{f['ordered_within_group']} of {f['pairs_within_group']}"

    for name, e in result["evaluators"].items():
        e.update(fidelity(truth, e["keys"]))
        lines.append(f"| {name} | {e['n']} | {e['kendall_tau']:.2f} | {e['spearman']:.2f} | {e['top5_in_top5']} | "
                     f"{e['front_hv_share']:.2f} | {e['front_size']} | {within(e)} | {e['cost_s'] / 60:.1f} |")
    for name, keys in covered(result, sizes["label coverage"]).items():
        f = fidelity(truth, keys)
        lines.append(f"| {name} (`train+coverage`) | {f['n']} | {f['kendall_tau']:.2f} | {f['spearman']:.2f} | "
                     f"{f['top5_in_top5']} | {f['front_hv_share']:.2f} | {f['front_size']} | {within(f)} | |")
    for name, keys in sizes.items():
        f = fidelity(truth, keys)
        lines.append(f"| for reference, no training: {name} | {f['n']} | {f['kendall_tau']:.2f} | {f['spearman']:.2f} | "
                     f"{f['top5_in_top5']} | {f['front_hv_share']:.2f} | {f['front_size']} | {within(f)} | |")
    return "\n".join(lines + variant_lines(result, truth, sizes) + growth_lines(result, truth)
                     + bn_lines(result, truth, sizes["BatchNorm layers"])) + "\n"


def growth_lines(result: dict, truth: dict) -> list[str]:
    """For each ``trainE``: how much a detector's mAP grows from E epochs to the truth's, by head
    kind (median and range of the ratio). A kind that grows less is overrated by the short score
    against the others, a bias no ranking inside one kind shows."""
    lines = []
    kind = {r["arch"]: Arch.parse(r["arch"]).head.kind for r in truth["rows"]}
    for name, e in result["evaluators"].items():
        if not name.startswith("train"):
            continue
        growth = {r["arch"]: r["map"] / e["keys"][r["arch"]] for r in truth["rows"]
                  if r["map"] is not None and e["keys"].get(r["arch"], 0) > 0}
        by_kind: dict[str, list[float]] = {}
        for a, g in growth.items():
            by_kind.setdefault(kind[a], []).append(g)
        cells = [f"{k} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f}, {len(v)})" for k, v in sorted(by_kind.items())]
        lines.append(f"- {name}: truth mAP / score by head kind, median (range, detectors): {'; '.join(cells)}.")
        # would a per-kind correction mend that bias? Each detector's score times the median growth of
        # the other detectors of its kind (leave-one-out: its own truth never enters its correction)
        corrected = {a: e["keys"][a] * statistics.median(g for b, g in growth.items() if b != a and kind[b] == kind[a])
                     for a in growth if len(by_kind[kind[a]]) > 1}
        if len(corrected) >= 5:
            f, raw = fidelity(truth, corrected), fidelity(truth, {a: e["keys"][a] for a in corrected})
            lines.append(f"  Corrected by the median growth of the other detectors of its head kind (leave-one-out), "
                         f"{name} ranks {f['n']} detectors with Kendall tau {f['kendall_tau']:.2f} / Spearman "
                         f"{f['spearman']:.2f} (uncorrected {raw['kendall_tau']:.2f} / {raw['spearman']:.2f}).")
    return ["", *lines] if lines else []


VARIANTS = ("narrowest-shallowest", "drawn", "widest-deepest")  # truth_set.truth_archs, in its order


def variant_of(truth: dict) -> dict[str, str]:
    """arch -> which of the three kinds of detector the truth set drew it as (truth_set.truth_archs
    is seeded, so drawing the set again names every member)."""
    from truth_set import truth_archs

    from hwnas.spec.space import get_space

    archs = truth_archs(get_space(truth["space"]), truth["resolution"])
    return {str(a): VARIANTS[i % len(VARIANTS)] for i, a in enumerate(archs)}


def variant_lines(result: dict, truth: dict, sizes: dict[str, dict[str, float]]) -> list[str]:
    """Each ranking over the truth set's three kinds of detector apart (one of each per block family
    and head type): how well a score ranks structures depends on the depth and width they are
    compared at, which the structural stage's probe chooses (docs/search.md, --probe)."""
    if "hood" in truth:
        return []
    drawn_as = variant_of(truth)
    kind = {r["arch"]: drawn_as[r["arch"]] for r in truth["rows"] if r["map"] is not None}  # trained ones
    rankings = {**{n: e["keys"] for n, e in result["evaluators"].items()},
                **covered(result, sizes["label coverage"]),
                **{f"no training: {n}": k for n, k in sizes.items()}}
    lines = ["", "The same over the truth set's three kinds of detector apart (Kendall tau / Spearman, detectors "
             "compared):", "", "| ranking | " + " | ".join(VARIANTS) + " |", "|---|---|---|---|"]
    for name, keys in rankings.items():
        cells = []
        for v in VARIANTS:
            part = {a: k for a, k in keys.items() if kind.get(a) == v}
            f = fidelity(truth, part) if len(part) >= 5 else None  # fewer give no ranking worth a figure
            cells.append(f"{f['kendall_tau']:.2f} / {f['spearman']:.2f} ({f['n']})" if f else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def bn_lines(result: dict, truth: dict, count: dict[str, float]) -> list[str]:
    """For each ``bn:`` evaluator: how its indicator's trained part (the mean scale per BatchNorm,
    the indicator over the count) ranks, and how well ``train+bn``'s ratio to one trained anchor
    predicts mAP (mean absolute error over every anchor and other detector, against taking the
    anchor's mAP for all)."""
    true = {r["arch"]: r["map"] for r in truth["rows"] if r["map"] is not None}
    lines = []
    for name, e in result["evaluators"].items():
        keys = {a: k for a, k in e["keys"].items() if a in true and k > 0}
        if not name.startswith("bn:") or len(keys) < 5:
            continue
        per_bn = fidelity(truth, {a: k / count[a] for a, k in keys.items()})
        pairs = [(x, y) for x in keys for y in keys if x != y]
        ratio = sum(abs(true[x] * keys[y] / keys[x] - true[y]) for x, y in pairs) / len(pairs)
        flat = sum(abs(true[x] - true[y]) for x, y in pairs) / len(pairs)
        lines.append(f"- {name}: the mean scale per BatchNorm ranks with Kendall tau {per_bn['kendall_tau']:.2f} "
                     f"(Spearman {per_bn['spearman']:.2f}); from one trained anchor, anchor mAP x indicator / anchor "
                     f"indicator predicts the others' mAP with mean absolute error {ratio:.4f} (the anchor's mAP for "
                     f"all: {flat:.4f}).")
    return ["", *lines] if lines else []


def covered(result: dict, coverage: dict[str, float]) -> dict[str, dict[str, float]]:
    """``trainE x label coverage`` for each stored ``trainE``: what ``--evaluator train+coverage``
    ranks by, from the same trainings (the coverage needs none)."""
    return {f"{n} x label coverage": {a: k * coverage[a] for a, k in e["keys"].items() if a in coverage}
            for n, e in result["evaluators"].items() if n.startswith("train")}


def size_keys(truth: dict, data: Path) -> dict[str, dict[str, float]]:
    """What an evaluator must beat: rankings read off the arch with no training (bigger: better).
    Size: the table's latency, parameters, and the BatchNorm count, which is what BN-NAS's
    indicator (a sum over the path's BatchNorms) reads from an untrained supernet, where every scale
    factor is 1. Label coverage: the share of ``data``'s training boxes the head's assignment gives
    a positive (hwnas.search.coverage, the search's recipe)."""
    from hwnas.models import Detector
    from hwnas.search.coverage import label_coverage
    from hwnas.search.supernet import norm_layers
    from hwnas.train.recipes import recipe_config

    cfg = recipe_config(None, epochs=3, batch_size=16, lr=2e-3, seed=0)  # the search's training settings
    out: dict[str, dict[str, float]] = {"table latency": {}, "parameters": {}, "BatchNorm layers": {},
                                        "label coverage": {}}
    for r in truth["rows"]:
        arch = Arch.parse(r["arch"])
        out["table latency"][r["arch"]] = r["predicted_latency_ms"]
        out["parameters"][r["arch"]] = float(sum(p.numel() for p in Detector.from_arch(arch, 3).parameters()))
        out["BatchNorm layers"][r["arch"]] = float(norm_layers(arch))
        out["label coverage"][r["arch"]] = label_coverage(arch, data, cfg)
    return out


if __name__ == "__main__":
    main()
