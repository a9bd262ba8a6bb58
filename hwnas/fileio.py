"""Atomic, checked file writes and safe JSON reads: the two ways hwnas touches files that matter."""
from __future__ import annotations

import json
import os
import platform
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError


def check_writable(path: Path, what: str = "output") -> Path:
    """Fail early (before any work) when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HwnasError(f"cannot create folder {parent} for the {what}: {e.strerror}; choose another path") from None
    if path.is_dir():
        raise HwnasError(f"the {what} {path} is a folder; give a file path")
    if _special(path):
        # /dev/null, /dev/stdout, a FIFO: written through in place (write_atomic), so only the
        # file itself must be writable; its folder (/dev) need not be, and gets no probe file.
        if not os.access(path, os.W_OK):
            raise HwnasError(f"cannot write the {what} {path}: permission denied; choose another path")
        return path
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise HwnasError(f"cannot write the {what} {path}: permission denied; choose another path")
    # os.access says yes to root everywhere, and /proc or a read-only mount refuse anyway: write
    # a temp file where write_atomic will, which is the one test that cannot be wrong.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise HwnasError(f"cannot write the {what} {path}: {e.strerror}; choose another path") from None
    return path


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: mkstemp's 0600 would hide tables, engines
    and reports from the other users of a shared folder or volume."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def _special(path: Path) -> bool:
    """An existing path that is neither a regular file nor a folder: a device, a FIFO, a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half.

    A device or FIFO (``--out /dev/null``, ``/dev/stdout``) is written through instead: renaming
    over it would, for root, replace the device node itself with a regular file (and there is
    no "old version" of a stream to keep)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    if _special(path):
        try:
            with open(path, "wb") as f:
                f.write(raw)
                f.flush()
        except OSError as e:
            raise HwnasError(f"cannot write {path}: {e.strerror}; check free space and permissions") from None
        return
    _sweep_orphans(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent or ".")
    except OSError as e:
        raise HwnasError(f"cannot write {path}: {e.strerror}; check the folder exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C mid-write too: no temp file left behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise HwnasError(f"cannot write {path}: {e.strerror}; check free space and permissions") from None
        raise


# Temp files are named .NAME.HOST-PID.XXXXXXXX.tmp: a later write of NAME can tell the orphans of a
# process killed with SIGKILL between mkstemp and the rename (a 25 MB graph takes tens of ms to
# write) from the temp file of a writer still at work, and remove them.
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", platform.node()) or "host"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _sweep_orphans(path: Path) -> None:
    """Remove temp files of earlier writes to ``path`` whose process, on this host, is gone. A pid
    reused by a live process keeps its file (harmless: a leftover, never a lost write); files of
    other hosts (a shared folder) are never touched, their pids meaning nothing here."""
    orphan = re.compile(re.escape(f".{path.name}.{_HOST}-") + r"(\d+)\.[^.]+\.tmp")
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return
    for name in names:
        m = orphan.fullmatch(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive (ours to leave alone)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # alive under another user, or no pid at all: leave it
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise HwnasError(f"{what} {path} does not exist")
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        # /dev/zero and /dev/full read endless zeros: reading one would never end (a FIFO is fine)
        raise HwnasError(f"{what} {path} is a device, not a file; give a file path")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HwnasError(f"{what} {path} is corrupt or truncated ({e.__class__.__name__} at {getattr(e, 'pos', '?')}); "
                         f"delete it and recreate it") from None
