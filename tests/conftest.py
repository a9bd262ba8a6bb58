"""Shared fixtures: one real ort-cpu latency table of the tiny space, profiled once per session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hwnas.backends import TimingConfig, get_backend

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
    from hwnas.latency import profile

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
