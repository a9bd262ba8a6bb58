"""Weight-sharing supernets: exact subnet extraction, sharing that is real, training that resumes
after kill -9, and a real search scored by a supernet end to end (front trained standalone)."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import search_world, sigkill_when
from hwnas.cli.app import main
from hwnas.search.evaluators import make_evaluator
from hwnas.search.runner import SearchConfig
from hwnas.search.supernet import (
    Neighbourhood,
    Supernet,
    SupernetConfig,
    bn_indicator,
    norm_layers,
    paths_of_step,
    train_supernet,
)
from hwnas.spec.arch import Arch
from hwnas.spec.space import SPACES
from hwnas.train.loop import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def _randomised(net: Supernet, seed: int = 0) -> Supernet:
    """Every shared tensor random (BN statistics positive), so that any wrong slice shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in net.tensors.items():
            if t.is_floating_point():
                v = torch.randn(t.shape, generator=g) * 0.2
                t.copy_(v.abs() + 0.5 if k.endswith("running_var") else v)
    return net


@pytest.mark.parametrize("space,arch", [
    ("small", "i128/basic_c32_11-121-121-12/fpn_p3-5_c64/retina_d3_c64/bn"),
    ("small", "i128/mbconv_c16_1-2-21-2/none/fcos_d1_c32/bn"),
    ("small", "i128/shuffle_c24_1-12-2-21/pafpn_p4-6_c48/rcnn_d2_c128_n64/bn"),
    ("face", "i256/basic_c16_1-21-2-2/fpn_p2-6_c32/face_d1_c32_stc2_str3_mo3/bn"),
    ("tiny", "i128/mbconv_c16_1-2-21-2/fpn_p4-6_c32/fcos_d1_c32/gn"),
])
def test_a_subnet_cut_from_the_supernet_is_exactly_the_standalone_detector(space, arch) -> None:
    """A path run on the shared tensors and ``Detector.from_arch`` of the same arch holding the
    inherited weights give identical outputs, for paths of every depth, width, neck and level range."""
    hood = Neighbourhood.of(SPACES[space], Arch.parse(arch))
    net = _randomised(Supernet(hood, 3))
    size = Arch.parse(arch).input_hw[0]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for a in [Arch.parse(arch), hood.largest(), hood.smallest(), *(hood.sample(s) for s in range(4))]:
        standalone = net.extract(a).eval()
        assert type(standalone).__name__ == "Detector" and str(standalone.arch) == str(a)
        with torch.no_grad():
            inherited, own = net.path(a).eval()(x), standalone(x)
        assert len(inherited) == len(own)
        for p, q in zip(inherited, own):
            assert torch.equal(p, q), f"{a}: the path and its extracted detector differ"


@pytest.mark.parametrize("arch", ["i128/shuffle_c24_1-12-2-21/pafpn_p4-6_c48/rcnn_d2_c128_n64/bn",
                                  "i128/mbconv_c16_1-2-21-2/none/fcos_d1_c32/bn"])
def test_a_structure_supernet_holds_exactly_the_modular_moves_of_its_structure(arch) -> None:
    """Span ``structure`` fixes the neck and its levels (SM-NAS's structure): every path it draws and
    every modular move (``SearchSpace.mutate``) keeps them, a detector on another neck is refused,
    and its paths are still exactly the standalone detectors."""
    space, anchor = SPACES["small"], Arch.parse(arch)
    hood = Neighbourhood.of(space, anchor, "structure")
    assert hood.key == f"i128-{anchor.block}-{anchor.neck}_p{anchor.levels[0]}-{anchor.levels[1]}-{anchor.head.kind}-bn"
    paths = [hood.sample(s) for s in range(20)] + [hood.largest(), hood.smallest()]
    paths += [space.mutate(anchor, s) for s in range(20)]
    assert {(p.neck, p.levels) for p in paths} == {(anchor.neck, anchor.levels)}
    assert len({p.stages for p in paths}) > 5 and len({p.width for p in paths}) > 1  # the rest still moves
    net = _randomised(Supernet(hood, 3))
    family = Supernet(Neighbourhood.of(space, anchor), 3)
    assert sum(t.numel() for t in net.tensors.values()) < sum(t.numel() for t in family.tensors.values())
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    for a in paths[::7]:
        net.check(a)
        with torch.no_grad():
            for p, q in zip(net.path(a).eval()(x), net.extract(a).eval()(x)):
                assert torch.equal(p, q)
    other = Arch.parse(str(anchor).replace(f"{anchor.neck}_p", "fpn_p" if anchor.neck != "fpn" else "pafpn_p")
                       if anchor.neck != "none" else str(anchor).replace("/none/", "/fpn_p3-5_c32/"))
    with pytest.raises(Exception, match="outside the supernet's neighbourhood"):
        net.check(other)
    with pytest.raises(Exception, match="span 'neck': give one of family, structure"):
        Neighbourhood.of(space, anchor, "neck")


