"""TensorRT-RTX engines of every head type through `hwnas export --format engine`: fp32/fp16/int8 x SM80/SM89.

    python benchmarks/trt_rtx_export.py [--sms 80 89] [--precisions fp32 fp16 int8] [--quick]

One arch per head (the small presets at 128 px, trained --train-epochs (default 1) on 64 generated images with
`hwnas train`; 0: untrained weights saved with hwnas.train.checkpoint.save_checkpoint), NMS form auto (= ops for TensorRT-RTX),
int8 with tensorrt Q/DQ calibrated on a few of those images. (Untrained, the two-stage head's int8 calibration fails:
onnxruntime cannot histogram a near-constant RPN box tensor; 1 epoch avoids it.) Every build is one `hwnas export`
process; a row is reused on a rerun when its engine and record exist (--fresh rebuilds). Then a build that saves a
--timing-cache and a rebuild that loads it, and the host NMS form of one head. No GPU needed.
Writes benchmarks/results/trt_rtx_export.{json,md} (--quick: runs/bench/trt_rtx-quick/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import HWNAS as HW, results_args, run, write_results

HEADS = {"retina": "small-mobilenet-retinanet", "fcos": "small-resnet-fcos", "rcnn": "small-resnet-faster-rcnn"}
SETUP: list[str] = []  # the data and training commands, for the results file


def hw(args: list[str], execute: bool) -> None:
    SETUP.append(shlex.join(["hwnas", *args]))
    if execute:
        run(HW + args)


def checkpoints(args) -> dict[str, tuple[str, Path]]:
    """{head: (arch, checkpoint)} at --img px: trained --train-epochs with `hwnas train`, or untrained; made once."""
    from dataclasses import replace

    import torch

    from hwnas.heads.losses import init_head_priors
    from hwnas.models import Detector
    from hwnas.spec.presets import resolve_arch
    from hwnas.train.checkpoint import save_checkpoint

    cats = sorted(json.loads((args.data / "train.json").read_text())["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    out = {}
    for head in dict.fromkeys([*args.heads, args.host_head]):
        preset = HEADS[head]
        arch = replace(resolve_arch(preset), input_hw=(args.img, args.img))
        if args.train_epochs:
            run_dir = args.work / f"{head}-{args.train_epochs}ep"
            done = run_dir / "metrics.json"
            hw(["train", "--preset", preset, "--img-size", str(args.img), "--epochs", str(args.train_epochs),
                "--data", str(args.data), "--out", str(run_dir)],
               execute=not (done.exists() and json.loads(done.read_text()).get("epochs") == args.train_epochs))
            out[head] = (str(arch), run_dir / "last.pt")
            continue
        path = args.work / f"{head}-untrained.pt"
        if not path.exists():
            torch.manual_seed(0)
            model = Detector.from_arch(arch, len(names))
            init_head_priors(model)
            save_checkpoint(path, model=model, arch=arch, class_names=names, epoch=0)
            print(f"saved untrained {arch} ({preset} at {args.img} px) to {path}", flush=True)
        out[head] = (str(arch), path)
    return out


def build(args, head: str, arch: str, weights: Path, precision: str, sm: str, *, nms: str | None = None,
          cache: Path | None = None, name: str | None = None, reuse: bool = True) -> dict:
    """One `hwnas export --format engine` process; its row (failures included, with the error line)."""
    name = name or f"{head}-{precision}-sm{sm}"
    out = args.work / name
    a = ["export", "--weights", str(weights), "--out", str(out), "--format", "engine", "--backend", "tensorrt-rtx",
         "--sm", sm, "--precision", precision]
    if precision == "int8":
        a += ["--calib-data", str(args.data), "--calib-images", str(args.calib_images)]
    a += ["--nms", nms] if nms else []
    a += ["--timing-cache", str(cache)] if cache else []
    command = shlex.join(["hwnas", *a])
    record = out.with_suffix(".row.json")
    if reuse and not args.fresh and record.exists() and out.with_suffix(".engine").exists():
        row = json.loads(record.read_text())
        if row["command"] == command and row["weights_mtime_ns"] == weights.stat().st_mtime_ns:
            print(f"reusing {record} ({command})", flush=True)
            return row
    print("$", shlex.join(HW + a), flush=True)
    t0 = time.time()
    p = subprocess.run(HW + a, stderr=subprocess.PIPE, text=True)
    row = {"name": name, "head": head, "arch": arch, "precision": precision, "sm": sm, "ok": p.returncode == 0,
           "wall_s": round(time.time() - t0, 2), "command": command, "weights_mtime_ns": weights.stat().st_mtime_ns}
    sys.stderr.write(p.stderr)
    if row["ok"]:
        m = json.loads(out.with_suffix(".json").read_text())
        row.update(build_s=m["build_s"], engine_mb=round(m["engine_bytes"] / 2**20, 2), form=m["form"],
                   roi_impl=m["roi_impl"], library_version=m["library_version"], manifest_sm=m["sm"])
        if cache:
            row["timing_cache_bytes"] = cache.stat().st_size if cache.exists() else None
        record.write_text(json.dumps(row, indent=1))
    else:
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")] or p.stderr.splitlines()[-1:]
        row["error"] = errors[-1] if errors else f"exit {p.returncode}"
        print(f"   FAILED: {row['error']}", flush=True)
    return row


def markdown(r: dict) -> str:
    lines = ["# TensorRT-RTX engines through `hwnas export` (every head, fp32/fp16/int8)\n",
             f"Command: `{r['command']}`  ",
             f"tensorrt_rtx {r['env']['tensorrt_rtx']}, torch {r['env']['torch']}, Python {r['env']['python']}, "
             f"{r['env']['cores']} CPU cores, no GPU used; 3 classes, batch 1, {r['weights']}, int8 (tensorrt Q/DQ) "
             f"calibrated on {r['calib_images']} generated images.  ",
             "wall s = the whole `hwnas export` process (start-up, ONNX export, calibration, build); build s = the "
             "builder alone (manifest `build_s`); engine MB = plan size.\n",
             "| head | arch | precision | sm | built | wall s | build s | engine MB | NMS form | RoIAlign form | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        note = x.get("note", "") + (f" FAILED: `{x['error'][:160]}`" if not x["ok"] else "")
        if x["ok"]:
            lines.append(f"| {x['head']} | `{x['arch']}` | {x['precision']} | {x['sm']} | yes | {x['wall_s']:.1f} | "
                         f"{x['build_s']:.2f} | {x['engine_mb']:.1f} | {x['form']} | {x['roi_impl'] or '-'} | {note.strip()} |")
        else:
            lines.append(f"| {x['head']} | `{x['arch']}` | {x['precision']} | {x['sm']} | **no** | {x['wall_s']:.1f} | | | | | "
                         f"{note.strip()} |")
    ok = [x for x in r["rows"] if x["ok"]]
    lines += ["", f"{len(ok)} of {len(r['rows'])} builds succeeded.", "", "Commands:", "", "```"]
    lines += r["setup"] + [x["command"] for x in r["rows"]] + ["```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sms", nargs="+", default=["80", "89"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--img", type=int, default=128)
    ap.add_argument("--data", type=Path, default=Path("runs/bench/trt_rtx/shapes"), help="calibration images (made if missing)")
    ap.add_argument("--calib-images", type=int, default=8)
    ap.add_argument("--train-epochs", type=int, default=1, help="epochs of `hwnas train` per head (0: untrained weights)")
    ap.add_argument("--host-head", default="retina", choices=list(HEADS), help="head whose host NMS form is built too")
    args = results_args(ap, "trt_rtx_export", "runs/bench/trt_rtx", fresh="rebuild rows already recorded",
                        quick="smoke test: sm80 only, fp32 and int8, 4 calibration images")
    if args.quick:
        args.data, args.sms, args.precisions, args.calib_images = args.work / "shapes", ["80"], ["fp32", "int8"], 4
    args.work.mkdir(parents=True, exist_ok=True)
    hw(["data", "synth", "--kind", "shapes", "--n-train", "64", "--n-val", "8", "--size", str(args.img), "--seed", "0",
        "--out", str(args.data)], execute=not (args.data / "train.json").exists())
    cks = checkpoints(args)
    t_all = time.time()
    rows = [build(args, h, *cks[h], p, sm) for h in args.heads for p in args.precisions for sm in args.sms]

    # Timing cache: a fresh cache is saved by one build, then loaded by a rebuild of the same engine.
    h, p, sm = args.heads[0], "fp16" if "fp16" in args.precisions else args.precisions[0], args.sms[0]
    cache = args.work / "timing.cache"
    cache.unlink(missing_ok=True)
    for i, note in enumerate(("timing cache saved (fresh file)", "rebuild, timing cache loaded")):
        row = build(args, h, *cks[h], p, sm, cache=cache, name=f"{h}-{p}-sm{sm}-cache{i}", reuse=False)
        row["note"] = note + (f", {row.get('timing_cache_bytes')} bytes" if row["ok"] else "")
        rows.append(row)
    # The host form (decode in the graph, NMS after the engine) of one head, next to its ops form above.
    row = build(args, args.host_head, *cks[args.host_head], args.precisions[0], args.sms[0], nms="host",
                name=f"{args.host_head}-{args.precisions[0]}-sm{args.sms[0]}-host")
    row["note"] = "host form (--nms host) for comparison"
    rows.append(row)

    import tensorrt_rtx
    import torch

    result = {"command": shlex.join(["python", "benchmarks/trt_rtx_export.py", *sys.argv[1:]]),
              "env": {"tensorrt_rtx": tensorrt_rtx.__version__, "torch": torch.__version__,
                      "python": platform.python_version(), "cores": os.cpu_count()},
              "calib_images": args.calib_images, "total_s": round(time.time() - t_all, 1), "setup": SETUP, "rows": rows,
              "weights": f"trained {args.train_epochs} epoch(s) on 64 generated images" if args.train_epochs
              else "untrained weights"}
    write_results(args.results, result, markdown(result))
    if any(not x["ok"] for x in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
