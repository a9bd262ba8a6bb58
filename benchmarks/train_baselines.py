"""Train the small baselines from scratch on generated shapes and score them (issue: training targets).

Generates the shapes data (1,000 train / 200 val images at 256 px) if missing, then for each
preset runs ``hwnas train`` with a fixed epoch budget, and an untrained-model evaluation as the
floor. Writes a markdown table with mAP, mAP@0.5, training wall time and throughput.

    python benchmarks/train_baselines.py --out benchmarks/results/train
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import HWNAS as HW, run


def untrained_map(preset: str, data: Path) -> dict:
    """Score a freshly initialised model (the floor a trained one must clearly beat)."""
    from hwnas.spec.arch import Arch
    from hwnas.data.coco import CocoDetection
    from hwnas.data.transforms import EvalTransform
    from hwnas.evaluate.coco import evaluate
    from hwnas.heads.losses import init_head_priors
    from hwnas.models import Detector
    from hwnas.spec.presets import resolve_arch
    import torch

    torch.manual_seed(0)
    arch: Arch = resolve_arch(preset)
    ds = CocoDetection.from_dir(data, "val", EvalTransform(arch.input_hw))
    model = Detector.from_arch(arch, len(ds.class_names))
    init_head_priors(model)
    return evaluate(model, arch, ds)  # a score, nothing worth keeping on disk


def pycocotools_by_hand(gt_json: Path, det_json: Path) -> float:
    """AP@[.5:.95] straight from pycocotools on the written detections file (no hwnas code)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_json))
    ev = COCOeval(gt, gt.loadRes(str(det_json)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("runs/data/shapes256"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train"))
    ap.add_argument("--runs", type=Path, default=Path("runs/train"))
    ap.add_argument("--presets", default="small-resnet-retinanet:14,small-resnet-fcos:8,small-resnet-faster-rcnn:8,small-mobilenet-retinanet:8",
                    help="preset:epochs pairs")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.data / "train.json").exists():
        run(HW + ["data", "synth", "--kind", "shapes", "--n-train", "1000", "--n-val", "200", "--size", "256",
                  "--seed", "0", "--out", str(args.data)])
    rows = []
    for item in args.presets.split(","):
        preset, epochs = item.split(":")
        run_dir = args.runs / preset
        wall = run(HW + ["train", "--preset", preset, "--data", str(args.data), "--epochs", epochs,
                         "--batch-size", str(args.batch_size), "--out", str(run_dir)])
        m = json.loads((run_dir / "metrics.json").read_text())
        floor = untrained_map(preset, args.data)
        m["map_by_hand"] = pycocotools_by_hand(args.data / "val.json", run_dir / "detections.json")
        rows.append((preset, m["arch"], int(epochs), m, floor, wall))
    lines = ["| preset | arch | epochs | map | map (pycocotools by hand) | map50 | untrained map50 | train min | train img/s | eval img/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for preset, arch, ep, m, floor, wall in rows:
        lines.append(f"| {preset} | `{arch}` | {ep} | {m['map']:.4f} | {m['map_by_hand']:.4f} | {m['map50']:.3f} | {floor['map50']:.3f} | "
                     f"{m['train_seconds'] / 60:.1f} | {m['train_images_per_s']:.1f} | {m['images_per_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
