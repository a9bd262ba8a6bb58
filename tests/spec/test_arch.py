"""The arch grammar, the search space (sample / mutate / covering) and the one walk."""
from __future__ import annotations

import pytest

from hwnas.spec.arch import BLOCK_TYPES, HEADS, NECKS, Arch
from hwnas.spec.space import SPACES, SearchSpace, get_space
from hwnas.errors import HwnasError
from hwnas.spec.presets import PRESETS, resolve_arch
from hwnas.heads import parse_head
from hwnas.heads.rcnn import RPN_ANCHORS
from hwnas.heads.retina import RETINA_ANCHORS
from hwnas.spec.units import Unit

R18 = "i256/basic_c64_11-21-21-21/fpn_p3-5_c128/retina_d4_c128/bn"
GOOD = "i256/basic_c64_11-21-21-21/fpn_p3-5_c128/retina_d4_c128/bn"


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("space", ["default", "tiny"])
def test_round_trip_sampled(space: str) -> None:
    sp = SPACES[space]
    seen = set()
    for seed in range(600):
        a = sp.sample(seed)
        text = str(a)
        b = Arch.parse(text)
        assert b == a, text
        assert str(b) == text
        assert Arch.from_dict(a.to_dict()) == a
        assert hash(b) == hash(a)
        seen.add(text)
    assert len(seen) > 100  # the samples really differ


@pytest.mark.parametrize("text", [
    R18,
    "i512/basic_c64_11-21-21-21/fpn_p3-7_c256/retina_d4_c256/bn",  # ResNet-18 RetinaNet
    "i512/bottleneck_c64_111-2111-211111-211/fpn_p3-7_c256/retina_d4_c256/bn",  # ResNet-50
    "i320x256/shuffle_c24_1-21-211/pafpn_p3-6_c96/fcos_d2_c96/gn",  # non-square, 3 stages
    "i128/mbconv_c16_11-21-21-21/none/retina_d0_c32/bn",  # no neck, no tower
    "i256/mbconv_c16_1-21-211-21/fpn_p2-7_c64/face_d2_c64_stc3_str3_mo3/gnhead",  # GN in the head only
    "i256/basic_c32_1-2-2-2-2/fpn_p2-6_c64/rcnn_d2_c512_n100/bn",  # 5 stages, rcnn
    *PRESETS.values(),
])
def test_known_strings_round_trip(text: str) -> None:
    a = Arch.parse(text)
    assert str(a) == text
    assert Arch.parse(str(a)) == a
    assert Arch.parse(f"  {text}\n") == a  # surrounding whitespace is ignored


def test_resnet_encodings() -> None:
    r18 = Arch.parse(R18)
    assert r18.stages == ("11", "21", "21", "21")
    assert r18.block == "basic" and r18.width == 64 and r18.input_hw == (256, 256)
    r50 = Arch.parse(PRESETS["resnet50-fpn-retinanet"])
    assert [len(s) for s in r50.stages] == [3, 4, 6, 3]  # ResNet-50's 3-4-6-3 blocks
    assert r50.stage_channels() == [256, 512, 1024, 2048]  # bottleneck outputs 4x


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_resolve(name: str) -> None:
    a = resolve_arch(name)
    assert str(a) == PRESETS[name]
    assert resolve_arch(str(a)) == a
    assert len(a.units()) > 10


def test_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(HwnasError, match="unknown preset 'resnet19'.*resnet18-fpn-retinanet"):
        resolve_arch("resnet19")


def test_neck_none_canonical() -> None:
    a = Arch.parse("i256/basic_c64_11-21-21-21/none/retina_d4_c128/bn")
    assert a.levels == (5, 5) and a.neck_width == 0 and a.out_levels == (5,)
    # the neck width means nothing without a neck: equal text, equal archs
    b = Arch((256, 256), "basic", 64, ("11", "21", "21", "21"), "none", (5, 5), 96, parse_head("retina_d4_c128"))
    assert a == b and str(b) == str(a)


# ------------------------------------------------------------------------------ malformed
def _swap(i: int, new: str) -> str:
    parts = GOOD.split("/")
    parts[i] = new
    return "/".join(parts)


