"""Atomic, checked file writes and safe JSON reads: the two ways hwnas touches files that matter."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hwnas import formats
from hwnas.errors import HwnasError


NAME_MAX = 255  # bytes in one file or folder name, on every file system hwnas writes to


def slug(text: str) -> str:
    """A short file name for a long string (an arch): its first 12 hex digits of SHA-1."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_path(path: Path, what: str) -> Path:
    """A path that can name a file at all: not empty, no name over NAME_MAX bytes, no symlink loop."""
    raw = str(path)
    if not raw.strip() or raw == ".":
        raise HwnasError(f"the {what} path is empty; give a file or folder name")
    if "\0" in raw:
        raise HwnasError(f"the {what} path {raw!r} holds a NUL character; give a plain path")
    for part in Path(raw).parts:
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            raise HwnasError(f"the {what} {part[:40]}... is a name of {n} bytes, more than the {NAME_MAX} a file "
                             f"system allows; choose a shorter name")
    try:
        Path(raw).resolve()
    except (RuntimeError, OSError) as e:  # Python 3.11 raises RuntimeError for a loop, 3.13 OSError
        raise HwnasError(f"the {what} {raw} cannot be resolved ({getattr(e, 'strerror', None) or e}): a symlink "
                         f"loop? choose another path") from None
    return Path(raw)


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(path: Path, what: str = "output") -> Path:
    """Fail early (before any work) when ``path`` cannot be written. Creates nothing: the folders
    come with the first write (``write_atomic``), so a command that fails leaves no empty folder."""
    path = check_path(path, what)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise HwnasError(f"the {what} {path} is a folder; give a file path")
    if _special(path):
        # /dev/null, /dev/stdout, a FIFO: written through in place (write_atomic), so only the
        # file itself must be writable; its folder (/dev) need not be, and gets no probe file.
        if not os.access(path, os.W_OK):
            raise HwnasError(f"cannot write the {what} {path}: permission denied; choose another path")
        return path
    base = _existing_ancestor(parent)
    if not base.is_dir():
        raise HwnasError(f"cannot create folder {parent} for the {what}: {base} is a file; choose another path")
    if not os.access(base, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise HwnasError(f"cannot write the {what} {path}: permission denied; choose another path")
    # os.access says yes to root everywhere, and /proc or a read-only mount refuse anyway: write
    # a temp file where write_atomic will (or in the folder it will be created in), which is the
    # one test that cannot be wrong.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_tmp_stem(path)}.", suffix=".probe", dir=base)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise HwnasError(f"cannot write the {what} {path}: {e.strerror}; choose another path") from None
    return path


def refuse_inputs(outputs: list[tuple[Path, str]], inputs: list[Path]) -> None:
    """Refuse, before any work, an output that would replace or write into what the command reads:
    the same file, the same folder, a folder holding an input, or a path inside an input folder
    (a dataset's image folder). ``outputs``: (path, what) pairs; missing inputs are ignored."""
    def real(p: Path) -> Path:
        return Path(os.path.realpath(p))

    ins = [(Path(i), real(i)) for i in inputs if i is not None and Path(i).exists()]
    for out, what in outputs:
        if out is None:
            continue
        o = real(out)
        for given, i in ins:
            same = o == i
            inside_input = i.is_dir() and i in o.parents
            holds_input = o.is_dir() and o in i.parents
            if same or inside_input or holds_input:
                how = "is" if same else "lies inside" if inside_input else "holds"
                raise HwnasError(f"the {what} {out} {how} the input {given}: writing it would destroy what this "
                                 f"command reads; choose another path")


# What an existing file holds, for ``check_replaceable``: an output may replace only its own kind.
def what_is(path: Path) -> str:
    """A short name for what the existing regular file ``path`` holds ("empty", "checkpoint",
    "latency table", "COCO dataset", "detections", "metrics", "validation report", "benchmark",
    "export manifest", "ONNX graph", "image", "JSON file", "file")."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        # torch.save's zip, or a plain pickle (protocol 2..5 opens with 0x80 and the protocol)
        return "checkpoint"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    if path.suffix.lower() == ".onnx" and head[:1] == b"\x08":  # field 1 (ir_version) of ModelProto
        return "ONNX graph"
    if head.lstrip()[:1] in (b"{", b"[") and size < 512 * 2**20:
        try:
            return _json_kind(json.loads(path.read_bytes()))
        except (ValueError, UnicodeDecodeError):
            return "file"
    return "file"


def _json_kind(doc: Any) -> str:
    if isinstance(doc, list):
        if all(isinstance(d, dict) and "bbox" in d and "image_id" in d for d in doc[:50]):
            return "detections"  # COCO results; [] included
        if all(isinstance(d, dict) and "image" in d and "detections" in d for d in doc[:50]):
            return "detections"  # hwnas infer's
        return "JSON file"
    if not isinstance(doc, dict):
        return "JSON file"
    fmt = doc.get("format")
    if formats.is_family(fmt, formats.LATENCY_TABLE):
        return "latency table"
    if formats.is_family(fmt, formats.ENGINE_MANIFEST):
        return "export manifest"
    if "images" in doc and "categories" in doc:
        return "COCO dataset"
    if "table_id" in doc and "records" in doc:
        return "validation report"
    if "end_to_end" in doc:
        return "benchmark"
    if "map" in doc or "hard" in doc:
        return "metrics"
    return "JSON file"


def check_replaceable(path: Path, kind: str, what: str) -> None:
    """Refuse to replace an existing file that holds something else than this output's ``kind``
    (``hwnas export --out RUN/metrics`` would otherwise turn RUN/metrics.json into a manifest)."""
    path = Path(path)
    if not path.is_file():
        return
    found = what_is(path)
    if found not in ("empty", kind):
        raise HwnasError(f"the {what} {path} already exists and holds {_phrase(found)}, not {_phrase(kind)}; "
                         f"writing it would destroy that file: choose another path (or delete it first)")


def _phrase(kind: str) -> str:
    if kind in ("metrics", "detections"):
        return kind
    if kind == "file":
        return "something hwnas did not write"
    return ("an " if kind[0] in "aeiouAEIOU" else "a ") + kind


def check_outputs(files: list[tuple[Path, str, str]] = (), inputs: list[Path] = (),
                  folders: list[tuple[Path, str]] = ()) -> None:
    """Everything checked about a command's outputs before it starts: each file ``(path, kind, what)``
    can be written and replaces nothing but its own ``kind``; each output folder ``(path, what)`` is
    a folder (or nothing yet); none of them is, holds or lies inside an input."""
    inputs = [i for i in inputs if i is not None]
    for folder, what in folders:
        folder = check_path(folder, what)
        if folder.exists() and not folder.is_dir():
            raise HwnasError(f"the {what} {folder} is a file; give a folder")
    for path, kind, what in files:
        check_writable(path, what)
    refuse_inputs([(p, what) for p, _, what in files] + list(folders), inputs)
    for path, kind, what in files:
        if kind is not None:  # None: any bytes may be replaced (a cache the command itself rewrites)
            check_replaceable(path, kind, what)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: mkstemp's 0600 would hide tables, engines
    and reports from the other users of a shared folder or volume."""
    return 0o666 & ~_umask()


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
        path.parent.mkdir(parents=True, exist_ok=True)  # check_writable creates no folders: the first write does
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


def write_together(files: list[tuple[Path, bytes | str]]) -> None:
    """Write several files that belong together (an export's graph, engine and manifest): every
    one goes to a synced temp file first, and only when all of them are on disk are they renamed
    into place, in the order given (a manifest last). A failure on the way (a full disk) removes
    the temp files and leaves every previous file as it was."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path = Path(path)
            if _special(path):
                raise HwnasError(f"cannot write {path}: it is a device, not a file; give a file path")
            raw = data.encode() if isinstance(data, str) else data
            _sweep_orphans(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C too: no temp file left, nothing replaced unless all were ready
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            where = staged[-1][1] if staged else Path(files[0][0])
            raise HwnasError(f"cannot write {where}: {e.strerror}; check free space and permissions (the "
                             f"previous files are unchanged)") from None
        raise


# Temp files are named .NAME.HOST-PID.XXXXXXXX.tmp: a later write of NAME can tell the orphans of a
# process killed with SIGKILL between mkstemp and the rename (a 25 MB graph takes tens of ms to
# write) from the temp file of a writer still at work, and remove them.
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", platform.node()) or "host"


def _tmp_stem(path: Path) -> str:
    """``path``'s name in its temp files; a long name is cut and keyed by a hash, so that the temp
    file's decoration never pushes a valid name over NAME_MAX."""
    name = path.name
    if len(os.fsencode(name)) <= 100:
        return name
    return name[:40] + "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:12]


def _tmp_prefix(path: Path) -> str:
    return f".{_tmp_stem(path)}.{_HOST}-{os.getpid()}."


def _sweep_orphans(path: Path, remove=os.unlink) -> None:
    """Remove temp files of earlier writes to ``path`` whose process, on this host, is gone. A pid
    reused by a live process keeps its file (harmless: a leftover, never a lost write); files of
    other hosts (a shared folder) are never touched, their pids meaning nothing here."""
    orphan = re.compile(re.escape(f".{_tmp_stem(path)}.{_HOST}-") + r"(\d+)\.[^.]+\.tmp")
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
            remove(path.parent / name)
        except OSError:
            pass


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold, for the block, the lock of the file ``path`` (``.NAME.lock`` beside it): a second
    command writing the same file gets one line at once, instead of both doing all the work and
    the last rename winning. The lock is the kernel's (flock): it dies with its process, kill -9
    included, so a stale lock file is simply taken over."""
    import fcntl

    path = Path(path)
    lock = path.with_name(f".{_tmp_stem(path)}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise HwnasError(f"another command (pid {holder}) is writing the {what} {path}; wait for it to "
                                 f"finish, or give this one another path") from None
            try:  # the previous holder may have removed the file between our open and our lock
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as e:
        raise HwnasError(f"cannot lock the {what} {path}: {e.strerror}; choose another path") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(lock)  # while still holding it: a waiter that opened it retries on the new file
        except OSError:
            pass
        os.close(fd)


@contextmanager
def staged_folder(out: Path, what: str) -> Iterator[Path]:
    """A fresh folder beside ``out`` to build a whole output in; renamed to ``out`` (absent or
    empty) when the block succeeds, removed when it fails. Staging folders of processes that died
    (kill -9) are swept first, as ``write_atomic`` sweeps temp files."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_orphans(out, shutil.rmtree)
    try:
        stage = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise HwnasError(f"cannot create the {what} {out}: {e.strerror}; choose another path") from None
    try:
        os.chmod(stage, 0o777 & ~_umask())
        yield stage
        os.replace(stage, out)  # onto an absent or empty folder; anything else is refused by the OS
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(e, OSError):
            raise HwnasError(f"cannot write the {what} {out}: {e.strerror}; check free space and permissions") from None
        raise


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
