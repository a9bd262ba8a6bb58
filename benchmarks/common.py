"""What the benchmark scripts share: running the hwnas CLI as a user would, and timing it."""
from __future__ import annotations

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