BAD = [
    # (text, substring the message must contain)
    ("i256/basic_c64_11-21-21-21/fpn_p3-5_c128/retina_d4_c128", "4 '/'-separated fields, need 5"),
    (GOOD + "/bn", "6 '/'-separated fields, need 5"),
    ("", "1 '/'-separated fields"),
    (_swap(0, "x256"), "input 'x256'"),
    (_swap(0, "i250"), "input 250x250"),
    (_swap(0, "i32"), "input 32x32"),
    (_swap(0, "i256x100"), "input 256x100"),
    (_swap(1, "dense_c64_11-21-21-21"), "block 'dense'"),
    (_swap(1, "basic_64_11-21-21-21"), "backbone 'basic_64_11-21-21-21'"),
    (_swap(1, "basic_c64_11-31-21-21"), "backbone 'basic_c64_11-31-21-21'"),
    (_swap(1, "basic_c60_11-21-21-21"), "width 60"),
    (_swap(1, "basic_c1024_11-21-21-21"), "width 1024"),
    (_swap(1, "basic_c64_12-21-21-21"), "stage 1 '12'"),
    (_swap(1, "basic_c64_11-11-21-21"), "stage 2 '11'"),
    (_swap(1, "basic_c64_11-21-221-21"), "stage 3 '221'"),
    (_swap(1, "basic_c64_11--21-21"), "stage 2 ''"),
    (_swap(1, "basic_c64_11"), "1 stages"),
    (_swap(1, "basic_c64_1-2-2-2-2-2"), "6 stages"),
    (_swap(2, "bifpn_p3-5_c128"), "neck 'bifpn'"),
    (_swap(2, "fpn_p35_c128"), "neck 'fpn_p35_c128'"),
    (_swap(2, "fpn_p1-5_c128"), "levels p1-5"),
    (_swap(2, "fpn_p6-7_c128"), "levels p6-7"),  # starts above the last backbone level (5)
    (_swap(2, "fpn_p5-3_c128"), "levels p5-3"),
    (_swap(2, "fpn_p3-8_c128"), "levels p3-8"),
    (_swap(2, "fpn_p3-5_c100"), "neck width 100"),
    (_swap(3, "yolo_d4_c128"), "head 'yolo'"),
    (_swap(3, "retina_4_c128"), "head 'retina_4_c128'"),
    (_swap(3, "retina_d9_c128"), "head depth 9"),
    (_swap(3, "retina_d4_c100"), "head width 100"),
    (_swap(3, "retina_d4_c128_n100"), "only the rcnn head takes n (n100)"),
    (_swap(3, "rcnn_d2_c512"), "rcnn head needs a proposal count"),
    (_swap(3, "rcnn_d2_c512_n0"), "proposals 1..2000"),
    (_swap(3, "rcnn_d5_c512_n100"), "d5"),
    ("i256/basic_c64_11-21-21-21/none/rcnn_d2_c512_n100/bn", "rcnn head needs a neck"),
    (_swap(4, "ln"), "norm 'ln'"),
    (_swap(4, ""), "norm ''"),
]


@pytest.mark.parametrize("text,part", BAD, ids=[b[1] for b in BAD])
def test_malformed_strings(text: str, part: str) -> None:
    with pytest.raises(HwnasError) as info:
        Arch.parse(text)
    msg = str(info.value)
    assert part in msg, msg
    assert "\n" not in msg  # one line for the CLI


def test_direct_construction_is_checked() -> None:
    with pytest.raises(HwnasError, match="stage 2 '1'"):
        Arch((256, 256), "basic", 64, ("1", "1"))
    with pytest.raises(HwnasError, match="neck none runs the head on level 3 only"):
        Arch((256, 256), "basic", 64, ("1", "2"), "none", (3, 4))


# ------------------------------------------------------------------------------ search space
@pytest.mark.parametrize("space", ["default", "tiny"])
def test_sample_deterministic_and_varied(space: str) -> None:
    sp = get_space(space)
    assert [str(sp.sample(s)) for s in range(50)] == [str(sp.sample(s)) for s in range(50)]
    # a fresh but equal space gives the same draws: nothing hides in global random state
    import random
    random.seed(12345)
    assert str(SearchSpace(**{f: getattr(sp, f) for f in sp.__dataclass_fields__}).sample(7)) == str(sp.sample(7))
    assert len({str(sp.sample(s)) for s in range(50)}) >= 40


