"""Training recipes: the TrainConfig fields a preset (:mod:`hwnas.spec.presets`) trains with."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hwnas.train.loop import TrainConfig

# Training recipes: TrainConfig fields a preset trains with unless the command line says otherwise,
# plus ``test_scales`` (hwnas.evaluate.multiscale) for evaluation. The face recipes follow AInnoFace's
# ingredients: an IoU-family box loss (DIoU), data-anchor-sampling on half the samples, a wide
# scale jitter for the other half, and multi-scale, flipped testing. Epochs are for WIDER FACE
# (12,880 training images); on small data give --epochs or --budget-min. face-s trains at batch 8
# (recipe version 2; was 32 at lr 4e-3): in a fixed time four times the updates, measured better on
# real and generated faces alike (docs/benchmarks.md section 8).
RECIPES: dict[str, dict] = {
    "face-s": {"epochs": 80, "batch_size": 8, "lr": 2e-3, "box_loss": "diou", "das_p": 0.5,
               "scale_jitter": (0.3, 2.0), "test_scales": "0.5:48-,1,1f,2:-32"},
    "face-m": {"epochs": 80, "batch_size": 16, "lr": 2e-3, "box_loss": "diou", "das_p": 0.5,
               "scale_jitter": (0.3, 2.0), "test_scales": "0.5:48-,1,1f,2:-32"},
}


# What every user of a recipe sets itself: the search trains its candidates, and quickstart the one
# it picks, with a recipe's tricks (box loss, data-anchor-sampling, jitter) and a budget of its own.
BUDGET = ("epochs", "batch_size", "lr")


def recipe_config(preset: str = "", **given: Any) -> "TrainConfig":
    """The TrainConfig of ``preset``'s recipe (presets without one: the defaults) with the ``given``
    fields on top (None: not given). The one place a recipe becomes training options."""
    from hwnas.train.loop import TrainConfig

    fields = {k: v for k, v in RECIPES.get(preset, {}).items() if k in TrainConfig.__dataclass_fields__}
    fields.update({k: v for k, v in given.items() if v is not None})
    return TrainConfig(**fields)


def recipe_flags(preset: str) -> list[str]:
    """``hwnas train`` options giving an arch the training tricks of ``preset``'s recipe, without its
    budget (quickstart prints and runs the command). Options are named after the TrainConfig fields."""
    from hwnas.train.loop import TrainConfig

    flags = []
    for k, v in RECIPES.get(preset, {}).items():
        if k in TrainConfig.__dataclass_fields__ and k not in BUDGET:
            flags += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return flags
