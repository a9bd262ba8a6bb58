"""Two workers on one PostgreSQL study against one worker: wall time for N trained candidates.

Starts a private PostgreSQL on loopback (tests/pg.py), runs the same ``hwnas search`` command as
one worker, then as two workers on a fresh database (one torch thread each, so two workers use
the two cores that one leaves half idle), and checks the claims: every candidate trained once.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from common import HWNAS, search_args  # noqa: E402
from pg import drop_database, fresh_database, postgres_server  # noqa: E402


def workers(n: int, url: str, a, runs: Path) -> float:
    cmd = [*HWNAS, "search", "--data", a.data, "--table", a.table, "--space", a.space, "--resolutions", a.resolutions,
           "--stage", "both", "--trials", str(a.trials), "--population", str(a.population),
           "--epochs-per-trial", str(a.epochs), "--threads", "1", "--no-measure", "--storage", url, "--study", "bench"]
    t0 = time.time()
    procs = []
    for w in range(n):
        out = runs / f"{n}w-{w}"
        shutil.rmtree(out, ignore_errors=True)  # old checkpoints would let training "resume" in no time
        print("$", " ".join(cmd), "--out", out, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.PIPE,
                                      stderr=(out / "stderr.log").open("w"), text=True))
    for p in procs:
        o, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed ({p.returncode}): see {runs}/{n}w-*/stderr.log")
        print(o.splitlines()[0], flush=True)
    return time.time() - t0


def claims(url: str) -> list[tuple[str, int]]:
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    with eng.connect() as c:
        rows = c.execute(sa.text("select arch, slot from hwnas_claims where search = 'bench' and arch not like 'init:%'")).fetchall()
    eng.dispose()
    return [(r.arch, r.slot) for r in rows]


def main() -> None:
    ap = search_args(__doc__.splitlines()[0], trials=8, population=2, epochs=1)
    ap.add_argument("--runs", default="runs/bench/workers")
    ap.add_argument("--out", default="benchmarks/results/search_workers.json")
    a = ap.parse_args()
    runs = Path(a.runs)
    result = {"args": vars(a)}
    with postgres_server() as server:
        for n in (1, 2):
            url = fresh_database(server)
            wall = workers(n, url, a, runs)
            c = claims(url)
            archs = [x for x, _ in c]
            # Each run trains other candidates (each slot draws its own seed): the training seconds
            # they add up to say how much of the wall-time gain is parallelism, not easier archs.
            work = sum(json.loads(line)["train_s"] for w in range(n)
                       for line in (runs / f"{n}w-{w}" / "bookkeeping.jsonl").read_text().splitlines() if line.strip())
            result[f"{n}_workers"] = {"wall_s": wall, "train_s_total": work, "parallel_efficiency": work / (n * wall),
                                      "trained": len(c), "distinct": len(set(archs)),
                                      "per_slot": {s: sum(1 for _, x in c if x == s) for s in sorted({x for _, x in c})}}
            drop_database(url)
            print(f"{n} worker(s): {len(c)} candidates ({len(set(archs))} distinct) in {wall:.0f} s", flush=True)
    result["speedup"] = result["1_workers"]["wall_s"] / result["2_workers"]["wall_s"]
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"speed-up of two workers: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
