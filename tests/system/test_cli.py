"""The command line, as a user runs it: real subprocesses, real files, kill -9, bad input."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_RES, sigkill_when
from hwnas.spec.arch import Arch
from hwnas.spec.space import SPACES
from hwnas.cli.app import main
from hwnas.latency.table import LatencyTable

REPO = Path(__file__).resolve().parents[2]
TINY = SPACES["tiny"].with_resolutions((TINY_RES,))
ARCH = str(TINY.sample(1))
N_UNITS = len(TINY.all_units(80))


def hwnas(*args) -> list[str]:
    return [sys.executable, "-m", "hwnas.cli.app", *map(str, args)]


def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(hwnas(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _entries(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["entries"])
    except (OSError, ValueError, KeyError):
        return -1


# ------------------------------------------------------------------------------ profile, kill -9, resume
@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict:
    """``hwnas profile`` killed with SIGKILL part-way, then the same command run again."""
    out = tmp_path_factory.mktemp("cli") / "tiny.json"
    args = ("profile", "--space", "tiny", "--resolutions", TINY_RES, "--min-time", "0.03", "--repeats", "3",
            "--out", out)
    rc = sigkill_when(hwnas(*args), out.with_suffix(".log"), lambda: _entries(out) >= 10, 120, cwd=REPO)
    assert rc == -signal.SIGKILL
    at_kill = LatencyTable.load(out)  # never corrupt, whatever the moment of the kill
    resumed = run(*args)
    return {"out": out, "at_kill": at_kill, "resumed": resumed}


@pytest.mark.slow
def test_resume_after_kill_9(killed_and_resumed: dict) -> None:
    r = killed_and_resumed["resumed"]
    assert r.returncode == 0, r.stderr
    at_kill: LatencyTable = killed_and_resumed["at_kill"]
    assert 10 <= len(at_kill.entries) < N_UNITS  # really killed part-way
    final = LatencyTable.load(killed_and_resumed["out"])
    assert len(final.entries) == N_UNITS
    assert {u.key() for u in TINY.all_units(80)} == set(final.entries)
    for k, lat in at_kill.entries.items():  # earlier measurements kept as they were
        assert final.entries[k] == lat
    assert final.target == at_kill.target and final.created == at_kill.created
    assert f"{N_UNITS} units" in r.stderr and "Traceback" not in r.stderr
    # a third run has nothing left to do and changes nothing
    before = killed_and_resumed["out"].read_bytes()
    again = run("profile", "--space", "tiny", "--resolutions", TINY_RES, "--min-time", "0.03", "--repeats", "3",
                "--out", killed_and_resumed["out"])
    assert again.returncode == 0, again.stderr
    assert json.loads(killed_and_resumed["out"].read_bytes())["entries"] == json.loads(before)["entries"]


@pytest.mark.slow
def test_latency_measure_json(killed_and_resumed: dict) -> None:
    table = killed_and_resumed["out"]
    r = run("latency", "--arch", ARCH, "--table", table, "--measure", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["arch"] == ARCH
    assert d["predicted_ms"] > 0 and d["measured_ms"] > 0
    assert d["predicted_ms"] == pytest.approx(LatencyTable.load(table).predict(Arch.parse(ARCH)).latency_ms)
    assert d["error_pct"] == pytest.approx(100 * (d["predicted_ms"] - d["measured_ms"]) / d["measured_ms"])
    assert sum(d["breakdown_ms"].values()) == pytest.approx(d["unit_sum_ms"])
    assert d["target"]["backend"] == "ort-cpu" and d["corrected"] is False


def test_latency_text_and_units(tiny_table_file: Path, capsys) -> None:
    assert main(["latency", "--arch", ARCH, "--table", str(tiny_table_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(ARCH) and "predicted" in out and "stem" in out and "head" in out
    assert main(["units", "--arch", "resnet18-fpn-retinanet"]) == 0
    out = capsys.readouterr().out
    assert "stage2.0" in out and "basic[cin=64,cout=128,hw=128x128,stride=2,norm=bn]" in out
    assert main(["sample", "--space", "tiny", "--n", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.split() == [str(SPACES["tiny"].sample(s)) for s in (1, 2, 3)]


@pytest.mark.slow
def test_validate_cli(table_copy: Path, tmp_path: Path) -> None:
    rep, png = tmp_path / "rep" / "validate.json", tmp_path / "fid.png"
    r = run("validate", "--table", table_copy, "--samples", 3, "--calib-samples", 5, "--baseline-samples", 0,
            "--out", rep, "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "within_10=" in r.stdout and "spearman=" in r.stdout and "Traceback" not in r.stderr
    d = json.loads(rep.read_text())
    for k in ("within_5", "within_10", "mape", "spearman", "kendall", "noise_cv", "raw", "correction"):
        assert k in d, k  # (the per-operator baseline is checked in test_latency; off here for speed)
    assert d["complete"] and d["samples"] == 3 and "naive" not in d
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (LatencyTable.load(table_copy).correction is not None) == d["correction_check"]["kept"]
    assert "correction kept" in r.stdout or "correction rejected" in r.stdout


# ------------------------------------------------------------------------------ bad input
def _write_bad_tables(d: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    (d / "corrupt.json").write_text('{"format": "hwnas-latency-table/1", "entries": {"a": ')
    (d / "truncated.json").write_bytes(data[: len(data) // 2])
    (d / "notatable.json").write_text('{"hello": "world"}')
    other = json.loads(data)
    other["target"]["device"] = "Imaginary CPU 9000"
    (d / "other.json").write_text(json.dumps(other))
    (d / "afile").write_text("a file, not a folder")
    return {p.stem: p for p in d.iterdir()}


GOOD_ARCH = ARCH
# name: (argv with {good}/{d} placeholders, substring expected in the error line, exit code)
BAD_INPUT = {
    "malformed arch": (["latency", "--arch", "i64/basic_c16_12-21-21-21/fpn_p3-5_c32/retina_d1_c32/bn",
                        "--table", "{good}"], "stage 1 '12'", 1),
    "arch field count": (["latency", "--arch", "i64/basic_c16_1-2-2-2/retina_d1_c32/bn", "--table", "{good}"],
                         "4 '/'-separated fields", 1),
    "unknown preset": (["latency", "--arch", "resnet19", "--table", "{good}"], "unknown preset 'resnet19'", 1),
    "unit not in table": (["latency", "--arch", str(SPACES["tiny"].sample(1)), "--table", "{good}"],
                          "is not in the table", 1),
    "unknown backend": (["profile", "--backend", "onnx-gpu", "--space", "tiny", "--out", "{d}/x.json"],
                        "unknown backend 'onnx-gpu'", 1),
    "unknown space": (["profile", "--space", "huge", "--out", "{d}/x.json"], "unknown search space 'huge'", 1),
    "resolutions abc": (["profile", "--space", "tiny", "--resolutions", "abc", "--out", "{good}"],
                        "--resolutions 'abc'", 1),
    "corrupt table": (["latency", "--arch", GOOD_ARCH, "--table", "{d}/corrupt.json"], "corrupt or truncated", 1),
    "truncated table": (["latency", "--arch", GOOD_ARCH, "--table", "{d}/truncated.json"], "corrupt or truncated", 1),
    "not a table": (["latency", "--arch", GOOD_ARCH, "--table", "{d}/notatable.json"],
                    "is not an hwnas latency table", 1),
    "missing table file": (["latency", "--arch", GOOD_ARCH, "--table", "{d}/nope.json"], "does not exist", 1),
    "other target measure": (["latency", "--arch", GOOD_ARCH, "--table", "{d}/other.json", "--measure"],
                             "measured on another target", 1),
    "other target resume": (["profile", "--space", "tiny", "--resolutions", str(TINY_RES), "--out", "{d}/other.json"],
                            "measured on another target", 1),
    "other target validate": (["validate", "--table", "{d}/other.json", "--out", "{d}/v.json"],
                              "measured on another target", 1),
    "corrupt table validate": (["validate", "--table", "{d}/truncated.json", "--out", "{d}/v.json"],
                               "corrupt or truncated", 1),
    "out under a file": (["profile", "--space", "tiny", "--out", "{d}/afile/x.json"], "cannot create folder", 1),
    "out in /proc": (["profile", "--space", "tiny", "--out", "/proc/hwnas-test.json"], "cannot write", 1),
    "report in /proc": (["validate", "--table", "{good}", "--out", "/proc/hwnas-test.json"], "cannot write", 1),
    "plot under a file": (["validate", "--table", "{good}", "--out", "{d}/v.json", "--plot", "{d}/afile/p.png"],
                          "cannot create folder", 1),
    "out is a folder": (["profile", "--space", "tiny", "--out", "{d}"], "is a folder", 1),
    "missing --table": (["latency", "--arch", GOOD_ARCH], "Missing option '--table'", 2),
    "unknown option": (["profile", "--space", "tiny", "--bogus", "1"], "No such option: --bogus", 2),
    "unknown command": (["frobnicate"], "No such command 'frobnicate'", 2),
    "not an int": (["validate", "--table", "{good}", "--samples", "many"], "'--samples'", 2),
    "tensorrt missing": (["profile", "--backend", "tensorrt", "--space", "tiny", "--out", "{d}/trt.json"],
                         "pip install", 1),
    "torch cuda without gpu": (["profile", "--backend", "torch", "--device", "cuda", "--space", "tiny",
                                "--out", "{d}/cuda.json"], "cuda", 1),
    "too few samples": (["validate", "--table", "{good}", "--samples", "2"], "--samples 2: must be in 3..", 1),
    "num classes": (["profile", "--space", "tiny", "--num-classes", "0", "--out", "{d}/x.json"],
                    "--num-classes 0: must be in 1..10000", 1),
    # failing commands pointed at the good table must leave it alone
    "good table other space": (["profile", "--space", "default", "--resolutions", str(TINY_RES), "--out", "{good}"],
                               "holds space 'tiny'", 1),
    "good table other classes": (["profile", "--space", "tiny", "--resolutions", str(TINY_RES),
                                  "--num-classes", "3", "--out", "{good}"], "with 80 classes", 1),
    "good table other backend": (["profile", "--backend", "torch", "--space", "tiny", "--resolutions",
                                  str(TINY_RES), "--out", "{good}"], "measured on another target", 1),
    "good table bad timing": (["profile", "--space", "tiny", "--resolutions", str(TINY_RES), "--repeats", "0",
                               "--out", "{good}"], "min_repeats", 1),
}


@pytest.fixture(scope="module")
def bad_dir(tiny_table_file: Path, tmp_path_factory) -> tuple[Path, Path, dict[Path, bytes]]:
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.json"
    shutil.copyfile(tiny_table_file, good)
    _write_bad_tables(d, good)
    return d, good, {p: p.read_bytes() for p in d.iterdir() if p.is_file()}


def _argv(name: str, d: Path, good: Path) -> list[str]:
    return [a.replace("{good}", str(good)).replace("{d}", str(d)) for a in BAD_INPUT[name][0]]


def _check_error(name: str, rc: int, out: str, err: str) -> None:
    _, expect, code = BAD_INPUT[name]
    assert rc == code, (rc, err)
    assert "Traceback" not in err + out
    lines = err.splitlines()
    assert len(lines) == 1, err  # exactly one line, nothing else
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    assert expect in lines[0], lines[0]
    assert out == ""


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input(name: str, bad_dir, capfd) -> None:
    """In process (fast), capturing the real file descriptors 1 and 2."""
    d, good, _ = bad_dir
    rc = main(_argv(name, d, good))
    out, err = capfd.readouterr()
    _check_error(name, rc, out, err)


# The same through real processes, for a representative subset (each costs a Python + torch start).
IN_A_PROCESS = ["malformed arch", "corrupt table", "other target measure", "other target resume", "out in /proc",
                "missing --table", "unknown option", "tensorrt missing", "torch cuda without gpu"]


@pytest.fixture(scope="module")
def process_runs(bad_dir) -> dict:
    d, good, _ = bad_dir
    results, pending, running = {}, list(IN_A_PROCESS), []
    while pending or running:  # a few at a time
        while pending and len(running) < 3:
            name = pending.pop(0)
            running.append((name, subprocess.Popen(hwnas(*_argv(name, d, good)), cwd=REPO, text=True,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        name, proc = running.pop(0)
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", IN_A_PROCESS)
def test_bad_input_in_a_process(name: str, process_runs: dict) -> None:
    _check_error(name, *process_runs[name])


def test_failing_commands_leave_files_alone(bad_dir, process_runs) -> None:
    d, good, files = bad_dir
    for name in BAD_INPUT:  # (again, in case this test runs alone)
        main(_argv(name, d, good))
    assert [p.name for p, b in files.items() if p.read_bytes() != b] == []
    # no half-made outputs either
    assert not (d / "x.json").exists() and not (d / "trt.json").exists() and not (d / "cuda.json").exists()
    assert not list(d.glob(".*.tmp")) and not list(d.glob(".*.probe"))
    assert not Path("/proc/hwnas-test.json").exists()


def test_tensorrt_message_names_the_package(capsys, tmp_path: Path) -> None:
    assert main(["profile", "--backend", "tensorrt", "--space", "tiny", "--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err and "tensorrt" in err


def test_main_returns_codes_in_process(tiny_table_file: Path, capsys) -> None:
    assert main(["latency", "--arch", "nope", "--table", str(tiny_table_file)]) == 1
    assert capsys.readouterr().err.startswith("error: unknown preset 'nope'")
    assert main(["latency", "--arch", ARCH]) == 2
    assert main(["--help"]) == 0
    assert "profile" in capsys.readouterr().out

