"""Fidelity of a latency table: predict and measure sampled detectors, fit and report.

The report compares three predictors against end-to-end measurements of whole detectors on
the table's own backend: the plain sum of unit latencies (``raw``), that sum after the
table's fitted correction (the headline figures), and a naive per-operator sum (every
``nn`` layer timed alone, unfused; functional ops such as adds and upsampling uncounted), the
baseline nn-Meter compares against. The correction is fitted on a calibration sample drawn
with other seeds than the evaluation sample.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats
from torch import nn

from hwnas.backends.base import Backend, Latency, TimingConfig, measure
from hwnas.errors import HwnasError
from hwnas.fileio import read_json, write_json
from hwnas.latency.table import Correction, LatencyTable
from hwnas.models import Detector
from hwnas.models.blocks import build, example_inputs
from hwnas.spec.arch import Arch
from hwnas.spec.space import get_space

CALIB_SEED_OFFSET = 1_000_000  # calibration archs come from a seed range the evaluation never uses
KEEP_CORRECTION_BELOW = 0.9  # held-out MAPE ratio (correction / plain sum) needed to keep a correction


@dataclass(frozen=True)
class Record:
    arch: str
    measured_ms: float
    measured2_ms: float  # a second, independent measurement: the noise floor
    raw_ms: float
    n_units: int
    naive_ms: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fidelity(pred: np.ndarray, meas: np.ndarray) -> dict:
    """within_5 / within_10 (fractions), MAPE (%), Spearman and Kendall rank correlations."""
    err = np.abs(pred - meas) / meas
    return {
        "n": int(len(meas)),
        "within_5": float(np.mean(err <= 0.05)),
        "within_10": float(np.mean(err <= 0.10)),
        "mape": float(100 * np.mean(err)),
        "spearman": float(stats.spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan"),
        "kendall": float(stats.kendalltau(pred, meas).statistic) if len(meas) > 2 else float("nan"),
    }


def correction_loo_mape(raw: np.ndarray, n_units: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Leave-one-out MAPE (%) of the fitted correction on the calibration sample, and the plain
    sum's MAPE on the same detectors."""
    errs = []
    for i in range(len(measured)):
        keep = np.arange(len(measured)) != i
        c = Correction.fit(raw[keep], n_units[keep], measured[keep])
        errs.append(abs(c.apply(raw[i], n_units[i]) - measured[i]) / measured[i])
    return float(100 * np.mean(errs)), float(100 * np.mean(np.abs(raw - measured) / measured))


def measure_detector(backend: Backend, arch: Arch, num_classes: int, timing: TimingConfig,
                     batch: int = 1) -> tuple[float, float]:
    """Two independent end-to-end measurements (ms) of the whole detector on ``backend``."""
    torch.manual_seed(0)
    det = Detector.from_arch(arch, num_classes).eval()
    x = torch.randn(batch, 3, *arch.input_hw)
    runner = backend.compile(det, (x,))
    a = measure(runner.run, runner.timer, timing)
    b = measure(runner.run, runner.timer, timing)
    return a.median_ms, b.median_ms


def measured_latency_ms(backend: Backend, arch: Arch, num_classes: int, timing: TimingConfig, batch: int = 1) -> float:
    """The whole detector's latency (ms) on ``backend``: the mean of :func:`measure_detector`'s two
    measurements (validation keeps both apart, for the noise between them)."""
    return sum(measure_detector(backend, arch, num_classes, timing, batch)) / 2


