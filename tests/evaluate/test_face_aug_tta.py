"""Face-detector training augmentation and test-time augmentation on real tensors.

Data-anchor-sampling is checked against the pixels it produces (a painted face must sit exactly
under its returned box), box voting against hand-computed weighted means and a plain reference
loop, and multi-scale testing with a "detector" that boxes the bright pixels it is given, so every
mapping (letterbox, flip, unflip, rescale, range filter, vote) is checked end to end.
"""
from __future__ import annotations

import math

import pytest
import torch

from hwnas.data.anchor_sampling import FACE_ANCHOR_SIZES, DataAnchorSampling
from hwnas.data.transforms import TrainTransform
from hwnas.errors import HwnasError
from hwnas.heads.voting import box_vote
from hwnas.evaluate.multiscale import (DEFAULT_SCALES, TestScale, describe, multi_scale_detect, parse_scales,
                              scale_hws, scaled_hw)

# ----------------------------------------------------------------------------- data-anchor-sampling

FACE = (150, 100, 190, 150)  # x1, y1, x2, y2 of the painted face (40 x 50 px)
OTHERS = ((20, 20, 60, 70), (300, 200, 360, 260))
# Dim enough that no photometric draw saturates it at 1: a clamped plateau would move the
# half-height edge of an enlarged (ramp-edged) face off the true edge.
PAINT = 0.45


