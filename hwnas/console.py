"""What a command prints on stderr while it works: one-line messages, progress, and what Ctrl-C keeps.

Progress has two faces. On a terminal it is rich's live bar with an ETA. Anywhere else (``nohup``,
``docker run -d``, CI logs, a search worker's log file) a live bar draws nothing until the end, so
progress becomes plain lines instead, at most one every ``PLAIN_EVERY_S`` seconds, plus the first
and the last::

    progress: train 120/600 20.0% elapsed 0:01:02 eta 0:04:08 | epoch 2/10 loss 1.234

Lines a command logs on purpose (``Progress.log``: one per training epoch) appear in both faces.

Ctrl-C: typer turns a KeyboardInterrupt into exit code 130 before ``hwnas.cli.app.main`` sees it, so a
command states up front what an interrupt keeps (``keeps``) and ``main`` prints that line.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

PLAIN_EVERY_S = 10.0  # the most often a non-terminal gets a progress line (HWNAS_PROGRESS_EVERY_S overrides)
PROGRESS_PREFIX = "progress: "

_kept = [""]


def say(msg: str) -> None:
    """One line on stderr, flushed at once (a log file sees it as it happens)."""
    print(msg, file=sys.stderr, flush=True)


def keeps(note: str) -> None:
    """What an interrupt of the running command leaves behind and how to go on (printed on Ctrl-C)."""
    _kept[0] = note


def interrupted_line() -> str:
    note = _kept[0] or "nothing was written"
    return f"error: interrupted; {note}"


def _every_s() -> float:
    import os

    try:
        v = float(os.environ.get("HWNAS_PROGRESS_EVERY_S", PLAIN_EVERY_S))
    except ValueError:
        return PLAIN_EVERY_S
    return v if v >= 0 else PLAIN_EVERY_S


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """``update(done, total, item)`` as the work advances; ``log(line)`` for a line of its own."""

    def __init__(self, title: str, header: str = "", every_s: float | None = None) -> None:
        self.title, self.header = title, header
        self.every_s = _every_s() if every_s is None else every_s
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._started = False
        self._t0 = self._last = 0.0
        self._done0 = 0

    # ------------------------------------------------------------------ both faces
    def __call__(self, done: int, total: int, item: str = "") -> None:
        if not self._started:
            self._start(done, total)
        if self.tty:
            self._bar.update(self._task, completed=done, item=item[-70:])
            return
        now = time.monotonic()
        if done >= total or now - self._last >= self.every_s or self._last == 0.0:
            self._last = now
            say(self.plain_line(done, total, item, now))

    def log(self, line: str) -> None:
        if self.tty and self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            say(line)

    def plain_line(self, done: int, total: int, item: str, now: float) -> str:
        elapsed = now - self._t0
        rate = (done - self._done0) / elapsed if elapsed > 0 else 0.0
        eta = _clock((total - done) / rate) if rate > 0 else "0:00:00" if done >= total else "?"
        pct = 100.0 * done / total if total else 100.0
        tail = f" | {item}" if item else ""
        return f"{PROGRESS_PREFIX}{self.title} {done}/{total} {pct:.1f}% elapsed {_clock(elapsed)} eta {eta}{tail}"

    # ------------------------------------------------------------------ lifecycle
    def _start(self, done: int, total: int) -> None:
        self._started = True
        self._t0 = time.monotonic()
        self._done0 = done  # resumed work: rate and ETA count only what this run does
        if self.header:
            say(self.header)
        if self.tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[item]}", style="dim"),
                            console=Console(stderr=True), transient=False, refresh_per_second=4)
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=total, completed=done, item="")

    def _abort(self) -> None:
        if self._bar is not None:
            self._bar.live.transient = True
            self._bar.live.stop()  # not bar.stop(): on a non-terminal that prints an empty line
            self._bar = None

    def _finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def progress(title: str, header: str = "") -> Iterator[Progress]:
    """A ``Progress`` for the block. ``header`` and the first progress appear with the first update,
    so whatever fails before the work starts (bad data, a table of another run) stays one ``error:``
    line; an error inside the block takes a terminal's bar away with it."""
    p = Progress(title, header)
    try:
        yield p
    except BaseException:
        p._abort()
        raise
    p._finish()


def path_arg(text):
    """typer's parser for every path option: an empty path is a usage error, not the working folder
    (``--out ""`` would otherwise write a run into whatever folder the command was started in).
    Defaults arrive here too, already as ``Path``."""
    from pathlib import Path

    import typer

    if isinstance(text, Path):
        return text
    if not text.strip():
        raise typer.BadParameter("the path is empty; give a file or folder name")
    return Path(text)
