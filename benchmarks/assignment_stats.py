"""Label-assignment statistics: how many positives each ground-truth box gets, by size and level.

For each arch (a preset, ``PRESET@SIZE``, an arch string, ``space:SPACE:KIND`` -- the first arch of
that head kind the space samples -- or a checkpoint ``PATH.pt``) this runs the training images of a
dataset folder through the transform training uses (``TrainTransform``, or ``DataAnchorSampling``
when the recipe of :func:`hwnas.train.recipes.recipe_config` sets ``das_p``; built as
``hwnas.train.loop.train`` builds it) and through the eval letterbox, and computes the loss of the
arch's head on them with ``DetectionLoss`` exactly as training does, recording the match codes the
head hands to its focal loss (``DetectionLoss.focal``) and, for the face head, the first step's
codes (``DetectionLoss.match_anchors``). Nothing of the assignment is re-implemented here.

The head outputs the loss sees are zeros (class logits 0: the face head's STC rejects nothing;
box deltas 0: the face head's second step matches on the unrefined anchors, its state when
training starts), or, for a checkpoint, the trained model's outputs.

Reported per ground-truth size bin (sqrt(area) in network-input pixels, after the transform): the
boxes, the share with no positive, mean / median positives per box, mean positives per box on each
pyramid level, the mean IoU of the positives with their box (on the anchors the box loss regresses
from) and the mean of each box's best IoU over all anchors; per level the anchor shapes (or FCOS
ranges). Face head: the same for its first step (``step1``: what cls1 / box1 learn).

    .venv/bin/hwnas data synth --kind faces --n-train 200 --n-val 20 --size 256 --out /tmp/as-faces
    .venv/bin/python benchmarks/assignment_stats.py --data /tmp/as-faces face-s face-s@256 \\
        --assigner iou,atss --out /tmp/as-faces.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from hwnas.errors import HwnasError

EDGES = (16, 32, 64, 128, 256)
BIN_NAMES = ("<16", "16-32", "32-64", "64-128", "128-256", ">=256")


def size_bin(side: float) -> int:
    return sum(side >= e for e in EDGES)


# ----------------------------------------------------------------------------- what to measure
@dataclasses.dataclass
class Target:
    name: str
    arch: object
    recipe: str
    model: object = None  # a trained Detector (checkpoint), else None: zero outputs


def resolve(spec: str, recipe: str | None) -> Target:
    """``PRESET[@SIZE]``, ``ARCH[@SIZE]``, ``space:SPACE:KIND[@SIZE]`` or ``PATH.pt``."""
    from hwnas.spec.presets import PRESETS, SPACE_RECIPES, resolve_arch
    from hwnas.spec.space import get_space

    if spec.endswith(".pt"):
        from hwnas.train.checkpoint import load_model

        model, arch, _ = load_model(Path(spec))
        return Target(spec, arch, recipe or "", model)
    text, _, size = spec.partition("@")
    if text.startswith("space:"):
        _, space_name, kind = text.split(":")
        space = get_space(space_name)
        for seed in range(2000):
            arch = space.sample(seed)
            if arch.head.kind == kind:
                break
        else:
            raise HwnasError(f"space {space_name} sampled no {kind} head in 2000 seeds")
        guess = SPACE_RECIPES.get(space_name, "")
        name = f"{space_name}:{kind}#{seed}"
    else:
        arch = resolve_arch(text)
        guess = text if text in PRESETS else ""
        name = text
    if size:
        arch = dataclasses.replace(arch, input_hw=(int(size), int(size)))
        name += f"@{size}"
    return Target(name, arch, guess if recipe is None else recipe)


def recording_loss(arch, k: int, cfg, assigner: str):
    """The training loss of ``arch`` (options as ``hwnas.train.loop.train`` passes them), recording the
    codes its head hands to ``focal`` and gets from ``match_anchors``."""
    from hwnas.heads.losses import DetectionLoss

    class Recording(DetectionLoss):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.focal_calls, self.match_calls = [], []

        def focal(self, cls, targets, codes):
            self.focal_calls.append((cls.shape[1], [c.clone() for c in codes]))
            return super().focal(cls, targets, codes)

        def match_anchors(self, anchors, *a, **kw):
            m = super().match_anchors(anchors, *a, **kw)
            self.match_calls.append((len(anchors), m.clone()))
            return m

    return Recording.for_arch(arch, k, box_loss=cfg.box_loss, step1_iou=tuple(cfg.step1_iou),
                              step2_iou=tuple(cfg.step2_iou), assigner=assigner)


def zero_outputs(arch, k: int, b: int) -> tuple[torch.Tensor, ...]:
    """Zero raw outputs of a one-stage (tower) head, in Detector.forward order."""
    out = []
    for li, level in enumerate(arch.out_levels):
        h, w = arch.level_hw(level)
        out += [torch.zeros(b, p.cout, h, w) for p in arch.head.predictions(arch, k, li)]
    return tuple(out)


def regression_anchors(arch, k: int, outputs) -> torch.Tensor | None:
    """[B, P, 4]: the anchors the head's box loss regresses from (None: an anchor-free head)."""
    kind = arch.head.kind
    b = outputs[0].shape[0]
    if kind == "retina":
        from hwnas.heads.retina import retina_anchors

        a = retina_anchors(arch)
        return a.expand(b, *a.shape)
    if kind == "face":
        from hwnas.heads.face import face_anchors, second_step_anchors, split_outputs

        return second_step_anchors(split_outputs(outputs, arch, k), face_anchors(arch))
    return None


