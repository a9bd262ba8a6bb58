"""Named architectures: hand-designed baselines expressed in the arch grammar."""
from __future__ import annotations

from hwnas.arch import Arch
from hwnas.errors import HwnasError

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
}


def resolve_arch(text: str) -> Arch:
    """A preset name or an arch string."""
    if text in PRESETS:
        return Arch.parse(PRESETS[text])
    if "/" not in text:
        raise HwnasError(f"unknown preset {text!r}; valid presets: {', '.join(PRESETS)} (or give an arch string)")
    return Arch.parse(text)
