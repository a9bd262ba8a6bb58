"""Ahead-of-time TensorRT-RTX builds of whole detectors: does each parse and build, how long, how big.

For each head type, a detector sampled from the default search space at 256 px, plus the presets
(hwnas/spec/presets.py, at their own 512 px), built for each SM and precision with
hwnas.latency.aot.build_detector_engine. Needs only the tensorrt-rtx-cu13 wheel, no GPU.

    python benchmarks/trt_rtx_aot.py [--sms 80 89] [--precisions fp32 fp16] [--no-presets]

Prints a markdown table. Two-stage rows also show the torchvision RoIAlign form (sm80 fp32 only),
which does not parse on RTX; the gather form (hwnas.models.roi_align) is what builds.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwnas.errors import HwnasError  # noqa: E402
from hwnas.latency.aot import build_detector_engine  # noqa: E402
from hwnas.spec.arch import Arch  # noqa: E402
from hwnas.spec.presets import PRESETS  # noqa: E402
from hwnas.spec.space import SPACES  # noqa: E402


def sampled_per_head(resolution: int) -> list[tuple[str, Arch]]:
    space = SPACES["default"].with_resolutions((resolution,))
    found: dict[str, tuple[int, Arch]] = {}
    for seed in range(1000):
        a = space.sample(seed)
        found.setdefault(a.head.kind, (seed, a))
        if len(found) == len(space.heads):
            break
    return [(f"default seed {s} @{resolution}", a) for s, a in (found[h] for h in space.heads if h in found)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sms", nargs="+", default=["80", "89"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--no-presets", action="store_true")
    args = ap.parse_args()

    import tensorrt_rtx
    import torch

    archs = sampled_per_head(args.resolution)
    if not args.no_presets:
        archs += [(name, Arch.parse(text)) for name, text in PRESETS.items()]

    cmd = "python benchmarks/trt_rtx_aot.py " + " ".join(sys.argv[1:])
    print("# TensorRT-RTX ahead-of-time builds of whole detectors\n")
    print(f"Command: `{cmd.strip()}`  ")
    print(f"tensorrt_rtx {tensorrt_rtx.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPU cores, no GPU; num_classes={args.num_classes}, batch 1.  ")
    print("build s = parse + build (export excluded); engine MB = serialized plan size.\n")
    print("| arch | name | head | precision | sm | parse ok | build ok | export s | build s | engine MB | form |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    t_all = time.perf_counter()
    for name, arch in archs:
        runs = [(sm, p, None) for sm in args.sms for p in args.precisions]
        if arch.head.kind == "rcnn":
            runs.append((args.sms[0], args.precisions[0], "torchvision"))
        for sm, prec, roi_impl in runs:
            row = f"| `{arch}` | {name} | {arch.head.kind} | {prec} | {sm} |"
            try:
                engine, info = build_detector_engine(arch, args.num_classes, sm=sm, precision=prec, roi_impl=roi_impl)
            except HwnasError as e:
                msg = str(e)
                parsed = "could not parse" not in msg
                short = msg.split(": ", 1)[-1][:140].replace("|", "/")
                form = f"full, roi={roi_impl or 'gather'}" if arch.head.kind == "rcnn" else "full"
                print(f"{row} {'yes' if parsed else 'no'} | no | | | | {form}: FAILED `{short}` |", flush=True)
                continue
            form = f"full (RoI head incl., roi={info['roi_impl']})" if arch.head.kind == "rcnn" else "full"
            print(f"{row} yes | yes | {info['export_s']:.1f} | {info['build_s']:.1f} | "
                  f"{info['engine_bytes'] / 2**20:.1f} | {form} |", flush=True)
    print(f"\nTotal {time.perf_counter() - t_all:.0f} s.")


if __name__ == "__main__":
    main()
