"""The ``hwnas`` command line. Every user error ends in one ``error:`` line and a non-zero exit."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from hwnas.console import PROGRESS_PREFIX, interrupted_line, keeps, path_arg, progress, say
from hwnas.data.cli import data_app
from hwnas.errors import HwnasError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Hardware-aware latency tables, search and deployment for object detectors.")


def _version(value: bool) -> None:
    if value:
        from hwnas import __version__

        typer.echo(f"hwnas {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="print the version and exit")) -> None:
    """Hardware-aware latency tables, search and deployment for object detectors."""


app.add_typer(data_app, name="data", help="Detection datasets: generated shapes and faces (synth), or composites of real photographs (photos).")


def _pair(text: str, what: str, example: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise HwnasError(f"{what} {text!r}: give two numbers A,B, e.g. {example}") from None
    return a, b


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:  # ASCII digits only: int() takes fullwidth and other Unicode digits too
        vals = tuple(int(v) for v in text.split(",") if v.strip() and v.strip().isascii())
        if any(v.strip() and not v.strip().isascii() for v in text.split(",")):
            raise ValueError
    except ValueError:
        raise HwnasError(f"{what} {text!r}: give comma-separated integers, e.g. 256,320") from None
    if not vals:
        raise HwnasError(f"{what} is empty: give comma-separated integers, e.g. 256")
    return vals


def _sizes(text: str, what: str) -> tuple[int, ...]:
    """Input sizes (px), each checked against the documented limit before anything is built."""
    from hwnas.limits import check_side

    return tuple(check_side(v, what) for v in _parse_ints(text, what))


def _data(data: Path) -> list[Path]:
    """The parts of dataset folder ``data`` (checked to be one) that outputs must stay off."""
    from hwnas.data import check_data_dir, dataset_inputs

    check_data_dir(data)
    return dataset_inputs(data)


def _run_folder(out: Path, what: str, inputs: list[Path], files: dict[str, str]) -> None:
    """An output folder checked before any work: not an input, not inside one, and each file the
    command writes in it (name -> kind) replaces nothing but its own kind."""
    from hwnas.fileio import check_outputs

    check_outputs([(out / name, kind, f"{what} file") for name, kind in files.items()], inputs, folders=[(out, what)])


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
    out: Path = typer.Option(Path("latency_tables/ort-cpu.json"), help="table path (resumed if it exists)", parser=path_arg),
) -> None:
    """Time every unit of a search space on this device and write a latency table."""
    from hwnas.fileio import check_outputs, exclusive
    from hwnas.latency.table import profile as run_profile
    from hwnas.limits import MAX_THREADS, check_int, check_num_classes
    from hwnas.spec.space import get_space

    check_outputs([(out, "latency table", "latency table")])
    res = _sizes(resolutions, "--resolutions")
    sp = get_space(space).with_resolutions(res)
    check_num_classes(num_classes)
    check_int("--threads", threads, 1, MAX_THREADS)
    be = _backend(backend, device, precision, threads)
    timing = _timing(min_time, repeats)
    units = sp.all_units(num_classes)
    header = (f"profiling {len(units)} units of space {space!r} at {','.join(map(str, res))} px on "
              f"{be.target().device} ({backend}, {precision}, {threads} thread(s)) -> {out}")
    t0 = time.time()
    keeps(f"the units timed so far are kept in {out}; rerun the same command to resume")
    with exclusive(out, "latency table"), progress("profile", header) as update:
        table = run_profile(be, out, space=space, resolutions=res, num_classes=num_classes,
                            timing=timing, units=units, force=force, progress=update)
    say(f"wrote {out}: {len(table.entries)} units in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------- latency
@app.command()
def latency(
    arch: str = typer.Option(..., help="arch string or preset name"),
    table: Path = typer.Option(..., help="latency table (json)", parser=path_arg),
    measure: bool = typer.Option(False, help="also measure the whole detector on the table's backend"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    force: bool = typer.Option(False, help="measure even if this machine differs from the table's target"),
) -> None:
    """Predict a detector's latency from a table, with a per-module breakdown."""
    from hwnas.latency.table import LatencyTable
    from hwnas.spec.presets import resolve_arch

    a = resolve_arch(arch)
    tab = LatencyTable.load(table)
    t0 = time.perf_counter()
    pred = tab.predict(a)
    predict_ms = (time.perf_counter() - t0) * 1e3
    result = {"arch": str(a), "predicted_ms": pred.latency_ms, "unit_sum_ms": pred.raw_ms, "n_units": pred.n_units,
              "breakdown_ms": pred.breakdown_ms, "corrected": tab.correction is not None,
              "target": tab.target.to_dict(), "prediction_time_ms": predict_ms}
    if measure:
        from hwnas.backends import backend_for_target
        from hwnas.latency.validate import measured_latency_ms

        be = backend_for_target(tab.target)
        tab.check_target(be.target(), force=force, path=str(table))
        result["measured_ms"] = measured_latency_ms(be, a, tab.num_classes, tab.timing, tab.target.batch)
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
    table: Path = typer.Option(..., help="latency table to check (its correction is refitted and saved)", parser=path_arg),
    samples: int = typer.Option(100, help="detectors to evaluate on"),
    calib_samples: int = typer.Option(30, "--calib-samples", help="separate detectors to fit the correction on (fewer than 5: none)"),
    baseline_samples: int = typer.Option(30, "--baseline-samples", help="how many evaluated detectors also get the per-operator baseline"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("validate.json"), parser=path_arg),
    plot: Optional[Path] = typer.Option(None, help="write a predicted-vs-measured plot (png)", parser=path_arg),
    force: bool = typer.Option(False, help="validate even if this machine differs from the table's target"),
) -> None:
    """Predict and measure sampled detectors; report within_5/within_10, MAPE, rank correlations."""
    from hwnas.fileio import check_outputs, exclusive
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.validate import plot as make_plot
    from hwnas.latency.validate import validate as run_validate
    from hwnas.limits import check_count, check_seed

    check_count("--samples", samples, 3)  # rank correlations need three
    check_count("--calib-samples", calib_samples, 0)
    check_count("--baseline-samples", baseline_samples, 0)
    check_seed(seed)
    tab = LatencyTable.load(table)
    check_outputs([(out, "validation report", "report")] + ([(plot, "image", "plot")] if plot else []),
                  inputs=[table])
    t = tab.target
    from hwnas.backends import backend_for_target

    be = backend_for_target(t)
    tab.check_target(be.target(), force=force, path=str(table))
    keeps(f"the detectors measured so far are kept in {out}; rerun the same command to resume")
    with exclusive(table, "latency table"), progress("validate") as update:
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
    preset: Optional[str] = typer.Option(None, help="preset name instead of --arch (see hwnas/spec/presets.py)"),
    data: Path = typer.Option(..., help="dataset folder: hwnas data synth, COCO or WIDER FACE layout", parser=path_arg),
    epochs: Optional[int] = typer.Option(None, help="training epochs (default: the preset's recipe, else 12; with --budget-min: the most it may take)"),
    budget_min: Optional[float] = typer.Option(None, "--budget-min", help="train for M minutes of wall clock instead of a number of epochs: warm-up and cosine fitted to the time (the final evaluation comes after)"),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="square input size (overrides the arch's)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="default: the recipe's, else 16"),
    lr: Optional[float] = typer.Option(None, help="default: the recipe's, else 0.002"),
    warmup_iters: Optional[int] = typer.Option(None, "--warmup-iters", help="iterations of linear warm-up before the cosine decay, at most a fifth of the run (default: the recipe's, else 100)"),
    box_loss: Optional[str] = typer.Option(None, "--box-loss", help="iou | giou | diou | ciou | smooth_l1 (default: the recipe's, else giou)"),
    device: str = typer.Option("cpu", help="cpu or cuda[:i]"),
    seed: int = typer.Option(0),
    on_error: str = typer.Option("raise", "--on-error", help="broken dataset entries: raise, or skip and count"),
    scale_jitter: Optional[str] = typer.Option(None, "--scale-jitter", help="random rescale range LOW,HIGH of training images (default: the recipe's, else 0.5,1.5)"),
    das_p: Optional[float] = typer.Option(None, "--das-p", help="face head: share of samples cut by data-anchor-sampling (default: the recipe's, else 0)"),
    step1_iou: Optional[str] = typer.Option(None, "--step1-iou", help="face head: POS,NEG IoU thresholds of the first step (default 0.5,0.4)"),
    step2_iou: Optional[str] = typer.Option(None, "--step2-iou", help="face head: POS,NEG IoU thresholds of the second step of two-step regression (default 0.6,0.5)"),
    eval_every: int = typer.Option(0, "--eval-every", help="score the val split every N epochs and keep RUN/best.pt by val mAP (0: only at the end)"),
    assigner: Optional[str] = typer.Option(None, "--assigner", help="label assignment of the anchor heads: iou (fixed thresholds) | atss (adaptive, Zhang et al. 2020) (default: the recipe's, else iou)"),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA of the weights, decay per iteration (e.g. 0.999; 0: off); the averaged weights are scored and saved (default: the recipe's, else 0)"),
    workers: int = typer.Option(0, "--workers", help="processes that assemble batches while the model trains (same batches as 0)"),
    copy_paste: Optional[float] = typer.Option(None, "--copy-paste", help="share of training samples that get the boxes of another sample pasted in (0: off; default: the recipe's, else 0)"),
    out: Path = typer.Option(..., help="run folder: last.pt, metrics.json, results.csv, detections.json (resumed if present)", parser=path_arg),
    search: Optional[Path] = typer.Option(None, help="instead of --arch: a finished search's --out folder; train the front member --pick or --latency-max-ms names, with the search's recipe, batch size and lr", parser=path_arg),
    pick: Optional[str] = typer.Option(None, help="with --search: best | fastest | a trial of the front, e.g. modular#4"),
    latency_max_ms: Optional[float] = typer.Option(None, "--latency-max-ms", help="with --search: the most accurate front member within X ms"),
    recipe: Optional[str] = typer.Option(None, help="the training recipe of a preset (face-s, face-m), e.g. for an --arch; default: --preset's own, else none"),
) -> None:
    """Train a detector from scratch; resumes from RUN/last.pt; writes RUN/metrics.json and RUN/results.csv."""
    from dataclasses import replace

    from hwnas.evaluate.coco import summarize
    from hwnas.spec.presets import resolve_arch
    from hwnas.train.loop import BUDGET_MAX_EPOCHS
    from hwnas.train.loop import train as run_train
    from hwnas.train.recipes import recipe_config

    if recipe is not None:
        from hwnas.train.recipes import RECIPES

        if recipe not in RECIPES:
            raise HwnasError(f"--recipe {recipe!r}: presets with a training recipe are {', '.join(RECIPES)}")
    recipe = recipe if recipe is not None else (preset or "")  # a preset trains with its own recipe
    if search is not None:  # the front member, trained from scratch with the search's recipe
        from hwnas.search.records import pick_from_front

        if arch is not None or preset is not None:
            raise HwnasError("--search picks the arch: drop --arch and --preset")
        r = pick_from_front(search, pick, latency_max_ms)
        conf = json.loads((search / "search.json").read_text())["config"]
        recipe, arch = conf.get("recipe", ""), str(r.arch)
        batch_size = conf["batch_size"] if batch_size is None else batch_size
        lr = conf["lr"] if lr is None else lr
        say(f"picked {r.trial} from {search / 'pareto.json'}: {r.arch} (recipe {recipe or 'default'}, batch {batch_size}, "
            f"lr {lr})")
    elif pick is not None or latency_max_ms is not None:
        raise HwnasError("--pick and --latency-max-ms choose from a search's front: give --search RUN")
    if (arch is None) == (preset is None):
        raise HwnasError("give exactly one of --arch, --preset or --search")
    a = resolve_arch(arch or preset)
    if img_size is not None:
        from hwnas.limits import check_side

        a = replace(a, input_hw=(check_side(img_size), check_side(img_size)))
    # The preset's recipe, then what the command line says; checked here, before any file is touched.
    if budget_min is not None and not (budget_min > 0):  # nan and inf fail here too
        raise HwnasError(f"--budget-min {budget_min}: give the minutes to train, a number > 0 (e.g. 10)")
    if budget_min is not None and epochs is None:
        epochs = BUDGET_MAX_EPOCHS  # the clock decides, not the recipe's epochs
    cfg = recipe_config(recipe, epochs=epochs, budget_s=budget_min and budget_min * 60, eval_every=eval_every or None, batch_size=batch_size, lr=lr,
                        warmup_iters=warmup_iters, box_loss=box_loss, das_p=das_p, ema=ema, assigner=assigner, copy_paste=copy_paste,
                        scale_jitter=scale_jitter and _pair(scale_jitter, "--scale-jitter", "0.8,1.25"),
                        step1_iou=step1_iou and _pair(step1_iou, "--step1-iou", "0.5,0.4"),
                        step2_iou=step2_iou and _pair(step2_iou, "--step2-iou", "0.6,0.5"),
                        device=device, seed=seed, on_error=on_error, workers=workers)
    _run_folder(out, "run folder", _data(data), {"last.pt": "checkpoint", "best.pt": "checkpoint",
                                                 "metrics.json": "metrics", "detections.json": "detections",
                                                 "results.csv": "file"})
    keeps(f"finished epochs are kept in {out / 'last.pt'}; rerun the same command to resume")
    length = f"{budget_min:g} minutes" if budget_min else f"{cfg.epochs} epochs"
    with progress("train", f"training {a} for {length} on {data} -> {out}") as bar:
        res = run_train(a, data, out, cfg, progress=bar, log=bar.log)
    m = res.metrics
    typer.echo(f"{summarize(m)} epochs={m['epochs_done']:.2f} train_s={m['train_seconds']:.1f} "
               f"train_images/s={m['train_images_per_s']:.1f}")
    typer.echo(f"wrote {res.checkpoint} and {out / 'metrics.json'}")


