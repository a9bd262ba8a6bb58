"""Shared fixtures: one real ort-cpu latency table of the tiny space, profiled once per session, and the
tiny generated dataset the training tests read."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from hwnas.backends import TimingConfig, get_backend

pytest_plugins = ["pg"]  # tests/pg.py: a throw-away PostgreSQL server on loopback

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
# TensorRT-RTX builds engines ahead of time without a GPU, so its tests run wherever it installs.
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed (pip install 'hwnas[tensorrt-rtx]')")

# On a 2-core machine torch's own intra-op threads fight onnxruntime's: the ONNX exports of a
# profile run ~3x slower and their spinning threads add noise to the ort timings. Tests in this
# process use one; the CLI subprocesses keep the defaults a user gets.
torch.set_num_threads(1)

# Fast but real: a few timed runs per unit, 5 ms minimum.
FAST = TimingConfig(warmup=1, min_repeats=3, max_repeats=300, min_time_s=0.005)
TINY_RES = 64


@pytest.fixture(scope="session")
def ort_cpu():
    return get_backend("ort-cpu")


@pytest.fixture(scope="session")
def tiny_table_file(tmp_path_factory, ort_cpu) -> Path:
    """A complete table of the tiny space at 64 px (never modify it: copy it with ``table_copy``)."""
    from hwnas.latency.table import profile

    path = tmp_path_factory.mktemp("tables") / "tiny-ort-cpu.json"
    profile(ort_cpu, path, space="tiny", resolutions=(TINY_RES,), num_classes=80, timing=FAST)
    path.chmod(0o444)
    return path


@pytest.fixture
def table_copy(tiny_table_file, tmp_path) -> Path:
    dst = tmp_path / "table.json"
    shutil.copyfile(tiny_table_file, dst)
    dst.chmod(0o644)
    return dst


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def sigkill_when(cmd: list[str], log_path: Path, ready: Callable[[], bool], timeout: float, *,
                 cwd: Path | None = None, env: dict | None = None, poll_s: float = 0.02,
                 sig: int = signal.SIGKILL) -> int:
    """Start ``cmd``, send it ``sig`` (SIGKILL unless told) as soon as ``ready()`` holds (it must
    still be running then), and return its exit code once it ended. ``ready`` may itself assert
    on what it reads (e.g. a file is whole)."""
    with log_path.open("w") as log:
        # The child starts with SIGINT and SIGTERM at their defaults and no signal blocked, as from a
        # shell: in a full-suite run the pytest process was found to pass SIGINT on ignored or
        # blocked (the child then ran to the end through Ctrl-C); which earlier test leaves it so
        # is not found yet.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_default_signals)
        deadline = time.time() + timeout
        try:
            while not ready():
                assert proc.poll() is None, f"ended before it could be signalled: {log_path.read_text()}"
                assert time.time() < deadline, f"not ready to signal in {timeout} s: {log_path.read_text()}"
                time.sleep(poll_s)
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode


def search_world(tmp_path_factory, backend, name: str, n_train: int) -> dict:
    """Generated shapes at 64 px (``n_train`` training, 8 val images) and a real table of the tiny
    space for their 3 classes, for module fixtures of searches: ``{"data", "table", "dir"}``."""
    from hwnas.data.synth import synth
    from hwnas.latency.table import profile

    d = tmp_path_factory.mktemp(name)
    synth("shapes", n_train, 8, TINY_RES, 0, d / "data")
    profile(backend, d / "table.json", space="tiny", resolutions=(TINY_RES,), num_classes=3, timing=FAST)
    return {"data": d / "data", "table": d / "table.json", "dir": d}


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """16 training and 8 validation images of circles, rectangles and triangles at 64 px (read only)."""
    from hwnas.data.synth import synth

    d = tmp_path_factory.mktemp("tiny-shapes")
    synth("shapes", 16, 8, 64, seed=0, out=d)
    return d
