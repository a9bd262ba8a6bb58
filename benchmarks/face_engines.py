"""The face presets as TensorRT-RTX engines, built ahead of time without a GPU through the CLI.

    python benchmarks/face_engines.py [--presets face-s face-m] [--precisions fp32 fp16] [--sms 80 89]

Each build is one `hwnas export --preset P --format engine --backend tensorrt-rtx --sm S --precision X`
(untrained weights: an engine's structure and build do not depend on them). Records the build time
and the sizes from each engine's manifest. Writes benchmarks/results/face_engines.{json,md}.
"""
from __future__ import annotations

import argparse
import json

from common import HWNAS, results_args, run, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["face-s", "face-m"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--sms", nargs="+", default=["80", "89"])
    args = results_args(ap, "face_engines", "runs/bench/face-engines", fresh="rebuild every engine",
                        quick="face-s fp32 sm_89 only, into WORK-quick")
    if args.quick:
        args.presets, args.precisions, args.sms = ["face-s"], ["fp32"], ["89"]
    rows = []
    for preset in args.presets:
        for prec in args.precisions:
            for sm in args.sms:
                base = args.work / f"{preset}-{prec}-sm{sm}"
                manifest = base.with_suffix(".json")
                cmd = [*HWNAS, "export", "--preset", preset, "--format", "engine", "--backend", "tensorrt-rtx",
                       "--sm", sm, "--precision", prec, "--out", str(base)]
                wall = run(cmd) if args.fresh or not manifest.exists() else None
                m = json.loads(manifest.read_text())
                rows.append({"preset": preset, "arch": m["arch"], "precision": prec, "sm": sm,
                             "build_s": m["build_s"], "engine_mb": m["engine_bytes"] / 2 ** 20, "wall_s": wall,
                             "library": f"{m['flavour']} {m['library_version']}"})
    lines = [f"Face presets as {rows[0]['library']} engines, ahead of time, no GPU; untrained weights", "",
             "| preset | precision | SM | build s | engine MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['precision']} | {r['sm']} | {r['build_s']:.1f} | {r['engine_mb']:.1f} |" for r in rows]
    write_results(args.results, {"rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