@app.command(name="eval")
def eval_(
    weights: Optional[Path] = typer.Option(None, help="checkpoint (RUN/last.pt)", parser=path_arg),
    model: Optional[Path] = typer.Option(None, help="instead of --weights: a deployable ONNX (.onnx) or engine (.engine)", parser=path_arg),
    data: Optional[Path] = typer.Option(None, help="dataset folder (hwnas data synth, COCO or WIDER FACE layout)", parser=path_arg),
    split: str = typer.Option("val", help="val or train"),
    protocol: str = typer.Option("coco", "--protocol", help="coco (pycocotools mAP) | wider (WIDER FACE easy/medium/hard AP, official protocol, plus COCO mAP)"),
    predictions: Optional[Path] = typer.Option(None, help="wider: folder of official per-image prediction files, written (with a model) or scored (with --gt)", parser=path_arg),
    gt: Optional[Path] = typer.Option(None, help="wider, without a model: ground truth for --predictions (wider_face_val_bbx_gt.txt, wider_face_val.mat or a COCO json)", parser=path_arg),
    score_thresh: float = typer.Option(0.05, "--score-thresh", help="detections below this score are dropped in the graph"),
    iou_thresh: float = typer.Option(0.5, "--iou-thresh", help="NMS IoU threshold in the graph"),
    max_dets: int = typer.Option(100, "--max-dets", help="detections per image the graph returns at most"),
    triton: Optional[Path] = typer.Option(None, help="also write a Triton model repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (or model.plan), DIR/NAME/labels.txt", parser=path_arg),
    test_scales: Optional[str] = typer.Option(None, "--test-scales", help="multi-scale testing of a checkpoint, e.g. 0.5:64-,1,1f,2:-128 (SCALE[f][:MIN-MAX], f flips)"),
    out: Path = typer.Option(Path("metrics.json"), help="metrics json", parser=path_arg),
    detections: Optional[Path] = typer.Option(None, help="COCO results json (default: beside --out)", parser=path_arg),
    device: str = typer.Option("cpu"),
    threads: int = typer.Option(1, help="onnxruntime threads (--model .onnx)"),
    batch_size: int = typer.Option(8, "--batch-size"),
    on_error: str = typer.Option("raise", "--on-error", help="broken dataset entries: raise, or skip and count"),
) -> None:
    """Score a checkpoint, ONNX or engine: pycocotools mAP, or the WIDER FACE protocol; or score existing
    WIDER prediction files (--predictions DIR --gt FILE)."""
    from hwnas.evaluate.coco import summarize
    from hwnas.evaluate.model import PROTOCOLS, EvalConfig, open_eval, run_eval, score_prediction_files
    from hwnas.evaluate.wider import summarize as wider_summary
    from hwnas.fileio import check_outputs
    from hwnas.limits import MAX_THREADS, check_batch, check_int
    from hwnas.train.loop import resolve_device

    if protocol not in PROTOCOLS:
        raise HwnasError(f"--protocol {protocol!r}: give coco or wider")
    check_batch(batch_size)
    check_int("--threads", threads, 1, MAX_THREADS)
    if gt is not None:
        if protocol != "wider" or predictions is None or weights or model or data:
            raise HwnasError("--gt scores existing prediction files: give --protocol wider --predictions DIR --gt FILE "
                             "and no --weights, --model or --data")
        typer.echo(wider_summary(score_prediction_files(predictions, gt, out)))
        typer.echo(f"wrote {out}")
        return
    if (weights is None) == (model is None):
        raise HwnasError("give exactly one of --weights (a checkpoint) or --model (ONNX or engine), or "
                         "--protocol wider --predictions DIR --gt FILE")
    if data is None:
        raise HwnasError("--data is missing: the dataset folder to evaluate on")
    data_parts = _data(data)
    if predictions is not None and protocol != "wider":
        raise HwnasError("--predictions writes WIDER prediction files: add --protocol wider")
    if test_scales is not None and weights is None:
        raise HwnasError("--test-scales runs a checkpoint at several input sizes: give --weights (a graph exported "
                         "with `hwnas export --test-scales` carries its scales)")
    resolve_device(device)
    scales = None
    if test_scales is not None:
        from hwnas.evaluate.multiscale import parse_scales

        scales = parse_scales(test_scales)
    detections = detections or out.with_name(out.stem + ".detections.json")
    if os.path.realpath(detections) == os.path.realpath(out):
        raise HwnasError(f"--detections and --out are both {out}; give two files")
    if protocol == "wider":
        predictions = predictions or out.with_name(out.stem + ".predictions")
    source = weights or model
    check_outputs([(out, "metrics", "metrics file"), (detections, "detections", "detections file")],
                  inputs=data_parts + [source, source.with_suffix(".json")],  # a graph's manifest is read too
                  folders=[(predictions, "predictions folder")] if protocol == "wider" else [])
    opened = open_eval(EvalConfig(model=source, data=data, out=out, detections=detections, checkpoint=weights is not None,
                                  split=split, protocol=protocol, predictions=predictions, scales=scales, device=device,
                                  threads=threads, batch_size=batch_size, on_error=on_error), say=say)
    keeps("nothing was written; rerun the same command")
    with progress("eval") as update:  # a failed write (a full disk) takes the bar with it
        metrics = run_eval(opened, progress=update)
    if protocol == "wider":
        typer.echo(wider_summary(metrics))
    typer.echo(summarize(metrics))
    typer.echo(f"wrote {out} and {detections}" + (f" and {predictions}/" if protocol == "wider" else ""))