def _face_image(h: int = 300, w: int = 400) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Black image, the face painted red, two other faces green (flagged crowd so the red face is
    the one DAS must pick)."""
    img = torch.zeros(3, h, w)
    x1, y1, x2, y2 = FACE
    img[0, y1:y2, x1:x2] = PAINT
    for x1, y1, x2, y2 in OTHERS:
        img[1, y1:y2, x1:x2] = PAINT
    boxes = torch.tensor([FACE, *OTHERS], dtype=torch.float32)
    return img, boxes, torch.tensor([False, True, True])


def _red_extent(image: torch.Tensor) -> list[int]:
    """Pixel-edge bounding box of the red region (red over the other channels, at half its peak)."""
    red = image[0] - image[1:].max(0).values
    ys, xs = (red > red.max() / 2).nonzero(as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def _nearest(s: float) -> int:
    return min(range(len(FACE_ANCHOR_SIZES)), key=lambda k: abs(math.log(FACE_ANCHOR_SIZES[k] / s)))


@pytest.mark.parametrize("max_side_factor", [4.0, 1.0])  # 1.0: every enlargement takes the window-only path
def test_das_face_box_encloses_the_painted_face(max_side_factor):
    img, boxes, crowd = _face_image()
    das = DataAnchorSampling(256, seed=7, p=1.0, max_side_factor=max_side_factor)
    s_face = math.sqrt(40 * 50)
    upper = 2 * FACE_ANCHOR_SIZES[min(_nearest(s_face) + 1, 5)]  # 128: anchors up to 64
    scales = []
    for index in range(30):
        out, got, keep, scale = das(img, boxes, index, 0, crowd=crowd)
        assert out.shape == (3, 256, 256) and keep[0], index
        face = got[0]  # the face is box 0 and kept, so it comes first
        assert torch.allclose(face, torch.tensor(_red_extent(out), dtype=torch.float32), atol=1.5), (index, face)
        assert face[0] >= 0 and face[1] >= 0 and face[2] <= 256 and face[3] <= 256
        size = math.sqrt((face[2] - face[0]) * (face[3] - face[1]))
        assert FACE_ANCHOR_SIZES[0] / 2 * 0.97 <= size <= upper * 1.03, (index, size)
        assert size == pytest.approx(scale * s_face, rel=0.03)
        scales.append(scale)
    assert max(scales) * 400 > 4 * 256 or max_side_factor == 1.0  # the big-image path was exercised
    assert min(scales) * s_face < 16 and max(scales) * s_face > 64  # small and large targets both drawn


def test_das_window_only_path_matches_whole_image_resize():
    img, boxes, crowd = _face_image()
    whole = DataAnchorSampling(256, seed=1, p=1.0, max_side_factor=100.0)
    window = DataAnchorSampling(256, seed=1, p=1.0, max_side_factor=1.0)
    compared = 0
    for index in range(20):
        a, b = whole(img, boxes, index, 2, crowd=crowd), window(img, boxes, index, 2, crowd=crowd)
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3]  # same draws, same boxes
        # Up to half a pixel apart: only pixels at the sharp painted edges may differ much.
        assert (a[0] - b[0]).abs().mean() < 0.02, index
        compared += a[3] * 400 > 256
    assert compared >= 3


@pytest.mark.parametrize("face_px", [3, 12, 45, 150])
def test_das_target_anchor_is_at_most_one_level_up(face_px):
    img = torch.zeros(3, 240, 320)
    x1, y1 = 40, 30
    img[0, y1:y1 + face_px, x1:x1 + face_px] = PAINT
    boxes = torch.tensor([[x1, y1, x1 + face_px, y1 + face_px]], dtype=torch.float32)
    das = DataAnchorSampling((256, 256), seed=5, p=1.0)
    i = _nearest(face_px)
    upper = min(2 * FACE_ANCHOR_SIZES[min(i + 1, 5)], 255)  # 255: the face must fit the window
    sizes = []
    for index in range(25):
        out, got, keep, _ = das(img, boxes, index, 0)
        assert keep[0]
        side = (got[0, 2:] - got[0, :2])
        sizes.append(side.prod().sqrt().item())
        assert torch.allclose(got[0], torch.tensor(_red_extent(out), dtype=torch.float32), atol=1.5)
    assert FACE_ANCHOR_SIZES[0] / 2 * 0.97 <= min(sizes) and max(sizes) <= upper * 1.03, sizes
    assert max(sizes) > 1.5 * min(sizes)  # the target really is drawn, not fixed


def test_das_is_deterministic_per_seed_epoch_index():
    img, boxes, crowd = _face_image()
    das = DataAnchorSampling(128, seed=11, p=1.0)
    first = das(img, boxes, 4, 1, crowd=crowd)
    again = DataAnchorSampling(128, seed=11, p=1.0)(img, boxes, 4, 1, crowd=crowd)
    assert all(torch.equal(x, y) for x, y in zip(first[:3], again[:3])) and first[3] == again[3]
    others = [das(img, boxes, 4, 2, crowd=crowd), das(img, boxes, 5, 1, crowd=crowd),
              DataAnchorSampling(128, seed=12, p=1.0)(img, boxes, 4, 1, crowd=crowd)]
    assert all(o[3] != first[3] for o in others)


def test_das_falls_back_to_train_transform():
    img, boxes, _ = _face_image()
    plain = TrainTransform((160, 192), seed=3)
    das = DataAnchorSampling((160, 192), seed=3, p=1.0)
    never = DataAnchorSampling((160, 192), seed=3, p=0.0)
    cases = [
        (das, torch.zeros((0, 4)), None),  # no faces
        (das, torch.tensor([[10.0, 10.0, 11.0, 40.0]]), None),  # only a degenerate (1 px wide) box
        (das, boxes, torch.ones(3, dtype=torch.bool)),  # every face is crowd
        (never, boxes, None),  # p = 0: TrainTransform exactly, faces or not
    ]
    for transform, bx, crowd in cases:
        for index in range(4):
            got = transform(img, bx, index, 3, crowd=crowd)
            want = plain(img, bx, index, 3)
            assert all(torch.equal(g, w) for g, w in zip(got[:3], want[:3])) and got[3] == want[3]


def test_das_mixes_at_rate_p():
    img, boxes, crowd = _face_image(120, 160)
    das = DataAnchorSampling(64, seed=0, p=0.5)
    plain = TrainTransform(64, seed=0)
    fallback_scales = [plain(img, boxes, i, 0)[3] for i in range(200)
                       if das(img, boxes, i, 0, crowd=crowd)[3] == plain(img, boxes, i, 0)[3]]
    assert 70 <= len(fallback_scales) <= 130  # Binomial(200, 0.5): far outside means the mix is broken
    # The DAS-or-not draw must not be the fallback's own first draw (its scale jitter): the samples
    # that fall back would then all have jitter above the middle of TrainTransform's range.
    middle = 64 / 160 * math.sqrt(0.5 * 1.5)
    below = sum(s < middle for s in fallback_scales)
    assert 0.3 < below / len(fallback_scales) < 0.7


@pytest.mark.parametrize("kwargs", [{"anchor_sizes": ()}, {"anchor_sizes": (16, 8)}, {"anchor_sizes": (0, 8)},
                                    {"p": 1.5}, {"max_side_factor": 0.5}, {"input_hw": 8}])
def test_das_rejects_bad_settings(kwargs):
    with pytest.raises(HwnasError) as e:
        DataAnchorSampling(**{"input_hw": 128, **kwargs})
    assert "\n" not in str(e.value)


def test_das_rejects_mismatched_crowd_flags():
    img, boxes, _ = _face_image()
    with pytest.raises(HwnasError, match="crowd"):
        DataAnchorSampling(128, p=1.0)(img, boxes, 0, 0, crowd=torch.zeros(2, dtype=torch.bool))


# ----------------------------------------------------------------------------- box voting

def test_vote_weighted_means_singletons_labels_and_order():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.6, 0.95, 0.7])
    labels = torch.tensor([0, 0, 0, 1])
    out = box_vote(boxes, scores, labels)
    # (0.9 * 0 + 0.6 * 1) / 1.5 = 0.4 and (0.9 * 10 + 0.6 * 11) / 1.5 = 10.4; score: the max.
    want = torch.tensor([[50, 50, 60, 60], [0.4, 0, 10.4, 10], [0, 0, 10, 10]])
    assert torch.allclose(out["boxes"], want, atol=1e-5)
    assert out["scores"].tolist() == pytest.approx([0.95, 0.9, 0.7])
    assert out["labels"].tolist() == [0, 0, 1]
    # Without labels the label-1 copy joins the first group: weights 0.9, 0.6, 0.7.
    merged = box_vote(boxes, scores)
    assert torch.allclose(merged["boxes"][1], torch.tensor([0.6 / 2.2, 0, (9 + 6.6 + 7) / 2.2, 10]), atol=1e-5)
    assert merged["labels"].tolist() == [0, 0] and merged["scores"].tolist() == pytest.approx([0.95, 0.9])


def test_vote_groups_around_the_leader_only():
    # C overlaps B (IoU 0.67) but not the leader A (0.43): B joins A, C stays alone and unchanged.
    boxes = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], dtype=torch.float32)
    out = box_vote(boxes, torch.tensor([0.9, 0.8, 0.7]))
    assert torch.allclose(out["boxes"], torch.tensor([[1.6 / 1.7, 0, (9 + 9.6) / 1.7, 10], [4, 0, 14, 10]]), atol=1e-5)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert box_vote(boxes, torch.tensor([0.9, 0.8, 0.7]), max_dets=1)["scores"].tolist() == pytest.approx([0.9])
    assert box_vote(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_thresh=0.7)["boxes"].shape == (3, 4)


def _reference_vote(boxes, scores, labels, thresh, max_groups=None):
    """A plain list-based restatement of the rule, to compare the vectorised one with (the first
    ``max_groups`` groups only, if given: later groups cannot change earlier ones)."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    left = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = []
    while left and (max_groups is None or len(out) < max_groups):
        lead = left[0]
        group = [j for j in left if labels[j] == labels[lead] and iou(boxes[lead], boxes[j]) >= thresh]
        total = sum(scores[j] for j in group)
        out.append(([sum(boxes[j][c] * scores[j] for j in group) / total for c in range(4)], scores[lead]))
        taken = set(group)
        left = [j for j in left if j not in taken]
    return out


