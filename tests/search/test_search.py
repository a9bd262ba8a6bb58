"""The search: Pareto helpers by hand, proposals, and real tiny searches end to end (CLI, kill -9,
failures, dedupe, budget, two workers on a real PostgreSQL)."""
from __future__ import annotations

import json
import math
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import FAST, sigkill_when
from hwnas.spec.arch import Arch
from hwnas.spec.space import SPACES
from hwnas.cli.app import main
from hwnas.errors import HwnasError
from hwnas.search.coordination import Coordinator, storage_url
from hwnas.search.pareto import (crowding, dominates, hypervolume, hypervolume_gain, nondominated_ranks,
                                 pareto_indices, select_survivors)
from hwnas.search.proposals import (DEPTHS, SIZES, AccuracyModel, Parent, crossover, initial_structures,
                                    neck_choices, ranked_children, stage_encoding, structural_arch)
from hwnas.search.runner import SearchConfig, slug

REPO = Path(__file__).resolve().parents[2]
RES = 64
TINY = SPACES["tiny"].with_resolutions((RES,))


# ------------------------------------------------------------------------------ Pareto helpers, by hand
def test_dominance_and_ranks_by_hand() -> None:
    # (mAP, ms): a and b trade off; c is dominated by a; d by everything but c; e equals a.
    a, b, c, d, e = (0.5, 10.0), (0.3, 5.0), (0.4, 12.0), (0.1, 20.0), (0.5, 10.0)
    assert dominates(a, c) and not dominates(a, b) and not dominates(b, a) and not dominates(a, e)
    assert nondominated_ranks([a, b, c, d, e]) == [0, 0, 1, 2, 0]
    assert pareto_indices([a, b, c, d, e]) == [1, 0, 4]  # fastest first, equal points both kept


def test_crowding_by_hand() -> None:
    pts = [(0.1, 1.0), (0.2, 2.0), (0.4, 4.0), (0.5, 5.0)]
    cd = crowding(pts)
    assert math.isinf(cd[0]) and math.isinf(cd[3])
    # point 1: neighbours 0 and 2 -> (0.4-0.1)/0.4 + (4-1)/4 = 0.75 + 0.75
    assert cd[1] == pytest.approx(1.5) and cd[2] == pytest.approx((0.5 - 0.2) / 0.4 + (5 - 2) / 4)


def test_survivors_take_whole_fronts_then_the_least_crowded() -> None:
    front = [(0.1, 1.0), (0.2, 2.0), (0.25, 2.2), (0.5, 5.0)]
    worse = [(0.05, 3.0)]
    chosen = select_survivors(front + worse, 3)
    # the two ends (infinite crowding) and the inner point with the larger box: (0.25, 2.2) spans
    # 0.3/0.4 + 3/4 = 1.5, (0.2, 2.0) only 0.15/0.4 + 1.2/4 = 0.675
    assert sorted(chosen) == [0, 2, 3]
    assert sorted(select_survivors(front + worse, 5)) == [0, 1, 2, 3, 4]


def test_hypervolume_by_hand() -> None:
    # ref (0, 10 ms). Points (0.2, 2), (0.5, 6): 0.2*(10-2) + (0.5-0.2)*(10-6) = 1.6 + 1.2 = 2.8
    assert hypervolume([(0.2, 2.0), (0.5, 6.0)], 0.0, 10.0) == pytest.approx(2.8)
    # a dominated point and points beyond the reference add nothing
    assert hypervolume([(0.2, 2.0), (0.5, 6.0), (0.1, 7.0), (0.9, 11.0), (0.0, 1.0)], 0.0, 10.0) == pytest.approx(2.8)
    assert hypervolume([], 0.0, 10.0) == 0.0


# ------------------------------------------------------------------------------ proposals
def test_hypervolume_gain_by_hand() -> None:
    front = [(0.2, 2.0), (0.5, 6.0)]  # HV 2.8 against (0, 10 ms)
    # (0.3, 1 ms): 0.3*9 + (0.5-0.3)*4 = 3.5, so it adds 0.7
    assert hypervolume_gain(front, (0.3, 1.0), 0.0, 10.0) == pytest.approx(0.7)
    assert hypervolume_gain(front, (0.1, 3.0), 0.0, 10.0) == 0.0  # dominated
    assert hypervolume_gain(front, (0.9, 11.0), 0.0, 10.0) == 0.0  # beyond the reference
    # (0.5, 4 ms) replaces (0.5, 6 ms): 0.2*8 + 0.3*6 = 3.4, so it adds 0.6
    assert hypervolume_gain(front, (0.5, 4.0), 0.0, 10.0) == pytest.approx(0.6)
    # (0.6, 1 ms) dominates the whole front: 0.6*9 = 5.4, so it adds 2.6
    assert hypervolume_gain(front, (0.6, 1.0), 0.0, 10.0) == pytest.approx(2.6)


def _union_area(points, ref_map: float, ref_ms: float) -> float:
    """Area of the union of the boxes [ref_map, map] x [ms, ref_ms], by brute force over the grid of
    every coordinate: a cell counts when some box covers its centre (independent of the sweep)."""
    boxes = [(m, ms) for m, ms in points if m > ref_map and ms < ref_ms]
    xs = sorted({ref_map, *(m for m, _ in boxes)})
    ys = sorted({ref_ms, *(ms for _, ms in boxes)})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if any(cx < m and cy > ms for m, ms in boxes):
                area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_and_gain_match_a_brute_force_union_of_boxes() -> None:
    rng = random.Random(7)
    for _ in range(200):
        pts = [(round(rng.uniform(-0.1, 0.8), 2), round(rng.uniform(0.5, 12.0), 1)) for _ in range(rng.randint(0, 8))]
        new = (round(rng.uniform(-0.1, 0.8), 2), round(rng.uniform(0.5, 12.0), 1))
        assert hypervolume(pts, 0.0, 10.0) == pytest.approx(_union_area(pts, 0.0, 10.0), abs=1e-9)
        gain = _union_area([*pts, new], 0.0, 10.0) - _union_area(pts, 0.0, 10.0)
        assert hypervolume_gain(pts, new, 0.0, 10.0) == pytest.approx(gain, abs=1e-9)