def level_table(arch, loss) -> list[dict]:
    from hwnas.heads.losses import level_rows

    rows, out, start = level_rows(arch), [], 0
    kind = arch.head.kind
    anchors = regression_anchors(arch, loss.num_classes, zero_outputs(arch, loss.num_classes, 1))
    if kind == "fcos":
        from hwnas.heads.fcos import default_fcos_ranges

        ranges = loss.fcos_ranges or default_fcos_ranges(arch)
    for li, (level, n) in enumerate(zip(arch.out_levels, rows)):
        rec = {"level": f"P{level}", "stride": 2 ** level, "grid": list(arch.level_hw(level)), "rows": n}
        if anchors is not None:
            a = anchors[0, start:start + arch.head.ANCHORS]
            wh = (a[:, 2:] - a[:, :2]).tolist()
            rec["anchors_wh"] = [[round(w, 1), round(h, 1)] for w, h in wh]
            rec["anchor_sides"] = sorted({round(math.sqrt(w * h), 1) for w, h in wh})
        if kind == "fcos":
            rec["fcos_range"] = list(ranges[li])
        out.append(rec)
        start += n
    return out


# ----------------------------------------------------------------------------- measuring
def measure(target: Target, data: Path, view: str, assigner: str, epochs: int, batch: int,
            max_images: int, cfg) -> dict:
    from torchvision.ops import box_iou

    from hwnas.data.transforms import EvalTransform, normalize
    from hwnas.data.wider import open_dataset
    from hwnas.heads.losses import level_rows

    arch = target.arch
    from hwnas.train.loop import train_transform

    tf = train_transform(arch, cfg) if view == "train" else EvalTransform(arch.input_hw)
    ds = open_dataset(data, "train", tf)
    k = len(ds.class_names)
    if target.model is not None and target.model.num_classes != k:
        raise HwnasError(f"{target.name} has {target.model.num_classes} classes, {data} {k}")
    loss = recording_loss(arch, k, cfg, assigner)
    rows = level_rows(arch)
    level_of = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
    nl, P = len(rows), sum(rows)
    boxes_out, crowd_n = [], 0
    n = len(ds) if not max_images else min(max_images, len(ds))
    for epoch in range(epochs if view == "train" else 1):
        ds.set_epoch(epoch)
        for s in range(0, n, batch):
            items = [ds[i] for i in range(s, min(n, s + batch))]
            targets = [{"boxes": t["boxes"], "labels": t["labels"], "crowd": t["crowd"]} for _, t in items]
            with torch.no_grad():
                if target.model is None:
                    outputs = zero_outputs(arch, k, len(items))
                else:
                    images = normalize(torch.stack([im for im, _ in items]))
                    outputs = target.model(images)
                loss.focal_calls.clear()
                loss.match_calls.clear()
                loss(outputs, targets)
                main = next(c for r, c in loss.focal_calls if r == P)
                step1 = [m for r, m in loss.match_calls if r == P][:len(items)] if arch.head.kind == "face" else None
                reg = regression_anchors(arch, k, outputs)
            for i, t in enumerate(targets):
                gt = t["boxes"].float().reshape(-1, 4)
                crowd = t["crowd"].bool()
                crowd_n += int(crowd.sum())
                ious = box_iou(gt, reg[i]) if reg is not None and len(gt) else None
                for j in range(len(gt)):
                    if crowd[j]:
                        continue
                    w, h = (gt[j, 2:] - gt[j, :2]).tolist()
                    if w <= 0 or h <= 0:
                        continue
                    pos = (main[i] == j).nonzero().squeeze(1)
                    rec = {"side": math.sqrt(w * h), "aspect": h / w, "pos": len(pos),
                           "per_level": torch.bincount(level_of[pos], minlength=nl).tolist()}
                    if ious is not None:
                        rec["pos_iou"] = ious[j, pos].tolist()
                        rec["pos_level"] = level_of[pos].tolist()
                        rec["best_iou"] = float(ious[j].max())
                    if step1 is not None:
                        p1 = (step1[i] == j).nonzero().squeeze(1)
                        rec["step1_pos"] = len(p1)
                        rec["step1_per_level"] = torch.bincount(level_of[p1], minlength=nl).tolist()
                    boxes_out.append(rec)
    bins = []
    for bi, name in enumerate(BIN_NAMES):
        sel = [r for r in boxes_out if size_bin(r["side"]) == bi]
        row = {"bin": name, "boxes": len(sel)}
        if sel:
            npos = [r["pos"] for r in sel]
            row.update(zero_pos=sum(p == 0 for p in npos) / len(sel), mean_pos=statistics.fmean(npos),
                       median_pos=statistics.median(npos),
                       pos_per_level=[statistics.fmean(r["per_level"][li] for r in sel) for li in range(nl)])
            if "best_iou" in sel[0]:
                allp = [v for r in sel for v in r["pos_iou"]]
                per = [[v for r in sel for v, lv in zip(r["pos_iou"], r["pos_level"]) if lv == li] for li in range(nl)]
                row.update(mean_pos_iou=statistics.fmean(allp) if allp else None,
                           mean_best_iou=statistics.fmean(r["best_iou"] for r in sel),
                           pos_iou_per_level=[statistics.fmean(v) if v else None for v in per])
            if "step1_pos" in sel[0]:
                n1 = [r["step1_pos"] for r in sel]
                row.update(step1_zero_pos=sum(p == 0 for p in n1) / len(sel), step1_mean_pos=statistics.fmean(n1),
                           step1_pos_per_level=[statistics.fmean(r["step1_per_level"][li] for r in sel)
                                                for li in range(nl)])
        bins.append(row)
    return {"name": target.name, "arch": str(arch), "recipe": target.recipe, "view": view, "assigner": assigner,
            "input_hw": list(arch.input_hw), "outputs": "checkpoint" if target.model is not None else "zeros",
            "transform": repr(tf), "images": n, "epochs": epochs if view == "train" else 1,
            "crowd_boxes": crowd_n, "levels": level_table(arch, loss), "bins": bins}