def test_vote_matches_a_reference_loop_and_stops_at_max_dets():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(150, 2, generator=gen) * 60
    wh = 8 + torch.rand(150, 2, generator=gen) * 20
    boxes, scores = torch.cat([xy, xy + wh], 1), torch.rand(150, generator=gen)
    labels = torch.randint(0, 2, (150,), generator=gen)
    out = box_vote(boxes, scores, labels, iou_thresh=0.4)
    ref = _reference_vote(boxes.tolist(), scores.tolist(), labels.tolist(), 0.4)
    assert len(out["scores"]) == len(ref) < 150
    assert torch.allclose(out["boxes"], torch.tensor([b for b, _ in ref]), atol=1e-4)
    assert out["scores"].tolist() == pytest.approx([s for _, s in ref])

    # 3000 boxes (the size multi-scale testing hands it), capped at 750 detections: the best 750 groups,
    # the first of them the same as the reference loop's (which, in Python, only builds 40 here)
    xy = torch.rand(3000, 2, generator=gen) * 1000
    big = torch.cat([xy, xy + 10 + torch.rand(3000, 2, generator=gen) * 40], 1)
    big_scores = torch.rand(3000, generator=gen)
    res = box_vote(big, big_scores, max_dets=750)
    assert len(res["scores"]) == 750 and bool((res["scores"][:-1] >= res["scores"][1:]).all())
    ref = _reference_vote(big.tolist(), big_scores.tolist(), [0] * 3000, 0.5, max_groups=40)
    assert torch.allclose(res["boxes"][:40], torch.tensor([b for b, _ in ref]), atol=1e-3)
    assert res["scores"][:40].tolist() == pytest.approx([s for _, s in ref])
    uncapped = box_vote(big, big_scores)
    assert len(uncapped["scores"]) > 750 and torch.equal(uncapped["boxes"][:750], res["boxes"])


