"""What lets any number of workers share one search: the storage URL, worker slots and claims.

Optuna keeps the trials. Two small tables of ours live in the same database, because Optuna
has no atomic "take this candidate" operation:

* ``hwnas_workers``: one row per worker slot (host, pid, heartbeat). A worker takes the lowest
  free slot; its seed follows from the slot, so two workers never draw the same stream and a
  restarted single worker draws the same one again.
* ``hwnas_claims``: one row per architecture, primary key ``(search, arch)`` (also ``baseline:<arch>``
  for a baseline, and ``init:structural`` for the one-off seeding of the first generation). Inserting the row
  *is* the claim: the database refuses a second one, so no two workers ever train the same
  candidate, whichever stage proposed it. The row names the Optuna study and trial it feeds
  and the slot training it; a claim whose worker died (kill -9, a lost machine) is adopted by
  another worker, which tells that same trial (training resumes from its checkpoint).

A worker is dead when it ran on this host and its pid is gone, or when its heartbeat is older
than ``GRACE_S`` (another host).
"""
from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hwnas.errors import HwnasError

HEARTBEAT_S = 10.0
GRACE_S = 60.0


def storage_url(storage: str | None, run_dir: Path) -> str:
    """The SQLAlchemy URL of the search database: ``RUN/search.db`` (SQLite) by default."""
    if not storage:
        return f"sqlite:///{(Path(run_dir) / 'search.db').resolve()}"
    if storage.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the driver we install is psycopg2.
        storage = "postgresql+psycopg2://" + storage.split("://", 1)[1]
    if not storage.startswith(("sqlite:///", "postgresql+", "mysql")):
        raise HwnasError(f"--storage {storage!r}: give postgresql://USER@HOST:PORT/DB or sqlite:///PATH "
                         f"(or leave it out for RUN/search.db)")
    if storage.startswith("postgresql+psycopg2"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise HwnasError("--storage postgresql needs psycopg2: pip install 'hwnas[postgres]'") from None
    return storage


def created_together(create, tries: int = 10):
    """``create()``, retried when it lost a race to create tables. Workers started together on an
    empty PostgreSQL database all find the tables missing; the losers' CREATE fails with
    DuplicateTable (a ProgrammingError) or a unique violation on the catalogue (an
    IntegrityError, for CREATE TYPE). Checking again finds what the winner made."""
    import sqlalchemy as sa

    for attempt in range(tries):
        try:
            return create()
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(0.1 + 0.2 * random.random())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claim:
    arch: str
    study: str
    trial_number: int
    slot: int


class Coordinator:
    """Worker slot, heartbeat and claims of one search (``search`` = the study name prefix)."""

    def __init__(self, url: str, search: str):
        import sqlalchemy as sa

        self.search = search
        self.host = socket.gethostname()
        self.pid = os.getpid()
        connect_args = {"timeout": 60} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        meta = sa.MetaData()
        self.workers = sa.Table(
            "hwnas_workers", meta,
            sa.Column("search", sa.String(512), primary_key=True),
            sa.Column("slot", sa.Integer, primary_key=True),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("heartbeat", sa.Float, nullable=False))
        self.claims = sa.Table(
            "hwnas_claims", meta,
            sa.Column("search", sa.String(512), primary_key=True),
            sa.Column("arch", sa.String(512), primary_key=True),
            sa.Column("study", sa.String(512), nullable=False),
            sa.Column("trial_number", sa.Integer, nullable=False),
            sa.Column("slot", sa.Integer, nullable=False))
        try:
            created_together(lambda: meta.create_all(self.engine))  # create_all checks first
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as e:
            # unreachable server, unknown database, or a role that may not create tables there
            raise HwnasError(f"cannot open the search database {url}: {str(e.orig).strip().splitlines()[0]}") from None
        self.slot = -1
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ workers
    def _dead(self, row) -> bool:
        if row.host == self.host and row.pid != self.pid:
            return not pid_alive(row.pid)
        return time.time() - row.heartbeat > GRACE_S

    def dead_slots(self) -> set[int]:
        with self.engine.connect() as c:
            rows = c.execute(self.workers.select().where(self.workers.c.search == self.search)).fetchall()
        return {r.slot for r in rows if r.slot != self.slot and self._dead(r)}

    def live_slots(self) -> set[int]:
        with self.engine.connect() as c:
            rows = c.execute(self.workers.select().where(self.workers.c.search == self.search)).fetchall()
        return {r.slot for r in rows if r.slot == self.slot or not self._dead(r)}

    def join(self) -> int:
        """Take the lowest free or dead slot (compare-and-swap, so two joiners never share one)."""
        import sqlalchemy as sa

        w = self.workers
        for slot in range(10_000):
            with self.engine.begin() as c:
                row = c.execute(w.select().where((w.c.search == self.search) & (w.c.slot == slot))).first()
                now = time.time()
                if row is None:
                    try:
                        c.execute(w.insert().values(search=self.search, slot=slot, host=self.host, pid=self.pid,
                                                    heartbeat=now))
                    except sa.exc.IntegrityError:
                        continue
                elif self._dead(row):
                    res = c.execute(w.update().where((w.c.search == self.search) & (w.c.slot == slot)
                                                     & (w.c.pid == row.pid) & (w.c.host == row.host)
                                                     & (w.c.heartbeat == row.heartbeat))
                                    .values(host=self.host, pid=self.pid, heartbeat=now))
                    if res.rowcount != 1:
                        continue
                else:
                    continue
            self.slot = slot
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="hwnas-heartbeat")
            self._beat.start()
            return slot
        raise HwnasError("more than 10000 workers on one search")

    def _heartbeat(self) -> None:
        w = self.workers
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self.engine.begin() as c:
                    c.execute(w.update().where((w.c.search == self.search) & (w.c.slot == self.slot)
                                               & (w.c.pid == self.pid)).values(heartbeat=time.time()))
            except Exception:  # a lost connection: the next beat retries; the grace period covers it
                pass

    def leave(self) -> None:
        """Stop the heartbeat and free the slot (a killed worker's slot is freed by whoever joins next)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        w = self.workers
        try:
            with self.engine.begin() as c:
                c.execute(w.delete().where((w.c.search == self.search) & (w.c.slot == self.slot) & (w.c.pid == self.pid)))
        finally:
            self.engine.dispose()

    # ------------------------------------------------------------------ claims
    def claim(self, arch: str, study: str, trial_number: int, budget: int | None = None) -> bool:
        """Take ``arch`` for this worker; False when any worker, in any stage, already took it, or
        when ``study`` would then hold more than ``budget`` claims (then ``owner(arch)`` is None).

        Workers check the budget before proposing, so several may claim the last places at once.
        Each counts the claims after its own insert and gives its claim back if there are too
        many: a claim that stays was within the budget when counted, so the budget is never
        exceeded (two racing workers may both give back; their loops then propose again).
        """
        import sqlalchemy as sa

        try:
            with self.engine.begin() as c:
                c.execute(self.claims.insert().values(search=self.search, arch=arch, study=study,
                                                      trial_number=trial_number, slot=self.slot))
        except sa.exc.IntegrityError:
            return False
        if budget is not None and len(self.claimed(study)) > budget:
            c_ = self.claims.c
            with self.engine.begin() as c:
                c.execute(self.claims.delete().where((c_.search == self.search) & (c_.arch == arch)))
            return False
        return True

    def claimed(self, study: str | None = None) -> list[Claim]:
        q = self.claims.select().where(self.claims.c.search == self.search)
        if study is not None:
            q = q.where(self.claims.c.study == study)
        with self.engine.connect() as c:
            return [Claim(r.arch, r.study, r.trial_number, r.slot) for r in c.execute(q)]

    def owner(self, arch: str) -> Claim | None:
        c_ = self.claims.c
        with self.engine.connect() as c:
            r = c.execute(self.claims.select().where((c_.search == self.search) & (c_.arch == arch))).first()
        return Claim(r.arch, r.study, r.trial_number, r.slot) if r else None

    def adopt(self, claim: Claim) -> bool:
        """Move a dead worker's claim to this worker (only if nobody adopted it first)."""
        c_ = self.claims.c
        with self.engine.begin() as c:
            res = c.execute(self.claims.update().where((c_.search == self.search) & (c_.arch == claim.arch)
                                                       & (c_.slot == claim.slot)).values(slot=self.slot))
        return res.rowcount == 1
