"""Issue 5's export targets for one trained checkpoint: parity of its fp32/fp16/int8 ONNX exports, CPU latency vs PyTorch.

    python benchmarks/export_deploy.py [--weights RUN/last.pt] [--threads 1 [2]] [--quick]

Without --weights, trains small-mobilenet-retinanet at 128 px for 8 epochs on the shapes data (made if missing)
with `hwnas train --out runs/bench/export/model` (resumed if interrupted). Each export is
`hwnas export --format onnx --precision P --check DATA` (run in-process through hwnas.export.pipeline,
for the full parity record); exports and their parity are reused on a rerun while the checkpoint is unchanged
(--fresh redoes them). Latency is `hwnas bench --json` on one val image, always measured afresh: run it on a
quiet machine. Writes benchmarks/results/export_deploy.{json,md} (--quick: runs/bench/export-quick/).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import HWNAS as HW, environment, results_args, run, write_results

# name, precision, int8 target
EXPORTS = [("fp32", "fp32", None), ("fp16", "fp16", None), ("int8-cpu", "int8", "cpu"), ("int8-tensorrt", "int8", "tensorrt")]
MAX_DELTA_POINTS = {"fp32": 0.1, "fp16": 0.2, "int8": 1.0}
MIN_AGREEMENT_FP32 = 0.99
MIN_SPEEDUP = 1.5
BENCHED = ["checkpoint", "fp32", "int8-cpu", "fp16"]
COMMANDS: list[str] = []  # what a user would type, in order, for the results file


def hw(args: list[str], *, execute: bool = True) -> None:
    """Run ``hwnas ARGS`` (echoed) and record it; execute=False records a step that is already done."""
    COMMANDS.append(shlex.join(["hwnas", *args]))
    if execute:
        run(HW + args)


def ensure_weights(args) -> Path:
    n = ("32", "16") if args.quick else ("1000", "200")
    hw(["data", "synth", "--kind", "shapes", "--n-train", n[0], "--n-val", n[1], "--size", str(args.img), "--seed", "0",
        "--out", str(args.data)], execute=not (args.data / "val.json").exists())
    if args.weights:
        return args.weights
    run_dir = args.work / "model"
    done = run_dir / "metrics.json"
    hw(["train", "--preset", args.train_preset, "--img-size", str(args.img), "--epochs", str(args.epochs),
        "--data", str(args.data), "--out", str(run_dir)],
       execute=not (done.exists() and json.loads(done.read_text()).get("epochs") == args.epochs))
    return run_dir / "last.pt"


def export_one(args, weights: Path, name: str, precision: str, target: str | None) -> dict:
    from hwnas.export.pipeline import ExportConfig, export

    out = args.work / name
    cmd = ["hwnas", "export", "--weights", str(weights), "--out", str(out), "--format", "onnx", "--precision", precision]
    if precision == "int8":
        cmd += ["--calib-data", str(args.data), "--calib-images", str(args.calib_images), "--int8-target", target]
    cmd += ["--check", str(args.data), "--threads", "1"]
    COMMANDS.append(shlex.join(cmd))
    stamp = {"command": cmd, "weights_mtime_ns": weights.stat().st_mtime_ns}
    saved = out.with_suffix(".parity.json")
    if not args.fresh and saved.exists() and out.with_suffix(".onnx").exists():
        rec = json.loads(saved.read_text())
        if rec.get("stamp") == stamp:
            print(f"reusing {saved} ({shlex.join(cmd)})", flush=True)
            return rec
    print("$", shlex.join(cmd), "  [in-process: hwnas.export.pipeline.export]", flush=True)
    t0 = time.time()
    res = export(ExportConfig(weights=weights, out=out, format="onnx", precision=precision,
                              calib_data=args.data if precision == "int8" else None, calib_images=args.calib_images,
                              int8_target=target, check=args.data, threads=1), progress=lambda m: print("  ", m, flush=True))
    p = res.parity
    limit = MAX_DELTA_POINTS[precision]
    met = abs(p["delta_map_points"]) <= limit
    if precision == "fp32":  # None: the checkpoint has no box scoring >= 0.3 to agree on (an untrained model)
        met = None if p["agreement"] is None else met and p["agreement"] >= MIN_AGREEMENT_FP32
    rec = {"name": name, "precision": precision, "int8_target": target, "onnx": str(out.with_suffix(".onnx")),
           "onnx_mb": out.with_suffix(".onnx").stat().st_size / 2**20, "seconds": time.time() - t0, "parity": p,
           "max_delta_points": limit, "target_met": met, "int8_flag": res.int8_flag, "sensitivity": res.sensitivity,
           "notes": res.notes, "stamp": stamp}
    agree = "-" if p["agreement"] is None else f"{100 * p['agreement']:.2f}%"
    print(f"   mAP {p['map']:.4f} vs checkpoint {p['map_ref']:.4f}: delta {p['delta_map_points']:+.3f} points "
          f"(target |delta| <= {limit}), agreement {agree} -> { {True: 'met', False: 'NOT MET', None: 'agreement unknown'}[met]}", flush=True)
    saved.write_text(json.dumps(rec, indent=1))
    return rec


def bench_one(args, model: Path, image: Path, threads: int) -> dict:
    cmd = HW + ["bench", "--model", str(model), str(image), "--threads", str(threads), "--min-time", str(args.min_time),
                "--repeats", str(args.repeats), "--json"]
    print("$", shlex.join(cmd), flush=True)
    COMMANDS.append(shlex.join(["hwnas", *cmd[len(HW):]]))
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    res = json.loads(out[out.index("{"):])
    print(f"   network {res['network']['median_ms']:.3f} ms, end to end {res['end_to_end']['median_ms']:.3f} ms", flush=True)
    return res


def markdown(r: dict) -> str:
    ck = r["checkpoint"]
    e = r["environment"]
    lines = ["# Export and deployment: parity and CPU latency of one checkpoint\n",
             f"Command: `{r['command']}`  ",
             f"Checkpoint `{ck['weights']}`: `{ck['arch']}`, {ck.get('epochs', '?')} epochs. "
             f"Data `{r['data']}` (val: {r['n_val']} images).  ",
             f"{e['cpu']}, {e['cores']} cores, Python {e['python']}, torch {e['torch']}, onnxruntime {e['onnxruntime']}; "
             f"load average before timing {', '.join(f'{x:.2f}' for x in e['loadavg'])}.\n",
             f"### Parity on the val split (export in onnxruntime vs checkpoint in PyTorch; int8 calibrated on "
             f"{r['calib_images']} training images)\n",
             "| export | mAP checkpoint | mAP export | ΔmAP (points) | box agreement | target | met |",
             "|---|---|---|---|---|---|---|"]
    for x in r["exports"]:
        p = x["parity"]
        agree = "-" if p["agreement"] is None else f"{100 * p['agreement']:.2f}% ({p['n_matched']}/{p['n_ref_boxes']})"
        tgt = f"\\|Δ\\| ≤ {x['max_delta_points']}" + (f", ≥ {100 * MIN_AGREEMENT_FP32:.0f}%" if x["precision"] == "fp32" else "")
        lines.append(f"| {x['name']} | {p['map_ref']:.4f} | {p['map']:.4f} | {p['delta_map_points']:+.3f} | {agree} | {tgt} | "
                     f"{ {True: 'yes', False: '**no**', None: 'n/a'}[x['target_met']]} |")
    flags = [f"- {x['name']}: {x['int8_flag']}; worst SQNR: " + ", ".join(f"{s['name']} {s['sqnr_db']:.1f} dB" for s in x["sensitivity"] or [])
             for x in r["exports"] if x["int8_flag"]]
    lines += [""] + flags + ([""] if flags else [])
    lines += [f"### Latency (`hwnas bench`, batch 1, one val image, median of >= {r['repeats']} runs / {r['min_time']} s)\n",
              "| model | threads | network ms | end to end ms | end to end p90 ms | end to end vs PyTorch |", "|---|---|---|---|---|---|"]
    for t, rows in r["latency"].items():
        base = rows["checkpoint"]["end_to_end"]["median_ms"]
        for name, b in rows.items():
            n, ee = b["network"]["median_ms"], b["end_to_end"]
            lines.append(f"| {name} | {t} | {n:.3f} | {ee['median_ms']:.3f} | {ee['p90_ms']:.3f} | {base / ee['median_ms']:.2f}x |")
    lines.append("")
    for t, s in r["speedups"].items():
        lines.append(f"- {t} thread(s): ONNX fp32 / PyTorch {s['onnx_fp32_vs_torch']['end_to_end']:.2f}x end to end "
                     f"(network {s['onnx_fp32_vs_torch']['network']:.2f}x; target ≥ {MIN_SPEEDUP}x end to end: "
                     f"{'met' if s['target_met'] else '**not met**'}); int8-cpu / fp32 {s['int8_vs_fp32']['end_to_end']:.2f}x "
                     f"end to end (network {s['int8_vs_fp32']['network']:.2f}x)")
    lines += ["", "Commands (the exports ran in-process through hwnas.export.pipeline.export, the code behind `hwnas export`):", "", "```"] + r["commands"] + ["```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="checkpoint to export (default: train one)")
    ap.add_argument("--data", type=Path, default=Path("runs/bench/shapes128"))
    ap.add_argument("--train-preset", default="small-mobilenet-retinanet")
    ap.add_argument("--img", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="bench thread counts, e.g. 1 2")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=20)
    args = results_args(ap, "export_deploy", "runs/bench/export", fresh="redo exports and parity even if saved",
                        quick="smoke test: tiny data, 1 epoch, 8 calibration images, short timing")
    if args.quick:
        args.data = args.work / "shapes"
        args.epochs, args.calib_images, args.min_time, args.repeats = 1, 8, 0.2, 5
    args.work.mkdir(parents=True, exist_ok=True)
    weights = ensure_weights(args)

    exports = [export_one(args, weights, *e) for e in EXPORTS]
    val = json.loads((args.data / "val.json").read_text())
    image = args.data / "images" / val["images"][0]["file_name"]
    env = environment()
    models = {"checkpoint": weights, **{n: args.work / f"{n}.onnx" for n in BENCHED[1:]}}
    latency, speedups = {}, {}
    for t in args.threads:
        latency[t] = {name: bench_one(args, path, image, t) for name, path in models.items()}
        L = {n: {k: latency[t][n][k]["median_ms"] for k in ("network", "end_to_end")} for n in models}
        su = {k: L["checkpoint"][k] / L["fp32"][k] for k in L["fp32"]}
        speedups[t] = {"onnx_fp32_vs_torch": su, "int8_vs_fp32": {k: L["fp32"][k] / L["int8-cpu"][k] for k in L["fp32"]},
                       "target_met": su["end_to_end"] >= MIN_SPEEDUP}

    metrics = weights.parent / "metrics.json"  # a training run's folder, if that is where the checkpoint is
    ck = json.loads(metrics.read_text()) if metrics.exists() else {}
    from hwnas.train.checkpoint import load_checkpoint

    result = {"command": shlex.join(["python", "benchmarks/export_deploy.py", *sys.argv[1:]]), "data": str(args.data),
              "n_val": len(val["images"]), "calib_images": args.calib_images, "min_time": args.min_time, "repeats": args.repeats,
              "checkpoint": {"weights": str(weights), "arch": str(load_checkpoint(weights).arch),
                             **{k: ck[k] for k in ("epochs", "map", "map50", "train_seconds") if k in ck}},
              "environment": env, "exports": exports, "latency": latency, "speedups": speedups, "commands": COMMANDS}
    write_results(args.results, result, markdown(result))


if __name__ == "__main__":
    main()