# ----------------------------------------------------------------------------- search
@app.command()
def search(
    data: Path = typer.Option(..., help="dataset folder the candidates train on (hwnas data synth, or COCO layout)", parser=path_arg),
    table: Path = typer.Option(..., help="latency table of the target (profiled for this data's class count)", parser=path_arg),
    out: Path = typer.Option(..., help="run folder: pareto.json, pareto.png, report.md, search.db, trials/", parser=path_arg),
    space: str = typer.Option("default", help="search space: default | small | face | tiny"),
    recipe: Optional[str] = typer.Option(None, help="training recipe of the candidates, a preset's (face-s, face-m); default: the space's (face-s for the face space), else none"),
    resolutions: Optional[str] = typer.Option(None, help="input sizes to search, e.g. 192,256 (default: the table's)"),
    stage: str = typer.Option("both", help="structural | modular | both | random (the random-search baseline)"),
    trials: Optional[int] = typer.Option(None, help="evaluated candidates (with --stage both: split by --structural-share); default 16, with --budget-min as many as the time allows"),
    budget_min: float = typer.Option(0.0, "--budget-min", help="wall-clock minutes for the whole search: the candidate stages (the structural stage gets --structural-share of them) and, with a proxy evaluator, training the front standalone (--front-share); 0: --trials decides"),
    front_share: float = typer.Option(0.3, "--front-share", help="with --budget-min and an evaluator other than train: the most of the budget kept for training the final front standalone (less when the front is small)"),
    structural_share: float = typer.Option(0.5, "--structural-share", help="share of --trials for the structural stage"),
    probe: str = typer.Option("spread", "--probe", help="how the structural stage sizes each structure it tries: spread (depths and widths balanced over the structures) or shallow (one block per stage, narrowest widths; the modular stage adds depth and width)"),
    screen: str = typer.Option("coverage", "--screen", help="which pyramid levels the structural stage tries: coverage (only the neck choices whose levels give as many of the data's training boxes a positive as the best choice does, within 0.05; read off the data in seconds, before any training) or none (every choice)"),
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
    evaluator: str = typer.Option("train", help="how candidates are scored (hwnas.search.evaluators): train = from scratch for "
                                  "--epochs-per-trial; halving = successive halving (ASHA) over epochs up to "
                                  "--epochs-per-trial; supernet = inherited weights of a weight-sharing supernet per "
                                  "structure; bn = BN-NAS scale factors; train+bn = each structure's first candidate trained, "
                                  "the rest of it ranked by BN-NAS against that one; train+depth = the same, ranked by "
                                  "their normalisation layers (no supernet); train+coverage = train's mAP times the share of "
                                  "training boxes the head's assignment covers; train+growth = train's mAP times the detector's "
                                  "GFLOPs to the power 0.2 (bigger detectors gain more from longer training); train+predict = the "
                                  "first 8 candidates trained, then one in 20, the rest's mAP predicted from those trained "
                                  "(a ridge regression on modules, GFLOPs, latency and label coverage); with a proxy "
                                  "the final front is then trained standalone (train+coverage's and train+growth's are already)"),
    eta: int = typer.Option(3, "--eta", help="--evaluator halving: the best 1/ETA of a rung go on to ETA times the epochs"),
    supernet_epochs: int = typer.Option(12, "--supernet-epochs", help="--evaluator supernet, bn, train+bn: epochs each supernet trains"),
    as_json: bool = typer.Option(False, "--json", help="print the final front as JSON on stdout (the rows of pareto.json), nothing else"),
    supernet_strategy: str = typer.Option("uniform", "--supernet-strategy", help="--evaluator supernet: uniform (one path a step) or sandwich (largest, smallest and two drawn)"),
    supernet_span: str = typer.Option("family", "--supernet-span", help="--evaluator supernet: what one supernet spans: family (resolution, block family, head kind; every neck) or structure (the neck and its levels fixed too)"),
) -> None:
    """Two-stage (structural, then modular) multi-objective search: mAP vs table latency, resumable."""
    from hwnas.search import Search, SearchConfig
    from hwnas.spec.presets import search_recipe

    res = _sizes(resolutions, "--resolutions") if resolutions else ()
    rec = search_recipe(space, recipe)
    if trials is None:  # with a budget, the clock ends the stages
        trials = 100_000 if budget_min else 16
    cfg = SearchConfig(recipe=rec, data=data, table=table, out=out, space=space, resolutions=res, stage=stage, trials=trials,
                       structural_share=structural_share, probe=probe, screen=screen, population=population, epochs=epochs_per_trial,
                       batch_size=batch_size, lr=lr, max_train_images=max_train_images, device=device,
                       threads=threads, seed=seed, latency_max_ms=latency_max_ms, storage=storage, study=study,
                       baselines=tuple(b for b in baselines.split(",") if b.strip()), measure=measure, force=force,
                       max_failures=max_failures, evaluator=evaluator, supernet_epochs=supernet_epochs, budget_s=budget_min * 60, front_share=front_share, eta=eta,
                       supernet_strategy=supernet_strategy, supernet_span=supernet_span)
    _run_folder(out, "search folder", _data(data) + [table],
                {"pareto.json": "JSON file", "search.json": "JSON file", "report.md": "file", "pareto.png": "image",
                 "search.db": "file"})
    header = (f"searching {stage} over space {space!r} ("
              + (f"{budget_min:g} min" if budget_min else f"{trials} evaluated candidates") + f") -> {out}")
    keeps(f"finished candidates are kept in {out}; rerun the same command to resume")
    with progress("search", header) as update:
        s = Search(cfg, progress=update, say=say)
        o = s.run()
    done = (f"worker {s.slot}: trained {o.trained}, failed {o.failed}, resumed {o.adopted}, pruned "
            f"{o.pruned_duplicate} duplicate(s) and {o.pruned_budget} over budget")
    for note in o.notes:
        say(f"note: {note}")
    if as_json:  # for scripts: the front alone on stdout, what the worker did on stderr
        say(done)
        typer.echo((out / "pareto.json").read_text().rstrip())
        return
    typer.echo(done)
    from hwnas.search.records import read_front
    from hwnas.search.report import accuracy_text

    for r in read_front(out / "pareto.json"):
        meas = "-" if r.measured_latency_ms is None else f"{r.measured_latency_ms:.2f}"
        typer.echo(f"  mAP {accuracy_text(r)}  predicted {r.predicted_latency_ms:7.2f} ms  measured {meas:>7} ms  {r.arch}")
    typer.echo(f"wrote {out / 'pareto.json'}, {out / 'pareto.png'} and {o.report}")


