"""The ``hwnas`` command line. Every user error ends in one ``error:`` line and a non-zero exit."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from hwnas.errors import HwnasError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Hardware-aware latency tables, search and deployment for object detectors.")


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


@contextmanager
def _progress(title: str) -> Iterator:
    """A progress bar with ETA on stderr; yields ``update(done, total, item)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[item]}", style="dim"),
                  console=console, transient=False, refresh_per_second=4) as bar:
        task = bar.add_task(title, total=None, item="")
        first: list[int] = []

        def update(done: int, total: int, item: str) -> None:
            if not first:
                first.append(done)  # resumed work: start the ETA from what is left
                bar.update(task, total=total, completed=done)
                bar.reset(task, total=total, completed=done)
            bar.update(task, completed=done, item=item[-70:])

        yield update


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HwnasError(f"{what} {text!r}: give comma-separated integers, e.g. 256,320") from None
    if not vals:
        raise HwnasError(f"{what} is empty: give comma-separated integers, e.g. 256")
    return vals


def _timing(min_time_s: float, repeats: int):
    from hwnas.backends.base import TimingConfig

    try:
        return TimingConfig(min_repeats=repeats, max_repeats=max(300, repeats), min_time_s=min_time_s)
    except ValueError as e:
        raise HwnasError(str(e)) from None


def _backend(name: str, device: Optional[str], precision: str, threads: int):
    from hwnas.backends import get_backend

    return get_backend(name, device=device, precision=precision, threads=threads)