def test_vote_edge_cases_and_errors():
    empty = box_vote(torch.zeros((0, 4)), torch.zeros(0))
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["labels"].dtype == torch.int64
    zero_area = box_vote(torch.tensor([[5.0, 5, 5, 5]]), torch.tensor([0.3]))
    assert zero_area["boxes"].tolist() == [[5, 5, 5, 5]]
    for args, kwargs in [((torch.zeros(3, 5), torch.zeros(3)), {}), ((torch.zeros(3, 4), torch.zeros(2)), {}),
                         ((torch.zeros(3, 4), torch.zeros(3), torch.zeros(2)), {}),
                         ((torch.zeros(1, 4), torch.zeros(1)), {"iou_thresh": 0.0}),
                         ((torch.zeros(1, 4), torch.zeros(1)), {"max_dets": 0})]:
        with pytest.raises(HwnasError) as e:
            box_vote(*args, **kwargs)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- multi-scale testing

def _bright_run(calls: list):
    """A deterministic 'detector': per image, the box of the red pixels and the box of the green
    pixels, in the batch's pixels, each scored 0.5 + H / 10000 so the pass that found it shows."""
    def run(batch: torch.Tensor, hw: tuple[int, int]) -> list[dict]:
        assert tuple(batch.shape[-2:]) == hw and batch.shape[1] == 3
        calls.append(hw)
        out = []
        for image in batch:
            found = []
            for channel in (0, 1):
                ys, xs = (image[channel] > 0.5).nonzero(as_tuple=True)
                if len(xs):
                    found.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
            boxes = torch.tensor(found, dtype=torch.float32).reshape(-1, 4)
            out.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.5 + hw[0] / 10000),
                        "labels": torch.zeros(len(boxes), dtype=torch.int64)})
        return out
    return run


RED, GREEN = (32, 16, 96, 80), (200, 100, 208, 108)  # a 64 px face and an 8 px face


def _scene(h: int = 128, w: int = 256, red=RED, green=GREEN) -> torch.Tensor:
    img = torch.zeros(3, h, w)
    for channel, (x1, y1, x2, y2) in ((0, red), (1, green)):
        img[channel, y1:y2, x1:x2] = 1.0
    return img


def _sorted_boxes(det: dict) -> list[list[float]]:
    return sorted(det["boxes"].tolist())


@pytest.mark.parametrize("scale", ["0.5", "1", "1f", "2"])
def test_each_pass_maps_boxes_back_to_original_pixels(scale):
    # 128 x 256 into a 128 input: letterbox factors 0.25 / 0.5 / 1 at scales 0.5 / 1 / 2, so the
    # rectangles' edges land on whole pixels and must come back exactly.
    calls = []
    det = multi_scale_detect([_scene()], _bright_run(calls), 128, parse_scales(scale))[0]
    assert _sorted_boxes(det) == [list(map(float, RED)), list(map(float, GREEN))]
    assert calls == [scaled_hw(128, float(scale.rstrip("f")))]


def test_flip_pass_is_unflipped_on_an_awkward_size():
    # 150 x 211 into 96 x 128: factor 0.6066..., edges blur over a pixel; each pass must still
    # return the rectangle within about one input pixel (1 / 0.6 original px) of where it is.
    red, green = (20, 30, 90, 100), (150, 20, 190, 60)
    img = _scene(150, 211, red, green)
    for text in ("1", "1f", "1.5f"):
        det = multi_scale_detect([img], _bright_run([]), (96, 128), parse_scales(text))[0]
        got = torch.tensor(_sorted_boxes(det))
        assert torch.allclose(got, torch.tensor([red, green], dtype=torch.float32), atol=2.0), (text, got)