@app.command()
def supernet(
    data: Path = typer.Option(..., help="dataset folder (as for search)", parser=path_arg),
    arch: str = typer.Option(..., help="any detector of the neighbourhood (arch string or preset): its resolution, block family, head kind and norm pick the supernet"),
    out: Path = typer.Option(..., help="the search folder: writes RUN/supernets/KEY/, which search --evaluator supernet --out RUN then reads", parser=path_arg),
    space: str = typer.Option("small", help="search space whose choices the supernet spans"),
    epochs: int = typer.Option(12, help="supernet epochs (as search --supernet-epochs)"),
    strategy: str = typer.Option("uniform", help="uniform (one path a step) or sandwich (as search --supernet-strategy)"),
    span: str = typer.Option("family", help="family or structure (as search --supernet-span)"),
    batch_size: int = typer.Option(16, "--batch-size", help="global batch, split over torchrun's processes"),
    lr: float = typer.Option(2e-3),
    max_train_images: int = typer.Option(0, "--max-train-images", help="train on the first N images only (0: all)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda (under torchrun each process takes cuda:LOCAL_RANK)"),
) -> None:
    """Train one weight-sharing supernet ahead of a search, on one process or across several
    (torchrun --nproc-per-node N -m hwnas.cli.app supernet ...): the same settings as the search's
    make the search read it instead of training it."""
    from hwnas.search.supernet import Neighbourhood, SupernetConfig, distributed, train_supernet
    from hwnas.spec.presets import resolve_arch
    from hwnas.spec.space import get_space
    from hwnas.train.recipes import recipe_config

    hood = Neighbourhood.of(get_space(space), resolve_arch(arch), span)
    net_cfg = SupernetConfig(epochs=epochs, strategy=strategy)
    cfg = recipe_config("", epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                        max_train_images=max_train_images)
    folder = out / "supernets" / hood.key
    _run_folder(folder, "supernet folder", _data(data), {"supernet.pt": "checkpoint", "supernet.json": "JSON file"})
    rank, world = distributed(device)
    keeps(f"finished epochs are kept in {folder / 'supernet.pt'}; rerun the same command to resume")
    with progress("supernet", f"training the supernet {hood.key} for {epochs} epochs on {world} process(es) -> "
                              f"{folder}") as bar:
        _, info = train_supernet(hood, data, folder, cfg, net_cfg, progress=bar if rank == 0 else None)
    if rank == 0:
        typer.echo(f"supernet {hood.key}: {len(info['history'])} epochs, final loss {info['history'][-1]['loss']:.3f}, "
                   f"{info['train_s']:.0f} s; wrote {folder}")


