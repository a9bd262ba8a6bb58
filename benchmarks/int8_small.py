"""Issue 18's int8 targets: onnxruntime int8 vs fp32 end to end on small and big detectors, where the time goes, eager vs ONNX per preset.

    python benchmarks/int8_small.py [--before-tree DIR] [--rounds 5] [--skip-presets]

For each case (preset, input size, data, epochs) it trains the preset on generated shapes
(`hwnas train`, reused when done), exports fp32 and int8 (cpu Q/DQ, 64 calibration images) with
`hwnas export`, and measures:
* dmAP of each export against its checkpoint on the 200 val images (hwnas.export.pipeline.check_parity);
* network-only and end-to-end latency, 1 thread, batch 1, one val image: the one timing protocol
  (hwnas.export.pipeline.bench) run in ``--rounds`` interleaved rounds over every graph of the case,
  median of the round medians (this shared 2-core machine drifts by 10-30 % between minutes);
* kernel time per part (pre / net / post / layout) from onnxruntime's profiler (hwnas.export.profile).

``--before-tree DIR``: a checkout of an earlier commit (``git worktree add DIR REV``); its
`hwnas export` makes the "before" graphs, timed and profiled beside the current ones.
Then, for every preset: eager PyTorch vs onnxruntime fp32 (network and end to end) on untrained
weights with the heads' prior, at the preset's own input size. Run it on a quiet machine.
Writes benchmarks/results/int8_small.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from common import HWNAS as HW, environment, interleaved, run, write_results

# preset, input size, data size (generated shapes, 1000 train / 200 val), training epochs
CASES = [("small-mobilenet-retinanet", 128, 8), ("small-mobilenet-retinanet", 256, 8), ("resnet18-fpn-retinanet", 256, 3)]
CALIB_IMAGES = 64
TARGET_SPEEDUP, TARGET_DMAP = 2.0, 1.0  # issue 18: int8 end to end >= 2x fp32, |dmAP| <= 1 point, small presets
COMMANDS: list[str] = []


def hw(args: list[str], *, done: bool = False, tree: Path | None = None) -> None:
    """Run ``hwnas ARGS`` (recorded as a user would type it); ``tree``: with that checkout's code."""
    COMMANDS.append(shlex.join(["hwnas", *args]) + (f"   # with the code of {tree}" if tree else ""))
    if done:
        return
    if tree is None:
        run(HW + args)
    else:  # -P: the current directory must not shadow the checkout on sys.path
        run(["env", f"PYTHONPATH={tree.resolve()}", sys.executable, "-P", "-m", "hwnas.cli.app", *args])


def prepare(case: tuple, work: Path, trees: dict[str, Path | None]) -> dict:
    preset, size, epochs = case
    data = Path(f"runs/bench/shapes{size}")
    hw(["data", "synth", "--kind", "shapes", "--n-train", "1000", "--n-val", "200", "--size", str(size), "--seed", "0",
        "--out", str(data)], done=(data / "val.json").exists())
    run_dir = work / f"{preset}-{size}"
    metrics = run_dir / "metrics.json"
    hw(["train", "--preset", preset, "--img-size", str(size), "--epochs", str(epochs), "--data", str(data), "--out",
        str(run_dir)], done=metrics.exists() and json.loads(metrics.read_text()).get("epochs") == epochs)
    weights = run_dir / "last.pt"
    graphs = {}
    for code, tree in trees.items():
        for prec in ("fp32", "int8"):
            out = run_dir / f"{code}-{prec}"
            cmd = ["export", "--weights", str(weights), "--out", str(out), "--format", "onnx", "--precision", prec]
            if prec == "int8":
                cmd += ["--calib-data", str(data), "--calib-images", str(CALIB_IMAGES), "--int8-target", "cpu"]
            stamp = out.with_suffix(".stamp")  # reuse an export made from this checkpoint by the same command
            key = json.dumps([cmd, str(tree), weights.stat().st_mtime_ns])
            fresh = not (out.with_suffix(".onnx").exists() and stamp.exists() and stamp.read_text() == key)
            if fresh:
                for p in (out.with_suffix(".onnx"), out.with_suffix(".json")):
                    p.unlink(missing_ok=True)
            hw(cmd, done=not fresh, tree=tree)
            stamp.write_text(key)
            graphs[f"{code}-{prec}"] = out.with_suffix(".onnx")
    return {"preset": preset, "size": size, "epochs": epochs, "data": data, "weights": weights, "graphs": graphs,
            "train": json.loads(metrics.read_text())}