def test_paths_share_leading_slices_and_only_them() -> None:
    """Two paths of one neighbourhood read the same tensors: a weight inside a narrow path's slice
    changes both paths' outputs, one outside it only the wider path's."""
    space = SPACES["small"]
    wide = Arch.parse("i128/basic_c32_11-211-211-21/fpn_p3-5_c64/retina_d3_c64/bn")
    narrow = Arch.parse("i128/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn")
    net = _randomised(Supernet(Neighbourhood.of(space, wide), 3))
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))

    def outs(a):
        with torch.no_grad():
            return torch.cat([o.flatten() for o in net.path(a).eval()(x)])

    base_w, base_n = outs(wide), outs(narrow)
    w = net.tensors["blocks.stem_0.0.weight"]  # [32, 3, 3, 3]; the narrow path uses [:16]
    with torch.no_grad():
        w[20] += 1.0  # outside the narrow slice
    assert not torch.equal(outs(wide), base_w) and torch.equal(outs(narrow), base_n)
    with torch.no_grad():
        w[3] += 1.0  # inside it
    assert not torch.equal(outs(narrow), base_n)
    # the head's conv is one tensor for every level range: a path on p4-6 reads the p3-5 path's conv
    assert "blocks.head_cls_0.0.weight" in net.tensors and "blocks.head_p3_cls_0.1.weight" in net.tensors


def test_sandwich_paths_bound_the_neighbourhood() -> None:
    hood = Neighbourhood.of(SPACES["small"], Arch.parse("i128/basic_c16_1-2-2-2/none/retina_d1_c32/bn"))
    big, small, *drawn = paths_of_step(hood, "sandwich", 0, 5)
    assert (big, small) == (hood.largest(), hood.smallest()) and len(drawn) == 2
    assert big.width == 32 and [len(s) for s in big.stages] == list(SPACES["small"].max_blocks)
    assert small.width == 16 and all(len(s) == 1 for s in small.stages) and small.neck == "none"
    assert paths_of_step(hood, "uniform", 0, 5) == [drawn[0]]  # seeded: the same draw
    assert paths_of_step(hood, "uniform", 0, 6) != paths_of_step(hood, "uniform", 0, 5)


_TRAIN = """
import sys
from pathlib import Path
from hwnas.search.supernet import Neighbourhood, SupernetConfig, train_supernet
from hwnas.spec.arch import Arch
from hwnas.spec.space import SPACES
from hwnas.train.loop import TrainConfig
hood = Neighbourhood.of(SPACES["tiny"].with_resolutions((64,)), Arch.parse(sys.argv[3]))
train_supernet(hood, Path(sys.argv[1]), Path(sys.argv[2]), TrainConfig(batch_size=4, lr=2e-3, warmup_iters=2),
               SupernetConfig(epochs=3))
"""
ARCH64 = "i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn"


