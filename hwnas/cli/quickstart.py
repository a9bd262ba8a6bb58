"""``hwnas quickstart``: from nothing to a deployable detector on this machine, one command.

Every step is an ordinary hwnas command, printed before it runs so that any step can be rerun
alone, and run in-process through the same entry point (what is printed is what ran). Each step
either resumes by itself (profile, search, train) or is skipped when its output exists, so a
quickstart killed at any point continues where it stopped when run again. The closing summary
names, for every figure, the file it was read from (``OUT/summary.json``).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwnas.console import keeps
from hwnas.errors import HwnasError

if TYPE_CHECKING:
    from hwnas.search.records import TrialRecord


@dataclass(frozen=True)
class Plan:
    """The sizes of one quickstart: well inside 20 minutes on 2 CPU cores (docs/benchmarks.md §7)."""

    kind: str  # shapes | faces (hwnas data synth)
    size: int
    n_train: int
    n_val: int
    space: str
    resolution: int
    num_classes: int
    trials: int
    population: int
    epochs_per_trial: int
    max_train_images: int
    train_epochs: int
    batch_size: int = 16
    profile_min_time: float = 0.05
    profile_repeats: int = 5
    bench_min_time: float = 2.0
    calib_images: int = 32
    recipe: str | None = None  # the training recipe (hwnas/train/recipes.py) of the final training


PLANS: dict[tuple[str, bool], Plan] = {
    ("shapes", False): Plan("shapes", 128, 800, 200, "small", 128, 3, trials=8, population=4, epochs_per_trial=2,
                            max_train_images=400, train_epochs=12),
    ("faces", False): Plan("faces", 128, 800, 200, "face", 128, 1, trials=8, population=4, epochs_per_trial=2,
                           max_train_images=400, train_epochs=12, recipe="face-s"),
    # --fast: the same pipeline at toy sizes, for tests and a first look (about a minute). The final
    # detector trains 3 epochs (12 iterations): the heads' BatchNorms are per level, one statistics
    # update an iteration each, and after 4 the face detector's int8 calibration met a tensor of
    # (near) constant values, which onnxruntime's histogram calibrators refuse ("Too many bins").
    ("shapes", True): Plan("shapes", 64, 32, 8, "tiny", 64, 3, trials=2, population=2, epochs_per_trial=1,
                           max_train_images=0, train_epochs=3, batch_size=8, profile_min_time=0.005,
                           profile_repeats=3, bench_min_time=0.1, calib_images=4),
    ("faces", True): Plan("faces", 64, 32, 8, "face", 64, 1, trials=2, population=2, epochs_per_trial=1,
                          max_train_images=0, train_epochs=3, batch_size=8, profile_min_time=0.005, profile_repeats=3,
                          bench_min_time=0.1, calib_images=4, recipe="face-s"),
}
# --recipe: which data, space and training recipe the quickstart runs (None: generated shapes)
RECIPES = {None: "shapes", "face": "faces"}


def committed_table(plan: Plan) -> Path | None:
    """A table shipped with hwnas (``latency_tables/``) for this plan's space, resolution and
    classes, measured on this machine's target (ort-cpu, 1 thread); None if there is none."""
    from hwnas.backends import get_backend
    from hwnas.latency.table import LatencyTable

    folder = Path(__file__).resolve().parent.parent / "latency_tables"
    if not folder.is_dir():
        return None
    here = get_backend("ort-cpu", threads=1).target()
    for path in sorted(folder.glob("*.json")):
        try:
            t = LatencyTable.load(path)
        except HwnasError:
            continue
        if t.space == plan.space and plan.resolution in t.resolutions and t.num_classes == plan.num_classes \
                and not t.target.mismatches(here):
            return path
    return None