def measure_case(c: dict, rounds: int) -> dict:
    from hwnas.backends.base import TimingConfig
    from hwnas.export.pipeline import check_parity, load_images, open_model
    from hwnas.export.profile import profile_graph

    val = json.loads((c["data"] / "val.json").read_text())
    image = c["data"] / "images" / val["images"][0]["file_name"]
    parity = {}
    for name, path in c["graphs"].items():
        print(f"parity {c['preset']} {c['size']} {name}", flush=True)
        parity[name] = check_parity(c["weights"], path.read_bytes(), c["data"], threads=1)
    models = {name: open_model(path, threads=1) for name, path in c["graphs"].items()}
    x, _ = load_images([image], next(iter(models.values())).arch.input_hw)
    latency = interleaved(models, x, TimingConfig(min_repeats=20, max_repeats=300, min_time_s=1.0), rounds,
                          label=f"{c['preset']} @{c['size']}")
    profiles = {n: profile_graph(p, x.numpy(), threads=1, runs=200) for n, p in c["graphs"].items()}
    return {"image": str(image), "parity": parity, "latency": latency, "profile": profiles}


def presets_eager_vs_onnx(rounds: int) -> list[dict]:
    """Eager PyTorch vs onnxruntime fp32, 1 thread, every preset at its input size, untrained weights
    (saved as a checkpoint and exported, then opened as `hwnas bench` opens them)."""
    import tempfile

    from hwnas.backends.base import TimingConfig
    from hwnas.export.deploy import export_deploy_onnx
    from hwnas.export.pipeline import open_model, untrained_model
    from hwnas.spec.presets import PRESETS
    from hwnas.train.checkpoint import save_checkpoint

    rows = []
    timing = TimingConfig(min_repeats=3, max_repeats=100, min_time_s=1.0)
    for preset in PRESETS:
        model, arch, names = untrained_model(preset)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt, graph = Path(tmp) / "untrained.pt", Path(tmp) / "untrained.onnx"
            save_checkpoint(ckpt, model=model, arch=arch, class_names=names, epoch=0)
            graph.write_bytes(export_deploy_onnx(model, class_names=names))
            models = {"eager": open_model(ckpt, threads=1), "onnx": open_model(graph, threads=1)}
            x = torch.rand(1, 3, *arch.input_hw, generator=torch.Generator().manual_seed(0))
            med = {n: {k: v[k] for k in ("network", "end_to_end")}
                   for n, v in interleaved(models, x, timing, rounds, label=preset).items()}
        rows.append({"preset": preset, "arch": str(arch), "classes": len(names), **med})
        print(f"{preset}: eager {med['eager']['end_to_end']:.2f} ms, onnx {med['onnx']['end_to_end']:.2f} ms "
              f"({med['eager']['end_to_end'] / med['onnx']['end_to_end']:.2f}x)", flush=True)
    return rows