def test_supernet_training_resumes_after_kill_9_with_nothing_lost(tiny_shapes, tmp_path) -> None:
    """Killed after its first epoch's checkpoint, a rerun continues from it and ends with exactly
    the tensors of a run never interrupted."""
    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    cmd = [sys.executable, str(script), str(tiny_shapes), str(tmp_path / "killed"), ARCH64]
    ck = tmp_path / "killed" / "supernet.pt"
    rc = sigkill_when(cmd, tmp_path / "log", ck.exists, 300, cwd=REPO, env={"OMP_NUM_THREADS": "1",
                                                                          "PATH": "/usr/bin:/bin"})
    assert rc == -signal.SIGKILL and not (tmp_path / "killed" / "supernet.json").exists()
    assert torch.load(ck, weights_only=False)["epoch"] < 2  # killed before the end
    for folder in ("killed", "whole"):
        r = subprocess.run([*cmd[:3], str(tmp_path / folder), ARCH64], cwd=REPO, capture_output=True, text=True,
                           timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
    a = torch.load(tmp_path / "killed" / "supernet.pt", weights_only=True)["tensors"]
    b = torch.load(tmp_path / "whole" / "supernet.pt", weights_only=True)["tensors"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((tmp_path / "killed" / "supernet.json").read_text())
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2] and info["train_s"] > 0
    # a finished supernet is read back, not retrained; other settings are refused
    hood = Neighbourhood.of(SPACES["tiny"].with_resolutions((64,)), Arch.parse(ARCH64))
    cfg = TrainConfig(batch_size=4, lr=2e-3, warmup_iters=2)
    net, again = train_supernet(hood, tiny_shapes, tmp_path / "whole", cfg, SupernetConfig(epochs=3))
    assert again["train_s"] == json.loads((tmp_path / "whole" / "supernet.json").read_text())["train_s"]
    assert all(torch.equal(net.tensors[k].detach(), b[k]) for k in b)
    from hwnas.errors import HwnasError

    with pytest.raises(HwnasError, match="other settings"):
        train_supernet(hood, tiny_shapes, tmp_path / "whole", cfg, SupernetConfig(epochs=4))


# ------------------------------------------------------------------------------ a real search on a supernet
@pytest.fixture(scope="module")
def setup(tmp_path_factory, ort_cpu) -> dict:
    return search_world(tmp_path_factory, ort_cpu, "supernet-search", 32)


def _args(setup, out, *extra) -> list[str]:
    return ["search", "--data", str(setup["data"]), "--table", str(setup["table"]), "--space", "tiny",
            "--out", str(out), "--epochs-per-trial", "1", "--batch-size", "8", "--threads", "1", "--no-measure",
            *map(str, extra)]


@pytest.mark.slow
@pytest.mark.parametrize("evaluator,folder", [("supernet", "supernets"), ("bn", "bn-supernets")])
def test_a_search_scored_by_supernets_trains_its_front_standalone(setup, evaluator, folder) -> None:
    out = setup["dir"] / evaluator
    assert main(_args(setup, out, "--trials", 8, "--population", 2, "--evaluator", evaluator,
                      "--supernet-epochs", 1)) == 0
    s = json.loads((out / "search.json").read_text())
    scored = [t for t in s["trials"] if t["state"] == "complete" and t["stage"] != "baseline"]
    assert len(scored) == 8 and all(t["evaluator"] == evaluator and t["proxy_map"] is not None for t in scored)
    # one supernet per neighbourhood (resolution, block family, head kind, norm) the candidates fell in
    hoods = {f"i64-{Arch.parse(t['arch']).block}-{Arch.parse(t['arch']).head.kind}-{Arch.parse(t['arch']).norm}"
             for t in scored}
    assert {p.name for p in (out / folder).iterdir()} == hoods
    # the front is trained standalone: a real mAP and checkpoint beside the proxy
    front = json.loads((out / "pareto.json").read_text())
    assert front
    for r in front:
        assert r["map"] is not None and r["proxy_map"] is not None and r["evaluator"] == evaluator
        assert Path(r["checkpoint"]).name == "last.pt" and Path(r["checkpoint"]).exists() and r["trial"]
    assert s["counts"]["scored"] == 8 and s["counts"]["trained_standalone"] == len(front)
    assert s["time_s"]["supernets_s"] > 0 and s["time_s"]["standalone_s"] > 0
    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert len(rows) == 8 and {r["arch"] for r in rows} == {t["arch"] for t in scored}
    assert sum(r["map"] != "" for r in rows) == len(front) and all(r["proxy_map"] for r in rows)
    assert "trained standalone" in (out / "report.md").read_text()


@pytest.mark.slow
def test_budget_min_stops_on_time_and_reports(setup) -> None:
    """A budget of a few seconds: the structural stage stops at its share, the modular stage at the
    end, each after the candidate in flight; the report is whole."""
    out = setup["dir"] / "budget"
    assert main(_args(setup, out, "--budget-min", 0.25, "--population", 2)) == 0
    s = json.loads((out / "search.json").read_text())
    spent = sum(json.loads(line)["train_s"] + json.loads(line)["overhead_s"]
                for line in (out / "bookkeeping.jsonl").read_text().splitlines())
    one = max(json.loads(line)["train_s"] for line in (out / "bookkeeping.jsonl").read_text().splitlines())
    assert 15 <= spent <= 15 + 2 * one + 5  # the budget, overrun by at most the candidates in flight
    assert s["counts"]["scored"] >= 2 and {t["stage"] for t in s["trials"]} == {"structural", "modular"}
    assert (out / "report.md").exists() and (out / "candidates.csv").exists()


@pytest.mark.slow
def test_budget_min_covers_the_front_trained_standalone(setup) -> None:
    """With a proxy evaluator the budget is the whole search's: the candidates get 1 - --front-share
    of it, the front trains standalone, most accurate member first, until the rest is spent; members
    left over keep their proxy alone, say so, and are not what --pick best chooses."""
    out, budget_s = setup["dir"] / "budget-front", 12.0
    assert main(_args(setup, out, "--budget-min", budget_s / 60, "--front-share", 0.25, "--population", 2,
                      "--evaluator", "bn", "--supernet-epochs", 1, "--epochs-per-trial", 3)) == 0
    rows = [json.loads(line) for line in (out / "bookkeeping.jsonl").read_text().splitlines()]
    spent, one = sum(r["train_s"] + r["overhead_s"] for r in rows), max(r["train_s"] for r in rows)
    # the candidates' share and what was in flight (on a fast machine the tiny space runs out of new
    # candidates first: no lower bound)
    assert spent <= 0.75 * budget_s + 2 * one + 5
    front = json.loads((out / "pareto.json").read_text())
    trained = [r for r in front if r["map"] is not None]
    alone = json.loads((out / "search.json").read_text())["time_s"]["standalone_s"]
    assert trained, "the candidates left no time for the front"
    assert front[-1]["map"] is not None  # the most accurate end first
    assert len(trained) == 1 or front[0]["map"] is not None  # then the fastest
    last = max(r["standalone_s"] for r in trained)
    assert spent + alone - last < budget_s + 2  # every training started within the budget
    if len(trained) < len(front):
        assert spent + alone >= budget_s  # stopped because the time ran out, not early
        assert all(r["proxy_map"] is not None and r["checkpoint"] is None for r in front if r["map"] is None)
        from hwnas.search.records import pick_from_front

        assert pick_from_front(out, "best").map is not None


@pytest.mark.parametrize("arch", ["i128/basic_c32_11-121-121-12/fpn_p3-5_c64/retina_d3_c64/bn",
                                  "i128/mbconv_c16_1-2-21-2/none/fcos_d1_c32/bn",
                                  "i128/shuffle_c24_1-12-2-21/pafpn_p4-6_c48/rcnn_d2_c128_n64/bn"])
def test_norm_layers_is_the_bn_nas_indicator_of_an_untrained_supernet(arch) -> None:
    """``train+depth``'s indicator: counted on the detector, it equals BN-NAS's sum over the path's
    BatchNorms in a supernet whose scales are all still 1, for every path of the neighbourhood."""
    hood = Neighbourhood.of(SPACES["small"], Arch.parse(arch), "structure")
    net = Supernet(hood, 3)
    paths = [Arch.parse(arch), hood.largest(), hood.smallest(), *(hood.sample(s) for s in range(3))]
    counts = [norm_layers(a) for a in paths]
    assert counts == [pytest.approx(bn_indicator(net, a), rel=1e-6) for a in paths]
    assert norm_layers(hood.largest()) > norm_layers(hood.smallest())  # deeper paths, more layers


def test_bn_nas_trains_only_batchnorms_and_scores_paths_by_their_scales(tiny_shapes, tmp_path) -> None:
    from hwnas.search.supernet import bn_indicator

    hood = Neighbourhood.of(SPACES["tiny"].with_resolutions((64,)), Arch.parse(ARCH64))
    cfg = TrainConfig(batch_size=4, lr=1e-2, warmup_iters=1)
    init = Supernet(hood, 3, cfg.seed).state_dict()
    net, _ = train_supernet(hood, tiny_shapes, tmp_path / "bn", cfg, SupernetConfig(epochs=1, bn_only=True))
    moved = {k for k, t in net.state_dict().items() if not torch.equal(t, init[k])}
    assert moved and all(k in net.bn_keys or k.endswith((".bias", "running_mean", "running_var",
                                                           "num_batches_tracked")) for k in moved)
    assert not any(k.endswith(".weight") and k not in net.bn_keys for k in moved)  # every conv as initialised
    assert any(k in net.bn_keys for k in moved)
    # the score follows the scales of the channels a path uses, and only those
    narrow = Arch.parse("i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn")
    wide = Arch.parse("i64/basic_c24_11-21-21-21/fpn_p3-5_c32/retina_d2_c32/bn")
    before = bn_indicator(net, narrow), bn_indicator(net, wide)
    with torch.no_grad():
        net.tensors["blocks.stem_0.1.weight"][16:] = 0.0  # channels only the wider path uses
    assert bn_indicator(net, narrow) == before[0] and bn_indicator(net, wide) < before[1]
    with torch.no_grad():
        net.tensors["blocks.stem_0.1.weight"][:16] = 0.0
    assert bn_indicator(net, narrow) < before[0]


_DDP = """
import os, sys, torch
from pathlib import Path
from hwnas.search.supernet import Neighbourhood, SupernetConfig, train_supernet
from hwnas.spec.arch import Arch
from hwnas.spec.space import SPACES
from hwnas.train.loop import TrainConfig
hood = Neighbourhood.of(SPACES["tiny"].with_resolutions((64,)), Arch.parse(sys.argv[3]))
net, _ = train_supernet(hood, Path(sys.argv[1]), Path(sys.argv[2]), TrainConfig(batch_size=8, lr=2e-3, warmup_iters=2),
                        SupernetConfig(epochs=3))
torch.save(net.state_dict(), Path(sys.argv[2]) / f"rank{os.environ.get('RANK', '0')}.pt")
"""


@pytest.mark.slow
def test_two_gloo_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(tmp_path) -> None:
    """torchrun, 2 processes on gloo, 4 images each, against 1 process of 8 images: the same paths
    see the same images and the averaged gradients keep both processes' weights identical. The
    losses differ only through BatchNorm's batch statistics (over 4 images, not 8) and the loss's
    normalisation by each process's own positives. Stated tolerance: the mean relative difference
    of the per-step losses under 5 %, at least 3/4 of the steps within 5 %."""
    from hwnas.data.synth import synth

    synth("shapes", 48, 4, 64, 0, tmp_path / "data")
    script = tmp_path / "ddp.py"
    script.write_text(_DDP)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path / "data"), str(tmp_path / "two"), ARCH64]
    one = [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "one"), ARCH64]
    for cmd in (two, one):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    net = Supernet(Neighbourhood.of(SPACES["tiny"].with_resolutions((64,)), Arch.parse(ARCH64)), 3)
    params = [k for k, t in net.tensors.items() if t.requires_grad]
    assert all(torch.equal(r0[k], r1[k]) for k in params)  # one model, not two drifting apart
    assert not all(torch.equal(r0[k], net.tensors[k].detach()) for k in params)  # and it was trained
    h2 = json.loads((tmp_path / "two" / "supernet.json").read_text())["history"]
    h1 = json.loads((tmp_path / "one" / "supernet.json").read_text())["history"]
    assert [h["processes"] for h in h2] == [2, 2, 2] and [h["processes"] for h in h1] == [1, 1, 1]
    a = [v for h in h1 for v in h["step_losses"]]
    b = [v for h in h2 for v in h["step_losses"]]
    rel = [abs(x - y) / x for x, y in zip(a, b)]
    assert len(a) == len(b) == 18
    print("relative step-loss differences", [round(r, 4) for r in rel])
    assert sum(rel) / len(rel) < 0.05 and sum(r < 0.05 for r in rel) >= 0.75 * len(rel), rel


