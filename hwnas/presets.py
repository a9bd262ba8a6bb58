"""Named architectures (hand-designed baselines and the face presets) and their training recipes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hwnas.arch import Arch
from hwnas.errors import HwnasError

if TYPE_CHECKING:
    from hwnas.train import TrainConfig

# Baselines in the SM-NAS encoding. Stem and widths follow the original networks where the
# grammar allows (ResNet: 64 base channels; MobileNetV2-like: inverted residuals from 16).
PRESETS: dict[str, str] = {
    "resnet18-fpn-retinanet": "i512/basic_c64_11-21-21-21/fpn_p3-7_c256/retina_d4_c256/bn",
    "resnet50-fpn-retinanet": "i512/bottleneck_c64_111-2111-211111-211/fpn_p3-7_c256/retina_d4_c256/bn",
    "mobilenetv2-fpn-retinanet": "i512/mbconv_c16_11-211-2111-211/fpn_p3-7_c128/retina_d2_c128/bn",
    "resnet18-fpn-faster-rcnn": "i512/basic_c64_11-21-21-21/fpn_p2-6_c256/rcnn_d2_c1024_n1000/bn",
    "resnet18-fpn-fcos": "i512/basic_c64_11-21-21-21/fpn_p3-7_c256/fcos_d4_c256/gn",
    # Small baselines that train in minutes on a laptop CPU at 256 px (the CPU benchmarks' budget).
    "small-resnet-retinanet": "i256/basic_c32_11-21-21-21/fpn_p3-5_c64/retina_d2_c64/bn",
    "small-resnet-fcos": "i256/basic_c32_11-21-21-21/fpn_p3-5_c64/fcos_d2_c64/bn",
    "small-resnet-faster-rcnn": "i256/basic_c32_11-21-21-21/fpn_p3-5_c64/rcnn_d2_c256_n128/bn",
    "small-mobilenet-retinanet": "i256/mbconv_c16_1-21-21-21/fpn_p3-5_c64/retina_d2_c64/bn",
    # Face detectors (hwnas.heads.face): P2-P7 (strides 4-128), two-step classification on P2-P4,
    # two-step regression on P5-P7, 3 max-out background logits on P2. 640 px is the VGA scale
    # WIDER FACE results are quoted at. face-s is mobile-class (inverted residuals from 16
    # channels, like the small SCRFD/RetinaFace-mobile models); face-m a ResNet-18-class model.
    "face-s": "i640/mbconv_c16_1-21-211-21/fpn_p2-7_c64/face_d2_c64_stc3_str3_mo3/bn",
    "face-m": "i640/basic_c64_11-21-21-21/fpn_p2-7_c128/face_d3_c128_stc3_str3_mo3/bn",
}

# Training recipes: TrainConfig fields a preset trains with unless the command line says otherwise,
# plus ``test_scales`` (hwnas.multiscale) for evaluation. The face recipes follow AInnoFace's
# ingredients: an IoU-family box loss (DIoU), data-anchor-sampling on half the samples, a wide
# scale jitter for the other half, and multi-scale, flipped testing. Epochs and batch are for a GPU
# and WIDER FACE (12,880 training images); on the generated CPU data give --epochs.
RECIPES: dict[str, dict] = {
    "face-s": {"epochs": 80, "batch_size": 32, "lr": 4e-3, "box_loss": "diou", "das_p": 0.5,
               "scale_jitter": (0.3, 2.0), "test_scales": "0.5:48-,1,1f,2:-32"},
    "face-m": {"epochs": 80, "batch_size": 16, "lr": 2e-3, "box_loss": "diou", "das_p": 0.5,
               "scale_jitter": (0.3, 2.0), "test_scales": "0.5:48-,1,1f,2:-32"},
}


# hwnas search --preset NAME: (search space, preset whose recipe the candidates train with)
SEARCH_PRESETS: dict[str, tuple[str, str]] = {"face": ("face", "face-s")}


# What every user of a recipe sets itself: the search trains its candidates, and quickstart the one
# it picks, with a recipe's tricks (box loss, data-anchor-sampling, jitter) and a budget of its own.
BUDGET = ("epochs", "batch_size", "lr")


def recipe_config(preset: str = "", **given: Any) -> "TrainConfig":
    """The TrainConfig of ``preset``'s recipe (presets without one: the defaults) with the ``given``
    fields on top (None: not given). The one place a recipe becomes training options."""
    from hwnas.train import TrainConfig

    fields = {k: v for k, v in RECIPES.get(preset, {}).items() if k in TrainConfig.__dataclass_fields__}
    fields.update({k: v for k, v in given.items() if v is not None})
    return TrainConfig(**fields)


def recipe_flags(preset: str) -> list[str]:
    """``hwnas train`` options giving an arch the training tricks of ``preset``'s recipe, without its
    budget (quickstart prints and runs the command). Options are named after the TrainConfig fields."""
    from hwnas.train import TrainConfig

    flags = []
    for k, v in RECIPES.get(preset, {}).items():
        if k in TrainConfig.__dataclass_fields__ and k not in BUDGET:
            flags += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return flags


def search_preset(preset: str | None, space: str | None) -> tuple[str, str]:
    """(search space, recipe) of ``hwnas search [--preset P] [--space S]``; without a preset, no recipe."""
    if preset is None:
        return space or "default", ""
    if preset not in SEARCH_PRESETS:
        raise HwnasError(f"--preset {preset!r}: valid search presets are {', '.join(SEARCH_PRESETS)}")
    preset_space, recipe = SEARCH_PRESETS[preset]
    if space not in (None, preset_space):
        raise HwnasError(f"--preset {preset} searches space {preset_space!r}; drop --space {space}")
    return preset_space, recipe


def resolve_arch(text: str) -> Arch:
    """A preset name or an arch string."""
    if text in PRESETS:
        return Arch.parse(PRESETS[text])
    if "/" not in text:
        raise HwnasError(f"unknown preset {text!r}; valid presets: {', '.join(PRESETS)} (or give an arch string)")
    return Arch.parse(text)