# ----------------------------------------------------------------------------- export / bench / infer
def _picked(search: Path, pick: Optional[str], latency_max_ms: Optional[float], *others) -> Path:
    """The checkpoint of the front member ``--pick`` / ``--latency-max-ms`` names, said on stderr."""
    from hwnas.search.records import pick_from_front
    from hwnas.search.report import accuracy_text

    if any(o is not None for o in others):
        raise HwnasError("--search picks the checkpoint: drop --weights and --preset")
    r = pick_from_front(search, pick, latency_max_ms)
    say(f"picked {r.trial} from {search / 'pareto.json'}: {r.arch}, mAP {accuracy_text(r)}, "
        f"{r.latency_ms:.2f} ms ({'measured' if r.measured_latency_ms is not None else 'predicted'})")
    return Path(r.checkpoint)


def _batch_triple(text: Optional[str]) -> Optional[tuple[int, int, int]]:
    if text is None:
        return None
    try:
        lo, opt, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise HwnasError(f"--dynamic-batch {text!r}: give MIN:OPT:MAX, e.g. 1:4:8") from None
    if not 1 <= lo <= opt <= hi:
        raise HwnasError(f"--dynamic-batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def _export_multiscale(weights: Optional[Path], out: Path, test_scales: str, *, nms: str, batch: int,
                       others: dict[str, bool]) -> None:
    from hwnas.evaluate.multiscale import describe, parse_scales, scaled_hw
    from hwnas.export.pipeline import export_multiscale
    from hwnas.limits import check_batch

    if weights is None:
        raise HwnasError("--test-scales exports a trained checkpoint: give --weights")
    given = [name for name, on in others.items() if on]
    if given:
        raise HwnasError(f"--test-scales exports an fp32 multi-scale ONNX; drop {', '.join(given)}")
    if nms not in ("auto", "onnx", "ops"):
        raise HwnasError(f"--nms {nms}: a multi-scale graph takes onnx (onnxruntime, TensorRT) or ops (TensorRT-RTX)")
    scales = parse_scales(test_scales)
    check_batch(batch, "--batch-size")
    res = export_multiscale(weights, out, scales, nms="onnx" if nms == "auto" else nms, batch=batch)
    sizes = ", ".join(f"{h}x{w}" for h, w in (scaled_hw(res.arch.input_hw, s.scale) for s in res.scales))
    typer.echo(f"{res.arch}: multi-scale graph, passes {describe(res.scales)} at {sizes}")
    typer.echo(f"wrote {res.path} (score it with `hwnas eval --model {res.path} --data DIR --protocol wider`)")


