"""What must not change when the code is reorganised (issue 15: "behaviour unchanged").

``snapshot()`` computes, from the code as it stands: the canonical text of every preset and of
1,000 sampled archs per search space, the search's structural designs, moves, crossovers and
ranked children for fixed seeds, the unit keys of every preset's walk (what a latency table is
keyed by) and of the committed tables, every preset detector's state-dict keys and shapes (what
a checkpoint holds), and the op types and node names of every preset's deployable ONNX graph.
``tests/fixtures/seeded_outputs.json`` holds the snapshot of the tree before the redesign;
``test_seeded_outputs.py`` compares. Regenerate it only for a change that is meant to alter
these (and say so in the commit): ``python tests/seeded_outputs.py > tests/fixtures/seeded_outputs.json``.
Large lists are stored as sha256 digests with their length, small ones as they are.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _digest(items: list) -> dict:
    text = json.dumps(items, sort_keys=True)
    return {"n": len(items), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def archs_part() -> dict:
    from hwnas.spec.arch import Arch
    from hwnas.spec.presets import PRESETS
    from hwnas.spec.space import SPACES

    out = {"presets": {name: str(Arch.parse(text)) for name, text in PRESETS.items()}}
    for name, space in SPACES.items():
        sampled = [str(space.sample(seed)) for seed in range(1000)]
        assert all(str(Arch.parse(s)) == s for s in sampled)
        moved = [str(space.mutate(space.sample(seed), seed + 1)) for seed in range(200)]
        out[f"space {name}: 1000 sampled"] = _digest(sampled)
        out[f"space {name}: 200 moves"] = _digest(moved)
    return out


def search_part() -> dict:
    from hwnas.search.proposals import Parent, crossover, initial_structures, ranked_children, structural_arch
    from hwnas.spec.space import SPACES

    out = {}
    for name, space in SPACES.items():
        for seed in (0, 1, 7):
            for budget in (0, 64):
                rows = initial_structures(space, 6, seed, budget)
                out[f"{name} design seed {seed} budget {budget}"] = rows
                archs = []
                for r in rows:
                    try:
                        archs.append(str(structural_arch(space, **r)))
                    except Exception as e:  # noqa: BLE001 - a refused design is an output too
                        archs.append(f"refused: {e}")
                out[f"{name} structural archs seed {seed} budget {budget}"] = archs
        rng = random.Random(3)
        pool_archs = [space.sample(s) for s in range(8)]
        pool = [Parent(str(a), 0.1 + 0.05 * i, 1.0 + i, f"s#{i}") for i, a in enumerate(pool_archs)]
        out[f"{name} crossovers"] = [str(crossover(space, a, b)) for a, b in zip(pool_archs, pool_archs[1:])]
        known = [(p.map, p.latency_ms) for p in pool]
        kids = ranked_children(space, pool, 4, known, 20.0, lambda a: float(len(a.units(3))) / 10.0, rng, draws=16)
        out[f"{name} ranked children"] = [[str(c.arch), [p.trial for p in c.parents], round(c.latency_ms, 6),
                                           round(c.estimated_map, 6), round(c.gain, 6)] for c in kids]
    return out


def units_part() -> dict:
    from hwnas.latency.table import LatencyTable
    from hwnas.spec.arch import Arch
    from hwnas.spec.presets import PRESETS

    out = {f"preset {n}": _digest([u.key() for u in Arch.parse(t).units(80)]) for n, t in PRESETS.items()}
    for path in sorted((ROOT / "latency_tables").glob("*.json")):
        table = LatencyTable.load(path)
        out[f"table {path.name}"] = _digest(sorted(table.entries))
    return out


def models_part() -> dict:
    import onnx
    import torch

    from hwnas.export.deploy import export_deploy_onnx
    from hwnas.export.pipeline import untrained_model
    from hwnas.spec.presets import PRESETS

    out = {}
    for name in PRESETS:
        model, arch, _ = untrained_model(name)
        sd = model.state_dict()
        out[f"{name} state dict"] = _digest([[k, list(v.shape)] for k, v in sd.items()])
        # The graph at a small input: the node list depends on the structure, not on the input size.
        small = dataclasses.replace(arch, input_hw=(128, 128))
        model, _, _ = untrained_model(str(small))
        torch.manual_seed(0)
        graph = onnx.load_from_string(export_deploy_onnx(model, nms="onnx"))
        out[f"{name} deploy graph ops"] = _digest([n.op_type for n in graph.graph.node])
        out[f"{name} deploy graph names"] = _digest([n.name for n in graph.graph.node])
    return out


PARTS = {"archs": archs_part, "search": search_part, "units": units_part, "models": models_part}


def snapshot() -> dict:
    return {name: part() for name, part in PARTS.items()}


if __name__ == "__main__":
    json.dump(snapshot(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
