"""What the benchmark scripts share: running the hwnas CLI as a user would, and timing it."""
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

HWNAS = [sys.executable, "-m", "hwnas.cli.app"]


def run(cmd: list[str]) -> float:
    """Run a command (echoed first), fail on a non-zero exit, return its wall time in seconds."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def search_args(description: str, *, trials: int, population: int, epochs: int) -> argparse.ArgumentParser:
    """The arguments both search benchmarks share: the data, table and space they search."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default="runs/bench/shapes128", help="hwnas data synth --kind shapes --size 128 --out DATA")
    ap.add_argument("--table", default="latency_tables/intel-xeon-ort-cpu-fp32-1t-small-3cls.json")
    ap.add_argument("--space", default="small")
    ap.add_argument("--resolutions", default="128")
    ap.add_argument("--trials", type=int, default=trials)
    ap.add_argument("--population", type=int, default=population)
    ap.add_argument("--epochs", type=int, default=epochs)
    return ap


def results_args(ap: argparse.ArgumentParser, name: str, work: str, *, fresh: str, quick: str) -> argparse.Namespace:
    """Add --work, --results, --fresh and --quick to ``ap`` and parse the command line.

    The benchmark keeps its intermediate files under WORK and writes RESULTS.{json,md} (default
    benchmarks/results/NAME); --quick, a smoke test, moves both to WORK-quick so that it never
    touches recorded results. ``fresh`` and ``quick`` are the help texts of those two flags.
    """
    ap.add_argument("--work", type=Path, default=Path(work))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results") / name,
                    help="writes RESULTS.json and .md")
    ap.add_argument("--fresh", action="store_true", help=fresh)
    ap.add_argument("--quick", action="store_true", help=quick)
    args = ap.parse_args()
    if args.quick:
        args.work = Path(f"{work}-quick")
        args.results = args.work / name
    return args


def write_results(results: Path, result: dict, text: str) -> None:
    """RESULTS.json (``result``) and RESULTS.md (``text``); prints the text and what was written."""
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    results.with_suffix(".md").write_text(text)
    print("\n" + text)
    print(f"wrote {results.with_suffix('.json')} and {results.with_suffix('.md')}")


def environment() -> dict:
    """The machine and software a benchmark ran on (CPU model, cores, versions, load average)."""
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "loadavg": os.getloadavg()}


def interleaved(models: dict, x, timing, rounds: int, label: str) -> dict:
    """``hwnas bench``'s figures of every model in ``rounds`` interleaved rounds (a slow minute hits them
    alike): {name: {"network", "end_to_end": median of the round medians, "rounds": every round's}}."""
    from hwnas.export.pipeline import bench

    got = {n: {"network": [], "end_to_end": []} for n in models}
    for r in range(rounds):
        for name, m in models.items():
            res = bench(m, x, timing)
            for k in got[name]:
                got[name][k].append(res[k]["median_ms"])
        print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{n} {s['end_to_end'][-1]:.3f}" for n, s in got.items()),
              flush=True)
    return {n: {k: sorted(v)[len(v) // 2] for k, v in s.items()} | {"rounds": s} for n, s in got.items()}