def markdown(r: dict) -> str:
    e = r["environment"]
    codes = [c for c in ("before", "after") if any(f"{c}-fp32" in x["graphs"] for x in r["cases"])]
    lines = ["# int8 on small detectors: onnxruntime int8 vs fp32, where the time goes\n",
             f"Command: `{r['command']}`  ",
             f"{e['cpu']}, {e['cores']} cores, Python {e['python']}, torch {e['torch']}, onnxruntime {e['onnxruntime']}; "
             "".join(f"Earlier run kept for the cases it did not redo: `{c}`.  " for c in r.get("commands_before", [])),
             f"1 thread, batch 1, median of {r['rounds']} interleaved rounds of `hwnas bench`'s protocol.  ",
             (f"\"before\": graphs exported by commit `{r['before_commit']}`; \"after\": this commit. " if "before" in codes
              else "") + f"int8: cpu Q/DQ calibrated on {CALIB_IMAGES} training images. dmAP: export vs checkpoint, "
             "mAP 0.5:0.95 on the 200 val images, in points.\n",
             "| detector | code | fp32 net ms | fp32 end to end ms | int8 net ms | int8 end to end ms | int8/fp32 end to end "
             "| int8/fp32 net | int8 dmAP | fp32 dmAP | target (>= 2x, \\|dmAP\\| <= 1) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["cases"]:
        for code in codes:
            L, P = c["latency"], c["parity"]
            f, i = L[f"{code}-fp32"], L[f"{code}-int8"]
            su, sn = f["end_to_end"] / i["end_to_end"], f["network"] / i["network"]
            d8, d32 = P[f"{code}-int8"]["delta_map_points"], P[f"{code}-fp32"]["delta_map_points"]
            small = c["preset"].startswith("small-")
            met = "yes" if su >= TARGET_SPEEDUP and abs(d8) <= TARGET_DMAP else "**no**"
            lines.append(f"| {c['preset']} @{c['size']} (mAP {c['map']:.3f}) | {code} | {f['network']:.3f} | "
                         f"{f['end_to_end']:.3f} | {i['network']:.3f} | {i['end_to_end']:.3f} | {su:.2f}x | {sn:.2f}x | "
                         f"{d8:+.2f} | {d32:+.2f} | {met if small else 'keep the gain'} |")
    lines += ["", "### Where the time goes (onnxruntime profiler, kernel ms per run, mean of 200 runs; the profiler adds "
              "a little per node)\n", "| detector | graph | pre | net | post | layout | post nodes: top operators |",
              "|---|---|---|---|---|---|---|"]
    for c in r["cases"]:
        for name, p in c["profile"].items():
            parts = p["parts_ms"]
            top = ", ".join(f"{op} {ms:.3f}" for op, ms in list(p["ops_ms"].get("post", {}).items())[:4])
            lines.append(f"| {c['preset']} @{c['size']} | {name} | " + " | ".join(f"{parts.get(k, 0):.3f}" for k in
                                                                                ("pre", "net", "post", "layout"))
                         + f" | {top} |")
    if r.get("presets"):
        lines += ["", "### Eager PyTorch vs onnxruntime fp32, every preset (untrained weights with the heads' prior, "
                  "1 thread, batch 1)\n", "| preset | arch | eager net ms | onnx net ms | net speed-up | eager end to end ms "
                  "| onnx end to end ms | end to end speed-up |", "|---|---|---|---|---|---|---|---|"]
        for p in r["presets"]:
            en, on = p["eager"]["network"], p["onnx"]["network"]
            ee, oe = p["eager"]["end_to_end"], p["onnx"]["end_to_end"]
            lines.append(f"| {p['preset']} | `{p['arch']}` | {en:.2f} | {on:.2f} | {en / on:.2f}x | {ee:.2f} | {oe:.2f} | "
                         f"{ee / oe:.2f}x |")
    lines += ["", "Commands:", "", "```", *r["commands"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before-tree", type=Path, help="checkout of an earlier commit whose exports are timed as 'before'")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-presets", action="store_true", help="skip eager vs onnxruntime for every preset (a results "
                    "file's earlier figures are kept)")
    ap.add_argument("--cases", default="", help="only these cases, e.g. small-mobilenet-retinanet@128 (the others are "
                    "kept from the results file)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/int8"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/int8_small"))
    args = ap.parse_args()
    trees: dict[str, Path | None] = {"after": None}
    before_commit = None
    if args.before_tree:
        trees = {"before": args.before_tree, "after": None}
        before_commit = subprocess.run(["git", "-C", str(args.before_tree), "rev-parse", "--short", "HEAD"], check=True,
                                       stdout=subprocess.PIPE, text=True).stdout.strip()
    command = shlex.join(["python", "benchmarks/int8_small.py", *sys.argv[1:]])
    wanted = [c for c in CASES if not args.cases or f"{c[0]}@{c[1]}" in args.cases.split(",")]
    old = json.loads(args.results.with_suffix(".json").read_text()) if args.results.with_suffix(".json").exists() else {}
    cases = []
    for case in wanted:
        c = prepare(case, args.work, trees)
        m = measure_case(c, args.rounds)
        cases.append({"preset": c["preset"], "size": c["size"], "epochs": c["epochs"], "map": c["train"]["map"],
                      "weights": str(c["weights"]), "graphs": {k: str(v) for k, v in c["graphs"].items()},
                      "command": command, **m})
    env = environment()
    presets = old.get("presets", []) if args.skip_presets else presets_eager_vs_onnx(args.rounds)
    done = {(c["preset"], c["size"]) for c in cases}
    kept = [c for c in old.get("cases", []) if (c["preset"], c["size"]) not in done]
    cases = sorted(kept + cases, key=lambda c: [(p, z) for p, z, _ in CASES].index((c["preset"], c["size"])))
    for c in kept:
        c.setdefault("command", old["command"])
    result = {"command": command, "commands_before": old.get("commands_before", []) + ([old["command"]] if kept else []),
              "environment": env, "rounds": args.rounds, "before_commit": before_commit, "cases": cases,
              "presets": presets, "commands": list(dict.fromkeys(old.get("commands", []) + COMMANDS))}
    write_results(args.results, result, markdown(result))


if __name__ == "__main__":
    main()
