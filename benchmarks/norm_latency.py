"""What a detector's norm costs at deployment: one arch with BatchNorm, GroupNorm in the head towers
only (``gnhead``) and GroupNorm everywhere (``gn``), exported to ONNX (fp32) and timed in onnxruntime,
1 thread, batch 1, ``hwnas bench``'s protocol in interleaved rounds (median of the round medians).

BatchNorm folds into the preceding conv at export; GroupNorm stays a node of its own (a reshape,
a normalisation over each group and an affine), so its cost grows with the activations it runs on.
Untrained weights with the heads' prior (the graph, not the weights, sets the time).

    python benchmarks/norm_latency.py
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import environment, interleaved, write_results

FACE_S = "mbconv_c16_1-21-211-21/fpn_p2-7_c64/face_d2_c64_stc3_str3_mo3"


def measure(body: str, sizes: list[int], norms: list[str], rounds: int) -> list[dict]:
    from hwnas.backends.base import TimingConfig
    from hwnas.export.deploy import export_deploy_onnx
    from hwnas.export.pipeline import open_model, untrained_model
    from hwnas.train.checkpoint import save_checkpoint

    timing = TimingConfig(min_repeats=10, max_repeats=200, min_time_s=1.0)
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            models = {}
            for norm in norms:
                model, arch, names = untrained_model(f"i{size}/{body}/{norm}")
                graph = Path(tmp) / f"{norm}.onnx"
                graph.write_bytes(export_deploy_onnx(model, class_names=names))
                models[norm] = open_model(graph, threads=1)
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            got = interleaved(models, x, timing, rounds, label=f"{size} px")
        for norm in norms:
            rows.append({"arch": f"i{size}/{body}/{norm}", "size": size, "norm": norm,
                         "network_ms": got[norm]["network"], "end_to_end_ms": got[norm]["end_to_end"],
                         "network_vs_bn": got[norm]["network"] / got["bn"]["network"]})
    return rows


def markdown(result: dict) -> str:
    lines = [f"Norm cost at export: `{result['body']}`, ONNX fp32 in onnxruntime, 1 thread, batch 1, median of "
             f"{result['rounds']} interleaved rounds ({result['environment']['cpu']}).", "",
             "| input | norm | network (ms) | end to end (ms) | network vs bn |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['norm']} | {r['network_ms']:.2f} | {r['end_to_end_ms']:.2f} | "
                     f"{r['network_vs_bn']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--body", default=FACE_S, help="the arch without its input size and norm (default: face-s)")
    ap.add_argument("--sizes", default="256,640")
    ap.add_argument("--norms", default="bn,gnhead,gn", help="comma-separated; bn first (the reference)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/norm_latency"))
    args = ap.parse_args()
    norms = args.norms.split(",")
    if norms[0] != "bn":
        raise SystemExit("--norms: give bn first, the reference the others are compared with")
    rows = measure(args.body, [int(s) for s in args.sizes.split(",")], norms, args.rounds)
    result = {"body": args.body, "rounds": args.rounds, "environment": environment(), "rows": rows}
    write_results(args.results, result, markdown(result))


if __name__ == "__main__":
    main()
