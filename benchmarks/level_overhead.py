"""What recording the loss per pyramid level costs a training step (``DetectionLoss.record_levels``).

One training step (forward, loss, backward, SGD step) of a preset on random images with a few
boxes each, timed with recording off and on, alternating in rounds so that drift of the machine
falls on both alike; the median per step of each. 2 threads, like the training benchmarks.

    python benchmarks/level_overhead.py small-mobilenet-retinanet face-s --batch 16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hwnas.heads.losses import DetectionLoss
from hwnas.models import Detector
from hwnas.spec.presets import resolve_arch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="+")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="steps per round and setting")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(2)
    for name in a.presets:
        arch = resolve_arch(name)
        model = Detector.from_arch(arch, 1).train()
        loss = DetectionLoss.for_arch(arch, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        H, W = arch.input_hw
        images = torch.rand(a.batch, 3, H, W, generator=g)
        targets = []
        for _ in range(a.batch):
            xy = torch.rand(6, 2, generator=g) * torch.tensor([W * 0.7, H * 0.7])
            wh = 8 + torch.rand(6, 2, generator=g) * torch.tensor([W * 0.3, H * 0.3])
            targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.zeros(6, dtype=torch.long)})

        def step() -> None:
            out = loss(model(images), targets)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()

        step()  # warm-up
        times = {False: [], True: []}
        for _ in range(a.rounds):
            for rec in (False, True):
                loss.record_levels = rec
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step()
                times[rec].append((time.perf_counter() - t0) / a.steps)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name} batch {a.batch}: off {1000 * off:.1f} ms/step, on {1000 * on:.1f} ms/step ({100 * (on / off - 1):+.1f} %)")


if __name__ == "__main__":
    main()
