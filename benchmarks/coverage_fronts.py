"""Corrections of the 3-epoch score on detectors they were not chosen on: the judged front members of the equal-time searches.

``train+coverage`` (3-epoch mAP x label coverage, hwnas.search.coverage) was found on the truth set
(benchmarks/rank_fidelity.py); ``train+growth`` (3-epoch mAP x GFLOPs ** GROWTH_EXPONENT) has its
exponent fitted here on the truth set alone: the least-squares slope of ln(12-epoch mAP, mean of the
truth seeds / 3-epoch mAP, rank_fidelity.json's train3) on ln(forward GFLOPs) over its detectors. The equal-time searches (benchmarks/search_equal_time.py) left other
detectors with both a 3-epoch mAP (the search's own training) and a 12-epoch one (their judging,
seed 0, as the truth set's detectors are trained): this ranks those, outside the truth set, by the
3-epoch mAP, by the products and by coverage alone, against the 12-epoch mAP. Reads committed
results only; the coverage and FLOPs are computed here (milliseconds a detector).

    python benchmarks/coverage_fronts.py
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from common import write_results
from truth_set import judged_front_pairs

from hwnas.search.coverage import label_coverage
from hwnas.search.evaluators.scaled import GROWTH_EXPONENT, forward_gflops
from hwnas.spec.arch import Arch
from hwnas.train.recipes import recipe_config

RESULTS = ("search_equal_time-b10", "search_equal_time-b10-s6", "search_equal_time-b10-probe",
           "search_equal_time-b10-coverage", "search_equal_time-b10-screen", "search_equal_time-b10-screen-s9")
CLASSES = 3  # the generated shapes' classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searches", default=",".join(RESULTS), help="results names under benchmarks/results")
    ap.add_argument("--truth", type=Path, default=Path("benchmarks/results/truth-small-128.json"))
    ap.add_argument("--data", type=Path, default=Path("runs/bench/truth/data"), help="the searches' data")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/coverage_fronts"))
    args = ap.parse_args()
    truth_rows = json.loads(args.truth.read_text())["rows"]
    in_truth = {r["arch"] for r in truth_rows}
    train3 = json.loads(Path("benchmarks/results/rank_fidelity.json").read_text())["evaluators"]["train3"]["keys"]
    fit = [(math.log(forward_gflops(Arch.parse(r["arch"]), CLASSES)), math.log(r["map"] / train3[r["arch"]]))
           for r in truth_rows if train3.get(r["arch"])]
    x, y = np.array(fit).T
    slope = float(np.polyfit(x, y, 1)[0])
    corr = float(np.corrcoef(x, y)[0, 1])
    pairs = judged_front_pairs(args.searches.split(","), in_truth)  # arch -> (3-epoch mAP, judged mAP)
    cfg = recipe_config(None, epochs=3, batch_size=16, lr=2e-3, seed=0)  # the searches' training settings
    cov = {a: label_coverage(Arch.parse(a), args.data, cfg) for a in pairs}
    gflops = {a: forward_gflops(Arch.parse(a), CLASSES) for a in pairs}
    full = [pairs[a][1] for a in pairs]
    rankings = {"3-epoch mAP (`train`)": [pairs[a][0] for a in pairs],
                "3-epoch mAP x label coverage (`train+coverage`)": [pairs[a][0] * cov[a] for a in pairs],
                f"3-epoch mAP x GFLOPs^{GROWTH_EXPONENT:g} (`train+growth`)":
                    [pairs[a][0] * gflops[a] ** GROWTH_EXPONENT for a in pairs],
                f"3-epoch mAP x label coverage x GFLOPs^{GROWTH_EXPONENT:g} (both factors; no evaluator)":
                    [pairs[a][0] * cov[a] * gflops[a] ** GROWTH_EXPONENT for a in pairs],
                "label coverage alone (no training)": [cov[a] for a in pairs],
                "GFLOPs alone (no training)": [gflops[a] for a in pairs]}
    rows = {k: {"kendall_tau": kendalltau(v, full).statistic, "spearman": spearmanr(v, full).statistic}
            for k, v in rankings.items()}
    lines = [f"Growth from 3 to 12 epochs on the truth set ({len(fit)} detectors): ln(mAP12 / mAP3) on ln(GFLOPs) has "
             f"slope {slope:.3f} (correlation {corr:.2f}); `train+growth` uses {GROWTH_EXPONENT:g}.", "",
             f"The {len(pairs)} judged front members of {', '.join(args.searches.split(','))} that are not in the "
             "truth set, ranked against their judged (12-epoch) mAP.", "",
             "| ranking | Kendall tau | Spearman |", "|---|---|---|"]
    lines += [f"| {k} | {v['kendall_tau']:.2f} | {v['spearman']:.2f} |" for k, v in rows.items()]
    write_results(args.results, {"growth_fit": {"n": len(fit), "slope": slope, "correlation": corr,
                                                "exponent": GROWTH_EXPONENT},
                                 "n": len(pairs), "rankings": rows, "coverage": cov, "gflops": gflops,
                                 "pairs": {a: {"map3": s, "judged": j} for a, (s, j) in pairs.items()}},
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