class Quickstart:
    def __init__(self, out: Path, run: Callable[[list[str]], int], recipe: str | None = None, fast: bool = False,
                 say: Callable[[str], None] = print) -> None:
        """``run(argv)`` runs one ``hwnas`` command in this process (``hwnas.cli.app.run``, passed in
        by the command line, which imports this module)."""
        if recipe not in RECIPES:
            raise HwnasError(f"--recipe {recipe!r}: quickstart knows {', '.join(r for r in RECIPES if r)} "
                             f"(or none: generated shapes)")
        self.plan = PLANS[(RECIPES[recipe], fast)]
        self.out, self.say, self.run_command = Path(out), say, run
        self.recipe, self.fast = recipe, fast
        self.commands: list[str] = []
        self.data = self.out / "data"
        self.rtx = _has_rtx()

    # ------------------------------------------------------------------ running steps
    def _hwnas(self, title: str, argv: list[str], done: Path | None = None) -> None:
        cmd = shlex.join(["hwnas", *argv])
        self.commands.append(cmd)
        self.say(f"\n[{len(self.commands)}] {title}\n$ {cmd}")
        if done is not None and done.exists():
            self.say(f"  done already ({done}); skipped")
            return
        try:
            self.run_command(argv)
        except HwnasError as e:
            raise HwnasError(f"{e} (quickstart step {len(self.commands)}, {title}: fix it and run the same "
                             f"quickstart again; finished steps are kept)") from None
        except KeyboardInterrupt:
            keeps(f"finished steps are kept in {self.out}; run the same quickstart again to resume")
            raise

    def run(self) -> dict:
        p, out = self.plan, self.out
        from hwnas.fileio import check_writable

        check_writable(out / "summary.json", "quickstart folder")
        self._hwnas("generate the dataset", ["data", "synth", "--kind", p.kind, "--n-train", str(p.n_train),
                                             "--n-val", str(p.n_val), "--size", str(p.size), "--seed", "0",
                                             "--out", str(self.data)], done=self.data / "val.json")
        table = committed_table(p)
        if table is not None:
            self.say(f"\nlatency table: reusing {table} (measured on this machine's target)")
        else:
            table = out / "table.json"
            self._hwnas("profile this CPU's latency table (resumable)",
                        ["profile", "--backend", "ort-cpu", "--threads", "1", "--space", p.space, "--resolutions",
                         str(p.resolution), "--num-classes", str(p.num_classes), "--min-time", str(p.profile_min_time),
                         "--repeats", str(p.profile_repeats), "--out", str(table)])
        search = out / "search"
        self._hwnas("search: structural then modular stage, front re-measured",
                    ["search", "--data", str(self.data), "--table", str(table), "--space", p.space, "--resolutions",
                     str(p.resolution), "--trials", str(p.trials), "--population", str(p.population),
                     "--epochs-per-trial", str(p.epochs_per_trial), "--max-train-images", str(p.max_train_images),
                     "--batch-size", str(p.batch_size), "--threads", "2", "--out", str(search)])
        chosen = choose(search / "pareto.json")
        self.say(f"\nchosen: {chosen.arch} (best mAP on the front: {chosen.score:.4f} after "
                 f"{p.epochs_per_trial} epoch(s))")
        run = out / "train"
        self._hwnas("train the chosen detector longer",
                    ["train", "--arch", str(chosen.arch), "--data", str(self.data), "--epochs", str(p.train_epochs),
                     "--batch-size", str(p.batch_size), *self._recipe_flags(), "--out", str(run)])
        engines = out / "engines"
        fmt = ["--protocol", "wider"] if p.kind == "faces" else []
        self._hwnas("export to ONNX (fp32)", ["export", "--weights", str(run / "last.pt"), "--out",
                                             str(engines / "best")], done=engines / "best.json")
        self._hwnas("export to ONNX (int8, calibrated on training images)",
                    ["export", "--weights", str(run / "last.pt"), "--out", str(engines / "best-int8"), "--precision",
                     "int8", "--calib-data", str(self.data), "--calib-images", str(p.calib_images)],
                    done=engines / "best-int8.json")
        for name in ("best", "best-int8"):
            self._hwnas(f"parity: score the {name} ONNX", ["eval", "--model", str(engines / f"{name}.onnx"), "--data",
                                                          str(self.data), *fmt, "--out", str(out / f"eval-{name}.json")],
                        done=out / f"eval-{name}.json")
        benches = {"pytorch": run / "last.pt", "onnx-fp32": engines / "best.onnx", "onnx-int8": engines / "best-int8.onnx"}
        for name, model in benches.items():
            self._hwnas(f"benchmark {name}", ["bench", "--model", str(model), "--threads", "1", "--min-time",
                                              str(p.bench_min_time), "--out", str(out / f"bench-{name}.json")],
                        done=out / f"bench-{name}.json")
        if self.rtx:
            self._hwnas("TensorRT-RTX engine, ahead of time (no GPU needed)",
                        ["export", "--weights", str(run / "last.pt"), "--out", str(engines / "best-rtx"), "--format",
                         "engine", "--backend", "tensorrt-rtx", "--sm", "89"], done=engines / "best-rtx.json")
        else:
            self.say("\nTensorRT-RTX is not installed: no engine built (pip install 'hwnas[tensorrt-rtx]')")
        return self.summary(chosen, table)

    def _recipe_flags(self) -> list[str]:
        """The final training uses the tricks the search trained its candidates with."""
        from hwnas.train.recipes import recipe_flags

        return recipe_flags(self.plan.recipe or "")

    # ------------------------------------------------------------------ the summary
    def summary(self, chosen: "TrialRecord", table: Path) -> dict:
        from hwnas.fileio import write_json

        out = self.out

        def read(name: str) -> dict:
            return json.loads((out / name).read_text())

        train = read("train/metrics.json")
        evals = {n: read(f"eval-{n}.json") for n in ("best", "best-int8")}
        bench = {n: read(f"bench-{n}.json") for n in ("pytorch", "onnx-fp32", "onnx-int8")}
        key = "hard" if self.plan.kind == "faces" else "map"
        figures = {
            "arch": {"value": str(chosen.arch), "file": "search/pareto.json"},
            "map_checkpoint": {"value": train["map"], "file": "train/metrics.json"},
            "map_onnx_fp32": {"value": evals["best"]["map"], "file": "eval-best.json"},
            "map_onnx_int8": {"value": evals["best-int8"]["map"], "file": "eval-best-int8.json"},
            "predicted_latency_ms": {"value": chosen.predicted_latency_ms, "file": "search/pareto.json"},
            "measured_latency_ms": {"value": chosen.measured_latency_ms, "file": "search/pareto.json"},
        }
        if key == "hard":
            figures["wider_hard_ap_onnx_fp32"] = {"value": evals["best"]["hard"], "file": "eval-best.json"}
        for n, b in bench.items():
            figures[f"{n}_end_to_end_ms"] = {"value": b["end_to_end"]["median_ms"], "file": f"bench-{n}.json"}
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "trials" not in p.parts
                       and "images" not in p.parts and "predictions" not in p.name)
        s = {"plan": asdict(self.plan), "recipe": self.recipe, "fast": self.fast, "table": str(table),
             "figures": figures, "pareto_plot": "search/pareto.png", "commands": self.commands, "files": files}
        write_json(out / "summary.json", s)
        pt, fp, i8 = (figures[f"{n}_end_to_end_ms"]["value"] for n in ("pytorch", "onnx-fp32", "onnx-int8"))
        lines = [
            "", f"done: {out}",
            f"  Pareto plot      {out / 'search/pareto.png'}",
            f"  chosen arch      {chosen.arch}",
            f"  mAP              {train['map']:.4f} (checkpoint), {evals['best']['map']:.4f} (ONNX fp32), "
            f"{evals['best-int8']['map']:.4f} (ONNX int8)",
            f"  latency          predicted {chosen.predicted_latency_ms:.2f} ms, measured "
            f"{chosen.measured_latency_ms:.2f} ms (network, {Path(str(table)).name})" if chosen.measured_latency_ms
            else f"  latency          predicted {chosen.predicted_latency_ms:.2f} ms",
            f"  end to end       PyTorch {pt:.2f} ms, ONNX fp32 {fp:.2f} ms ({pt / fp:.2f}x), int8 {i8:.2f} ms "
            f"({pt / i8:.2f}x), 1 thread",
        ]
        if key == "hard":
            lines.insert(5, f"  WIDER hard AP    {evals['best']['hard']:.4f} (ONNX fp32; subsets by face height)")
        lines.append(f"  every figure and its file: {out / 'summary.json'}; every step's command is in it too")
        self.say("\n".join(lines))
        return s


def choose(pareto: Path) -> "TrialRecord":
    """The front member with the best mAP (on the measured front when it was re-measured)."""
    from hwnas.search.records import read_front

    rows = read_front(pareto)
    if not rows:
        raise HwnasError(f"{pareto} holds no front: every candidate failed; see the search's report.md")
    measured = [r for r in rows if r.on_measured_front] or rows
    return max(measured, key=lambda r: r.score)


def _has_rtx() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt_rtx") is not None
