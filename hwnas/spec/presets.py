"""Named architectures (hand-designed baselines and the face presets) and the search presets.

Their training recipes live in :mod:`hwnas.train.recipes`."""
from __future__ import annotations

from hwnas.errors import HwnasError
from hwnas.spec.arch import Arch

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
    # face-s uses GroupNorm (weight-standardised in training): at its batch of 8, BatchNorm's batch
    # statistics held it back on real faces (WIDER easy 0.43/0.38 against 0.58/0.64 on two seeds,
    # hard 0.68 against 0.79), GN only in the head did not help (0.36), and GN costs it 17-18 % of
    # network time after export, where BN folds into the convs (docs/training.md section 5).
    "face-s": "i640/mbconv_c16_1-21-211-21/fpn_p2-7_c64/face_d2_c64_stc3_str3_mo3/gn",
    "face-m": "i640/basic_c64_11-21-21-21/fpn_p2-7_c128/face_d3_c128_stc3_str3_mo3/bn",
}

# The training recipe a space's candidates train with unless ``hwnas search --recipe`` names another:
# the face space's detectors need the face recipe (box loss, data-anchor-sampling, scale jitter).
SPACE_RECIPES: dict[str, str] = {"face": "face-s"}


def search_recipe(space: str, recipe: str | None) -> str:
    """The recipe of ``hwnas search --space S [--recipe R]``: R, else the space's, else none ("")."""
    from hwnas.train.recipes import RECIPES

    if recipe is None:
        return SPACE_RECIPES.get(space, "")
    if recipe not in RECIPES:
        raise HwnasError(f"--recipe {recipe!r}: presets with a training recipe are {', '.join(RECIPES)}")
    return recipe


def resolve_arch(text: str) -> Arch:
    """A preset name or an arch string."""
    if text in PRESETS:
        return Arch.parse(PRESETS[text])
    if "/" not in text:
        raise HwnasError(f"unknown preset {text!r}; valid presets: {', '.join(PRESETS)} (or give an arch string)")
    return Arch.parse(text)
