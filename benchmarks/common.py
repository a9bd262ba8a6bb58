"""What the benchmark scripts share: running the hwnas CLI as a user would, and timing it."""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

HWNAS = [sys.executable, "-m", "hwnas.cli"]


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
