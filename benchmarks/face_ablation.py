"""The face preset's ablation: each of its five tricks turned off in turn, and a plain RetinaNet.

Every variant is face-s at the data's size, trained from scratch with the same budget through the
CLI (as a user would) and scored the WIDER FACE way (hard subset first) on generated faces, whose
subsets come from face height (no official keep-lists exist for generated data). Latency is the
network end to end in onnxruntime on this CPU (1 thread), with the timing protocol of the tables;
multi-scale testing costs the sum of its passes, each timed at its own input size.

    hwnas data synth --kind faces --n-train 800 --n-val 200 --size 256 --seed 0 --out runs/bench/faces256
    python benchmarks/face_ablation.py --epochs 6
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

from common import HWNAS, results_args, run, write_results

FULL = {"stc": 3, "str": 3, "mo": 3, "box_loss": "diou", "das_p": 0.5, "mst": True}
VARIANTS = {  # name -> what differs from the full preset
    "full": {},
    "no STC": {"stc": 0},
    "no STR": {"str": 0},
    "no max-out": {"mo": 0},
    "no IoU loss (smooth L1)": {"box_loss": "smooth_l1"},
    "no data-anchor-sampling": {"das_p": 0.0},
    "no multi-scale test": {"mst": False},
    "plain RetinaNet": {"stc": 0, "str": 0, "mo": 0, "box_loss": "smooth_l1", "das_p": 0.0, "mst": False},
}


def arch_of(base: str, size: int, v: dict) -> str:
    a = re.sub(r"^i\d+", f"i{size}", base)
    return re.sub(r"_stc\d+_str\d+_mo\d+", f"_stc{v['stc']}_str{v['str']}_mo{v['mo']}", a)


def train_key(v: dict) -> tuple:
    """Variants that differ only at test time share one training run."""
    return v["stc"], v["str"], v["mo"], v["box_loss"], v["das_p"]


def latency_ms(arch: str, scales: str | None, threads: int) -> float:
    """End-to-end network latency (ms) on onnxruntime CPU: one pass, or the sum of the test passes."""
    from hwnas.backends import get_backend
    from hwnas.backends.base import TimingConfig
    from hwnas.evaluate.multiscale import parse_scales, scaled_hw
    from hwnas.latency.validate import measure_detector
    from hwnas.spec.arch import Arch

    a = Arch.parse(arch)
    backend = get_backend("ort-cpu", precision="fp32", threads=threads)
    timing = TimingConfig(min_time_s=1.0)
    sizes = [a.input_hw] if not scales else [scaled_hw(a.input_hw, s.scale) for s in parse_scales(scales)]
    return sum(min(measure_detector(backend, replace(a, input_hw=hw), 1, timing)) for hw in sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/bench/faces256")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", default="2e-3")
    ap.add_argument("--scale-jitter", default="0.3,2.0")
    ap.add_argument("--test-scales", default="0.5:48-,1,1f,2:-32",
                    help="multi-scale testing of the variants that use it (sizes in original pixels)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the latency figures")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--latency-only", action="store_true",
                    help="re-measure the latency column of the recorded results (on a quiet machine) and rewrite them")
    args = results_args(ap, "face_ablation", "runs/bench/face-ablation",
                        fresh="retrain every variant", quick="1 epoch, into WORK-quick (a smoke test)")
    from hwnas.spec.presets import PRESETS

    if args.quick:
        args.epochs = 1
    if args.latency_only:
        done = json.loads(args.results.with_suffix(".json").read_text())
        for r in done["rows"]:
            r["latency_ms"] = latency_ms(r["arch"], None if r["test_scales"] == "1" else r["test_scales"], args.threads)
            print(f"{r['variant']}: {r['latency_ms']:.1f} ms", flush=True)
        write_results(args.results, done, table(done["rows"], done["args"]))
        return
    names = [n for n in args.variants.split(",") if n]
    trained: dict[tuple, Path] = {}
    rows = []
    for name in names:
        v = {**FULL, **VARIANTS[name]}
        arch = arch_of(PRESETS["face-s"], args.size, v)
        run_dir = args.work / ("train-" + "-".join(map(str, train_key(v))))
        if train_key(v) not in trained:
            if args.fresh or not (run_dir / "metrics.json").exists():
                run([*HWNAS, "train", "--arch", arch, "--data", args.data, "--out", str(run_dir),
                     "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", args.lr,
                     "--box-loss", v["box_loss"], "--das-p", str(v["das_p"]), "--scale-jitter", args.scale_jitter])
            trained[train_key(v)] = run_dir
        tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        out = args.work / f"eval-{tag}.json"
        cmd = [*HWNAS, "eval", "--weights", str(run_dir / "last.pt"), "--data", args.data, "--protocol", "wider",
               "--out", str(out), "--batch-size", "8"]
        if v["mst"]:
            cmd += ["--test-scales", args.test_scales]
        run(cmd)
        m = json.loads(out.read_text())
        train_m = json.loads((run_dir / "metrics.json").read_text())
        rows.append({"variant": name, "arch": arch, "box_loss": v["box_loss"], "das_p": v["das_p"],
                     "test_scales": args.test_scales if v["mst"] else "1", "hard": m["hard"], "medium": m["medium"],
                     "easy": m["easy"], "map": m["map"], "map50": m["map50"], "subsets": m["subsets"],
                     "train_s": train_m["train_seconds"],
                     "latency_ms": latency_ms(arch, args.test_scales if v["mst"] else None, args.threads)})
        print(f"{name}: hard {m['hard']:.4f} medium {m['medium']:.4f} easy {m['easy']:.4f} "
              f"latency {rows[-1]['latency_ms']:.1f} ms", flush=True)
    write_results(args.results, {"rows": rows, "args": vars(args)}, table(rows, vars(args)))


def table(rows: list[dict], args: dict) -> str:
    full = next((r for r in rows if r["variant"] == "full"), rows[0])
    lines = [f"Face preset ablation: face-s at {args['size']} px, {args['epochs']} epochs, batch {args['batch_size']}, "
             f"lr {args['lr']}, on {args['data']} (WIDER protocol, {full['subsets']}); latency: network, onnxruntime "
             f"CPU {args['threads']} thread(s), the sum of the passes with multi-scale testing", "",
             "| variant | hard AP | Δ hard | medium AP | easy AP | COCO mAP | latency ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['hard']:.4f} | {r['hard'] - full['hard']:+.4f} | {r['medium']:.4f} | "
                     f"{r['easy']:.4f} | {r['map']:.4f} | {r['latency_ms']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