@app.command()
def export(
    weights: Optional[Path] = typer.Option(None, help="checkpoint (RUN/last.pt, or a search's RUN/trials/<id>/last.pt)", parser=path_arg),
    preset: Optional[str] = typer.Option(None, help="instead of --weights: a preset or arch string, untrained (to build and time its engine before training)"),
    search: Optional[Path] = typer.Option(None, help="instead of --weights: a finished search's --out folder; export the member of its front that --pick or --latency-max-ms names", parser=path_arg),
    pick: Optional[str] = typer.Option(None, help="with --search: best (highest mAP) | fastest | a trial of the front, e.g. modular#4"),
    latency_max_ms: Optional[float] = typer.Option(None, "--latency-max-ms", help="with --search: the most accurate front member within X ms (measured, else predicted)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="with --preset: classes of the untrained head (default 1 for a face head, else 80)"),
    out: Path = typer.Option(..., help="engines/NAME: writes NAME.onnx, NAME.json and (engine) NAME.engine", parser=path_arg),
    format: str = typer.Option("onnx", "--format", help="onnx | engine"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 (explicit Q/DQ, calibrated with --calib-data)"),
    nms: str = typer.Option("auto", help="auto | onnx (NonMaxSuppression op) | ops (plain operators, for TensorRT-RTX) | efficient (TensorRT plugin) | host (decode only)"),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="dataset whose training images calibrate int8", parser=path_arg),
    calib_images: int = typer.Option(64, "--calib-images", help="how many images calibrate int8"),
    int8_target: Optional[str] = typer.Option(None, "--int8-target", help="cpu (uint8 activations, fastest in onnxruntime) | tensorrt (symmetric int8); default: tensorrt for engines, cpu for ONNX"),
    backend: str = typer.Option("tensorrt-rtx", help="engine builder: tensorrt | tensorrt-rtx"),
    sm: Optional[str] = typer.Option(None, help="compute capability to build for ahead of time (tensorrt-rtx): 75, 80, 86, 89, 120"),
    batch: int = typer.Option(1, "--batch-size", help="static batch size of the graph"),
    dynamic_batch: Optional[str] = typer.Option(None, "--dynamic-batch", help="MIN:OPT:MAX batch profile instead of --batch"),
    workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb", help="builder workspace limit (MiB)"),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", help="builder optimisation level 0..5"),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="timing cache file (loaded if present, saved after the build)", parser=path_arg),
    version_compatible: bool = typer.Option(False, "--version-compatible", help="full TensorRT: engine runs on later versions"),
    hardware_compatible: bool = typer.Option(False, "--hardware-compatible", help="full TensorRT: engine runs on Ampere and newer"),
    check: Optional[Path] = typer.Option(None, help="dataset: score the export against the checkpoint on its val images", parser=path_arg),
    threads: int = typer.Option(1, help="onnxruntime threads for --check"),
    score_thresh: float = typer.Option(0.05, "--score-thresh", help="detections below this score are dropped in the graph"),
    iou_thresh: float = typer.Option(0.5, "--iou-thresh", help="NMS IoU threshold in the graph"),
    max_dets: int = typer.Option(100, "--max-dets", help="detections per image the graph returns at most"),
    triton: Optional[Path] = typer.Option(None, help="also write a Triton model repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (or model.plan), DIR/NAME/labels.txt", parser=path_arg),
    test_scales: Optional[str] = typer.Option(None, "--test-scales", help="multi-scale graph: one fixed-size input per test pass, e.g. 0.5:64-,1,1f,2:-128 (fp32 ONNX; merged on the host by box voting)"),
) -> None:
    """Compile a trained detector into a deployable ONNX (decode + NMS inside) and optionally an engine."""
    if search is not None:
        weights = _picked(search, pick, latency_max_ms, weights, preset)
    elif pick is not None or latency_max_ms is not None:
        raise HwnasError("--pick and --latency-max-ms choose from a search's front: give --search RUN")
    if test_scales is not None:
        _export_multiscale(weights, out, test_scales, nms=nms, batch=batch,
                           others={"--format": format != "onnx", "--precision": precision != "fp32",
                                   "--check": check is not None, "--dynamic-batch": dynamic_batch is not None,
                                   "--triton": triton is not None})
        return
    from hwnas.export.pipeline import ExportConfig
    from hwnas.export.pipeline import export as run_export

    cfg = ExportConfig(weights=weights, preset=preset, num_classes=num_classes, out=out, format=format, precision=precision, nms=nms, backend=backend, sm=sm,
                       batch=batch, dynamic_batch=_batch_triple(dynamic_batch), calib_data=calib_data,
                       calib_images=calib_images, int8_target=int8_target, workspace_mb=workspace_mb,
                       opt_level=opt_level, timing_cache=timing_cache, version_compatible=version_compatible,
                       hardware_compatible=hardware_compatible, check=check, threads=threads, triton=triton,
                       score_thresh=score_thresh, iou_thresh=iou_thresh, max_dets=max_dets)
    keeps("nothing was written (an export replaces its files only once all of them are built)")
    res = run_export(cfg, progress=lambda msg: say(f"{PROGRESS_PREFIX}export | {msg}"))
    m = res.manifest
    typer.echo(f"{m.arch}: {m.precision} {m.form}-NMS form, {m.flavour} {m.library_version}"
               + (f" sm_{m.sm}" if m.sm else "") + (f", built in {m.build_s:.1f} s" if m.flavour != "onnx" else ""))
    if res.parity:
        p = res.parity
        agree = "-" if p["agreement"] is None else f"{100 * p['agreement']:.1f}%"
        typer.echo(f"parity on {p['n_images']} images of {check}: mAP {p['map']:.4f} vs checkpoint {p['map_ref']:.4f} "
                   f"(delta {p['delta_map_points']:+.2f} points), box agreement {agree} "
                   f"({p['n_matched']}/{p['n_ref_boxes']} boxes at IoU >= {p['agree_iou']})")
    for note in res.notes:
        say(f"note: {note}")
    if res.int8_flag:
        say(f"WARNING: {res.int8_flag}")
        for s in res.sensitivity or []:
            say(f"  precision lost at {s['name']}: SQNR {s['sqnr_db']:.1f} dB")
    typer.echo("wrote " + ", ".join(map(str, res.files)))


