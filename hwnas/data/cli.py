"""``hwnas data ...``: dataset commands. Imports nothing heavy at module level (``hwnas.cli.app`` loads it)."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from hwnas.console import keeps, path_arg

HELP = "Detection datasets: generated shapes and faces (synth), or composites of real photographs (photos)."
data_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       rich_markup_mode=None, help=HELP)


@data_app.command()
def synth(
    kind: str = typer.Option("shapes", help="shapes (circle/rectangle/triangle) | faces (one class)"),
    n_train: int = typer.Option(1000, "--n-train", help="training images"),
    n_val: int = typer.Option(200, "--n-val", help="validation images"),
    size: int = typer.Option(256, help="image side in px (64..4096)"),
    seed: int = typer.Option(0, help="same seed, same files"),
    out: Path = typer.Option(..., help="dataset folder: train.json, val.json, images/ (then --data OUT)", parser=path_arg),
) -> None:
    """Generate a COCO-format dataset (objects of many scales, clutter, occlusion) to train offline."""
    from hwnas.console import progress, say
    from hwnas.data.synth import check_args
    from hwnas.data.synth import synth as run_synth

    check_args(kind, n_train, n_val, size, out)  # bad input fails before the progress bar appears
    t0 = time.time()
    keeps(f"nothing was written to {out} (a dataset appears there only once complete); rerun the same command")
    with progress(f"synth {kind}") as update:
        counts = run_synth(kind, n_train, n_val, size, seed, out, progress=update)
    say(f"wrote {out}: {n_train} train + {n_val} val images at {size} px, {counts['annotations']} boxes, "
         f"{counts['empty']} empty images, in {time.time() - t0:.1f} s")


@data_app.command()
def photos(
    kind: str = typer.Option("objects", help="objects (cat/cup/coin/rocket/motorcycle) | faces (one class, also in "
                                             "WIDER FACE layout)"),
    n_train: int = typer.Option(400, "--n-train", help="training images"),
    n_val: int = typer.Option(100, "--n-val", help="validation images"),
    size: int = typer.Option(256, help="image side in px (64..4096)"),
    seed: int = typer.Option(0, help="same seed, same files"),
    out: Path = typer.Option(..., help="dataset folder: train.json, val.json, images/, SOURCES.md (then --data OUT)",
                             parser=path_arg),
) -> None:
    """Compose a benchmark from real photographs scikit-image and matplotlib ship (offline; sources and
    licences in OUT/SOURCES.md)."""
    from hwnas.console import progress, say
    from hwnas.data.photos import check_args
    from hwnas.data.photos import photos as run_photos

    check_args(kind, n_train, n_val, size, out)  # bad input, or no scikit-image, fails before the progress bar
    t0 = time.time()
    keeps(f"nothing was written to {out} (a dataset appears there only once complete); rerun the same command")
    with progress(f"photos {kind}") as update:
        counts = run_photos(kind, n_train, n_val, size, seed, out, progress=update)
    layout = "COCO + WIDER FACE layout" if kind == "faces" else "COCO layout"
    say(f"wrote {out}: {n_train} train + {n_val} val images at {size} px ({layout}), {counts['annotations']} boxes, "
        f"{counts['empty']} empty images, in {time.time() - t0:.1f} s; sources and licences in {out}/SOURCES.md")