@pytest.mark.slow
@pytest.mark.parametrize("evaluator", ["train+bn", "train+depth"])
def test_anchored_evaluators_train_one_anchor_per_structure_and_scale_the_rest(setup, evaluator) -> None:
    """``train+bn`` and ``train+depth``: the first candidate of each structure is trained (a real
    mAP, not a proxy); every later one of the structure is a proxy that keeps the indicator's order
    inside the structure (BN-NAS's, or the count of normalisation layers) and sits on the mAP scale
    of that structure's anchor; the front is trained standalone."""
    out = setup["dir"] / evaluator
    assert main(_args(setup, out, "--trials", 8, "--population", 2, "--evaluator", evaluator,
                      "--supernet-epochs", 1)) == 0
    s = json.loads((out / "search.json").read_text())
    scored = [t for t in s["trials"] if t["state"] == "complete" and t["stage"] != "baseline"]
    assert len(scored) == 8 and all(t["evaluator"] == evaluator for t in scored)
    space = SPACES["tiny"].with_resolutions((64,))
    key = {t["arch"]: Neighbourhood.of(space, Arch.parse(t["arch"]), "structure").key for t in scored}
    anchors = {p.parent.name: json.loads(p.read_text()) for p in (out / "anchors").glob("*/anchor.json")}
    assert set(anchors) == set(key.values())  # one anchor per structure the search visited
    for t in scored:
        anchor = anchors[key[t["arch"]]]
        if t["arch"] == anchor["arch"]:  # trained: its score is its mAP, not a proxy
            assert t["proxy_map"] is None and t["map"] == pytest.approx(anchor["map"])
        else:
            assert t["proxy_map"] is not None
    # the proxies of a structure keep the order of their indicators, scaled to the anchor's mAP
    by_key: dict = {}
    for t in scored:
        if t["arch"] != anchors[key[t["arch"]]]["arch"]:
            by_key.setdefault(key[t["arch"]], []).append(t)
    assert by_key, "the modular stage moved inside some structure"
    if evaluator == "train+bn":
        ev = make_evaluator(SearchConfig(setup["data"], setup["table"], out, space="tiny", evaluator=evaluator,
                                         supernet_epochs=1, epochs=1, batch_size=8))
    for k, trials in by_key.items():
        anchor = Arch.parse(anchors[k]["arch"])
        if evaluator == "train+bn":
            net = ev.bn.supernet(anchor)  # read back from RUN/bn-supernets/<key>/, not retrained
            indicator = lambda a: bn_indicator(net, a)  # noqa: E731
        else:
            indicator = norm_layers
        for t in trials:
            ratio = indicator(Arch.parse(t["arch"])) / indicator(anchor)
            assert t["proxy_map"] == pytest.approx(anchors[k]["map"] * ratio, rel=1e-6)
    if evaluator == "train+bn":
        assert {p.name for p in (out / "bn-supernets").iterdir()} == set(by_key)
    else:
        assert not (out / "bn-supernets").exists()  # no supernet at all
    front = json.loads((out / "pareto.json").read_text())
    assert front and all(r["map"] is not None for r in front)


