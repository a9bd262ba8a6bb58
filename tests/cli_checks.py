"""Checks the CLI tests share: bad input ends in one ``error:`` line and leaves no trace."""
from __future__ import annotations

from pathlib import Path

from hwnas.cli.app import main
from hwnas.console import PROGRESS_PREFIX


def fill(argv: list[str], subs: dict[str, str]) -> list[str]:
    """``argv`` with every placeholder key of ``subs`` (e.g. ``"{d}"``) replaced by its value."""
    out = []
    for arg in argv:
        for k, v in subs.items():
            arg = arg.replace(k, v)
        out.append(arg)
    return out


class Seen:
    """capfd as ``assert_one_error`` reads it, keeping stderr to check the fix in the same line."""

    def __init__(self, capfd) -> None:
        self.capfd, self.err = capfd, ""

    def readouterr(self):
        r = self.capfd.readouterr()
        self.err = r.err
        return r


def assert_one_error(capfd, argv: list[str], expect: str, watch: Path, absent: Path) -> None:
    """``hwnas.cli.app.main(argv)`` refuses the way a user should see it: a non-zero exit, nothing on
    stdout, exactly one ``error: ...`` line on stderr containing ``expect`` (no traceback, no
    internal error), no file under ``watch`` created or changed, and ``absent`` (the output it was
    asked to write) not created, not even as a folder."""
    before = {p: p.read_bytes() for p in watch.rglob("*") if p.is_file()}
    rc = main(argv)
    out, err = capfd.readouterr()
    assert rc != 0, err
    assert "Traceback" not in out + err and out == ""
    # exactly one line: no progress bar, no message; only a failure after the work ran (a full
    # disk when the results are written) may follow the plain progress lines of a non-terminal
    lines = [ln for ln in err.splitlines() if not ln.startswith(PROGRESS_PREFIX)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    assert expect in lines[0], lines[0]
    assert {p: p.read_bytes() for p in watch.rglob("*") if p.is_file()} == before  # nothing written or changed
    assert not absent.exists()