def _truth(a: Arch, ms: float) -> float:
    """An additive mAP for the model tests: a two-stage head is worth 0.1, and ln(ms) 0.02 each."""
    return 0.05 + 0.1 * (a.head.kind == "rcnn") + 0.03 * (a.neck == "pafpn") + 0.02 * math.log(ms)


# ------------------------------------------------------------------------------ the structural design
SMALL = SPACES["small"].with_resolutions((128,))


def test_size_sets_every_width_of_a_structural_candidate_together() -> None:
    got = {z: structural_arch(SMALL, 128, "mbconv", "shallow", "fpn_p3-5", "retina", z) for z in SIZES}
    assert [(a.width, a.neck_width, a.head.width) for a in got.values()] == [(16, 32, 32), (24, 48, 48), (32, 64, 64)]
    assert {(a.stages, a.neck, a.levels, a.head.depth) for a in got.values()} == {(("1", "2", "2", "2"), "fpn", (3, 5), 2)}
    # the two-stage head's two widths: the lower for narrow and middle, the upper for wide
    rcnn = [structural_arch(SMALL, 128, "basic", "deep", "none", "rcnn", z) for z in SIZES]
    assert [a.head.width for a in rcnn] == [128, 128, 256] and {a.neck for a in rcnn} == {"fpn"}  # repaired
    with pytest.raises(HwnasError, match="valid sizes are narrow, middle, wide"):
        structural_arch(SMALL, 128, "basic", "deep", "fpn_p3-5", "retina", "huge")


def test_pair_design_spreads_each_family_over_depths_and_sizes() -> None:
    for seed in range(5):
        design = initial_structures(SMALL, 4, seed, budget=12)
        assert sorted((d["block"], d["head"]) for d in design) == sorted(
            (b, h) for b in SMALL.blocks for h in SMALL.heads)
        for b in SMALL.blocks:
            rows = [d for d in design if d["block"] == b]
            assert {d["depth"] for d in rows} == set(DEPTHS) and {d["size"] for d in rows} == set(SIZES)
        necks = Counter(d["neck"] for d in design)
        assert set(necks) == set(neck_choices(SMALL)) and max(necks.values()) - min(necks.values()) <= 1
        archs = [structural_arch(SMALL, **d) for d in design]
        assert len({str(a) for a in archs}) == 12 and {a.width for a in archs} == {16, 24, 32}
    assert initial_structures(SMALL, 4, 3, 12) == initial_structures(SMALL, 4, 3, 12)  # seeded
    assert initial_structures(SMALL, 4, 3, 12) != initial_structures(SMALL, 4, 4, 12)


def test_shallow_probes_cover_every_pair_at_one_block_per_stage_and_the_narrowest_widths() -> None:
    for seed in range(3):
        design = initial_structures(SMALL, 4, seed, budget=12, probe="shallow")
        assert sorted((d["block"], d["head"]) for d in design) == sorted(
            (b, h) for b in SMALL.blocks for h in SMALL.heads)
        for arch in (structural_arch(SMALL, **d) for d in design):
            assert arch.stages == ("1", "2", "2", "2") and arch.width == min(SMALL.widths)
            assert arch.neck == "none" or arch.neck_width == min(SMALL.neck_widths)
    assert {d["depth"] for d in initial_structures(SMALL, 4, 0, budget=6, probe="shallow")} == {"shallow"}
    with pytest.raises(HwnasError, match="--probe 'deep': valid probes are spread, shallow"):
        initial_structures(SMALL, 4, 0, probe="deep")


def test_small_design_is_balanced_and_does_not_tie_choices_together() -> None:
    pairs_of_depth_and_size = set()
    for seed in range(20):
        design = initial_structures(SMALL, 4, seed, budget=6)  # fewer than the 12 pairs
        assert len(design) == 4 and {d["block"] for d in design} == set(SMALL.blocks)
        assert {d["head"] for d in design} == set(SMALL.heads)
        for name in ("depth", "size", "neck"):
            counts = Counter(d[name] for d in design)
            assert len(counts) == min(4, len({"depth": DEPTHS, "size": SIZES, "neck": neck_choices(SMALL)}[name]))
        pairs_of_depth_and_size |= {(d["depth"], d["size"]) for d in design}
    assert len(pairs_of_depth_and_size) == 9  # depth and size (3 options each) are not cycled in step


def test_accuracy_model_recovers_an_additive_truth() -> None:
    archs = [TINY.sample(i) for i in range(40)]
    data = [(a, _truth(a, _blocks_ms(a)), _blocks_ms(a)) for a in archs]
    model = AccuracyModel(TINY, data, l2=1e-9)
    for c in archs[:10]:
        for anchor in archs[10:15]:
            want = _truth(c, _blocks_ms(c)) - _truth(anchor, _blocks_ms(anchor))
            assert model.change(c, _blocks_ms(c), anchor, _blocks_ms(anchor)) == pytest.approx(want, abs=1e-6)
    # ridge shrinks towards "no change"; too few candidates predict none at all
    strong = AccuracyModel(TINY, data, l2=1e6)
    assert abs(strong.change(archs[0], 1.0, archs[1], 50.0)) < 1e-3
    assert AccuracyModel(TINY, data[:2]).change(archs[0], 1.0, archs[1], 50.0) == 0.0


def test_crossover_takes_one_backbone_and_the_other_neck_and_head() -> None:
    a = next(x for x in (TINY.sample(i) for i in range(100)) if x.neck == "none")
    b = next(x for x in (TINY.sample(i) for i in range(100)) if x.head.kind == "rcnn")
    c = crossover(TINY, a, b)
    assert (c.input_hw, c.block, c.width, c.stages, c.norm) == (a.input_hw, a.block, a.width, a.stages, a.norm)
    assert (c.neck, c.levels, c.neck_width, c.head, c.head.depth, c.head.width, c.head.proposals) == \
        (b.neck, b.levels, b.neck_width, b.head, b.head.depth, b.head.width, b.head.proposals)


