"""How fast batches come with 0, 1 and 2 worker processes (``hwnas train --workers``), alone and
while a detector trains, at 256 and 640 px. Run on a quiet machine.

* loader alone: training batches (augmentation, letterbox, collate) per second, nothing else;
* training: images per second of ``small-mobilenet-retinanet`` training steps fed by that loader
  (forward, loss, backward, step), after 3 warm-up iterations.

    python benchmarks/loader_throughput.py
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import write_results

from hwnas.data.transforms import epoch_batches, normalize
from hwnas.data.wider import open_dataset
from hwnas.spec.presets import resolve_arch
from hwnas.train.loop import TrainConfig, train_transform


def loader_rate(samples, order, batch: int, workers: int, n_batches: int) -> float:
    loader = iter(epoch_batches(samples, order, batch, workers))
    next(loader)  # workers started, first batch ready
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(loader)
    return n_batches * batch / (time.perf_counter() - t0)


def train_rate(arch, samples, order, batch: int, workers: int, n_iters: int) -> float:
    from hwnas.heads.losses import DetectionLoss
    from hwnas.models import Detector

    model = Detector.from_arch(arch, 3).train()
    crit = DetectionLoss.for_arch(arch, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = iter(epoch_batches(samples, order, batch, workers))
    t0 = None
    for i in range(3 + n_iters):
        if i == 3:
            t0 = time.perf_counter()
        images, targets = next(loader)
        loss = crit(model(normalize(images)), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n_iters * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("runs/bench/loader/data"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/loader_throughput"))
    args = ap.parse_args()
    from common import HWNAS, run

    if not (args.data / "val.json").exists():  # 640 px images, cut to 256 px by the transform when needed
        run([*HWNAS, "data", "synth", "--kind", "shapes", "--n-train", "200", "--n-val", "4", "--size", "640",
             "--out", str(args.data)])
    rows = []
    for size in (256, 640):
        arch = replace(resolve_arch("small-mobilenet-retinanet"), input_hw=(size, size))
        ds = open_dataset(args.data, "train", train_transform(arch, TrainConfig()))
        order = list(range(len(ds)))
        for workers in (0, 1, 2):
            lr = loader_rate(ds, order, args.batch, workers, 12)
            tr = train_rate(arch, ds, order, args.batch, workers, 6 if size == 640 else 12)
            rows.append({"size": size, "workers": workers, "loader_images_per_s": lr, "train_images_per_s": tr})
            print(rows[-1], flush=True)
    lines = [f"Batches of {args.batch}, generated shapes drawn at 640 px, small-mobilenet-retinanet at the input size; "
             f"{torch.get_num_threads()} torch threads.", "",
             "| input | workers | loader alone (img/s) | training (img/s) |", "|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['workers']} | {r['loader_images_per_s']:.1f} | {r['train_images_per_s']:.1f} |"
              for r in rows]
    write_results(args.results, {"rows": rows, "batch": args.batch}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
