"""Detection data: COCO-format loading with validation, augmentations, collate, synthetic datasets.

Importing this package is light (no torch): ``hwnas.cli.app`` imports ``hwnas.data.cli`` at start-up.
The names below load their module on first use; the generator is ``hwnas.data.synth.synth``
(not re-exported: the name would clash with the submodule).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CocoDetection": "coco", "find_split": "coco",
    "MEAN": "transforms", "STD": "transforms", "normalize": "transforms", "collate": "transforms",
    "build_loader": "transforms", "TrainTransform": "transforms", "EvalTransform": "transforms",
    "letterbox": "transforms", "hflip": "transforms",
    "WiderFace": "wider", "WiderImage": "wider", "read_wider_gt": "wider", "write_wider_gt": "wider",
    "open_dataset": "wider", "coco_to_wider": "wider",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"hwnas.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'hwnas.data' has no attribute {name!r}")


# The files and folders of a dataset folder in any layout hwnas reads (synth/COCO/WIDER FACE):
# what a command that reads DIR must never write over or into.
_DATASET_PARTS = ("train.json", "val.json", "images", "annotations", "train2017", "val2017", "wider_face_split",
                  "WIDER_train", "WIDER_val")


def dataset_inputs(data_dir) -> list:
    """The parts of dataset folder ``data_dir`` that exist (``hwnas.fileio.refuse_inputs`` keeps
    outputs off them)."""
    from pathlib import Path

    return [Path(data_dir) / p for p in _DATASET_PARTS if (Path(data_dir) / p).exists()]


def check_data_dir(data_dir, option: str = "--data") -> None:
    """A dataset folder that exists and is a folder; a file or a missing path is one line."""
    from pathlib import Path

    from hwnas.errors import HwnasError

    p = Path(data_dir)
    if p.exists() and not p.is_dir():
        raise HwnasError(f"{option} {p} is a file, not a dataset folder; give the folder that holds train.json and "
                         f"val.json with images/ (hwnas data synth), a COCO layout or a WIDER FACE root")
    if not p.exists():
        raise HwnasError(f"{option} {p} does not exist; create a dataset with `hwnas data synth --out {p}` or point "
                         f"{option} at a COCO or WIDER FACE folder")