@pytest.mark.slow
def test_a_modular_stage_out_of_moves_goes_back_to_new_structures(setup) -> None:
    """Under --budget-min a modular stage that runs out of new moves does not leave the time unused:
    the search takes new structures from the structural stage and refines them. Here every
    structure has one move (a neighbourhood of one child per parent), so the modular stage runs
    dry within seconds, as a real one does after 200 duplicate draws."""
    from hwnas.search.records import records_of
    from hwnas.search.runner import Search, SearchConfig

    class OneMovePerStructure(Search):
        def _propose_modular(self, study, n, draw):
            if draw == 0:
                self._refined = {r.parent for r in records_of([study]) if r.parent}
            arch, trial, meta = super()._propose_modular(study, n, draw)
            return (None, None, {}) if meta.get("parent") in self._refined else (arch, trial, meta)

    out, budget_s = setup["dir"] / "out-of-moves", 12.0
    cfg = SearchConfig(data=setup["data"], table=setup["table"], out=out, space="tiny", epochs=1, batch_size=8,
                       threads=1, measure=False, trials=100_000, population=2, budget_s=budget_s,
                       structural_share=0.2, max_draws=50)
    outcome = OneMovePerStructure(cfg, say=lambda _: None).run()
    back = [n for n in outcome.notes if "went back to new structures" in n]
    assert back, outcome.notes
    rows = [json.loads(line) for line in (out / "bookkeeping.jsonl").read_text().splitlines()]
    order = [(r["study"].rsplit("/", 1)[1], r["arch"]) for r in rows]  # in the order they were scored
    first_modular = next(i for i, (stage, _) in enumerate(order) if stage == "modular")
    late = [arch for stage, arch in order[first_modular:] if stage == "structural"]
    assert len(late) >= 2  # new structures after refining began, a population at a time
    # (the modular stage refines those of them that reach its NSGA-II survivors: not every one)
    spent = sum(r["train_s"] + r["overhead_s"] for r in rows)
    assert budget_s <= spent <= budget_s + 2 * max(r["train_s"] for r in rows) + 5  # the time was used, and no more