def test_samples_respect_the_space() -> None:
    sp = SPACES["tiny"]
    for s in range(300):
        a = sp.sample(s)
        assert a.input_hw[0] in sp.resolutions and a.block in sp.blocks and a.width in sp.widths
        assert all(len(st) <= m for st, m in zip(a.stages, sp.max_blocks))
        assert a.norm in sp.norms
        if a.neck != "none":
            assert a.levels in sp.level_ranges
        if a.head.kind == "rcnn":
            assert a.neck != "none" and a.head.proposals in sp.proposals


def test_sample_covers_every_choice() -> None:
    sp = SPACES["default"]
    archs = [sp.sample(s) for s in range(400)]
    assert {a.block for a in archs} == set(BLOCK_TYPES)
    assert {a.neck for a in archs} == set(NECKS)
    assert {a.head.kind for a in archs} == set(HEADS)
    assert {a.norm for a in archs} == {"bn", "gn"}  # gnhead is an arch option no space draws by default


def _move(a: Arch, b: Arch) -> str:
    """Which SM-NAS backbone move turned ``a`` into ``b`` (by diffing the stages)."""
    diff = [i for i, (x, y) in enumerate(zip(a.stages, b.stages)) if x != y]
    if not diff:
        return "other"
    assert len(diff) == 1, (a, b)  # one move touches one stage
    x, y = a.stages[diff[0]], b.stages[diff[0]]
    if len(y) == len(x) + 1 and y.count("2") == x.count("2"):
        assert any(y[:p] + y[p + 1:] == x and y[p] == "1" for p in range(len(y)))
        return "insert"
    if len(y) == len(x) - 1 and y.count("2") == x.count("2"):
        assert any(x[:p] + x[p + 1:] == y and x[p] == "1" for p in range(len(x)))
        return "remove"
    assert len(y) == len(x) and sorted(x) == sorted(y) and "2" in x
    assert abs(x.index("2") - y.index("2")) == 1  # the '2' moved by one place
    return "move2"


@pytest.mark.parametrize("space", ["default", "tiny"])
def test_mutate(space: str) -> None:
    sp = get_space(space)
    moves: dict[str, int] = {}
    for seed in range(400):
        a = sp.sample(seed)
        b = sp.mutate(a, seed)
        assert b != a
        assert Arch.parse(str(b)) == b  # valid
        assert sp.mutate(a, seed) == b  # deterministic per seed
        assert all(len(s) <= m for s, m in zip(b.stages, sp.max_blocks))
        m = _move(a, b)
        moves[m] = moves.get(m, 0) + 1
        if m == "other":  # a module move: everything but one of these is unchanged
            changed = [f for f, get in (("width", lambda x: x.width), ("neck_width", lambda x: x.neck_width),
                                        ("head_depth", lambda x: x.head.depth), ("head_width", lambda x: x.head.width))
                       if get(a) != get(b)]
            assert len(changed) == 1, (a, b)
    for m in ("insert", "remove", "move2", "other"):
        assert moves.get(m, 0) >= 10, moves


def test_mutate_gives_up_with_a_clear_error() -> None:
    sp = SearchSpace(resolutions=(128,), blocks=("basic",), widths=(16,), max_blocks=(1, 1), num_stages=2,
                     necks=("none",), heads=("retina",), head_depths=(1,), head_widths=(32,), level_ranges=((3, 3),))
    a = sp.sample(0)
    with pytest.raises(HwnasError, match="no valid mutation"):
        sp.mutate(a, 0, max_tries=20)


