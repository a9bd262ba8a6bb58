"""Latency-table fidelity on this machine: profile the default space, validate on sampled detectors.

Runs the two user commands (``hwnas profile`` and ``hwnas validate``) as subprocesses, times
them, measures prediction cost, and writes a markdown summary. Run on a quiet machine: other
processes on the same cores inflate whole-detector measurements and unit timings unequally.

    python benchmarks/latency_fidelity.py --out benchmarks/results/ort-cpu-1t
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from common import HWNAS, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ort-cpu-1t"))
    ap.add_argument("--table", type=Path, default=Path("latency_tables/ort-cpu-1t-256.json"))
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the backend's own)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--resolutions", default="256")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--calib-samples", type=int, default=30)
    ap.add_argument("--baseline-samples", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    hw = HWNAS

    fresh = not args.table.exists()
    dev = ["--device", args.device] if args.device else []
    profile_s = run(hw + ["profile", "--backend", args.backend, "--threads", str(args.threads), *dev,
                          "--precision", args.precision,
                          "--resolutions", args.resolutions, "--out", str(args.table)])
    report = args.out / "validate.json"
    validate_s = run(hw + ["validate", "--table", str(args.table), "--samples", str(args.samples),
                           "--calib-samples", str(args.calib_samples), "--baseline-samples",
                           str(args.baseline_samples), "--seed", str(args.seed), "--out", str(report),
                           "--plot", str(args.out / "fidelity.png")])

    # Prediction cost: the whole walk plus lookups, averaged over many archs.
    from hwnas.latency.table import LatencyTable
    from hwnas.spec.space import get_space

    table = LatencyTable.load(args.table)
    space = get_space(table.space).with_resolutions(table.resolutions)
    archs = [space.sample(s) for s in range(500)]
    t0 = time.perf_counter()
    for a in archs:
        table.predict(a)
    predict_ms = (time.perf_counter() - t0) * 1e3 / len(archs)

    rep = json.loads(report.read_text())
    t = rep["table_target"]
    lines = [
        f"## Latency-table fidelity: {t['backend']}, {t['threads']} thread(s), {t['device']}",
        "",
        f"Command: `python benchmarks/latency_fidelity.py --out {args.out} --table {args.table} "
        f"--backend {args.backend} --threads {args.threads} --resolutions {args.resolutions} "
        f"--samples {args.samples} --calib-samples {args.calib_samples} --baseline-samples {args.baseline_samples} --seed {args.seed}`",
        "",
        f"- table: {len(table.entries)} units of space `{table.space}` at {args.resolutions} px; "
        f"profile wall time {profile_s / 60:.1f} min" + (" (fresh)" if fresh else " (resumed/reused: not a fresh timing)"),
        f"- validate wall time {validate_s / 60:.1f} min; prediction {predict_ms:.3f} ms per arch (mean over 500)",
        f"- correction fitted on {rep['calib_samples']} separate detectors: {rep.get('correction')}; "
        f"check on them (leave-one-out): {rep.get('correction_check')}",
        "",
        "| predictor | n | within_5 | within_10 | MAPE % | Spearman | Kendall |",
        "|---|---|---|---|---|---|---|",
    ]
    kept = (rep.get("correction_check") or {}).get("kept")
    rows = [("table prediction (" + ("sum + correction" if kept else "plain sum; correction rejected") + ")", rep),
            ("unit sum, raw", rep["raw"])]
    if "naive" in rep:
        rows.append(("per-operator sum (baseline)", rep["naive"]))
    for name, r in rows:
        n = r.get("n", rep["samples"])
        lines.append(f"| {name} | {n} | {r['within_5']:.3f} | {r['within_10']:.3f} | {r['mape']:.2f} | "
                     f"{r['spearman']:.4f} | {r['kendall']:.4f} |")
    lines += ["", f"Measurement noise floor `noise_cv` = {rep['noise_cv']:.4f} (two back-to-back measurements per detector).",
              f"Python {platform.python_version()}; libraries: {t.get('libraries')}", ""]
    (args.out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
