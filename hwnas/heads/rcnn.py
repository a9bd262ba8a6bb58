"""The two-stage head (Faster R-CNN with FPN): ``rcnn_d<fc layers>_c<fc width>_n<proposals>``.

Per level an RPN (a 3x3 conv, then ``obj`` [B, A, h, w] and ``box`` [B, 4A, h, w] with
:data:`RPN_ANCHORS` anchors per location), then the RoI stage (:class:`hwnas.models.blocks.RoIStage`)
at a fixed proposal count N: ``proposals`` [B, N, 4], ``roi_cls`` [B, N, K+1] and ``roi_box``
[B, N, 4K]. The RoI stage pools with multi-scale RoIAlign in one of two forms (:data:`ROI_IMPLS`);
:func:`choose_roi_impl` is the one place that decides which form a graph or a timed unit gets.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from hwnas.errors import HwnasError
from hwnas.heads.base import Head, invalid
from hwnas.spec.units import HW, Placed, Unit

__all__ = ["GATHER_BACKENDS", "ROI_IMPLS", "RPN_ANCHORS", "RcnnHead", "check_roi_impl", "choose_roi_impl",
           "rpn_anchors", "rpn_anchors_for"]

RPN_ANCHOR_RATIOS = (0.5, 1.0, 2.0)
RPN_ANCHORS = len(RPN_ANCHOR_RATIOS)  # 1 scale x 3 aspect ratios per location (Faster R-CNN with FPN)
RPN_ANCHOR_SIZE_PER_STRIDE = 8  # anchor side = 8 x level stride
MAX_DEPTH, MAX_PROPOSALS = 4, 2000

# ``torchvision`` (exports ONNX RoiAlign + NonZero) or ``gather`` (hwnas.models.roi_align: plain
# Gather/arithmetic, every level pooled for every box): same weights, same numbers to ~1e-5.
ROI_IMPLS = ("torchvision", "gather")
# Backends that cannot build ONNX RoiAlign (TensorRT-RTX ships no plugin library; the NonZero of
# torchvision's level assignment is a plugin there too) export and time the gather form, for the
# roi unit and whole detectors alike, so a latency table stays in step with the engines built.
GATHER_BACKENDS = ("tensorrt-rtx",)
# NMS forms meant for those backends (hwnas.export.deploy): the ops form is TensorRT-RTX's.
GATHER_NMS_FORMS = ("ops",)


def check_roi_impl(impl: str) -> str:
    if impl not in ROI_IMPLS:
        raise HwnasError(f"unknown RoIAlign form {impl!r}; valid forms: {', '.join(ROI_IMPLS)}")
    return impl


def choose_roi_impl(*, nms: str | None = None, backend: str | None = None, dynamic: bool = False,
             requested: str | None = None) -> str:
    """The RoIAlign form to export or time: ``requested`` when given, else ``gather`` for a
    dynamic batch, a backend of :data:`GATHER_BACKENDS` or an NMS form meant for one, else
    ``torchvision``. torchvision's form splits the proposals per image (a Split of the traced
    batch), so it runs only at the batch it was traced with: with a dynamic batch it is refused."""
    if requested is not None:
        check_roi_impl(requested)
        if dynamic and requested == "torchvision":
            raise HwnasError("roi_impl='torchvision' exports RoIAlign for the traced batch only; with dynamic_batch "
                             "use roi_impl='gather' (the default) or export a static batch")
        return requested
    if dynamic or backend in GATHER_BACKENDS or nms in GATHER_NMS_FORMS:
        return "gather"
    return "torchvision"


def rpn_anchors(image_hw: HW, levels: tuple[int, ...], level_hws: tuple[HW, ...]):
    """All RPN anchors (x1, y1, x2, y2), level-major, location-major then ratio, shape [sum HWA, 4]."""
    import torch

    out = []
    for level, (h, w) in zip(levels, level_hws):
        stride_y, stride_x = image_hw[0] / h, image_hw[1] / w
        size = RPN_ANCHOR_SIZE_PER_STRIDE * 2 ** level
        ratios = torch.tensor(RPN_ANCHOR_RATIOS)
        hs, ws = size * ratios.sqrt(), size / ratios.sqrt()
        base = torch.stack((-ws, -hs, ws, hs), dim=1) / 2
        ys = (torch.arange(h) + 0.5) * stride_y
        xs = (torch.arange(w) + 0.5) * stride_x
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
        out.append((centers + base).reshape(-1, 4))
    return torch.cat(out)


_rpn_cached = lru_cache(maxsize=64)(rpn_anchors)


def rpn_anchors_for(arch, device=None):
    """RPN anchors [positions, 4] of ``arch``: the tensor the exported RoI stage uses, cached."""
    from hwnas.heads.anchors import anchor_key

    return _rpn_cached(*anchor_key(arch)).to(device)


@dataclass(frozen=True)
class RcnnHead(Head):
    """``depth`` fully connected layers of ``width`` in the RoI box head, at ``proposals`` proposals."""

    proposals: int

    TOKEN: ClassVar[str] = "rcnn"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("d", "depth"), ("c", "width"), ("n", "proposals"))
    EXAMPLE: ClassVar[str] = "rcnn_d2_c512_n100"
    ANCHORS: ClassVar[int] = RPN_ANCHORS
    NEEDS_NECK: ClassVar[bool] = True
    TWO_STAGE: ClassVar[bool] = True

    @classmethod
    def missing_fields_hint(cls) -> str:
        return "the rcnn head needs a proposal count, e.g. rcnn_d2_c512_n100"

    def check_depth(self) -> None:
        if not 1 <= self.depth <= MAX_DEPTH or not 1 <= self.proposals <= MAX_PROPOSALS:
            raise invalid(f"rcnn head: fc layers 1..{MAX_DEPTH} and proposals 1..{MAX_PROPOSALS}, "
                          f"got d{self.depth} n{self.proposals}")

    # ------------------------------------------------------------------ walk and model
    def units(self, arch, num_classes):
        cin = arch.head_in_channels()
        for level in arch.out_levels:
            hw = arch.level_hw(level)
            yield Placed(f"head.p{level}.rpn", Unit("conv", cin, cin, hw, 3, 1, "none", "relu"))
            yield Placed(f"head.p{level}.obj", Unit("conv", cin, RPN_ANCHORS, hw, 1))
            yield Placed(f"head.p{level}.box", Unit("conv", cin, 4 * RPN_ANCHORS, hw, 1))
        yield Placed("head.roi", Unit(
            "roi", cin=cin, width=self.width, depth=self.depth, classes=num_classes, proposals=self.proposals,
            levels=arch.out_levels, level_hws=tuple(arch.level_hw(lv) for lv in arch.out_levels),
            image_hw=arch.input_hw))

    def output_names(self, arch):
        return [f"p{lv}_{n}" for lv in arch.out_levels for n in ("obj", "box")] + ["proposals", "roi_cls", "roi_box"]

    def forward(self, arch, pyramid, module, extra_boxes=None):
        out, objs, deltas = [], [], []
        for level in arch.out_levels:
            t = module("head.rpn")(pyramid[level])
            objs.append(module("head.obj")(t))
            deltas.append(module("head.box")(t))
            out += [objs[-1], deltas[-1]]
        feats = [pyramid[level] for level in arch.out_levels]
        extra = {} if extra_boxes is None else {"extra_boxes": extra_boxes}
        return (*out, *module("head.roi")(*feats, *objs, *deltas, **extra))

    # ------------------------------------------------------------------ training
    def loss_components(self):
        return ("loss_rpn_obj", "loss_rpn_box", "loss_roi_cls", "loss_roi_box")

    def check_outputs(self, arch, num_classes, outputs):
        n_lv = len(arch.out_levels)
        want = 2 * n_lv + 3
        if len(outputs) != want:
            raise HwnasError(f"rcnn loss of {arch}: expected {want} outputs (Detector.output_names), "
                             f"got {len(outputs)}")
        if outputs[-2].shape[-1] != num_classes + 1:
            raise HwnasError(f"roi_cls has {outputs[-2].shape[-1]} columns, expected num_classes + 1 = "
                             f"{num_classes + 1}")
        rows = sum(o.shape[2] * o.shape[3] for o in outputs[:2 * n_lv:2]) * RPN_ANCHORS
        if rows != self.positions(arch):
            raise HwnasError(f"outputs cover {rows} positions, the arch {arch} has {self.positions(arch)}: "
                             f"images must be {arch.input_hw[0]}x{arch.input_hw[1]}")

    def extra_boxes(self, arch, targets, device=None):
        """Each image's non-crowd boxes, padded to the batch's largest count M with the whole-image
        box (a background or low-quality proposal), [B, M, 4]; None for a batch without boxes."""
        import torch

        from hwnas.heads.losses import usable_boxes

        h, w = arch.input_hw
        gts = []
        for t in targets:
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
            crowd = torch.as_tensor(t.get("crowd", torch.zeros(len(boxes))), dtype=torch.bool).reshape(-1)
            gts.append(boxes[usable_boxes(boxes, crowd)])
        m = max((len(g) for g in gts), default=0)
        if m == 0:
            return None
        pad = torch.tensor([0.0, 0.0, float(w), float(h)])
        out = torch.stack([torch.cat((g, pad.expand(m - len(g), 4))) for g in gts])
        return out.to(device if device is not None else gts[0].device)

    def match_codes(self, loss, targets, device=None):
        """The RPN's: IoU 0.7 / 0.3 on :func:`rpn_anchors_for`, each box's best anchor kept. (The RoI
        stage then learns every box: the boxes themselves are among its proposals in training.)"""
        from hwnas.heads.losses import match

        anchors = rpn_anchors_for(loss.arch, device)
        return [match(anchors, t["boxes"], t["crowd"], high=0.7, low=0.3, allow_low_quality=True,
                      crowd_ioa=loss.crowd_ioa) for t in targets]

    def loss(self, loss, outputs, targets):
        """loss_rpn_obj (BCE over sampled anchors), loss_rpn_box, loss_roi_cls (cross-entropy over
        sampled proposals, background = class index K), loss_roi_box (class-specific deltas with
        weights (10, 10, 5, 5)); both box terms / sampled count, as in Faster R-CNN."""
        import torch
        import torch.nn.functional as F

        from hwnas.heads.anchors import flatten_levels
        from hwnas.heads.boxes import ROI_BOX_WEIGHTS
        from hwnas.heads.losses import match, sampler_codes

        n_lv = len(loss.arch.out_levels)
        obj = flatten_levels(outputs[0:2 * n_lv:2], 1).squeeze(-1)
        deltas = flatten_levels(outputs[1:2 * n_lv:2], 4)
        proposals, roi_cls, roi_box = outputs[2 * n_lv:]
        anchors = rpn_anchors_for(loss.arch, obj.device)

        # RPN: match 0.7 / 0.3 (plus each box's best anchor), sample rpn_batch at rpn_pos_fraction.
        obj_t, sampled = torch.zeros_like(obj), []
        for i, m in enumerate(self.match_codes(loss, targets, obj.device)):
            pos_mask, neg_mask = loss.rpn_sampler([sampler_codes(m)])
            obj_t[i] = (m >= 0).float()
            sampled.append((pos_mask[0].bool(), neg_mask[0].bool(), m))
        pos = torch.stack([s[0] for s in sampled])
        both = pos | torch.stack([s[1] for s in sampled])
        n_sampled = max(1, int(both.sum()))
        loss_obj = F.binary_cross_entropy_with_logits(obj[both], obj_t[both], reduction="sum") / n_sampled
        pi, pa = pos.nonzero().unbind(1)
        gt = torch.cat([targets[i]["boxes"][s[2][s[0]]] for i, s in enumerate(sampled)])
        loss_rpn_box = loss.anchor_box_loss(loss.box_loss, deltas[pi, pa], anchors[pa], gt).sum() / n_sampled

        # RoI head on the forward's proposals (plus appended gt in training): match 0.5, sample.
        k = loss.num_classes
        props = proposals.detach()
        roi_t = torch.full(props.shape[:2], -1, dtype=torch.long, device=props.device)
        gt_rows = torch.zeros_like(props)
        for i, t in enumerate(targets):
            m = match(props[i], t["boxes"], t["crowd"], high=0.5, low=0.5, allow_low_quality=False,
                      crowd_ioa=loss.crowd_ioa)
            pos_mask, neg_mask = loss.roi_sampler([sampler_codes(m)])
            p, n = pos_mask[0].bool(), neg_mask[0].bool()
            roi_t[i][n] = k
            roi_t[i][p] = t["labels"][m[p]]
            gt_rows[i][p] = t["boxes"][m[p]]
        chosen = roi_t >= 0
        n_roi = max(1, int(chosen.sum()))
        loss_roi_cls = F.cross_entropy(roi_cls[chosen], roi_t[chosen], reduction="sum") / n_roi
        bi, ni = ((roi_t >= 0) & (roi_t < k)).nonzero().unbind(1)
        lab = roi_t[bi, ni]
        pred = roi_box.reshape(*roi_box.shape[:2], k, 4)[bi, ni, lab]
        loss_roi_box = loss.anchor_box_loss(loss.roi_box_loss, pred, props[bi, ni], gt_rows[bi, ni],
                                            ROI_BOX_WEIGHTS).sum() / n_roi
        return {"loss_rpn_obj": loss_obj, "loss_rpn_box": loss_rpn_box,
                "loss_roi_cls": loss_roi_cls, "loss_roi_box": loss_roi_box}

    # ------------------------------------------------------------------ decoding and deployment
    def decoded_positions(self, arch):
        return min(self.proposals, self.positions(arch))  # RoIStage keeps min(N, anchors)

    def decode(self, outputs, arch, num_classes):
        """Class-specific boxes [B, N, K, 4] (deltas with weights (10, 10, 5, 5) on the proposals),
        scores: softmax over K+1 without the background column K [B, N, K]."""
        from hwnas.heads.boxes import ROI_BOX_WEIGHTS, decode_deltas

        k = num_classes
        proposals, roi_cls, roi_box = outputs[-3:]
        if roi_cls.shape[-1] != k + 1:
            raise HwnasError(f"roi_cls has {roi_cls.shape[-1]} columns, expected num_classes + 1 = {k + 1}")
        b, n = proposals.shape[:2]
        deltas = roi_box.reshape(b, n, k, 4)
        boxes = decode_deltas(deltas, proposals[:, :, None, :].expand(b, n, k, 4), ROI_BOX_WEIGHTS)
        return boxes, roi_cls.softmax(-1)[..., :k]

    def roi_impl(self, *, nms=None, backend=None, dynamic=False, requested=None):
        return choose_roi_impl(nms=nms, backend=backend, dynamic=dynamic, requested=requested)

    # ------------------------------------------------------------------ the search space
    @classmethod
    def depth_choices(cls, space):
        return space.rcnn_depths

    @classmethod
    def width_choices(cls, space):
        return space.rcnn_widths

    @classmethod
    def options(cls, space):
        return {"proposals": space.proposals}