@pytest.mark.parametrize("space", ["default", "tiny"])
def test_all_units_covers_random_samples(space: str) -> None:
    """The covering claim of ``SearchSpace.covering_archs``: no sampled arch has a unit the table lacks."""
    sp = SPACES[space]
    keys = [u.key() for u in sp.all_units(80)]
    assert len(keys) == len(set(keys))  # deduplicated
    have = set(keys)
    missing = {}
    for seed in range(2000):
        for u in sp.sample(seed).units(80):
            if u.key() not in have:
                missing[u.key()] = str(sp.sample(seed))
    assert not missing, list(missing.items())[:5]


def test_all_units_depends_on_classes_and_resolution() -> None:
    sp = SPACES["tiny"]
    a = {u.key() for u in sp.all_units(80)}
    b = {u.key() for u in sp.all_units(3)}
    c = {u.key() for u in sp.with_resolutions((64,)).all_units(80)}
    assert a != b and a != c
    assert sp.all_units(80) == sp.all_units(80)  # stable order


def test_unknown_space() -> None:
    with pytest.raises(HwnasError, match="unknown search space 'huge'.*default.*tiny"):
        get_space("huge")


# ------------------------------------------------------------------------------ the walk
def test_resnet18_units() -> None:
    a = Arch.parse(R18)
    placed = {p.role: p.unit for p in a.placed_units(80)}
    assert placed["stem.0"] == Unit("conv", 3, 64, (256, 256), 3, 2, "bn", "relu")
    assert placed["stem.1"] == Unit("conv", 64, 64, (128, 128), 3, 2, "bn", "relu")
    assert placed["stage1.0"] == Unit("basic", 64, 64, (64, 64), stride=1, norm="bn")
    assert placed["stage2.0"] == Unit("basic", 64, 128, (64, 64), stride=2, norm="bn")
    assert placed["stage2.1"] == Unit("basic", 128, 128, (32, 32), stride=1, norm="bn")
    assert placed["stage3.0"] == Unit("basic", 128, 256, (32, 32), stride=2, norm="bn")
    assert placed["stage4.0"] == Unit("basic", 256, 512, (16, 16), stride=2, norm="bn")
    assert placed["stage4.1"] == Unit("basic", 512, 512, (8, 8), stride=1, norm="bn")
    assert placed["stage2.0"].key() == "basic[cin=64,cout=128,hw=64x64,stride=2,norm=bn]"
    # neck: top-down from the last backbone level, lateral from each stage's channels
    assert placed["neck.p5"] == Unit("fpn_node", 512, 128, (8, 8), top=True)
    assert placed["neck.p4"] == Unit("fpn_node", 256, 128, (16, 16))
    assert placed["neck.p3"] == Unit("fpn_node", 128, 128, (32, 32))
    # head: 4-deep towers, retina predictors with 9 anchors
    assert placed["head.p3.cls.0"] == Unit("conv", 128, 128, (32, 32), 3, 1, "bn", "relu")
    assert placed["head.p5.cls"] == Unit("conv", 128, RETINA_ANCHORS * 80, (8, 8), 3, 1)
    assert placed["head.p4.box"] == Unit("conv", 128, RETINA_ANCHORS * 4, (16, 16), 3, 1)
    roles = list(placed)
    assert roles.index("stem.0") == 0 and roles.index("neck.p5") < roles.index("head.p3.cls.0")
    assert len([r for r in roles if r.startswith("stage")]) == 8
    assert a.stage_channels() == [64, 128, 256, 512]
    assert [a.level_hw(lv) for lv in (2, 3, 4, 5)] == [(64, 64), (32, 32), (16, 16), (8, 8)]


def test_walk_two_before_one_runs_at_previous_shape() -> None:
    # '12': the '1' before the '2' runs at the previous stage's channels and size
    a = Arch.parse("i256/basic_c32_1-12-21/fpn_p3-4_c64/fcos_d1_c64/gn")
    p = {x.role: x.unit for x in a.placed_units(5)}
    assert p["stage2.0"] == Unit("basic", 32, 32, (64, 64), stride=1, norm="gn")
    assert p["stage2.1"] == Unit("basic", 32, 64, (64, 64), stride=2, norm="gn")
    assert p["stage3.0"] == Unit("basic", 64, 128, (32, 32), stride=2, norm="gn")
    assert p["stage3.1"] == Unit("basic", 128, 128, (16, 16), stride=1, norm="gn")
    assert p["head.p3.ctr"].cout == 1 and p["head.p3.cls"].cout == 5 and p["head.p4.box"].cout == 4