# ----------------------------------------------------------------------------- printing
def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(run: dict) -> str:
    levels = [lv["level"] for lv in run["levels"]]
    face = any("step1_mean_pos" in b for b in run["bins"])
    head = ["size", "boxes", "0-pos", "mean", "med"] + [f"{lv}" for lv in levels] + ["IoU pos", "best IoU"]
    if face:
        head += ["s1 0-pos", "s1 mean"] + [f"s1 {lv}" for lv in levels]
    own = "" if run["levels"] and "anchors_wh" in run["levels"][0] else " (the head's own point assignment)"
    lines = [f"### {run['name']} ({run['arch']}), {run['view']} view, assigner {run['assigner']}{own}, recipe "
             f"{run['recipe'] or '-'}, {run['images']} images x {run['epochs']} epoch(s), outputs {run['outputs']}",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in run["bins"]:
        if not b["boxes"]:
            lines.append("| " + " | ".join([b["bin"], "0"] + ["-"] * (len(head) - 2)) + " |")
            continue
        cells = [b["bin"], str(b["boxes"]), f"{100 * b['zero_pos']:.0f}%", fmt(b["mean_pos"], ".1f"),
                 fmt(b["median_pos"], ".1f")] + [fmt(v, ".1f") for v in b["pos_per_level"]] + \
                [fmt(b.get("mean_pos_iou")), fmt(b.get("mean_best_iou"))]
        if face:
            cells += [f"{100 * b['step1_zero_pos']:.0f}%", fmt(b["step1_mean_pos"], ".1f")] + \
                     [fmt(v, ".1f") for v in b["step1_pos_per_level"]]
        lines.append("| " + " | ".join(cells) + " |")
    if any(b.get("pos_iou_per_level") for b in run["bins"]):
        lines += ["", "mean IoU of the positives per level:", "",
                  "| size | " + " | ".join(levels) + " |", "|" + "---|" * (len(levels) + 1)]
        for b in run["bins"]:
            if b["boxes"]:
                lines.append(f"| {b['bin']} | " + " | ".join(fmt(v) for v in b["pos_iou_per_level"]) + " |")
    lines.append("")
    desc = []
    for lv in run["levels"]:
        what = (f"anchors (w x h) {', '.join(f'{w:g}x{h:g}' for w, h in lv['anchors_wh'])}" if "anchors_wh" in lv
                else f"FCOS range {lv['fcos_range']}")
        desc.append(f"{lv['level']} stride {lv['stride']} grid {lv['grid'][0]}x{lv['grid'][1]}: {what}")
    lines.append("levels: " + "; ".join(desc))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archs", nargs="+", help="PRESET[@SIZE], ARCH[@SIZE], space:SPACE:KIND[@SIZE] or PATH.pt")
    ap.add_argument("--data", type=Path, required=True, help="a dataset folder (COCO train.json or WIDER layout)")
    ap.add_argument("--views", default="train,eval", help="train (the training transform), eval (the letterbox)")
    ap.add_argument("--assigner", default="iou", help="comma-separated: iou, atss")
    ap.add_argument("--recipe", default=None, help="the recipe (a preset name; '' none); default: the arch's preset")
    ap.add_argument("--das-p", type=float, default=None, help="override the recipe's data-anchor-sampling share")
    ap.add_argument("--scale-jitter", default=None, help="override the recipe's jitter, LOW,HIGH")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the images with the training transform")
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the runs as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hwnas.train.recipes import recipe_config

    runs = []
    t0 = time.time()
    for spec in args.archs:
        target = resolve(spec, args.recipe)
        cfg = recipe_config(target.recipe, das_p=args.das_p,
                            scale_jitter=tuple(float(v) for v in args.scale_jitter.split(",")) if args.scale_jitter
                            else None)
        for assigner in args.assigner.split(","):
            takes = getattr(target.arch.head, "ASSIGNERS", ("iou",))
            if assigner not in takes:
                print(f"### {target.name}: skipped assigner {assigner} (the {target.arch.head.kind} head takes "
                      f"{', '.join(takes)})\n")
                continue
            for view in args.views.split(","):
                run = measure(target, args.data, view, assigner, args.epochs, args.batch, args.max_images, cfg)
                run["das_p"], run["scale_jitter"] = cfg.das_p, list(cfg.scale_jitter)
                runs.append(run)
                print(table(run), flush=True)
    print(f"({time.time() - t0:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps({"data": str(args.data), "bins": BIN_NAMES, "runs": runs}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HwnasError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