# ----------------------------------------------------------------------------- profile
@app.command()
def profile(
    backend: str = typer.Option("ort-cpu", help="ort-cpu | torch | tensorrt | tensorrt-rtx"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda[:i]; default: the backend's own"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 (GPU backends)"),
    threads: int = typer.Option(1, help="CPU threads (fixed and recorded in the table)"),
    space: str = typer.Option("default", help="search space whose units are profiled"),
    resolutions: str = typer.Option("256", help="comma-separated input sizes, e.g. 256,320"),
    num_classes: int = typer.Option(80, "--num-classes", help="classes of the head's predictor units"),
    min_time: float = typer.Option(0.25, "--min-time", help="seconds of timing per unit (at least --repeats runs)"),
    repeats: int = typer.Option(15, help="minimum timed runs per unit"),
    force: bool = typer.Option(False, help="resume into a table measured on another target"),
    out: Path = typer.Option(Path("latency_tables/ort-cpu.json"), help="table path (resumed if it exists)"),
) -> None:
    """Time every unit of a search space on this device and write a latency table."""
    from hwnas.arch import get_space
    from hwnas.fileio import check_writable
    from hwnas.latency import profile as run_profile

    check_writable(out, "latency table")
    res = _parse_ints(resolutions, "--resolutions")
    sp = get_space(space).with_resolutions(res)
    if num_classes < 1:
        raise HwnasError(f"--num-classes must be >= 1, got {num_classes}")
    be = _backend(backend, device, precision, threads)
    units = sp.all_units(num_classes)
    _say(f"profiling {len(units)} units of space {space!r} at {','.join(map(str, res))} px on {be.target().device} "
         f"({backend}, {precision}, {threads} thread(s)) -> {out}")
    t0 = time.time()
    with _progress("profile") as update:
        table = run_profile(be, out, space=space, resolutions=res, num_classes=num_classes,
                            timing=_timing(min_time, repeats), units=units, force=force, progress=update)
    _say(f"wrote {out}: {len(table.entries)} units in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------- latency
@app.command()
def latency(
    arch: str = typer.Option(..., help="arch string or preset name"),
    table: Path = typer.Option(..., help="latency table (json)"),
    measure: bool = typer.Option(False, help="also measure the whole detector on the table's backend"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    force: bool = typer.Option(False, help="measure even if this machine differs from the table's target"),
) -> None:
    """Predict a detector's latency from a table, with a per-module breakdown."""
    from hwnas.latency import LatencyTable
    from hwnas.presets import resolve_arch

    a = resolve_arch(arch)
    tab = LatencyTable.load(table)
    t0 = time.perf_counter()
    pred = tab.predict(a)
    predict_ms = (time.perf_counter() - t0) * 1e3
    result = {"arch": str(a), "predicted_ms": pred.latency_ms, "unit_sum_ms": pred.raw_ms, "n_units": pred.n_units,
              "breakdown_ms": pred.breakdown_ms, "corrected": tab.correction is not None,
              "target": tab.target.to_dict(), "prediction_time_ms": predict_ms}
    if measure:
        from hwnas.validate import measure_detector

        t = tab.target
        be = _backend(t.backend, "cpu" if t.backend in ("ort-cpu",) else None, t.precision, t.threads)
        tab.check_target(be.target(), force=force, path=str(table))
        m1, m2 = measure_detector(be, a, tab.num_classes, tab.timing, t.batch)
        result["measured_ms"] = (m1 + m2) / 2
        result["error_pct"] = 100 * (pred.latency_ms - result["measured_ms"]) / result["measured_ms"]
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    typer.echo(f"{a}")
    typer.echo(f"  predicted  {pred.latency_ms:9.3f} ms  ({'corrected' if tab.correction else 'plain'} sum of "
               f"{pred.n_units} units: {pred.raw_ms:.3f} ms)")
    for group, ms in pred.breakdown_ms.items():
        typer.echo(f"    {group:<8} {ms:9.3f} ms  {100 * ms / pred.raw_ms:5.1f}%")
    if measure:
        typer.echo(f"  measured   {result['measured_ms']:9.3f} ms  (error {result['error_pct']:+.1f}%)")


# ----------------------------------------------------------------------------- validate
@app.command()
def validate(
    table: Path = typer.Option(..., help="latency table to check (its correction is refitted and saved)"),
    samples: int = typer.Option(100, help="detectors to evaluate on"),
    calib_samples: int = typer.Option(30, "--calib-samples", help="separate detectors to fit the correction on (0: none)"),
    baseline_samples: int = typer.Option(30, "--baseline-samples", help="how many evaluated detectors also get the per-operator baseline"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("validate.json")),
    plot: Optional[Path] = typer.Option(None, help="write a predicted-vs-measured plot (png)"),
    force: bool = typer.Option(False, help="validate even if this machine differs from the table's target"),
) -> None:
    """Predict and measure sampled detectors; report within_5/within_10, MAPE, rank correlations."""
    from hwnas.fileio import check_writable
    from hwnas.latency import LatencyTable
    from hwnas.validate import plot as make_plot
    from hwnas.validate import validate as run_validate

    check_writable(out, "report")
    if plot:
        check_writable(plot, "plot")
    if samples < 3:
        raise HwnasError(f"--samples must be >= 3 for rank correlations, got {samples}")
    tab = LatencyTable.load(table)
    t = tab.target
    be = _backend(t.backend, "cpu" if t.backend == "ort-cpu" else None, t.precision, t.threads)
    tab.check_target(be.target(), force=force, path=str(table))
    with _progress("validate") as update:
        rep = run_validate(tab, table, be, out, samples=samples, calib_samples=calib_samples, seed=seed,
                           baseline_samples=baseline_samples, progress=update)
    if plot:
        make_plot(rep, plot)
    line = (f"n={rep['samples']} within_10={rep['within_10']:.3f} within_5={rep['within_5']:.3f} "
            f"mape={rep['mape']:.2f}% spearman={rep['spearman']:.4f} kendall={rep['kendall']:.4f} "
            f"noise_cv={rep['noise_cv']:.4f}")
    typer.echo(line)
    typer.echo(f"  unit sum before correction: within_10={rep['raw']['within_10']:.3f} mape={rep['raw']['mape']:.2f}%")
    if "naive" in rep:
        typer.echo(f"  per-operator baseline (n={rep['naive']['n']}): within_10={rep['naive']['within_10']:.3f} "
                   f"mape={rep['naive']['mape']:.2f}% spearman={rep['naive']['spearman']:.4f}")
    typer.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))


# ----------------------------------------------------------------------------- small helpers
@app.command()
def units(
    arch: str = typer.Option(..., help="arch string or preset name"),
    num_classes: int = typer.Option(80, "--num-classes"),
) -> None:
    """List the units a detector is built from (the rows its latency is predicted from)."""
    from hwnas.presets import resolve_arch

    for p in resolve_arch(arch).placed_units(num_classes):
        typer.echo(f"{p.role:<18} {p.unit.key()}")


@app.command()
def sample(
    space: str = typer.Option("default"),
    n: int = typer.Option(5),
    seed: int = typer.Option(0),
) -> None:
    """Print archs sampled from a search space."""
    from hwnas.arch import get_space

    sp = get_space(space)
    for i in range(n):
        typer.echo(str(sp.sample(seed + i)))


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line per error, never a traceback, non-zero exit."""
    import click

    try:
        app(args=argv, standalone_mode=False, prog_name="hwnas")
        return 0
    except HwnasError as e:
        _say(f"error: {e}")
        return 1
    except click.exceptions.NoSuchOption as e:
        _say(f"error: {e.format_message()} (see hwnas {e.ctx.command.name if e.ctx else ''} --help)")
        return 2
    except click.exceptions.UsageError as e:
        cmd = e.ctx.command.name if e.ctx and e.ctx.command else ""
        _say(f"error: {e.format_message()} (see hwnas {cmd} --help)".replace("hwnas hwnas", "hwnas"))
        return 2
    except click.exceptions.Abort:
        _say("error: interrupted; rerun the same command to resume")
        return 130
    except KeyboardInterrupt:
        _say("error: interrupted; rerun the same command to resume")
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except Exception as e:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("HWNAS_DEBUG"):
            raise
        _say(f"error: internal error {e.__class__.__name__}: {e} (rerun with HWNAS_DEBUG=1 for the traceback and report it)")
        return 3


if __name__ == "__main__":
    sys.exit(main())
