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

from hwnas.data.cli import data_app
from hwnas.errors import HwnasError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Hardware-aware latency tables, search and deployment for object detectors.")
app.add_typer(data_app, name="data", help="Detection datasets: generate synthetic COCO-format data.")


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


@contextmanager
def _progress(title: str, header: str = "") -> Iterator:
    """A progress bar with ETA on stderr; yields ``update(done, total, item)``.

    ``header`` and the bar appear with the first update, so whatever fails before the work
    starts (bad data, a table or checkpoint of another run) stays a single ``error:`` line.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[item]}", style="dim"),
                   console=Console(stderr=True), transient=False, refresh_per_second=4)
    task: list = []

    def update(done: int, total: int, item: str) -> None:
        if not task:
            if header:
                _say(header)
            bar.start()
            # resumed work: the bar (and its ETA) starts from what is already done
            task.append(bar.add_task(title, total=total, completed=done, item=""))
        bar.update(task[0], completed=done, item=item[-70:])

    try:
        yield update
    finally:
        if task:
            bar.stop()


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
    timing = _timing(min_time, repeats)
    units = sp.all_units(num_classes)
    header = (f"profiling {len(units)} units of space {space!r} at {','.join(map(str, res))} px on "
              f"{be.target().device} ({backend}, {precision}, {threads} thread(s)) -> {out}")
    t0 = time.time()
    with _progress("profile", header) as update:
        table = run_profile(be, out, space=space, resolutions=res, num_classes=num_classes,
                            timing=timing, units=units, force=force, progress=update)
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
        from hwnas.backends import backend_for_target

        be = backend_for_target(t)
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
    calib_samples: int = typer.Option(30, "--calib-samples", help="separate detectors to fit the correction on (fewer than 5: none)"),
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
    from hwnas.backends import backend_for_target

    be = backend_for_target(t)
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
    chk = rep.get("correction_check")
    if chk:
        typer.echo(f"  correction {'kept' if chk['kept'] else 'rejected'}: held-out calibration MAPE "
                   f"{chk['calib_loo_mape']:.2f}% vs plain sum {chk['calib_raw_mape']:.2f}%")
    if "naive" in rep:
        typer.echo(f"  per-operator baseline (n={rep['naive']['n']}): within_10={rep['naive']['within_10']:.3f} "
                   f"mape={rep['naive']['mape']:.2f}% spearman={rep['naive']['spearman']:.4f}")
    typer.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))


# ----------------------------------------------------------------------------- train / eval
@app.command()
def train(
    arch: Optional[str] = typer.Option(None, help="arch string to train"),
    preset: Optional[str] = typer.Option(None, help="preset name instead of --arch (see hwnas/presets.py)"),
    data: Path = typer.Option(..., help="dataset folder: train.json, val.json, images/ (hwnas data synth) or COCO layout"),
    epochs: int = typer.Option(12),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="square input size (overrides the arch's)"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-3),
    box_loss: str = typer.Option("giou", "--box-loss", help="iou | giou | diou | ciou | smooth_l1"),
    device: str = typer.Option("cpu", help="cpu or cuda[:i]"),
    seed: int = typer.Option(0),
    on_error: str = typer.Option("raise", "--on-error", help="broken dataset entries: raise, or skip and count"),
    scale_jitter: str = typer.Option("0.5,1.5", "--scale-jitter", help="random rescale range LOW,HIGH of training images"),
    out: Path = typer.Option(..., help="run folder: last.pt, metrics.json, detections.json (resumed if present)"),
) -> None:
    """Train a detector from scratch; resumes from RUN/last.pt; writes RUN/metrics.json."""
    from dataclasses import replace

    from hwnas.evaluate import summarize
    from hwnas.presets import resolve_arch
    from hwnas.train import TrainConfig
    from hwnas.train import train as run_train

    if (arch is None) == (preset is None):
        raise HwnasError("give exactly one of --arch or --preset")
    a = resolve_arch(arch or preset)
    if img_size is not None:
        a = replace(a, input_hw=(img_size, img_size))
    # epochs, batch size, lr, box loss and device are checked here, before any file is touched
    try:
        lo, hi = (float(v) for v in scale_jitter.split(","))
    except ValueError:
        raise HwnasError(f"--scale-jitter {scale_jitter!r}: give LOW,HIGH, e.g. 0.8,1.25") from None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, box_loss=box_loss, device=device, seed=seed,
                      on_error=on_error, scale_jitter=(lo, hi))
    with _progress("train", f"training {a} for {epochs} epochs on {data} -> {out}") as update:
        res = run_train(a, data, out, cfg, progress=update)
    m = res.metrics
    typer.echo(f"{summarize(m)} train_s={m['train_seconds']:.1f} train_images/s={m['train_images_per_s']:.1f}")
    typer.echo(f"wrote {res.checkpoint} and {out / 'metrics.json'}")


@app.command(name="eval")
def eval_(
    weights: Path = typer.Option(..., help="checkpoint (RUN/last.pt)"),
    data: Path = typer.Option(..., help="dataset folder"),
    split: str = typer.Option("val", help="val or train"),
    out: Path = typer.Option(Path("metrics.json"), help="metrics json"),
    detections: Optional[Path] = typer.Option(None, help="COCO results json (default: beside --out)"),
    device: str = typer.Option("cpu"),
    batch_size: int = typer.Option(8, "--batch-size"),
    on_error: str = typer.Option("raise", "--on-error", help="broken dataset entries: raise, or skip and count"),
) -> None:
    """Score a checkpoint with pycocotools (map, map50, map_small/medium/large, images/s)."""
    from hwnas.data.coco import CocoDetection
    from hwnas.data.transforms import EvalTransform
    from hwnas.evaluate import evaluate, summarize
    from hwnas.fileio import check_writable, write_json
    from hwnas.train import load_model, resolve_device

    resolve_device(device)
    detections = detections or out.with_name(out.stem + ".detections.json")
    if detections.resolve() == out.resolve():
        raise HwnasError(f"--detections and --out are both {out}; give two files")
    model, a, names = load_model(weights)
    ds = CocoDetection.from_dir(data, split, EvalTransform(a.input_hw), on_error)
    if ds.num_skipped():
        _say(f"skipped {ds.num_skipped()} broken entries of {ds.json_path}: "
             + ", ".join(f"{k} {v}" for k, v in ds.skipped.items() if v))
    if ds.class_names != names:
        raise HwnasError(f"{weights} was trained on classes {names}, the data has {ds.class_names}")
    check_writable(out, "metrics file")
    check_writable(detections, "detections file")
    with _progress("eval") as update:
        m = evaluate(model, a, ds, detections=detections, device=device, batch_size=batch_size, progress=update)
    m.update({"arch": str(a), "weights": str(weights), "data": str(data), "split": split, "detections": str(detections)})
    write_json(out, m)
    typer.echo(summarize(m))
    typer.echo(f"wrote {out} and {detections}")


# ----------------------------------------------------------------------------- search
@app.command()
def search(
    data: Path = typer.Option(..., help="dataset folder the candidates train on (hwnas data synth, or COCO layout)"),
    table: Path = typer.Option(..., help="latency table of the target (profiled for this data's class count)"),
    out: Path = typer.Option(..., help="run folder: pareto.json, pareto.png, report.md, search.db, trials/"),
    space: str = typer.Option("default", help="search space (default | small | tiny)"),
    resolutions: Optional[str] = typer.Option(None, help="input sizes to search, e.g. 192,256 (default: the table's)"),
    stage: str = typer.Option("both", help="structural | modular | both | random (the random-search baseline)"),
    trials: int = typer.Option(16, help="trained candidates (with --stage both: split by --structural-share)"),
    structural_share: float = typer.Option(0.5, "--structural-share", help="share of --trials for the structural stage"),
    population: int = typer.Option(0, help="NSGA-II population per generation (0: max(4, trials/4))"),
    epochs_per_trial: int = typer.Option(3, "--epochs-per-trial", help="training epochs of every candidate"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-3),
    max_train_images: int = typer.Option(0, "--max-train-images", help="train on the first N images only (0: all)"),
    latency_max_ms: Optional[float] = typer.Option(None, "--latency-max-ms", help="skip candidates predicted slower than this"),
    baselines: str = typer.Option("", help="comma-separated presets or arch strings trained with the same recipe, for comparison"),
    storage: Optional[str] = typer.Option(None, help="postgresql://USER@HOST:PORT/DB to share the study between workers (default: RUN/search.db)"),
    study: str = typer.Option("search", help="study name inside the storage"),
    seed: int = typer.Option(0, help="base seed; each worker draws from seed + its slot"),
    device: str = typer.Option("cpu", help="training device: cpu or cuda[:i]"),
    threads: int = typer.Option(0, help="torch threads for training (0: torch's default)"),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="re-measure the final front on the table's backend"),
    force: bool = typer.Option(False, help="re-measure even if this machine differs from the table's target"),
    max_failures: int = typer.Option(5, "--max-failures", help="failed candidates in a row before the search stops"),
) -> None:
    """Two-stage (structural, then modular) multi-objective search: mAP vs table latency, resumable."""
    from hwnas.search import Search, SearchConfig

    res = _parse_ints(resolutions, "--resolutions") if resolutions else ()
    cfg = SearchConfig(data=data, table=table, out=out, space=space, resolutions=res, stage=stage, trials=trials,
                       structural_share=structural_share, population=population, epochs=epochs_per_trial,
                       batch_size=batch_size, lr=lr, max_train_images=max_train_images, device=device,
                       threads=threads, seed=seed, latency_max_ms=latency_max_ms, storage=storage, study=study,
                       baselines=tuple(b for b in baselines.split(",") if b.strip()), measure=measure, force=force,
                       max_failures=max_failures)
    header = f"searching {stage} over space {space!r} ({trials} trained candidates) -> {out}"
    with _progress("search", header) as update:
        s = Search(cfg, progress=update, say=_say)
        o = s.run()
    typer.echo(f"worker {s.slot}: trained {o.trained}, failed {o.failed}, resumed {o.adopted}, pruned "
               f"{o.pruned_duplicate} duplicate(s) and {o.pruned_budget} over budget")
    for note in o.notes:
        _say(f"note: {note}")
    for r in json.loads((out / "pareto.json").read_text()):
        meas = "-" if r["measured_latency_ms"] is None else f"{r['measured_latency_ms']:.2f}"
        typer.echo(f"  mAP {r['map']:.4f}  predicted {r['predicted_latency_ms']:7.2f} ms  measured {meas:>7} ms  {r['arch']}")
    typer.echo(f"wrote {out / 'pareto.json'}, {out / 'pareto.png'} and {o.report}")


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


def _click_classes(name: str) -> tuple[type, ...]:
    """``name`` from click and from the click typer >= 0.2x vendors (``typer._click``, with Abort and
    Exit in ``typer.exceptions``): catching click's own classes alone lets typer's escape."""
    import click

    mods: list = [click.exceptions, click]
    for vendored in ("typer._click.exceptions", "typer.exceptions"):
        try:
            mods.append(__import__(vendored, fromlist=["_"]))
        except ImportError:
            pass
    return tuple(dict.fromkeys(getattr(m, name) for m in mods if isinstance(getattr(m, name, None), type)))


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line per error, never a traceback, non-zero exit."""
    try:
        app(args=argv, standalone_mode=False, prog_name="hwnas")
        return 0
    except HwnasError as e:
        _say(f"error: {e}")
        return 1
    except _click_classes("NoArgsIsHelpError") as e:
        typer.echo(e.format_message())  # the help text
        return 2
    except _click_classes("UsageError") as e:  # NoSuchOption, MissingParameter, BadParameter ...
        cmd = (e.ctx.command.name if e.ctx and e.ctx.command else "") or ""
        see = " ".join(x for x in ("hwnas", cmd if cmd != "hwnas" else "", "--help") if x)
        _say(f"error: {e.format_message()} (see {see})")
        return 2
    except _click_classes("Abort"):
        _say("error: interrupted; rerun the same command to resume")
        return 130
    except KeyboardInterrupt:
        _say("error: interrupted; rerun the same command to resume")
        return 130
    except _click_classes("Exit") as e:
        return e.exit_code
    except Exception as e:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("HWNAS_DEBUG"):
            raise
        _say(f"error: internal error {e.__class__.__name__}: {e} (rerun with HWNAS_DEBUG=1 for the traceback and report it)")
        return 3


if __name__ == "__main__":
    sys.exit(main())