def _blocks_ms(a: Arch) -> float:
    """A stand-in cost for ranking tests: 1 ms a block plus the widths, exact and monotone."""
    return sum(len(s) for s in a.stages) + a.width / 8 + a.neck_width / 16 + a.head.depth


def _stage_ms(a: Arch) -> float:
    """A stand-in cost where each move saves a different amount: a block of stage k costs 2^(k-1) ms,
    a width step 24 -> 16 saves 1 ms, a head layer 0.5 ms."""
    return 10 + sum(2 ** i * len(s) for i, s in enumerate(a.stages)) + a.width / 8 + 0.5 * a.head.depth


def test_children_are_ranked_by_the_hypervolume_they_would_add() -> None:
    # One parent at (0.4 mAP, 44 ms) and a fast, weak point (0.1, 0.5 ms) on the front; reference 88 ms.
    # _stage_ms: 10 + (2*1 + 2*2 + 2*4 + 2*8) + 24/8 + 0.5*2 = 44.
    parent_arch = Arch.parse("i64/basic_c24_11-21-21-21/fpn_p3-5_c32/retina_d2_c32/bn")
    p = Parent(str(parent_arch), 0.4, 44.0, "structural#0")
    assert _stage_ms(parent_arch) == 44.0
    known = [(0.4, 44.0), (0.1, 0.5)]
    kids = ranked_children(TINY, [p], 2, known, 88.0, _stage_ms, random.Random(0))
    assert len(kids) >= 5 and len({str(c.arch) for c in kids}) == len(kids)
    for c in kids:
        assert c.parents == (p,) and c.latency_ms == _stage_ms(c.arch)
        # fewer than 3 evaluated candidates give no slope: every child is estimated at its parent's mAP
        assert c.estimated_map == 0.4
        # At 0.4 mAP a child at L < 44 ms adds the rectangle between itself, the parent and the weak
        # point: (0.4 - 0.1) * (44 - L). At L >= 44 ms the parent dominates it: nothing.
        assert c.gain == pytest.approx(0.3 * max(0.0, 44.0 - c.latency_ms), abs=1e-9), c
    faster = [c for c in kids if c.latency_ms < 44.0]
    assert len(faster) >= 3 and len(faster) < len(kids)  # both kinds are there to be ranked
    assert kids[:len(faster)] == faster  # every faster child before every other
    assert [c.latency_ms for c in faster] == sorted(c.latency_ms for c in faster)  # the faster, the more area
    # the best move is dropping the '1' of stage 4 (its block costs 8 ms): 0.3 * 8 = 2.4
    assert str(kids[0].arch) == "i64/basic_c24_11-21-21-2/fpn_p3-5_c32/retina_d2_c32/bn"
    assert kids[0].gain == pytest.approx(2.4)
    same = ranked_children(TINY, [p], 2, known, 88.0, _stage_ms, random.Random(0))
    assert [str(c.arch) for c in same] == [str(c.arch) for c in kids]  # seeded
    capped = ranked_children(TINY, [p], 2, known, 88.0, _stage_ms, random.Random(0), latency_max_ms=40.0)
    assert capped and all(c.latency_ms <= 40.0 for c in capped)
    assert {str(c.arch) for c in capped} == {str(c.arch) for c in kids if c.latency_ms <= 40.0}


def _steep_truth(a: Arch, ms: float) -> float:
    """Like ``_truth`` but with a latency term ten times as steep, so a move that changes the latency
    changes the mAP by several points (a child estimated at its parent's mAP is visibly wrong)."""
    return 0.05 + 0.1 * (a.head.kind == "rcnn") + 0.03 * (a.neck == "pafpn") + 0.2 * math.log(ms)


def test_children_of_a_pool_are_estimated_from_their_parents_through_the_model() -> None:
    # A pool whose mAP is exactly the additive truth the model can represent: an estimate anchored at a
    # parent and moved by the fitted model must land on the child's true mAP. 200 candidates make the
    # ridge shrinkage (l2 = 1) small: measured within 0.012 of the truth.
    archs, seen = [], set()
    for seed in range(10_000):
        a = TINY.sample(seed)
        if str(a) not in seen:
            seen.add(str(a))
            archs.append(a)
        if len(archs) == 200:
            break
    pool = [Parent(str(a), _steep_truth(a, _blocks_ms(a)), _blocks_ms(a), f"structural#{i}") for i, a in enumerate(archs)]
    known = [(p.map, p.latency_ms) for p in pool]
    kids = ranked_children(TINY, pool, 8, known, 100.0, _blocks_ms, random.Random(2), crossover_share=0.5)
    crossed = [c for c in kids if len(c.parents) == 2]
    assert crossed and len(crossed) < len(kids)
    off_parent = 0
    for c in kids:
        want = _steep_truth(c.arch, c.latency_ms)
        assert c.estimated_map == pytest.approx(want, abs=0.02), (str(c.arch), c.parents)
        assert str(c.arch) not in {p.arch for p in pool}
        # the plain parents' mean would miss by more than the tolerance: the model did the work
        off_parent += abs(sum(p.map for p in c.parents) / len(c.parents) - want) > 0.05
    assert off_parent >= 3
    for c in crossed:
        a, b = Arch.parse(c.parents[0].arch), Arch.parse(c.parents[1].arch)
        assert (c.arch.input_hw, c.arch.block, c.arch.width, c.arch.stages, c.arch.norm) == (
            a.input_hw, a.block, a.width, a.stages, a.norm)
        # the head compares whole: its kind, depth, width and the kind's own fields
        assert (c.arch.neck, c.arch.levels, c.arch.neck_width, c.arch.head) == (b.neck, b.levels, b.neck_width, b.head)


