"""A throw-away PostgreSQL server on loopback for tests.

Fixtures:
  postgres_url  (session)  SQLAlchemy URL of the server's ``postgres`` database.
  postgres_db   (function) URL of a new, empty database on that server (see ``fresh_database``).

Register them in tests/conftest.py with ``pytest_plugins = ["pg"]`` (tests/ is on sys.path: ``pythonpath``
in pyproject.toml) or import them there. When initdb/pg_ctl or psycopg2 are missing the
tests that use them are skipped, unless HWNAS_REQUIRE_POSTGRES=1 (CI) makes that an error.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

START_TIMEOUT_S = 30.0


def _unavailable(reason: str):
    """Skip, or fail where CI demands a real server so that a broken install cannot pass as skips."""
    if os.environ.get("HWNAS_REQUIRE_POSTGRES", "") not in ("", "0"):
        pytest.fail(f"{reason} (HWNAS_REQUIRE_POSTGRES is set)", pytrace=False)
    pytest.skip(reason)


def _find_bindir() -> Path | None:
    """The folder holding both initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    # Debian puts them in /usr/lib/postgresql/<major>/bin, not on PATH; take the highest major.
    dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    dirs = [d for d in dirs if (d / "pg_ctl").exists() and d.parent.name.isdigit()]
    return max(dirs, key=lambda d: int(d.parent.name), default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect_kwargs(url: str) -> dict:
    u = urlsplit(url)
    return dict(host=u.hostname, port=u.port, user=u.username or "postgres", dbname=u.path.lstrip("/"))


def fresh_database(url: str) -> str:
    """Create a new, uniquely named database on the server of ``url`` and return its URL."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = psycopg2.connect(**_connect_kwargs(url))
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    """Drop the database of ``url``, ending its sessions (e.g. a pool a test left open)."""
    import psycopg2

    kw = _connect_kwargs(url)
    name = kw.pop("dbname")
    conn = psycopg2.connect(dbname="postgres", **kw)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


class PostgresUnavailable(RuntimeError):
    """The binaries, psycopg2 or (as root) the postgres user are missing."""


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a private server on a free loopback port, yield its URL, always stop it.

    Also used by benchmarks/search_workers.py, outside pytest.
    """
    bindir = _find_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    try:
        import psycopg2
    except ImportError:
        raise PostgresUnavailable("psycopg2 is not installed (pip install psycopg2-binary)") from None

    # PostgreSQL refuses to run as root: then run every server command as the postgres user.
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root but there is no 'postgres' user to run the server as") from None
        as_user = ["runuser", "-u", "postgres", "--"]

    # Not tmp_path_factory: its folders are mode 700 and root's, so the postgres user could not
    # enter them. A fresh folder under /tmp, given to that user, keeps the socket path short too.
    root = Path(tempfile.mkdtemp(prefix="hwnas-pg-"))
    data, log, port = root / "data", root / "log", _free_port()
    if as_user:
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True)

    started = False
    try:
        # --no-sync and the fsync/full_page_writes settings below: the data is thrown away, so
        # durability only costs time. -E/--locale: don't depend on the machine's locales.
        r = run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed:\n{r.stdout}{r.stderr}")
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=100"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        started = True  # from here on, always try to stop it
        r = run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", str(int(START_TIMEOUT_S)), "start")
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # pg_ctl -w waits too, but check the TCP listener the tests will actually use
            try:
                psycopg2.connect(**_connect_kwargs(url), connect_timeout=2).close()
                break
            except psycopg2.OperationalError as e:
                if time.monotonic() > deadline:
                    server_log = log.read_text() if log.exists() else "(no log)"
                    raise RuntimeError(f"PostgreSQL did not accept connections on port {port}: {e}\n"
                                       f"pg_ctl: {r.stdout}{r.stderr}\nlog:\n{server_log}") from None
                time.sleep(0.1)
        yield url
    finally:
        if started:
            r = run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
            if r.returncode and "Is server running?" not in r.stderr:
                print(f"pg_ctl stop failed ({r.returncode}): {r.stdout}{r.stderr}")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresUnavailable as e:
        _unavailable(str(e))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_db(postgres_url):
    """URL of a new, empty database; dropped afterwards so that left-open pools don't pile up."""
    url = fresh_database(postgres_url)
    yield url
    drop_database(url)
