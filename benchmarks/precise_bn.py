"""Is it BatchNorm's running statistics that hold a trained detector back? Recompute them exactly
("precise BN": the cumulative average over N batches of training images, letterboxed as for
evaluation, no augmentation; the supernet's recalibration, hwnas.search.supernet.recalibrate_bn)
and score the checkpoint before and after with ``hwnas eval`` (WIDER protocol for face sets).

    python benchmarks/precise_bn.py --weights runs/bench/learning/bn-per-level/faces/last.pt \
        --data runs/bench/learning/data/faces --batches 50
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from common import HWNAS, run, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=50, help="batches of 8 training images")
    ap.add_argument("--protocol", default="wider")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/precise_bn"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/precise_bn"))
    args = ap.parse_args()
    from hwnas.models import Detector
    from hwnas.search.supernet import calibration_images, recalibrate_bn
    from hwnas.train.checkpoint import load_checkpoint

    args.work.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(args.weights)
    model = Detector.from_arch(ck.arch, len(ck.class_names))
    model.load_state_dict(ck.state_dict)
    recalibrate_bn(model, calibration_images(args.data, ck.arch.input_hw, args.batches, 8, 0, "cpu"))
    precise = args.work / "precise.pt"
    dataclasses.replace(ck, state_dict={k: v.detach().clone() for k, v in model.state_dict().items()}).save(precise)
    scores = {}
    for name, weights in (("as trained", args.weights), ("precise BN", precise)):
        out = args.work / f"{name.replace(' ', '_')}.json"
        run([*HWNAS, "eval", "--weights", str(weights), "--data", str(args.data), "--protocol", args.protocol,
             "--out", str(out), "--batch-size", "8"])
        scores[name] = json.loads(out.read_text())
    keys = ("hard", "medium", "easy") if args.protocol == "wider" else ("map50", "map")
    result = {"weights": str(args.weights), "arch": str(ck.arch), "data": str(args.data), "batches": args.batches,
              "scores": {n: {k: s[k] for k in keys} for n, s in scores.items()}}
    lines = [f"Precise BN on `{ck.arch}` ({args.weights}), {args.batches} batches of 8 training images.", "",
             "| statistics | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {n} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |" for n, s in result["scores"].items()]
    write_results(args.results, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