def test_gnhead_puts_groupnorm_in_the_head_towers_only() -> None:
    a = Arch.parse("i128/basic_c16_1-2-2-2/fpn_p3-5_c32/fcos_d2_c32/gnhead")
    norms = {(p.role.split(".")[0], p.unit.norm) for p in a.placed_units(3)}
    assert norms == {("stem", "bn"), ("stage1", "bn"), ("stage2", "bn"), ("stage3", "bn"), ("stage4", "bn"),
                     ("neck", "none"), ("head", "gn"), ("head", "none")}
    tower = {p.role: p.unit for p in a.placed_units(3)}
    assert tower["head.p4.cls.1"] == Unit("conv", 32, 32, (8, 8), 3, 1, "gn", "relu")


def test_walk_extra_levels_pafpn_and_rcnn() -> None:
    a = Arch.parse("i256/bottleneck_c16_1-21-21/pafpn_p3-6_c64/rcnn_d2_c256_n50/bn")
    p = {x.role: x.unit for x in a.placed_units(7)}
    assert a.stage_channels() == [64, 128, 256]  # 4x the stage width
    assert p["neck.p4"].top and p["neck.p4"].cin == 256 and p["neck.p4"].hw == (16, 16)
    # levels above the backbone come from strided 3x3 convs on the level below
    assert p["neck.p5"] == Unit("conv", 64, 64, (16, 16), 3, 2, "none", "relu")
    assert p["neck.p6"] == Unit("conv", 64, 64, (8, 8), 3, 2, "none", "relu")
    assert [r for r in p if r.startswith("neck.n")] == ["neck.n4", "neck.n5", "neck.n6"]
    assert p["neck.n4"] == Unit("pan_node", 64, 64, (32, 32))
    assert p["head.p3.obj"].cout == RPN_ANCHORS and p["head.p6.box"].cout == 4 * RPN_ANCHORS
    roi = p["head.roi"]
    assert (roi.cin, roi.width, roi.depth, roi.classes, roi.proposals) == (64, 256, 2, 7, 50)
    assert roi.levels == (3, 4, 5, 6) and roi.level_hws == ((32, 32), (16, 16), (8, 8), (4, 4))
    assert roi.image_hw == (256, 256)


def test_non_square_sizes() -> None:
    a = Arch.parse("i320x256/basic_c16_1-21-21-21/fpn_p3-7_c32/retina_d1_c32/bn")
    assert a.input_hw == (320, 256)
    assert a.level_hw(3) == (40, 32) and a.level_hw(7) == (3, 2)  # ceil division, like PyTorch
    assert a.placed_units(3)[0].unit.hw == (320, 256)


def test_unit_key_and_dict_round_trip() -> None:
    for a in (Arch.parse(PRESETS[n]) for n in PRESETS):
        for u in a.units(80):
            assert Unit.from_dict(u.to_dict()) == u
            assert u.key().startswith(u.kind + "[")
    with pytest.raises(HwnasError, match="unknown unit kind 'dense'"):
        Unit("dense")
    with pytest.raises(HwnasError, match="malformed unit record"):
        Unit.from_dict({"kind": "conv", "colour": 3})
    with pytest.raises(HwnasError, match="num_classes must be >= 1"):
        Arch.parse(R18).placed_units(0)


# ------------------------------------------------------------------------------ the description layer
def test_description_layer_imports_no_torch() -> None:
    """Arch, its grammar, the head kinds, the Unit spec, the search space and the manifest reader
    stand without torch (a fresh interpreter: this one has torch loaded already)."""
    import subprocess
    import sys

    code = ("import sys, hwnas.spec.arch, hwnas.spec.units, hwnas.heads, hwnas.export.manifest\n"
            "from hwnas.spec.arch import Arch\n"
            "from hwnas.spec.space import SPACES\n"
            "a = SPACES['default'].sample(0)\n"
            "assert Arch.parse(str(a)) == a and a.units(80)\n"
            "hwnas.export.manifest.read_manifest\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)