def test_config_rejects_bad_values(tmp_path) -> None:
    base = dict(data=tmp_path, table=tmp_path / "t.json", out=tmp_path / "o")
    for bad, msg in [({"stage": "sideways"}, "valid stages"), ({"trials": 0}, "--trials"),
                     ({"stage": "both", "trials": 1}, "--trials"), ({"structural_share": 1.0}, "share"),
                     ({"population": 1}, "--population"), ({"latency_max_ms": -1.0}, "latency"),
                     ({"study": "a/b"}, "--study"), ({"front_share": 1.0}, "--front-share"),
                     ({"probe": "deep"}, "valid probes")]:
        with pytest.raises(HwnasError, match=msg):
            SearchConfig(**base, **bad)
    assert SearchConfig(**base, trials=10).stage_trials() == {"structural": 5, "modular": 5}
    assert SearchConfig(**base, trials=2).stage_trials() == {"structural": 1, "modular": 1}
    with pytest.raises(HwnasError, match="--storage"):
        storage_url("mongodb://x", tmp_path)
    assert storage_url("postgresql://u@h:1/d", tmp_path) == "postgresql+psycopg2://u@h:1/d"


def test_claims_are_exclusive_and_slots_distinct(tmp_path) -> None:
    url = storage_url(None, tmp_path)
    a, b = Coordinator(url, "s"), Coordinator(url, "s")
    try:
        assert (a.join(), b.join()) == (0, 1)
        assert a.claim("i64/x", "s/structural", 0)
        assert not b.claim("i64/x", "s/modular", 3)  # whichever stage proposes it again
        assert b.claim("i64/y", "s/modular", 3)
        assert a.owner("i64/x").slot == 0 and b.owner("i64/y").trial_number == 3
        # a stage's budget: the claim that would make one too many is given back
        assert a.claim("i64/z", "s/modular", 4, budget=1) is False and a.owner("i64/z") is None
        assert a.claim("i64/z", "s/structural", 4, budget=2) and len(a.claimed("s/structural")) == 2
        assert Coordinator(url, "other").claim("i64/x", "other/structural", 0)  # searches are separate
        assert a.live_slots() == {0, 1} and not a.dead_slots()
    finally:
        a.leave()
        b.leave()
    c = Coordinator(url, "s")
    try:
        assert c.join() == 0  # freed slots are reused: a restarted single worker keeps its seed
    finally:
        c.leave()


