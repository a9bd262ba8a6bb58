"""What each search evaluator costs per candidate, timed on a quiet machine (run nothing else meanwhile).

* ``train3``: a candidate trained from scratch for 3 epochs and evaluated (the search's default);
* ``supernet``: one supernet epoch of a neighbourhood (its training costs ``E`` of them, shared by
  every candidate of the neighbourhood), then per candidate: weights cut out, BatchNorm statistics
  recalibrated on 8 batches, mAP on the val set;
* ``bn``: one BN-only supernet epoch, then per candidate the BN-NAS indicator;
* ``halving`` needs no figure of its own: its candidates cost 1 epoch of ``train``, the promoted
  ones more (the counts are in the rank-fidelity results).

Candidates scored per CPU-hour follow for a neighbourhood of N candidates:
``3600 / (E * epoch_s / N + score_s)``; the search's throughput depends on how many candidates
share a neighbourhood, so the table gives a few N.

    python benchmarks/evaluator_cost.py --data runs/bench/truth/data
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from common import write_results

from hwnas.search.evaluators import Budget, make_evaluator
from hwnas.search.runner import SearchConfig, slug
from hwnas.spec.arch import Arch

ARCHS = ("i128/basic_c24_1-21-21-2/fpn_p3-5_c48/retina_d2_c48/bn",
         "i128/basic_c16_1-2-121-2/pafpn_p3-6_c32/retina_d1_c64/bn",
         "i128/basic_c32_11-21-12-21/fpn_p4-6_c64/retina_d3_c32/bn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("runs/bench/truth/data"))
    ap.add_argument("--table", type=Path, default=Path("latency_tables/intel-xeon-ort-cpu-fp32-1t-small-3cls.json"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench/evaluator-cost"))
    ap.add_argument("--supernet-epochs", type=int, default=4, help="E: the epochs a supernet trains in the search")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/evaluator_cost"))
    args = ap.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)  # every figure timed now, nothing read back
    base = SearchConfig(data=args.data, table=args.table, out=args.work, space="small", resolutions=(128,),
                        batch_size=16, lr=2e-3, seed=0)
    archs = [Arch.parse(a) for a in ARCHS]
    out = {}

    def per_candidate(name: str, evaluator, out_dir: Path) -> list[float]:
        """Seconds ``evaluator`` takes for each detector (a 3-epoch budget, as the search gives)."""
        t = []
        for a in archs:
            t0 = time.perf_counter()
            evaluator(a, Budget(epochs=3), out_dir / slug(str(a)))
            t.append(time.perf_counter() - t0)
            print(f"{name} {a}: {t[-1]:.2f} s", flush=True)
        return t

    t = per_candidate("train3", make_evaluator(replace(base, out=args.work / "train3")), args.work / "train3")
    out["train3"] = {"per_candidate_s": statistics.mean(t), "each_s": t}
    for name in ("supernet", "bn"):
        cfg = replace(base, out=args.work / name, evaluator=name, supernet_epochs=1)
        ev = make_evaluator(cfg)
        t0 = time.perf_counter()
        ev.supernet(archs[0])  # one epoch of the neighbourhood's supernet
        epoch_s = time.perf_counter() - t0
        scores = per_candidate(f"{name} score", ev, cfg.out / "trials")
        out[name] = {"epoch_s": epoch_s, "score_s": statistics.mean(scores), "each_s": scores}
    e = args.supernet_epochs
    rows = []
    per_hour_train = 3600 / out["train3"]["per_candidate_s"]
    for n in (3, 10, 30, 100, 300):
        row = {"n": n}
        for name in ("supernet", "bn"):
            per = e * out[name]["epoch_s"] / n + out[name]["score_s"]
            row[name] = {"per_candidate_s": per, "per_cpu_hour": 3600 / per, "vs_train3": (3600 / per) / per_hour_train}
        rows.append(row)
    result = {"archs": list(ARCHS), "supernet_epochs": e, "measured": out, "per_neighbourhood": rows,
              "train3_per_cpu_hour": per_hour_train}
    lines = [f"Cost per candidate on this machine (3 detectors of the small space at 128 px, 1,000 training and 200 "
             f"val images, batch 16; supernets of {e} epochs).", "",
             f"- train3: {out['train3']['per_candidate_s']:.1f} s a candidate ({per_hour_train:.0f} per CPU-hour)",
             f"- supernet: {out['supernet']['epoch_s']:.1f} s a supernet epoch, {out['supernet']['score_s']:.2f} s to "
             f"score a candidate", f"- bn: {out['bn']['epoch_s']:.1f} s a BN-only supernet epoch, "
             f"{out['bn']['score_s']:.3f} s to score a candidate", "",
             "| candidates per neighbourhood | supernet: per candidate (s) | per CPU-hour | x train3 | bn: per CPU-hour | x train3 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['supernet']['per_candidate_s']:.2f} | {r['supernet']['per_cpu_hour']:.0f} | "
                     f"{r['supernet']['vs_train3']:.1f} | {r['bn']['per_cpu_hour']:.0f} | {r['bn']['vs_train3']:.1f} |")
    write_results(args.results, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
