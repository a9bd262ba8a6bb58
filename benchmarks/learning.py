"""How well detectors learn from scratch in a wall-clock budget, on real photographs and on generated data.

Each benchmark trains one detector through the CLI, as a user would (``hwnas train --budget-min``),
and scores it: mAP@0.5 (COCO) for the object sets, the WIDER FACE protocol (hard, medium, easy;
subsets by face height, as for any data without official keep-lists) for the face sets. The data
are built once with ``hwnas data photos`` (real photographs) and ``hwnas data synth`` (generated),
256 px, 400 training and 100 validation images (generated: the sizes of earlier figures).

    python benchmarks/learning.py --budget-min 10 --sets objects,faces --tag baseline
    python benchmarks/learning.py --budget-min 10 --sets objects --tag ema --train-args "--ema 0.999"

Timings are wall clock: run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from common import HWNAS, run, write_results

# set -> (data command, the preset it trains, whether it is scored the WIDER way)
SETS = {
    "objects": (["data", "photos", "--kind", "objects", "--n-train", "400", "--n-val", "100", "--size", "256"],
                "small-mobilenet-retinanet", False),
    "faces": (["data", "photos", "--kind", "faces", "--n-train", "400", "--n-val", "100", "--size", "256"],
              "face-s", True),
    "shapes": (["data", "synth", "--kind", "shapes", "--n-train", "400", "--n-val", "100", "--size", "256"],
               "small-mobilenet-retinanet", False),
    "synth-faces": (["data", "synth", "--kind", "faces", "--n-train", "400", "--n-val", "100", "--size", "256"],
                    "face-s", True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="objects,faces", help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--budget-min", type=float, default=10.0)
    ap.add_argument("--img-size", type=int, default=256, help="the detector's input (the data are 256 px)")
    ap.add_argument("--preset", default="", help="train this preset on every set instead of each set's own; an arch "
                    "string trains with the recipe of the set's own preset (e.g. face-s with GN: its arch ending /gn)")
    ap.add_argument("--train-args", default="", help="extra hwnas train options, e.g. \"--lr 4e-3\"")
    ap.add_argument("--tag", default="baseline", help="name of this configuration in the results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/learning"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/learning"))
    args = ap.parse_args()
    rows = []
    for name in [s for s in args.sets.split(",") if s]:
        data_cmd, preset, wider = SETS[name]
        preset = args.preset or preset
        data = args.work / "data" / name
        if not (data / "val.json").exists():
            run([*HWNAS, *data_cmd, "--seed", "0", "--out", str(data)])
        out = args.work / args.tag / (name if args.seed == 0 else f"{name}-s{args.seed}")  # a run folder per seed
        from hwnas.train.recipes import RECIPES

        own = SETS[name][1]
        which = (["--arch", preset, *(["--recipe", own] if own in RECIPES else [])] if "/" in preset
                 else ["--preset", preset])
        run([*HWNAS, "train", *which, "--img-size", str(args.img_size), "--data", str(data),
             "--budget-min", str(args.budget_min), "--seed", str(args.seed), "--out", str(out),
             *shlex.split(args.train_args)])
        m = json.loads((out / "metrics.json").read_text())
        row = {"set": name, "preset": preset, "arch": m["arch"], "tag": args.tag, "train_args": args.train_args,
               "budget_min": args.budget_min, "seed": args.seed, "epochs_done": m["epochs_done"],
               "train_s": m["train_seconds"], "map": m["map"], "map50": m["map50"],
               "map_small": m["map_small"], "map_medium": m["map_medium"], "map_large": m["map_large"]}
        if wider:
            w = out / "wider.json"
            run([*HWNAS, "eval", "--weights", str(out / "last.pt"), "--data", str(data), "--protocol", "wider",
                 "--out", str(w), "--batch-size", "8"])
            row.update({k: json.loads(w.read_text())[k] for k in ("hard", "medium", "easy")})
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = args.results / args.tag
    old = json.loads(path.with_suffix(".json").read_text())["rows"] if path.with_suffix(".json").exists() else []
    keep = [r for r in old if (r["set"], r["seed"]) not in {(r2["set"], r2["seed"]) for r2 in rows}]
    rows = keep + rows
    write_results(path, {"rows": rows}, table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| set | preset | tag | seed | budget (min) | epochs | mAP@0.5 | mAP | mAP large | WIDER hard / medium / easy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wider = f"{r['hard']:.3f} / {r['medium']:.3f} / {r['easy']:.3f}" if "hard" in r else ""
        lines.append(f"| {r['set']} | {r['preset']} | {r['tag']} | {r['seed']} | {r['budget_min']:g} | "
                     f"{r['epochs_done']:.1f} | {r['map50']:.3f} | {r['map']:.3f} | {r['map_large']:.3f} | {wider} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