@app.command()
def bench(
    model: Path = typer.Option(..., help="checkpoint (.pt), deployable ONNX (.onnx) or engine (.engine)", parser=path_arg),
    images: list[Path] = typer.Argument(None, help="image files to run on (default: random pixels)", parser=path_arg),
    batch: int = typer.Option(1, "--batch-size", help="images per run"),
    threads: int = typer.Option(1, help="CPU threads (torch and onnxruntime alike)"),
    device: str = typer.Option("cpu", help="cpu, or cuda for checkpoints and engines"),
    min_time: float = typer.Option(2.0, "--min-time", help="seconds of timing per figure"),
    repeats: int = typer.Option(20, help="minimum timed runs"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    out: Optional[Path] = typer.Option(None, help="also write the figures to this JSON file", parser=path_arg),
    profile: bool = typer.Option(False, "--profile", help="ONNX: also where the time goes (onnxruntime's profiler: "
                                 "kernel ms per part pre/net/post/layout and per operator)"),
) -> None:
    """Latency (median, p90, p99) and throughput of a model: network only and end to end."""
    import torch

    from hwnas.export.pipeline import bench as run_bench
    from hwnas.export.pipeline import load_images, open_model
    from hwnas.fileio import check_outputs
    from hwnas.limits import MAX_THREADS, check_batch, check_int

    check_batch(batch, "--batch-size")
    check_int("--threads", threads, 1, MAX_THREADS)
    if out is not None:
        check_outputs([(out, "benchmark", "bench file")], inputs=[model, model.with_suffix(".json"), *(images or [])])
    m = open_model(model, threads=threads, device=device, batch=batch)
    if profile and m.kind != "onnx":
        raise HwnasError(f"--profile reads onnxruntime's profiler: give an ONNX model (this is a {m.kind}); "
                         f"export one with hwnas export --format onnx")
    if images:
        x, _ = load_images([images[i % len(images)] for i in range(batch)], m.arch.input_hw)
    else:
        x = torch.rand(batch, 3, *m.arch.input_hw, generator=torch.Generator().manual_seed(0))
    res = run_bench(m, x, _timing(min_time, repeats))
    res.update({"model": str(model), "kind": m.kind, "arch": str(m.arch), "batch": batch, "threads": threads,
                "device": device})
    if profile:
        from hwnas.export.profile import profile_graph

        res["profile"] = profile_graph(model, x.numpy(), threads=threads, runs=max(repeats, 50))
    if out is not None:
        from hwnas.fileio import write_json

        write_json(out, res)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        return
    typer.echo(f"{model} ({m.kind}, {m.arch}), batch {batch}, {threads} thread(s), {device}")
    for k in ("network", "end_to_end"):
        if k in res:
            r = res[k]
            typer.echo(f"  {k:<11} median {r['median_ms']:8.2f} ms  p90 {r['p90_ms']:8.2f}  p99 {r['p99_ms']:8.2f}  "
                       f"{r['images_per_s']:8.1f} img/s  (n={r['n']})")
    if profile:
        p = res["profile"]
        typer.echo(f"  profile (kernel ms per run, mean of {p['runs']}; run {p['run_ms']:.2f} ms as profiled):")
        for part, ms in p["parts_ms"].items():
            top = ", ".join(f"{op} {t:.3f}" for op, t in list(p["ops_ms"][part].items())[:4])
            typer.echo(f"    {part:<7}{ms:8.3f} ms  ({top})")


@app.command()
def infer(
    model: Path = typer.Option(..., help="checkpoint (.pt), deployable ONNX (.onnx) or engine (.engine)", parser=path_arg),
    images: list[Path] = typer.Argument(..., help="image files or folders of them", parser=path_arg),
    out: Path = typer.Option(..., help="folder: detections.json and the images with boxes drawn", parser=path_arg),
    threads: int = typer.Option(1),
    device: str = typer.Option("cpu"),
    score_thresh: float = typer.Option(0.3, "--score-thresh", help="boxes drawn from this score"),
    batch_size: int = typer.Option(8, "--batch-size", help="images read and run together (a static ONNX runs them one graph batch at a time)"),
) -> None:
    """Detect objects in image files or folders; write detections.json and the images with boxes drawn."""
    from hwnas.export.pipeline import infer as run_infer
    from hwnas.export.pipeline import open_model
    from hwnas.fileio import check_outputs
    from hwnas.limits import MAX_THREADS, check_float, check_int

    check_float("--score-thresh", score_thresh, 0.0, 1.0)
    check_int("--threads", threads, 1, MAX_THREADS)
    check_int("--batch-size", batch_size, 1, 1024)
    # the drawn images are checked against the input images by name in run_infer
    check_outputs([(out / "detections.json", "detections", "detections file")],
                  inputs=[model, model.with_suffix(".json")], folders=[(out, "output folder")])
    m = open_model(model, threads=threads, device=device)
    recs = run_infer(m, list(images), out, score_thresh=score_thresh, batch_size=batch_size)
    for r in recs:
        n = sum(d["score"] >= score_thresh for d in r["detections"])
        typer.echo(f"{r['image']}: {n} detection(s) >= {score_thresh}")
    typer.echo(f"wrote {out / 'detections.json'} and {len(recs)} image(s) in {out}")


# ----------------------------------------------------------------------------- small helpers
@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="folder for everything it makes (rerun to resume)", parser=path_arg),
    recipe: Optional[str] = typer.Option(None, help="face: generated faces, the face space and the face-s training "
                                         "recipe (default: generated shapes and the small space)"),
    fast: bool = typer.Option(False, "--fast", help="toy sizes: the whole pipeline in about a minute"),
) -> None:
    """Data, latency table, search, training, ONNX (fp32, int8), parity, benchmark and (if installed)
    a TensorRT-RTX engine, in one command; each step is printed as the command that reruns it."""
    from hwnas.cli.quickstart import Quickstart

    Quickstart(out, run, recipe=recipe, fast=fast, say=typer.echo).run()