def test_workers_started_together_create_the_tables_once(postgres_url) -> None:
    """Workers opening an empty PostgreSQL database at the same instant all race to create
    hwnas' tables; every one must come up (CI once lost this race with DuplicateTable)."""
    import threading

    from pg import drop_database, fresh_database

    for _ in range(4):
        url = fresh_database(postgres_url)
        start, errors, made = threading.Barrier(6), [], []

        def open_one() -> None:
            start.wait()
            try:
                made.append(Coordinator(url, "s"))
            except Exception as e:  # noqa: BLE001 -- any failure is the finding
                errors.append(e)

        threads = [threading.Thread(target=open_one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert not errors, errors
            assert sorted(c.join() for c in made) == list(range(6))
        finally:
            for c in made:
                c.leave()
                c.engine.dispose()
            drop_database(url)


def test_a_role_that_may_not_create_tables_gets_one_clear_line(postgres_url) -> None:
    """PostgreSQL 15 lets only the owner create tables in a new database's public schema: a
    worker connecting as another role must be told so, not handed a driver traceback."""
    import uuid

    import psycopg2
    from pg import _connect_kwargs, drop_database, fresh_database

    url = fresh_database(postgres_url)
    role = f"r_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(**_connect_kwargs(postgres_url))  # roles are the server's, not the database's
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN')
        as_role = url.replace("postgres@", f"{role}@", 1)
        with pytest.raises(HwnasError, match="cannot open the search database .*permission denied"):
            Coordinator(as_role, "s")
    finally:
        drop_database(url)
        with conn.cursor() as cur:
            cur.execute(f'DROP ROLE "{role}"')
        conn.close()


# ------------------------------------------------------------------------------ real tiny searches
@pytest.fixture(scope="module")
def setup(tmp_path_factory, ort_cpu) -> dict:
    """Generated shapes at 64 px and a real ort-cpu table of the tiny space for their 3 classes."""
    from hwnas.data.synth import synth
    from hwnas.latency.table import profile

    d = tmp_path_factory.mktemp("search")
    synth("shapes", 48, 12, RES, 0, d / "data")
    profile(ort_cpu, d / "table.json", space="tiny", resolutions=(RES,), num_classes=3, timing=FAST)
    return {"data": d / "data", "table": d / "table.json", "dir": d}


def args(setup, out, *extra) -> list[str]:
    return ["search", "--data", str(setup["data"]), "--table", str(setup["table"]), "--space", "tiny",
            "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1", *map(str, extra)]


def claims(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("select arch, study, trial_number from hwnas_claims where arch not like 'init:%'").fetchall()


@pytest.fixture(scope="module")
def both_stages(setup) -> dict:
    out = setup["dir"] / "run"
    rc = main(args(setup, out, "--trials", 6, "--population", 2,
                   "--baselines", "i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn"))
    return {"rc": rc, "out": out}


@pytest.mark.slow
def test_both_stages_end_to_end(both_stages) -> None:
    assert both_stages["rc"] == 0
    out = both_stages["out"]
    s = json.loads((out / "search.json").read_text())
    trained = [t for t in s["trials"] if t["state"] in ("complete", "fail") and t["stage"] != "baseline"]
    assert len(trained) == 6 and {t["stage"] for t in trained} == {"structural", "modular"}
    assert len({t["arch"] for t in trained}) == 6  # deduped
    # modular children are one SM-NAS move away from a candidate evaluated before them
    struct = {t["arch"] for t in trained if t["stage"] == "structural"}
    for t in trained:
        if t["stage"] == "modular":
            assert t["parent"] in {x["arch"] for x in trained} and t["generation"] >= 1
            assert t["parent"] in struct or t["generation"] > 1
    # pareto.json: the non-dominated completed candidates, re-measured, with the record fields
    front = json.loads((out / "pareto.json").read_text())
    done = [(t["map"], t["predicted_latency_ms"]) for t in trained if t["state"] == "complete"]
    assert front and all(not any(dominates(p, (r["map"], r["predicted_latency_ms"])) for p in done) for r in front)
    for r in front:
        assert {"arch", "map", "predicted_latency_ms", "measured_latency_ms", "stage", "generation"} <= set(r)
        assert r["measured_latency_ms"] > 0 and r["predicted_latency_ms"] > 0
    assert [f["stage"] for f in s["fronts"]][0] == "structural" and s["fronts"][-1]["stage"] == "modular"
    assert s["baselines"] and s["baselines"][0]["measured_latency_ms"] > 0
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Final front" in report and "How the front moved" in report and "Baselines" in report
    assert s["bookkeeping"]["n"] == 7  # 6 candidates and the baseline


@pytest.mark.slow
def test_rerun_of_a_finished_search_trains_nothing(both_stages, setup, capfd) -> None:
    out = both_stages["out"]
    before = json.loads((out / "search.json").read_text())
    capfd.readouterr()
    assert main(args(setup, out, "--trials", 6, "--population", 2,
                     "--baselines", "i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn")) == 0
    assert "trained 0, failed 0" in capfd.readouterr().out
    after = json.loads((out / "search.json").read_text())
    assert [t["map"] for t in after["trials"]] == [t["map"] for t in before["trials"]]
    # --json: the front on stdout and nothing else, for scripts
    assert main(args(setup, out, "--trials", 6, "--population", 2, "--json",
                     "--baselines", "i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn")) == 0
    printed = capfd.readouterr()
    assert json.loads(printed.out) == json.loads((out / "pareto.json").read_text()) and "trained 0" in printed.err
    # the studies name their objectives, for optuna-dashboard
    import optuna

    study = optuna.load_study(study_name="search/structural", storage=f"sqlite:///{out / 'search.db'}")
    assert study.metric_names == ["mAP", "latency_ms"]
    # other settings on the same study are refused, not mixed in
    assert main(args(setup, out, "--trials", 6, "--lr", "0.001")) == 1
    assert "was started with other settings (lr: 0.002 in the study, 0.001 now)" in capfd.readouterr().err


@pytest.mark.slow
def test_modular_stage_alone_continues_a_structural_one(setup, capfd) -> None:
    out = setup["dir"] / "split"
    assert main(args(setup, out, "--stage", "modular", "--trials", 2, "--no-measure")) == 1
    assert "run --stage structural first" in capfd.readouterr().err
    assert main(args(setup, out, "--stage", "structural", "--trials", 3, "--no-measure")) == 0
    assert main(args(setup, out, "--stage", "modular", "--trials", 2, "--no-measure")) == 0
    s = json.loads((out / "search.json").read_text())
    stages = [t["stage"] for t in s["trials"] if t["state"] == "complete"]
    assert stages.count("structural") == 3 and stages.count("modular") == 2


@pytest.mark.slow
def test_shallow_probes_then_moves_and_a_probe_change_is_refused(setup, capfd) -> None:
    out = setup["dir"] / "shallow"
    assert main(args(setup, out, "--stage", "structural", "--trials", 3, "--probe", "shallow", "--no-measure")) == 0
    # the study was started with shallow probes: continuing it with the default is another search
    assert main(args(setup, out, "--stage", "modular", "--trials", 2, "--no-measure")) == 1
    assert "(probe: shallow in the study, spread now)" in capfd.readouterr().err
    assert main(args(setup, out, "--stage", "modular", "--trials", 2, "--probe", "shallow", "--no-measure")) == 0
    done = [t for t in json.loads((out / "search.json").read_text())["trials"] if t["state"] == "complete"]
    probes = [Arch.parse(t["arch"]) for t in done if t["stage"] == "structural"]
    assert len(probes) == 3 and all(a.stages == stage_encoding(TINY, "shallow") and a.width == min(TINY.widths)
                                    for a in probes)
    assert sum(t["stage"] == "modular" for t in done) == 2


@pytest.mark.slow
def test_latency_budget_filters_by_prediction(setup) -> None:
    from hwnas.latency.table import LatencyTable

    table = LatencyTable.load(setup["table"])
    lat = sorted(table.predict(TINY.sample(s)).latency_ms for s in range(200))
    budget = lat[len(lat) // 2]  # about half the space is over it
    out = setup["dir"] / "budget"
    assert main(args(setup, out, "--stage", "random", "--trials", 4, "--latency-max-ms", budget, "--no-measure")) == 0
    s = json.loads((out / "search.json").read_text())
    done = [t for t in s["trials"] if t["state"] == "complete"]
    assert len(done) == 4 and all(t["predicted_latency_ms"] <= budget for t in done)
    over = [t for t in s["trials"] if t["state"] == "pruned"]
    assert over and all("over the latency budget" in t["reason"] and t["predicted_latency_ms"] > budget for t in over)


@pytest.mark.slow
def test_failed_candidates_are_recorded_and_a_systematic_cause_stops_the_search(setup, tmp_path, capfd) -> None:
    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    train = json.loads((data / "train.json").read_text())
    for im in train["images"][:40]:  # every training batch meets a truncated JPEG
        p = data / "images" / im["file_name"]
        p.write_bytes(p.read_bytes()[:100])
    setup = {**setup, "data": data}
    out = tmp_path / "run"
    assert main(args(setup, out, "--stage", "random", "--trials", 6, "--max-failures", 3, "--no-measure")) == 1
    err = capfd.readouterr().err
    assert "3 candidates in a row failed" in err and "rerun the same command" in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    s = json.loads((out / "search.json").read_text())
    failed = [t for t in s["trials"] if t["state"] == "fail"]
    assert len(failed) == 3 and all(t["reason"] for t in failed)
    assert "Failed candidates" in (out / "report.md").read_text()


@pytest.mark.slow
def test_kill_9_then_rerun_loses_no_trial(setup, tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hwnas.cli.app", *args(setup, out, "--trials", 6, "--population", 2, "--no-measure")]
    cmd[cmd.index("--epochs-per-trial") + 1] = "2"
    book = out / "bookkeeping.jsonl"

    def two_done() -> bool:
        return book.exists() and len(book.read_text().splitlines()) >= 2

    rc = sigkill_when(cmd, tmp_path / "log", two_done, 300, cwd=REPO)
    assert rc == -signal.SIGKILL
    with sqlite3.connect(out / "search.db") as c:
        before = dict(c.execute("select t.number || s.study_name, v.value from trial_values v join trials t "
                                "using (trial_id) join studies s using (study_id) where v.objective = 0").fetchall())
    assert len(before) >= 2
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(out / "search.db") as c:
        after = dict(c.execute("select t.number || s.study_name, v.value from trial_values v join trials t "
                               "using (trial_id) join studies s using (study_id) where v.objective = 0").fetchall())
        states = [s for (s,) in c.execute("select state from trials")]
    assert {k: after[k] for k in before} == before  # finished trials kept as they were
    assert len(after) == 6 and "RUNNING" not in states
    arch = [a for a, _, _ in claims(out / "search.db")]
    assert len(arch) == len(set(arch)) == 6  # nothing trained twice, nothing lost


def test_bad_input_is_one_line(setup, tmp_path, capfd) -> None:
    from hwnas.latency.table import LatencyTable

    other = tmp_path / "t80.json"
    t = LatencyTable.load(setup["table"])
    t.num_classes = 80
    t.save(other)
    part = tmp_path / "part.json"
    t = LatencyTable.load(setup["table"])
    t.entries = dict(list(t.entries.items())[:5])
    t.units = {k: t.units[k] for k in t.entries}
    t.save(part)
    cases = [
        (["--table", str(other)], "profiled for 80 classes"),
        (["--table", str(part)], "lacks"),
        (["--stage", "both", "--trials", "1"], "--trials 1"),
        (["--space", "huge"], "unknown search space"),
        (["--baselines", "not-a-preset"], "unknown preset"),
        (["--storage", "mongodb://h/x"], "--storage"),
        (["--data", str(tmp_path / "nothing")], "nothing"),
        (["--evaluator", "nope"], "--evaluator 'nope': valid evaluators are train"),
        (["--probe", "deep"], "--probe 'deep': valid probes are spread, shallow"),
        (["--screen", "levels"], "--screen 'levels': valid screens are none, coverage"),
    ]
    for extra, msg in cases:
        a = args(setup, tmp_path / "o", "--no-measure")
        for i in range(0, len(extra), 2):
            if extra[i] in a:
                a[a.index(extra[i]) + 1] = extra[i + 1]
            else:
                a += extra[i:i + 2]
        assert main(a) in (1, 2), extra
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], (extra, err)
        assert not (tmp_path / "o" / "search.db").exists(), extra  # nothing written before the checks


# ------------------------------------------------------------------------------ two workers, real PostgreSQL
@pytest.mark.slow
def test_two_workers_share_one_postgres_study(setup, postgres_db, tmp_path) -> None:
    procs = []
    for w in range(2):
        cmd = [sys.executable, "-m", "hwnas.cli.app",
               *args(setup, tmp_path / f"w{w}", "--trials", 6, "--population", 2, "--storage", postgres_db,
                     "--study", "shared", "--no-measure")]
        # started together, on an empty database: they race to create Optuna's tables and ours
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    trained = [int(o.split("trained ")[1].split(",")[0]) for o, _ in outs]
    assert sum(trained) == 6 and min(trained) >= 1  # both worked, neither trained anything twice
    import sqlalchemy as sa

    eng = sa.create_engine(postgres_db)
    with eng.connect() as c:
        rows = c.execute(sa.text("select arch, slot from hwnas_claims where search = 'shared' "
                                 "and arch not like 'init:%'")).fetchall()
        complete = c.execute(sa.text("select count(*) from trials where state = 'COMPLETE'")).scalar()
    eng.dispose()
    assert len(rows) == len({r.arch for r in rows}) == 6 and {r.slot for r in rows} == {0, 1}
    assert complete == 6


# ------------------------------------------------------------------------------ evaluators and trial records
def test_evaluation_budget_and_record_contracts(tmp_path) -> None:
    from hwnas.search.evaluators import EVALUATORS, Budget, Evaluation
    from hwnas.search.records import TrialRecord

    ev = Evaluation(0.25, 12.5, is_proxy=False, checkpoint=tmp_path / "last.pt", map50=0.5)
    assert Evaluation.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev
    bad = Evaluation.failed("out of memory (host)", 3.0)
    assert Evaluation.from_dict(bad.to_dict()) == bad and bad.score is None
    for kw, msg in [({"score": None}, "not both or neither"), ({"failure": "x"}, "not both or neither"),
                    ({"score": math.nan}, "must be finite"), ({"cost_s": -1.0}, "must be >= 0")]:
        with pytest.raises(HwnasError, match=msg):
            Evaluation(**{"score": 0.1, "cost_s": 0.0, "is_proxy": True, **kw})
    with pytest.raises(HwnasError, match="need epochs >= 1"):
        Budget(0)
    base = dict(data=tmp_path, table=tmp_path / "t.json", out=tmp_path / "o")
    assert SearchConfig(**base, epochs=2, max_train_images=9).budget() == Budget(2, 9)
    with pytest.raises(HwnasError, match=re.escape("--evaluator 'nope': valid evaluators are " + ", ".join(EVALUATORS))):
        SearchConfig(**base, evaluator="nope")
    # a record survives its JSON form; the mAP a reader sees is never a proxy's score
    arch = Arch.parse("i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn")
    r = TrialRecord("modular#3", "modular", 2, "complete", arch, 1.5, proxy_map=0.3, evaluator="toy",
                    parent=str(arch), worker=1)
    assert TrialRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert (r.is_proxy, r.score, r.map, r.objectives, r.latency_ms) == (True, 0.3, None, (0.3, 1.5), 1.5)
    trained = TrialRecord("structural#0", "structural", 0, "complete", arch, 1.5, map=0.2, measured_latency_ms=1.2)
    assert (trained.is_proxy, trained.score, trained.latency_ms) == (False, 0.2, 1.2)


def _toy_score(a: Arch) -> float:
    """A deterministic stand-in for mAP: wider and deeper heads, more blocks and a two-stage head score higher."""
    return round(0.1 + 0.002 * a.head.width / 8 + 0.01 * a.head.depth + 0.005 * sum(map(len, a.stages))
                 + 0.05 * (a.head.kind == "rcnn"), 6)


class _ToyEvaluator:
    """Scores an arch in no time from its text alone: what a registered evaluator minimally is."""

    def __init__(self, cfg) -> None:
        self.budget = cfg.budget()
        self.seen: list[str] = []

    def __call__(self, arch, budget, folder, note=None):
        from hwnas.search.evaluators import Evaluation

        assert budget == self.budget and folder.name == slug(str(arch))
        self.seen.append(str(arch))
        return Evaluation(_toy_score(arch), 0.0, is_proxy=True)


@pytest.fixture(scope="module")
def toy_search(setup) -> dict:
    """A real two-stage search (Optuna, the table, the report) whose candidates a registered
    evaluator scores instead of training."""
    from hwnas.search.evaluators import EVALUATORS

    made: list[_ToyEvaluator] = []
    EVALUATORS["toy"] = lambda cfg: made.append(_ToyEvaluator(cfg)) or made[-1]
    try:
        out = setup["dir"] / "toy"
        rc = main(args(setup, out, "--trials", 8, "--population", 2, "--evaluator", "toy", "--no-measure",
                       "--baselines", "i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn"))
    finally:
        del EVALUATORS["toy"]
    return {"rc": rc, "out": out, "made": made}


def test_a_registered_evaluator_scores_a_real_search(toy_search, setup, capfd) -> None:
    from hwnas.search.records import read_front, read_records
    from hwnas.search.report import final_front

    out = toy_search["out"]
    assert toy_search["rc"] == 0 and len(toy_search["made"]) == 1
    recs = read_records(storage_url(None, out), "search")
    done = [r for r in recs if r.complete and r.stage != "baseline"]
    assert len(done) == 8 and {r.stage for r in done} == {"structural", "modular"}
    assert sorted(toy_search["made"][0].seen) == sorted(str(r.arch) for r in recs if r.complete)  # baseline too
    front_archs = {str(r.arch) for r in final_front(recs)}
    for r in recs:
        if r.complete:
            assert (r.evaluator, r.is_proxy, r.cost_s) == ("toy", True, 0.0)
            assert r.proxy_map == _toy_score(r.arch)
            if str(r.arch) in front_archs and r.stage != "baseline":  # trained standalone after the stages
                assert r.map is not None and r.checkpoint.name == "last.pt" and r.checkpoint.exists()
                assert r.standalone_s > 0 and r.map50 is not None
            else:  # a proxy only: never shown as an mAP
                assert (r.map, r.map50, r.checkpoint) == (None, None, None)
    for r in done:
        if r.stage == "modular":
            assert r.parent in {str(x.arch) for x in done} and r.generation >= 1
    # the front is the non-dominated set of (proxy score, predicted latency), as pareto.json and search.json say
    front = final_front(recs)
    pts = [r.objectives for r in done]
    assert front and all(not any(dominates(p, f.objectives) for p in pts) for f in front)
    assert all(any(dominates(f.objectives, r.objectives) or f.objectives == r.objectives for f in front) for r in done)
    stored = read_front(out / "pareto.json")
    assert [(r.trial, r.proxy_map, r.map) for r in stored] == [(r.trial, r.proxy_map, r.map) for r in front]
    assert all(r.map is not None for r in stored)
    # only the front was trained, each member once
    assert {p.name for p in (out / "trials").iterdir()} == {slug(str(r.arch)) for r in front}
    report = (out / "report.md").read_text()
    assert "evaluator `toy`" in report and f"(proxy {front[0].proxy_map:.4f})" in report
    # the score means something else under another evaluator: the study refuses to mix them
    capfd.readouterr()
    assert main(args(setup, out, "--trials", 8, "--population", 2, "--no-measure")) == 1
    assert "other settings (evaluator: toy in the study, train now)" in capfd.readouterr().err


def test_report_is_computed_from_records_alone(toy_search, setup) -> None:
    """A fresh process reads the finished study's records from the storage; the report computed
    from them, or from search.json's records, is the report the search wrote."""
    from hwnas.latency.table import LatencyTable
    from hwnas.search.records import TrialRecord
    from hwnas.search.report import summarize

    out = toy_search["out"]
    code = ("import json, sys; from hwnas.search.records import read_records; "
            "print(json.dumps([r.to_dict() for r in read_records(sys.argv[1], 'search')]))")
    r = subprocess.run([sys.executable, "-c", code, storage_url(None, out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    stored = json.loads((out / "search.json").read_text())
    fresh = [TrialRecord.from_dict(d) for d in json.loads(r.stdout)]
    assert sorted(json.dumps(x.to_dict()) for x in fresh) == sorted(json.dumps(t) for t in stored["trials"])
    cfg = SearchConfig(data=setup["data"], table=setup["table"], out=out, space="tiny", resolutions=(RES,), trials=8,
                       population=2, epochs=1, batch_size=8, threads=1, measure=False, evaluator="train",
                       baselines=("i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn",))
    again = summarize(fresh, cfg, LatencyTable.load(setup["table"]).target, "x").to_dict()
    assert stored["front"] and stored["baselines"] and len(stored["fronts"]) >= 2
    for key in ("front", "fronts", "baselines", "hypervolume", "hypervolume_reference", "counts"):
        assert again[key] == stored[key], key


def _old_search(tmp_path: Path) -> tuple[list[str], dict]:
    """tests/fixtures/search_before_evaluators: a finished search (4 candidates and a baseline) written by
    hwnas before the evaluator seam (training recipe version 1), its table and its search.json: the
    command that reruns it in ``tmp_path / "run"``, and that search.json."""
    import gzip

    from hwnas.data.synth import synth

    old = Path(__file__).parents[1] / "fixtures" / "search_before_evaluators"
    out = tmp_path / "run"
    out.mkdir()
    (out / "search.db").write_bytes(gzip.decompress((old / "search.db.gz").read_bytes()))
    synth("shapes", 48, 12, RES, 0, tmp_path / "data")  # the study keeps the class names, not the images
    before = json.loads((old / "search.json").read_text())
    return ["search", "--data", str(tmp_path / "data"), "--table", str(old / "table.json"), "--space", "tiny",
            "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1", "--trials", "4",
            "--population", "2", "--no-measure", "--baselines", before["config"]["baselines"][0], "--screen", "none"], before


def test_a_search_of_another_recipe_version_is_not_continued(setup, tmp_path, capfd) -> None:
    argv, _ = _old_search(tmp_path)
    capfd.readouterr()
    assert main(argv) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with recipe version 1, this hwnas trains with version" in err[0], err


def test_a_search_written_before_evaluators_resumes_and_reports(setup, tmp_path, capfd, monkeypatch) -> None:
    """Rerun by the recipe version that trained it, the search written before the evaluator seam
    trains nothing and reports the same trials; its search.json reads as records."""
    from hwnas.search.records import TrialRecord

    monkeypatch.setattr("hwnas.train.loop.RECIPE_VERSION", 1)  # what wrote the fixture; the seam is under test
    argv, before = _old_search(tmp_path)
    capfd.readouterr()
    # it drew every neck: under today's default (--screen coverage) it is refused, and told how to continue
    assert main(argv[:-2]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(screen: none in the study, coverage now)" in err[0], err
    assert main(argv) == 0
    assert "trained 0, failed 0" in capfd.readouterr().out
    after = json.loads((tmp_path / "run" / "search.json").read_text())
    old_recs = [TrialRecord.from_dict(t) for t in before["trials"]]
    new_recs = [TrialRecord.from_dict(t) for t in after["trials"]]
    assert len(new_recs) == 5 and [r.trial for r in new_recs] == [r.trial for r in old_recs]
    for o, n, t in zip(old_recs, new_recs, before["trials"]):
        assert (n.arch, n.map, n.map50, n.evaluator, n.is_proxy) == (o.arch, t["map"], t["map50"], "train", False)
        assert n.cost_s == o.cost_s == t["train_s"]
        assert n.checkpoint == Path(before["config"]["out"]) / "trials" / slug(str(n.arch)) / "last.pt"
        assert n.measured_latency_ms == t["measured_latency_ms"]  # kept in the study, not measured again
    assert [r["arch"] for r in after["front"]] == [r["arch"] for r in before["front"]]
    assert after["hypervolume"] == pytest.approx(before["hypervolume"])


def test_a_front_member_is_exported_and_trained_by_its_place_on_the_front(toy_search, setup, tmp_path, capfd) -> None:
    """``--search RUN --pick best|fastest|TRIAL`` and ``--latency-max-ms``: from the front to a file."""
    from hwnas.search.records import read_front

    out = toy_search["out"]
    front = read_front(out / "pareto.json")
    best = max(front, key=lambda r: r.map)
    fastest = min(front, key=lambda r: r.latency_ms)
    assert main(["export", "--search", str(out), "--pick", "best", "--out", str(tmp_path / "best" / "m")]) == 0
    assert json.loads((tmp_path / "best" / "m.json").read_text())["arch"] == str(best.arch)
    assert f"picked {best.trial}" in capfd.readouterr().err
    # within a latency: the most accurate of the members that fit (here: only the fastest fits)
    limit = fastest.latency_ms + 1e-9
    within = max((r for r in front if r.latency_ms <= limit), key=lambda r: r.map)
    assert main(["export", "--search", str(out), "--latency-max-ms", str(limit), "--out", str(tmp_path / "lim" / "m")]) == 0
    assert json.loads((tmp_path / "lim" / "m.json").read_text())["arch"] == str(within.arch)
    # a trial id; trained again, longer, with the search's batch size and lr
    other = front[len(front) // 2]
    assert main(["train", "--search", str(out), "--pick", other.trial, "--data", str(setup["data"]), "--epochs", "2",
                 "--out", str(tmp_path / "again")]) == 0
    m = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert m["arch"] == str(other.arch) and m["epochs"] == 2
    assert (m["config"]["batch_size"], m["config"]["lr"]) == (8, 2e-3)
    capfd.readouterr()
    # refusals name the fix
    for argv, expect in [
        (["export", "--search", str(out), "--pick", "nope#1", "--out", str(tmp_path / "x" / "m")], "a trial of the front"),
        (["export", "--search", str(out), "--latency-max-ms", "0.000001", "--out", str(tmp_path / "x" / "m")],
         f"the fastest, {fastest.trial}"),
        (["export", "--search", str(tmp_path), "--pick", "best", "--out", str(tmp_path / "x" / "m")], "no pareto.json"),
        (["export", "--pick", "best", "--out", str(tmp_path / "x" / "m")], "give --search RUN"),
        (["train", "--search", str(out), "--pick", "best", "--arch", str(best.arch), "--data", str(setup["data"]),
          "--out", str(tmp_path / "x")], "drop --arch"),
    ]:
        assert main(argv) != 0
        err = capfd.readouterr().err
        assert expect in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()
