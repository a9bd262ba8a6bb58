"""How well ``train+predict``'s assessor ranks detectors it never trained, and what a prediction costs.

The assessor (hwnas.search.assessor) is fitted the way a search fits it: to the 3-epoch mAP of
trained candidates. Those come from the judged front members of the equal-time searches
(benchmarks/search_equal_time.py: each has its search's 3-epoch mAP and a judged 12-epoch mAP), the
truth set's detectors left out. Then:

* **truth set**: fitted on ``n`` of them drawn at random (``--draws`` draws per ``n``, seed 0),
  the assessor ranks the truth set's 36 detectors against their 12-epoch mAP (two seeds, mean);
  beside it the 3-epoch training of each of the 36 (rank_fidelity.json's train3), which is what
  ``train`` pays for;
* **one neighbourhood**: the same fits rank the 12 detectors of the neighbourhood truth set;
* **later searches**: fitted on the fronts of the searches of seeds 4-9 only, it ranks the front
  members of seeds 10-12 (judged, seed 0), beside their own 3-epoch mAP;
* for reference, the assessor fitted to 12-epoch mAP (what a fit to full trainings reaches);
* **cost**: the seconds to read one detector's features and predict it (a forward pass for the
  FLOPs, the label coverage, the table's latency), against a 3-epoch training's, and the candidates
  scored per CPU-hour with one in ``TRAIN_EVERY`` trained.

Reads committed results; the features are computed here (a fraction of a second a detector).

    python benchmarks/predictor_fidelity.py
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from common import write_results
from coverage_fronts import RESULTS as EARLIER
from truth_set import judged_front_pairs

from hwnas.search.assessor import Assessor
from hwnas.search.evaluators.predicted import TRAIN_EVERY, WARMUP, PredictedEvaluator
from hwnas.search.runner import SearchConfig
from hwnas.spec.arch import Arch

LATER = ("search_equal_time-b10-s10-12",)
SIZES = (WARMUP, 12, 16, 24, 32, 48, 80)


def rank(pred: list[float], truth: list[float]) -> dict:
    return {"kendall_tau": float(kendalltau(pred, truth).statistic), "spearman": float(spearmanr(pred, truth).statistic)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", type=Path, default=Path("benchmarks/results/truth-small-128.json"))
    ap.add_argument("--hood", type=Path, default=Path("benchmarks/results/truth-hood-i128-basic-fpn_p3-5-retina-bn.json"))
    ap.add_argument("--data", type=Path, default=Path("runs/bench/truth/data"), help="the searches' data")
    ap.add_argument("--table", type=Path, default=Path("latency_tables/intel-xeon-ort-cpu-fp32-1t-small-3cls.json"))
    ap.add_argument("--draws", type=int, default=30, help="random fits per number of trained candidates")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/predictor_fidelity"))
    args = ap.parse_args()
    truth = {r["arch"]: r["map"] for r in json.loads(args.truth.read_text())["rows"]}
    hood = {r["arch"]: r["map"] for r in json.loads(args.hood.read_text())["rows"]}
    train3 = json.loads(Path("benchmarks/results/rank_fidelity.json").read_text())["evaluators"]["train3"]
    compared = set(truth) | set(hood)
    earlier = judged_front_pairs(list(EARLIER), compared)
    newer = judged_front_pairs(list(LATER), compared)
    pairs = earlier | newer  # a later search's figures win, as they did when read in one pass
    later = {a: v for a, v in newer.items() if a not in earlier}
    # the searches' settings (the coverage reads the training transform of their recipe)
    with tempfile.TemporaryDirectory() as tmp:
        ev = PredictedEvaluator(SearchConfig(args.data, args.table, Path(tmp), space="small", epochs=3, batch_size=16))
        feats, cost = {}, {}
        for a in dict.fromkeys([*truth, *hood, *pairs]):
            t0 = time.perf_counter()
            feats[a] = ev.features(Arch.parse(a))
            cost[a] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit = Assessor([(feats[a], pairs[a][0]) for a in pairs])
        [fit.predict(feats[a]) for a in truth]
        fit_s = time.perf_counter() - t0

    def scored(rows: dict[str, tuple[float, float]], on: dict[str, float], label: int = 0) -> dict:
        model = Assessor([(feats[a], v[label]) for a, v in rows.items()])
        return rank([model.predict(feats[a]) for a in on], list(on.values()))

    rng = random.Random(0)
    curve = []
    for n in [*SIZES, len(pairs)]:
        draws = [rng.sample(sorted(pairs), n) for _ in range(args.draws if n < len(pairs) else 1)]
        on_truth = [scored({a: pairs[a] for a in d}, truth) for d in draws]
        on_hood = [scored({a: pairs[a] for a in d}, hood) for d in draws]
        taus = np.array([r["kendall_tau"] for r in on_truth])
        curve.append({"n": n, "draws": len(draws), "truth_tau_mean": float(taus.mean()), "truth_tau_sd": float(taus.std()),
                      "truth_tau_p10": float(np.percentile(taus, 10)),
                      "truth_spearman_mean": float(np.mean([r["spearman"] for r in on_truth])),
                      "hood_tau_mean": float(np.mean([r["kendall_tau"] for r in on_hood])),
                      "hood_spearman_mean": float(np.mean([r["spearman"] for r in on_hood]))})
    train3_truth = rank([train3["keys"][a] for a in truth], list(truth.values()))
    later_truth = {a: v[1] for a, v in later.items()}
    result = {
        "pairs": len(pairs), "curve": curve, "train3_on_truth": train3_truth,
        "train3_cost_s": train3["cost_s"] / len(truth),
        "fit_on_12_epochs": scored(pairs, truth, label=1),
        "later": {"fitted_on": len(earlier), "n": len(later), "assessor": scored(earlier, later_truth),
                  "own_3_epoch_map": rank([v[0] for v in later.values()], list(later_truth.values()))},
        "feature_s": {"mean": float(np.mean(list(cost.values()))), "max": float(max(cost.values()))},
        "fit_and_predict_36_s": fit_s, "warmup": WARMUP, "train_every": TRAIN_EVERY,
    }
    per_train = result["train3_cost_s"]
    per_predict = result["feature_s"]["mean"]
    result["candidates_per_cpu_hour"] = {
        "train": 3600 / per_train,
        "train+predict": 3600 * TRAIN_EVERY / (per_train + (TRAIN_EVERY - 1) * per_predict)}
    ratio = result["candidates_per_cpu_hour"]["train+predict"] / result["candidates_per_cpu_hour"]["train"]
    lines = [f"The assessor of `train+predict` fitted to the 3-epoch mAP of n trained detectors, drawn from the {len(pairs)} "
             "judged front members of the equal-time searches (truth-set detectors left out), "
             f"{args.draws} draws per n (seed 0).", "",
             "| trained (n) | truth set (36): Kendall tau, mean (sd; 10th percentile) | Spearman, mean | one neighbourhood (12): tau / Spearman, mean |",
             "|---|---|---|---|"]
    lines += [f"| {c['n']} | {c['truth_tau_mean']:.2f} ({c['truth_tau_sd']:.2f}; {c['truth_tau_p10']:.2f}) | "
              f"{c['truth_spearman_mean']:.2f} | {c['hood_tau_mean']:.2f} / {c['hood_spearman_mean']:.2f} |" for c in curve]
    lines += ["", f"- Each truth-set detector trained 3 epochs (`train`, rank_fidelity.json's train3): tau "
              f"{train3_truth['kendall_tau']:.2f}, Spearman {train3_truth['spearman']:.2f}.",
              f"- Fitted to the 12-epoch mAP of all {len(pairs)} instead (reference): tau "
              f"{result['fit_on_12_epochs']['kendall_tau']:.2f}, Spearman {result['fit_on_12_epochs']['spearman']:.2f}.",
              f"- Later searches: fitted on the {len(earlier)} front members of seeds 4-9, it ranks the {len(later)} new front "
              f"members of seeds 10-12 against their judged mAP with tau {result['later']['assessor']['kendall_tau']:.2f} "
              f"(Spearman {result['later']['assessor']['spearman']:.2f}); their own 3-epoch mAP: tau "
              f"{result['later']['own_3_epoch_map']['kendall_tau']:.2f} (Spearman {result['later']['own_3_epoch_map']['spearman']:.2f}).",
              f"- Cost per candidate: features {per_predict:.2f} s on average (at most {result['feature_s']['max']:.2f} s), "
              f"fit and 36 predictions {fit_s * 1000:.1f} ms; a 3-epoch training {per_train:.1f} s (truth set, rank_fidelity.json). "
              f"With {WARMUP} trained first and then one in {TRAIN_EVERY}: "
              f"{result['candidates_per_cpu_hour']['train+predict']:.0f} candidates per CPU-hour against "
              f"{result['candidates_per_cpu_hour']['train']:.0f} ({ratio:.1f}x) once past the warm-up."]
    write_results(args.results, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
