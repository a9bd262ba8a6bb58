"""The command line as a real process sees it: the installed console script on a fresh install,
exit codes, Ctrl-C and SIGTERM, progress in a log file, and two commands racing for one table.

These run the ``hwnas`` script that ``pip install`` put beside this Python (not ``python -m``),
so a dependency that only the development machine happens to have fails here (it did once:
typer 0.29 no longer brings click, and every usage error became a traceback)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_RES, sigkill_when
from hwnas.spec.space import SPACES

HWNAS = Path(sys.executable).parent / "hwnas"
TINY = SPACES["tiny"].with_resolutions((TINY_RES,))
N_UNITS = len(TINY.all_units(80))
ARCH = "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn"
PROFILE = ["profile", "--space", "tiny", "--resolutions", str(TINY_RES), "--min-time", "0.05", "--repeats", "3"]


def script(*args, timeout: float = 120, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert HWNAS.is_file(), f"{HWNAS} is missing: install hwnas as the README says (pip install -e '.[test]')"
    return subprocess.run([str(HWNAS), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def _entries(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["entries"])
    except (OSError, ValueError, KeyError):
        return -1


# ----------------------------------------------------------------------------- the installed script
@pytest.mark.parametrize("args, rc, expect", [
    (["latency"], 2, "error: Missing option '--arch'"),
    (["--bogus"], 2, "error: No such option: --bogus"),
    (["train", "--data", "d", "--out", "r", "--epochs", "abc"], 2, "Invalid value for '--epochs'"),
    (["data", "synth", "--out", ""], 2, "the path is empty"),
    (["sample", "--space", "huge"], 1, "unknown search space 'huge'"),
])
def test_usage_errors_are_one_line(args, rc, expect, tmp_path) -> None:
    r = script(*args, cwd=tmp_path)
    assert r.returncode == rc, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and expect in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_version_and_help_on_every_command() -> None:
    from hwnas import __version__

    r = script("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hwnas {__version__}", r.stderr
    commands = ["profile", "latency", "validate", "train", "eval", "search", "export", "bench", "infer",
                "quickstart", "units", "sample", "data", "data synth"]
    for cmd in commands:
        for flag in ("-h", "--help"):
            r = script(*cmd.split(), flag)
            assert r.returncode == 0 and r.stdout.startswith(f"Usage: hwnas {cmd}"), (cmd, flag, r.stderr)


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM
@pytest.mark.slow
@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_profile_says_what_it_kept_and_resumes(sig, rc, tmp_path) -> None:
    out = tmp_path / "t.json"
    log = tmp_path / "log"
    code = sigkill_when([str(HWNAS), *PROFILE, "--out", str(out)], log, lambda: _entries(out) >= 3, 120, sig=sig)
    assert code == rc, log.read_text()
    lines = log.read_text().splitlines()
    assert lines[-1] == f"error: interrupted; the units timed so far are kept in {out}; rerun the same command " \
                        f"to resume", lines
    assert "Traceback" not in log.read_text()
    kept = _entries(out)
    assert 3 <= kept < N_UNITS
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.lock"))
    r = script(*PROFILE, "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _entries(out) == N_UNITS


@pytest.mark.slow
def test_interrupted_synth_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "ds"
    log = tmp_path / "log"
    staged = lambda: [p for p in tmp_path.glob(".ds.*") if (p / "images").is_dir() and  # noqa: E731
                      len(list((p / "images").iterdir())) >= 20]
    code = sigkill_when([str(HWNAS), "data", "synth", "--n-train", "3000", "--n-val", "10", "--size", "64", "--out",
                         str(out)], log, lambda: bool(staged()), 120, sig=signal.SIGINT)
    assert code == 130, log.read_text()
    assert log.read_text().splitlines()[-1].startswith(f"error: interrupted; nothing was written to {out}")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["log"]  # staging removed


# ----------------------------------------------------------------------------- progress without a terminal
@pytest.mark.slow
def test_progress_lines_in_a_log_file(tmp_path) -> None:
    """stderr to a file (nohup, docker logs, CI): plain lines, not a bar drawn at the end; at most one
    every HWNAS_PROGRESS_EVERY_S seconds, plus the first and the last."""
    env = {**os.environ, "HWNAS_PROGRESS_EVERY_S": "0"}
    r = script(*PROFILE, "--out", tmp_path / "a.json", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: profile ")]
    assert len(lines) == N_UNITS + 1  # every unit, then the closing "done"
    assert lines[-1].startswith(f"progress: profile {N_UNITS}/{N_UNITS} 100.0% elapsed ")
    assert "\x1b[" not in r.stderr  # no terminal control codes in a log
    t0 = time.monotonic()
    env["HWNAS_PROGRESS_EVERY_S"] = "3600"
    r = script(*PROFILE, "--out", tmp_path / "b.json", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: profile ")]
    assert time.monotonic() - t0 < 3600 and len(lines) == 2, lines  # the first and the last only


# ----------------------------------------------------------------------------- one table, two writers
@pytest.mark.slow
def test_second_profile_on_one_table_is_refused(tmp_path) -> None:
    out = tmp_path / "t.json"
    first = subprocess.Popen([str(HWNAS), *PROFILE, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while _entries(out) < 1:  # the first one holds the lock while it times units
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        # Paused (it keeps its lock) while the second runs: on a loaded machine the second took longer
        # to start than the first took to finish the whole profile.
        first.send_signal(signal.SIGSTOP)
        try:
            r = script(*PROFILE, "--out", out)
        finally:
            first.send_signal(signal.SIGCONT)
        assert r.returncode == 1, r.stderr
        assert r.stderr == f"error: another command (pid {first.pid}) is writing the latency table {out}; wait " \
                           f"for it to finish, or give this one another path\n"
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0 and _entries(out) == N_UNITS
    assert not (tmp_path / ".t.json.lock").exists()