# ----------------------------------------------------------------------------- naive baseline
def leaf_ops(unit_module: nn.Module, inputs: tuple) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Every leaf layer the module runs, with the input shape it runs at (forward hooks)."""
    seen: list[tuple[nn.Module, tuple[int, ...]]] = []
    hooks = []
    for m in unit_module.modules():
        if len(list(m.children())) == 0 and not isinstance(m, nn.Identity):
            hooks.append(m.register_forward_hook(_record(seen)))
    try:
        with torch.no_grad():
            unit_module.eval()(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _record(seen: list):
    def hook(mod, inp, out):
        # Layers fed by something other than one tensor (RoIAlign over a dict of levels) are left
        # out: a naive per-operator sum is exactly what misses them.
        if inp and isinstance(inp[0], torch.Tensor):
            seen.append((mod, tuple(inp[0].shape)))
    return hook


def op_key(m: nn.Module, shape: tuple[int, ...]) -> str:
    return f"{m.__class__.__name__}({m.extra_repr()})@{'x'.join(map(str, shape))}"


def naive_sum(table: LatencyTable, backend: Backend, arch: Arch, timing: TimingConfig, save: Callable[[], None]) -> float:
    """Per-operator sum; op timings are cached in ``table.ops`` and saved as they come."""
    total = 0.0
    cache: dict[str, list] = {}
    for u in arch.units(table.num_classes):
        k = u.key()
        if k not in cache:
            cache[k] = leaf_ops(build(u), example_inputs(u, table.target.batch))
        for m, shape in cache[k]:
            key = op_key(m, shape)
            if key not in table.ops:
                x = torch.randn(*shape)
                table.ops[key] = backend_time(backend, m, x, timing)
                save()
            total += table.ops[key].median_ms
    return total


def backend_time(backend: Backend, module: nn.Module, x: torch.Tensor, timing: TimingConfig) -> Latency:
    runner = backend.compile(module.eval(), (x,))
    return measure(runner.run, runner.timer, timing)


# ----------------------------------------------------------------------------- the run
def sample_archs(table: LatencyTable, n: int, seed: int) -> list[Arch]:
    """``n`` distinct archs from the table's space at the table's resolutions (capped tries)."""
    space = get_space(table.space).with_resolutions(table.resolutions)
    out, seen = [], set()
    for s in range(seed, seed + 50 * n + 100):
        a = space.sample(s)
        if str(a) not in seen:
            seen.add(str(a))
            out.append(a)
            if len(out) == n:
                return out
    raise HwnasError(f"could not draw {n} distinct archs from space {table.space!r}; ask for fewer --samples")


def validate(
    table: LatencyTable,
    table_path: Path,
    backend: Backend,
    out: Path,
    *,
    samples: int = 100,
    calib_samples: int = 30,
    seed: int = 0,
    baseline_samples: int = 30,
    timing: TimingConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Measure, fit the correction on the calibration sample, report fidelity on the evaluation sample.

    Measurements are saved in ``out`` as they come (``complete: false``), so a killed run
    resumes by rerunning the same command.
    """
    timing = timing or table.timing
    table_id = hashlib.sha256(table_path.read_bytes()).hexdigest()[:12]
    calib = sample_archs(table, calib_samples, seed + CALIB_SEED_OFFSET) if calib_samples else []
    evals = sample_archs(table, samples, seed)
    records: dict[str, Record] = {}
    if out.exists():
        prev = read_json(out, "validation report")
        if prev.get("seed") == seed and prev.get("table_target") == table.target.to_dict():
            records = {r["arch"]: Record(**r) for r in prev.get("records", [])}

    def state(complete: bool, summary: dict | None = None) -> dict:
        return {"complete": complete, "table": str(table_path), "table_id": table_id, "seed": seed,
                "table_target": table.target.to_dict(), **(summary or {}),
                "records": [r.to_dict() for r in records.values()]}

    todo = calib + evals
    for i, arch in enumerate(todo):
        if progress:
            progress(i, len(todo), str(arch))
        key = str(arch)
        need_naive = arch in evals[:baseline_samples]
        rec = records.get(key)
        if rec is None:
            pred = table.predict(arch)
            m1, m2 = measure_detector(backend, arch, table.num_classes, timing, table.target.batch)
            rec = Record(key, m1, m2, pred.raw_ms, pred.n_units)
        if need_naive and rec.naive_ms is None:
            naive = naive_sum(table, backend, arch, timing, lambda: table.save(table_path))
            rec = Record(**{**rec.to_dict(), "naive_ms": naive})
        records[key] = rec
        write_json(out, state(False))
    if progress:
        progress(len(todo), len(todo), "done")

    def rows(archs):
        rs = [records[str(a)] for a in archs]
        return (np.array([r.raw_ms for r in rs]), np.array([r.n_units for r in rs]),
                np.array([(r.measured_ms + r.measured2_ms) / 2 for r in rs]), rs)

    summary: dict = {"samples": len(evals), "calib_samples": len(calib)}
    raw, nu, meas, rs = rows(evals)
    m1, m2 = np.array([r.measured_ms for r in rs]), np.array([r.measured2_ms for r in rs])
    summary["noise_cv"] = float(np.median(np.abs(m1 - m2) / np.sqrt(2) / ((m1 + m2) / 2)))
    summary["raw"] = fidelity(raw, meas)
    pred = raw
    if len(calib) >= 5:  # the leave-one-out check below refits on n - 1 >= 4 detectors
        craw, cnu, cmeas, _ = rows(calib)
        corr = Correction.fit(craw, cnu, cmeas, seed=seed + CALIB_SEED_OFFSET)
        loo, plain = correction_loo_mape(craw, cnu, cmeas)
        # Keep the correction only where it predicts held-out calibration detectors clearly
        # (>= 10% relative MAPE) better than the plain sum: three parameters fitted to ~30
        # points add error of their own where the sum is already unbiased.
        kept = loo < KEEP_CORRECTION_BELOW * plain
        summary["correction_check"] = {"calib_loo_mape": loo, "calib_raw_mape": plain, "kept": kept}
        summary["correction"] = corr.to_dict()
        table.correction = corr if kept else None
        table.save(table_path)
        if table.correction:
            pred = np.array([corr.apply(r, n) for r, n in zip(raw, nu)])
    summary.update(fidelity(pred, meas))
    naive_rows = [r for r in rs if r.naive_ms is not None]
    if naive_rows:
        summary["naive"] = fidelity(np.array([r.naive_ms for r in naive_rows]),
                                    np.array([(r.measured_ms + r.measured2_ms) / 2 for r in naive_rows]))
    report = state(True, summary)
    report["eval"] = [{"arch": r.arch, "predicted_ms": float(p), "measured_ms": float(m), "raw_ms": r.raw_ms,
                       "naive_ms": r.naive_ms} for r, p, m in zip(rs, pred, meas)]
    write_json(out, report)
    return report


def plot(report: dict, path: Path) -> None:
    """Predicted vs measured scatter with the ±10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = report["eval"]
    meas = np.array([e["measured_ms"] for e in ev])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lim = (0.8 * meas.min(), 1.2 * meas.max())
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.fill_between(lim, [v * 0.9 for v in lim], [v * 1.1 for v in lim], color="0.9", label="±10%")
    naive = [(e["measured_ms"], e["naive_ms"]) for e in ev if e.get("naive_ms") is not None]
    if naive:
        ax.scatter(*zip(*naive), s=10, c="tab:gray", marker="x", label=f"per-operator sum (w10={report['naive']['within_10']:.2f})")
    ax.scatter(meas, [e["raw_ms"] for e in ev], s=10, c="tab:orange", label=f"unit sum (w10={report['raw']['within_10']:.2f})")
    ax.scatter(meas, [e["predicted_ms"] for e in ev], s=12, c="tab:blue", label=f"table prediction (w10={report['within_10']:.2f})")
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=f"{report['table_target']['backend']} {report['table_target']['device'][:40]}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
