"""The truth set: detectors of a search space trained standalone at a full budget, the reference every
search evaluator's ranking is compared with (benchmarks/rank_fidelity.py).

Which detectors: for every block family x head type of the space, three at one resolution: the
narrowest and shallowest (smallest base, neck and head widths, one block per stage, shallowest
head), the widest and deepest (the largest of each, every stage at its most blocks; stages as the
structural stage encodes them, ``stage_encoding``), and one drawn at random (there the stride-2
block sits anywhere in its stage); neck and pyramid levels are drawn (seeded).
For the ``small`` space that is 4 x 3 x 3 = 36 detectors.

With ``--hood ARCH --n N`` the set is instead N detectors drawn from the structure of ARCH (its
resolution, block family, neck and levels, head kind and norm fixed; everything the modular stage
moves drawn: :class:`hwnas.search.supernet.Neighbourhood` with span ``structure``): the paths one
supernet holds, to measure how well inherited weights rank the detectors of one supernet. Runs
are kept by arch, so a detector of both sets trains once.

Each is trained through the CLI, as a user would (``hwnas train --epochs E --seed S``), with the
search's training settings (batch 16, lr 2e-3, the default recipe), on generated shapes (1,000
training and 200 validation images at 128 px), cheapest first by the table's latency. Runs resume: a
finished one is skipped, a killed one continues from its last.pt, and a detector and seed already
recorded (same epochs) is taken from the record. Every finished run is recorded at once in
RESULTS.runs.json, a ledger committed beside the results: a set that takes longer than one sitting
goes on from there on a machine that no longer holds the earlier runs. Epoch-based, so the result
does not depend on the machine's load.

    python benchmarks/truth_set.py --seeds 0,1
    python benchmarks/truth_set.py --hood i128/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn --n 12 --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

from scipy.stats import kendalltau

from common import HWNAS, run, write_results

from hwnas.fileio import write_json
from hwnas.search.proposals import stage_encoding
from hwnas.search.runner import slug
from hwnas.spec.arch import Arch
from hwnas.spec.space import SearchSpace, get_space

DATA_CMD = ["data", "synth", "--kind", "shapes", "--n-train", "1000", "--n-val", "200", "--size", "128", "--seed", "0"]


def truth_archs(space: SearchSpace, resolution: int, seed: int = 0) -> list[Arch]:
    """Three detectors per block family x head type: narrowest-shallowest, a random one, widest-deepest."""
    rng = random.Random(seed)
    archs: list[Arch] = []
    for block in space.blocks:
        for head in space.heads:
            one = replace(space, resolutions=(resolution,), blocks=(block,), heads=(head,))
            for variant in ("narrow", "random", "wide"):
                if variant == "random":
                    arch = one.sample(rng.randrange(2**31))
                else:
                    pick = (lambda c: c[0]) if variant == "narrow" else (lambda c: c[-1])
                    fixed = replace(one, widths=(pick(space.widths),), neck_widths=(pick(space.neck_widths),),
                                    head_depths=(pick(space.head_depths),), head_widths=(pick(space.head_widths),),
                                    rcnn_depths=(pick(space.rcnn_depths),), rcnn_widths=(pick(space.rcnn_widths),),
                                    proposals=(pick(space.proposals),))
                    arch = replace(fixed.sample(rng.randrange(2**31)),
                                   stages=stage_encoding(space, "deep" if variant == "wide" else "shallow"))
                archs.append(arch)
    assert len({str(a) for a in archs}) == len(archs), "two truth-set detectors coincide"
    return archs


def hood_archs(space: SearchSpace, anchor: Arch, n: int, seed: int = 0) -> list[Arch]:
    """``n`` distinct detectors drawn uniformly from the structure neighbourhood of ``anchor``."""
    from hwnas.search.supernet import Neighbourhood

    hood, rng, out = Neighbourhood.of(space, anchor, "structure"), random.Random(seed), {}
    for _ in range(100 * n):
        arch = hood.sample(rng.randrange(2**31))
        out.setdefault(str(arch), arch)
        if len(out) == n:
            return list(out.values())
    raise SystemExit(f"the neighbourhood of {anchor} holds fewer than {n} distinct detectors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="small")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--table", default="latency_tables/intel-xeon-ort-cpu-fp32-1t-small-3cls.json",
                    help="latency table whose predictions are stored beside each detector's mAP")
    ap.add_argument("--limit", type=int, default=0, help="train only the first N detectors (0: all)")
    ap.add_argument("--hood", default="", help="draw the set from this detector's structure instead (with --n)")
    ap.add_argument("--n", type=int, default=12, help="--hood: how many detectors")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/truth"))
    ap.add_argument("--results", type=Path, default=None,
                    help="default benchmarks/results/truth-small-128 (with --hood: truth-hood-KEY)")
    args = ap.parse_args()
    from hwnas.latency.table import LatencyTable
    from hwnas.search.supernet import Neighbourhood

    space = get_space(args.space)
    if args.hood:
        anchor = Arch.parse(args.hood)
        archs, key = hood_archs(space, anchor, args.n), Neighbourhood.of(space, anchor, "structure").key
        args.resolution = anchor.input_hw[0]
        args.results = args.results or Path(f"benchmarks/results/truth-hood-{key}")
    else:
        archs = truth_archs(space, args.resolution)
        args.results = args.results or Path("benchmarks/results/truth-small-128")
    if args.limit:
        archs = archs[: args.limit]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    data = args.work / "data"
    if not (data / "val.json").exists():
        run([*HWNAS, *DATA_CMD, "--out", str(data)])
    table = LatencyTable.load(Path(args.table))
    ledger = args.results.with_suffix(".runs.json")
    recorded = recorded_runs(ledger, args.epochs, args.results.with_suffix(".json"))
    # seeds outer: after each seed the results file holds every detector at the seeds finished so far,
    # so rank_fidelity.py can start on one seed while the next trains
    # cheapest first (table latency): a set cut short by the end of a sitting then holds the most
    # detectors, every block family and head type among them, and the ledger carries it on
    order = sorted(archs, key=lambda a: table.predict(a).latency_ms)
    for done in range(1, len(seeds) + 1):
        seed = seeds[done - 1]
        for i, arch in enumerate(order):
            train_recorded(str(arch), seed, args.epochs, data, args.work, ledger, recorded, f"[{i + 1}/{len(order)}]")
        write_results(args.results, *results(args, archs, seeds[:done], table, recorded))


def train_recorded(arch: str, seed: int, epochs: int, data: Path, work: Path, ledger: Path, recorded: dict,
                   label: str = "") -> dict:
    """One detector trained as the truth set's are, through the CLI, or its figures from ``recorded``
    ((arch, seed) -> figures); a new run goes into ``recorded`` and the ledger at once. Runs are kept
    under WORK/eEPOCHS-sSEED/ by arch, so whoever asks for the same training again reads it."""
    key, out = (arch, str(seed)), work / f"e{epochs}-s{seed}" / slug(arch)
    if key not in recorded:
        if not (out / "metrics.json").exists():
            print(f"{label} seed {seed} {arch}".strip(), flush=True)
            run([*HWNAS, "train", "--arch", arch, "--data", str(data), "--epochs", str(epochs),
                 "--batch-size", "16", "--lr", "2e-3", "--seed", str(seed), "--out", str(out)])
        m = json.loads((out / "metrics.json").read_text())
        recorded[key] = {"map": m["map"], "map50": m["map50"], "train_s": m["train_seconds"]}
        write_json(ledger, {"epochs": epochs, "runs": [{"arch": a, "seed": int(s), **v}
                                                       for (a, s), v in recorded.items()]})
    return recorded[key]


def recorded_runs(ledger: Path, epochs: int, path: Path | None = None) -> dict[tuple[str, str], dict]:
    """(arch, seed) -> that run's figures, from the ledger and an earlier results file ``path``, both
    of ``epochs`` epochs (a ledger of other epochs is refused rather than overwritten)."""
    out = {}
    if path is not None and path.exists():
        prior = json.loads(path.read_text())
        if prior.get("epochs") == epochs:
            out = {(r["arch"], seed): v for r in prior["rows"] for seed, v in r["seeds"].items()}
    if ledger.exists():
        runs = json.loads(ledger.read_text())
        if runs["epochs"] != epochs:
            raise SystemExit(f"{ledger} records {runs['epochs']}-epoch runs, not {epochs}; "
                             "give another --results or move the ledger away")
        out |= {(r["arch"], str(r["seed"])): {k: r[k] for k in ("map", "map50", "train_s")} for r in runs["runs"]}
    return out


def committed_runs(epochs: int, results: Path = Path("benchmarks/results")) -> dict[tuple[str, str], dict]:
    """(arch, seed) -> figures, from every committed ledger of ``epochs``-epoch runs on the truth set's
    data (the truth set's and each equal-time search's judging), so that a detector trains once even
    on a machine that no longer holds the runs; ledgers of other epochs are left out."""
    out = {}
    for ledger in sorted([*results.glob("*.runs.json"), *results.glob("*.judged.json")]):
        if json.loads(ledger.read_text())["epochs"] == epochs:
            out |= recorded_runs(ledger, epochs)
    return out


def judged_front_pairs(searches: list[str], leave_out: set[str] = frozenset(),
                       results: Path = Path("benchmarks/results")) -> dict[str, tuple[float, float]]:
    """arch -> (its search's 3-epoch mAP, its judged 12-epoch mAP) for the front members of the
    equal-time searches ``searches`` (results names) that were judged, ``leave_out`` left out (the
    truth set's detectors, to compare on them)."""
    pairs: dict[str, tuple[float, float]] = {}
    for name in searches:
        res = json.loads((results / f"{name}.json").read_text())
        seed = str(res["args"].get("judge_seed", 0))
        judged = {(r["arch"], str(r["seed"])): r["map"] for r in json.loads((results / f"{name}.judged.json").read_text())["runs"]}
        for row in res["rows"]:
            for arch, short in zip(row["front_archs"], row.get("front_map", [])):
                if short is not None and (arch, seed) in judged and arch not in leave_out:
                    pairs[arch] = (short, judged[arch, seed])
    return pairs


def results(args, archs: list[Arch], seeds: list[int], table, recorded: dict) -> tuple[dict, str]:
    rows = []
    for arch in archs:
        row = {"arch": str(arch), "block": arch.block, "head": arch.head.kind,
               "predicted_latency_ms": table.predict(arch).latency_ms, "seeds": {}}
        for seed in seeds:
            row["seeds"][str(seed)] = recorded[(str(arch), str(seed))]
        row["map"] = sum(s["map"] for s in row["seeds"].values()) / len(seeds)
        rows.append(row)
    result = {"space": args.space, "resolution": args.resolution, "epochs": args.epochs, "seeds": seeds,
              **({"hood": args.hood, "n": args.n} if args.hood else {}),
              "data": "hwnas " + " ".join(DATA_CMD), "train": "hwnas train --arch A --data DATA --epochs "
              f"{args.epochs} --batch-size 16 --lr 2e-3 --seed S", "table": args.table, "rows": rows}
    return result, table_md(result)


def table_md(result: dict) -> str:
    seeds = result["seeds"]
    lines = [f"Truth set: {len(result['rows'])} detectors of space `{result['space']}` at {result['resolution']} px, "
             f"{result['epochs']} epochs, seeds {', '.join(map(str, seeds))} (mAP 0.5:0.95 on 200 val images).", "",
             "| # | arch | " + " | ".join(f"mAP s{s}" for s in seeds) + " | mean | latency (ms, table) | train (s) |",
             "|---|---|" + "---|" * (len(seeds) + 3)]
    for i, r in enumerate(sorted(result["rows"], key=lambda r: -r["map"])):
        lines.append(f"| {i + 1} | `{r['arch']}` | " + " | ".join(f"{r['seeds'][str(s)]['map']:.4f}" for s in seeds)
                     + f" | {r['map']:.4f} | {r['predicted_latency_ms']:.2f} | "
                     + f"{sum(v['train_s'] for v in r['seeds'].values()) / len(r['seeds']):.0f} |")
    if len(seeds) > 1:  # how much of the truth's order is the seed's
        first, second = ([r["seeds"][str(s)]["map"] for r in result["rows"]] for s in seeds[:2])
        gap = max(abs(x - y) for x, y in zip(first, second))
        lines += ["", f"Seeds {seeds[0]} and {seeds[1]} order the detectors alike with Kendall tau "
                      f"{kendalltau(first, second).statistic:.2f}; a detector's mAP differs between them by up to {gap:.4f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
