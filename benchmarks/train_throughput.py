"""Training throughput (images/s) of every preset: forward, loss, backward and AdamW step.

Times ``--iters`` steps after ``--warmup`` on random images with a few boxes each, at the
preset's own input size, on the given device and thread count.

    python benchmarks/train_throughput.py --device cpu --batch-size 4
"""
from __future__ import annotations

import argparse
import time

import torch

from hwnas.heads.losses import DetectionLoss, init_head_priors
from hwnas.models import Detector
from hwnas.spec.presets import PRESETS, resolve_arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device {args.device} ({torch.get_num_threads()} threads), batch {args.batch_size}, torch {torch.__version__}\n")
    print("| preset | input | params M | train images/s |")
    print("|---|---|---|---|")
    for name in PRESETS:
        arch = resolve_arch(name)
        torch.manual_seed(0)
        model = Detector.from_arch(arch, args.num_classes).to(dev).train()
        init_head_priors(model)
        crit = DetectionLoss.for_arch(arch, args.num_classes)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        h, w = arch.input_hw
        x = torch.rand(args.batch_size, 3, h, w, device=dev)
        box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.6 * w, 0.5 * h, 0.9 * w, 0.8 * h]], device=dev)
        tg = [dict(boxes=box, labels=torch.tensor([0, 1], device=dev), crowd=torch.zeros(2, dtype=torch.bool, device=dev))
              for _ in range(args.batch_size)]
        for i in range(args.warmup + args.iters):
            if i == args.warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            extra = crit.extra_boxes(tg, dev)
            out = model(x) if extra is None else model(x, extra_boxes=extra)
            loss = crit(out, tg)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ips = args.iters * args.batch_size / (time.perf_counter() - t0)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {h}x{w} | {params:.1f} | {ips:.2f} |", flush=True)


if __name__ == "__main__":
    main()
