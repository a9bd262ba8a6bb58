"""Where a deployed graph's time goes: onnxruntime's profiler, summed by part and by operator.

The deployable graph names every node ``/pre/...``, ``/net/...`` or ``/post/...``
(:mod:`hwnas.export.deploy`); onnxruntime keeps those names through its fusions (a fused int8 conv
is ``/net/.../Conv_token_N``). Nodes onnxruntime adds itself (layout reorders of its NCHWc
kernels, transposes around int8 ops) carry no part and are counted as ``layout``.

The profiler's per-node kernel times add a little overhead per node; the figures say where time
goes, and :func:`hwnas.export.pipeline.bench` (the one timing protocol) says how long a run takes.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PARTS", "part_of", "profile_graph"]

PARTS = ("pre", "net", "post", "layout")


def part_of(node_name: str) -> str:
    """The deploy part a profiled node belongs to (``layout`` for nodes onnxruntime inserted)."""
    head = node_name.split("/", 2)
    return head[1] if len(head) == 3 and not head[0] and head[1] in PARTS[:3] else "layout"


def profile_graph(model: bytes | str | Path, images: np.ndarray, *, threads: int = 1, runs: int = 100,
                  warmup: int = 10) -> dict[str, Any]:
    """Kernel time per run (ms, mean over ``runs`` after ``warmup``) by part, and by operator within each part.

    Returns ``{"runs", "run_ms" (mean whole-run time as the profiler saw it), "parts_ms": {part: ms},
    "ops_ms": {part: {op: ms}}}``, parts and ops sorted by time, largest first.
    """
    from hwnas.backends.ort import cpu_session

    with tempfile.TemporaryDirectory(prefix="hwnas-profile-") as tmp:
        sess = cpu_session(model, threads, profile_prefix=str(Path(tmp) / "run"))
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    # the profile covers every run: keep the node events inside the last ``runs`` model runs
    whole = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                   key=lambda e: e["ts"])[-runs:]
    start = whole[0]["ts"]
    parts: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < start or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        part = part_of(name)
        parts[part] += e["dur"] / 1e3 / runs
        ops[part][e["args"]["op_name"]] += e["dur"] / 1e3 / runs

    def ordered(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    return {"runs": runs, "run_ms": round(sum(e["dur"] for e in whole) / 1e3 / runs, 4),
            "parts_ms": ordered(parts), "ops_ms": {p: ordered(ops[p]) for p in ordered(parts)}}