def test_ranges_keep_each_face_from_the_pass_that_suits_it():
    # Green (8 px) is found at every scale but kept only by the 2x pass (<= 32 px); red (64 px) only by
    # the 0.5x pass (>= 32 px): one copy each, and their scores tell which pass each came from.
    det = multi_scale_detect([_scene()], _bright_run([]), 128, parse_scales("0.5:32-,2:-32"))[0]
    assert det["scores"].tolist() == pytest.approx([0.5 + 256 / 10000, 0.5 + 64 / 10000])  # descending
    assert det["boxes"].tolist() == [list(map(float, GREEN)), list(map(float, RED))]
    only_large = multi_scale_detect([_scene()], _bright_run([]), 128, parse_scales("0.5:32-"))[0]
    assert _sorted_boxes(only_large) == [list(map(float, RED))]


def test_votes_merge_the_scales_copies_into_one_box():
    # Three images of different sizes (one without faces) in one batch per scale.
    images = [_scene(), _scene(256, 256, (40, 60, 120, 140), (10, 10, 30, 30)), torch.zeros(3, 100, 80)]
    calls = []
    dets = multi_scale_detect(images, _bright_run(calls), 128, parse_scales("0.5,1,1f,2"))
    assert calls == [(64, 64), (128, 128), (128, 128), (256, 256)]
    assert torch.allclose(torch.tensor(_sorted_boxes(dets[0])), torch.tensor([RED, GREEN], dtype=torch.float32))
    assert dets[0]["scores"].tolist() == pytest.approx([0.5 + 256 / 10000] * 2)  # the max over passes
    assert torch.allclose(torch.tensor(_sorted_boxes(dets[1])), torch.tensor([[10.0, 10, 30, 30], [40, 60, 120, 140]]),
                          atol=1.0)
    assert dets[2]["boxes"].shape == (0, 4)


def test_boxes_in_the_padding_are_dropped_and_bad_detector_output_rejected():
    def padding_run(batch, hw):  # one box right of a 128 x 64 image letterboxed into 128 x 128
        return [{"boxes": torch.tensor([[100.0, 10, 120, 30]]), "scores": torch.tensor([0.9])} for _ in batch]
    det = multi_scale_detect([torch.zeros(3, 128, 64)], padding_run, 128, parse_scales("1"))[0]
    assert det["boxes"].shape == (0, 4)
    with pytest.raises(HwnasError, match="2 results for a batch of 1"):
        multi_scale_detect([torch.zeros(3, 64, 64)], lambda b, hw: [{}, {}], 64, parse_scales("1"))
    with pytest.raises(HwnasError, match="boxes"):
        multi_scale_detect([torch.zeros(3, 64, 64)], lambda b, hw: [{"scores": torch.zeros(1)}], 64,
                           parse_scales("1"))
    with pytest.raises(HwnasError, match="shape"):
        multi_scale_detect([torch.zeros(64, 64)], _bright_run([]), 64, parse_scales("1"))
    assert multi_scale_detect([], _bright_run([]), 64) == []
    calls = []
    with pytest.raises(HwnasError, match="vote_iou"):
        multi_scale_detect([torch.zeros(3, 64, 64)], _bright_run(calls), 64, vote_iou=1.5)
    assert calls == []  # refused before running the detector


def test_scaled_sizes():
    assert scaled_hw(640, 0.5) == (320, 320) and scaled_hw(640, 1.3) == (832, 832)
    assert scaled_hw((480, 640), 0.75) == (352, 480) and scaled_hw(256, 0.1) == (64, 64)
    assert scale_hws(640, DEFAULT_SCALES) == [(320, 320), (640, 640), (1280, 1280)]
    with pytest.raises(HwnasError):
        scaled_hw(640, 0)


def test_parse_scales_and_describe():
    got = parse_scales(" 0.5:32- , 1, 1f ,2:-64, 1.5f:16-96")
    assert got == (TestScale(0.5, min_size=32), TestScale(1.0), TestScale(1.0, flip=True),
                   TestScale(2.0, max_size=64), TestScale(1.5, 16, 96, flip=True))
    assert [s.unbounded for s in got] == [False, True, True, False, False]
    assert describe(got) == "0.5:32-,1,1f,2:-64,1.5f:16-96"
    assert parse_scales(describe(DEFAULT_SCALES)) == DEFAULT_SCALES
    for bad in ["", "1,,2", "0", "-1", "abc", "1x", "1:64", "1:64-32", "1:-", "1:a-", "9", "1,1", "nan", "1ff"]:
        with pytest.raises(HwnasError) as e:
            parse_scales(bad)
        assert "\n" not in str(e.value), bad
