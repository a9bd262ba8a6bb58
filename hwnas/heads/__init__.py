"""Head kinds: :data:`HEAD_KINDS` maps a grammar token to the kind (a :class:`~hwnas.heads.base.Head`
subclass; an instance is the head of one arch). Adding a head is one module ``heads/NAME.py``
and one line here. This package imports no torch; the tensor side lives in its modules:

* :mod:`~hwnas.heads.anchors`: the one output layout the anchors follow.
* :mod:`~hwnas.heads.boxes`: box codecs and IoU-family losses.
* :mod:`~hwnas.heads.losses`: matching, sampling and :class:`~hwnas.heads.losses.DetectionLoss`.
* :mod:`~hwnas.heads.postprocess`: ``decode_outputs``, ``select_detections`` and ``postprocess``.
"""
from __future__ import annotations

from hwnas.errors import HwnasError
from hwnas.heads.base import Head, parse_fields
from hwnas.heads.face import FaceHead
from hwnas.heads.fcos import FcosHead
from hwnas.heads.rcnn import RcnnHead
from hwnas.heads.retina import RetinaHead

__all__ = ["HEAD_KINDS", "Head", "parse_head"]

HEAD_KINDS: dict[str, type[Head]] = {
    "retina": RetinaHead,
    "fcos": FcosHead,
    "rcnn": RcnnHead,
    "face": FaceHead,
}


def parse_head(text: str) -> Head:
    """The head of its text form, e.g. ``retina_d4_c128`` or ``rcnn_d2_c512_n100``."""
    parsed = parse_fields(text)
    kind = HEAD_KINDS.get(text.split("_")[0])
    if kind is None and parsed is not None:
        raise HwnasError(f"head {parsed[0]!r}: valid heads are {', '.join(HEAD_KINDS)}")
    if kind is None or parsed is None:
        examples = [k.EXAMPLE for k in HEAD_KINDS.values()]
        raise HwnasError(f"head {text!r} should look like {', '.join(examples[:-1])} or {examples[-1]}")
    return kind.from_text(text, parsed[1], HEAD_KINDS)
