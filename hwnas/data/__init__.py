"""Detection data: COCO-format loading with validation, augmentations, collate, synthetic datasets.

Importing this package is light (no torch): ``hwnas.cli`` imports ``hwnas.data.cli`` at start-up.
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