@app.command()
def units(
    arch: str = typer.Option(..., help="arch string or preset name"),
    num_classes: int = typer.Option(80, "--num-classes"),
) -> None:
    """List the units a detector is built from (the rows its latency is predicted from)."""
    from hwnas.limits import check_num_classes
    from hwnas.spec.presets import resolve_arch

    check_num_classes(num_classes)
    for p in resolve_arch(arch).placed_units(num_classes):
        typer.echo(f"{p.role:<18} {p.unit.key()}")


@app.command()
def sample(
    space: str = typer.Option("default"),
    n: int = typer.Option(5),
    seed: int = typer.Option(0),
) -> None:
    """Print archs sampled from a search space."""
    from hwnas.limits import MAX_SEED, check_count, check_seed
    from hwnas.spec.space import get_space

    sp = get_space(space)
    check_count("--n", n)
    check_seed(seed)
    if seed + n - 1 > MAX_SEED:
        raise HwnasError(f"--seed {seed} with --n {n}: the samples take seeds {seed}..{seed + n - 1}, past the "
                         f"largest seed {MAX_SEED}; lower --seed")
    for i in range(n):
        typer.echo(str(sp.sample(seed + i)))


def _is(e: BaseException, name: str) -> bool:
    """Whether ``e`` is click's exception class ``name``. Matched by name through the class
    hierarchy, so it holds for click's own classes and for the copy typer >= 0.29 vendors
    (``typer._click``, which fresh installs have *instead of* click): importing either module
    here broke every usage error on a fresh install once."""
    return any(c.__name__ == name for c in type(e).__mro__)


def _exit_on_sigterm() -> None:
    """SIGTERM (``docker stop``, a scheduler) unwinds like Ctrl-C: temp files removed, the bar
    taken down, what was finished kept; the exit code is 143 instead of 130."""
    def handler(signum, frame):
        _terminated[0] = True
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)


_terminated = [False]


def run(argv: list[str] | None = None) -> int:
    """Run one command; user errors and interrupts propagate as ``HwnasError`` and ``KeyboardInterrupt``
    (``quickstart`` runs its steps through this, ``main`` turns them into one line)."""
    keeps("")
    rv = app(args=argv, standalone_mode=False, prog_name="hwnas")
    if rv == 130:  # typer >= 0.29 catches KeyboardInterrupt itself and returns 130
        raise KeyboardInterrupt
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line per error, never a traceback. Exit codes: 0 done, 1 error, 2 usage,
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 3 an internal error (a bug)."""
    _exit_on_sigterm()
    _terminated[0] = False
    try:
        return run(argv)
    except HwnasError as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        say(interrupted_line())
        return 143 if _terminated[0] else 130
    except Exception as e:
        if _is(e, "NoArgsIsHelpError"):
            typer.echo(e.format_message())  # the help text
            return 2
        if _is(e, "UsageError"):  # NoSuchOption, MissingParameter, BadParameter ...
            ctx = getattr(e, "ctx", None)
            cmd = (ctx.command_path if ctx is not None else "") or "hwnas"
            say(f"error: {e.format_message()} (see {cmd} --help)")
            return 2
        if _is(e, "Abort"):  # click < 8.2 (older typer): Ctrl-C surfaces as Abort
            say(interrupted_line())
            return 143 if _terminated[0] else 130
        if _is(e, "Exit"):
            return e.exit_code
        if isinstance(e, MemoryError) or _is(e, "OutOfMemoryError") or "can't allocate memory" in str(e):
            # a size under the documented limits can still exceed this machine's memory
            say(f"error: out of memory ({str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__}); "
                 f"lower --batch-size, the input size or the model's widths, or use a machine with more memory")
            return 1
        if os.environ.get("HWNAS_DEBUG"):  # a bug, not bad input: still one line, the traceback on request
            raise
        say(f"error: internal error {e.__class__.__name__}: {e} (rerun with HWNAS_DEBUG=1 for the traceback and report it)")
        return 3


if __name__ == "__main__":
    sys.exit(main())
