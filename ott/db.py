"""The data layer: one SQLAlchemy engine per process, from ``OTT_DATABASE_URL``.

SQLite is the default (WAL journal, a busy timeout) so that several service processes share one
file; in WAL mode a ``kill -9`` loses no committed write. An engine commits with
``synchronous=FULL`` by default: each commit also waits for the disk (an fsync, about 2 ms here,
with the database's write lock held), so a power loss or an OS crash loses nothing either.
``connect(url, synchronous="NORMAL")`` is for short-lived session state only (stream sessions,
playback authorisations, see ``Service.session_engine``): its commits skip that fsync (the WAL
is synced at checkpoints), so a power loss may forget the last moments of such state, never a
process crash. Any URL SQLAlchemy understands works: every query goes through SQLAlchemy Core.

Every stored time is UTC: :func:`utc_now` writes it, :func:`as_utc` reads it back aware (SQLite
forgets the zone), :func:`from_epoch` reads the epoch seconds license and CAS store. :func:`upsert`
is the portable "create or update one row by key" every service's PUT needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, insert, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

metadata = MetaData()


SYNCHRONOUS = ("FULL", "NORMAL")
# How long a SQLite statement waits for another process's write lock before it fails.
BUSY_TIMEOUT_S = 15


def connect(url: str, *, synchronous: str = "FULL", wait: bool = True) -> Engine:
    """An engine for ``url``; for SQLite, the file's folder is created and the pragmas set.

    ``synchronous`` is SQLite's: ``FULL`` (durable through a power loss) or ``NORMAL`` (through a
    process crash only; for short-lived session state). Other databases keep their own settings.
    ``wait=False`` (SQLite only): a statement that finds the write lock taken fails at once with
    "database is locked" (see :func:`is_busy`) instead of waiting up to 15 s for it.
    """
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous={synchronous!r}: use one of {', '.join(SYNCHRONOUS)}")
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    busy_timeout_s = BUSY_TIMEOUT_S if wait else 0
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_s * 1000}")
        cursor.close()

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_busy(exc: OperationalError) -> bool:
    """Whether ``exc`` is SQLite's "the database is locked by another writer" (SQLITE_BUSY or SQLITE_LOCKED)."""
    name = str(getattr(exc.orig, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create every table the imported service modules declared (idempotent).

    Services start together and share one database: two may race to create the same table,
    so "already exists" from the loser is retried (and then finds the table there). SQLite says
    it as an OperationalError; PostgreSQL as a ProgrammingError (the table) or an IntegrityError
    (its row type in pg_type), both "... already exists".
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...


@overload
def as_utc(moment: None) -> None: ...


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` with its UTC zone back: SQLite hands back naive datetimes, and every stored time is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def from_epoch(epoch: float) -> datetime:
    """The aware UTC datetime of ``epoch`` seconds."""
    return datetime.fromtimestamp(epoch, tz=UTC)


def update_or_insert(conn: Connection, table: Table, key: Mapping[str, Any], *,
                     updates: Mapping[str, Any], inserts: Mapping[str, Any]) -> bool:
    """In ``conn``'s transaction: ``updates`` on the row with ``key``, or a new row ``key`` + ``inserts``.

    True if the row was inserted. A concurrent insert of the same key makes the INSERT raise
    IntegrityError: the caller decides whether to retry (see :func:`upsert`) or fail.
    """
    if conn.execute(update(table).where(*_matching(table, key)).values(**updates)).rowcount:
        return False
    conn.execute(insert(table).values(**key, **inserts))
    return True


def upsert(engine: Engine, table: Table, key: Mapping[str, Any], values: Mapping[str, Any], *,
           insert_only: Mapping[str, Any] | None = None) -> bool:
    """Set ``values`` on the row with ``key``, creating it (with ``insert_only`` too) if missing; True if created.

    UPDATE then INSERT works on every database (no dialect's ON CONFLICT). Of two concurrent
    creators, the loser's INSERT hits the primary key: the row exists by then, so it is updated.
    """
    try:
        with engine.begin() as conn:
            return update_or_insert(conn, table, key, updates=values, inserts={**values, **(insert_only or {})})
    except IntegrityError:
        with engine.begin() as conn:
            conn.execute(update(table).where(*_matching(table, key)).values(**values))
        return False


def _matching(table: Table, key: Mapping[str, Any]) -> list[Any]:
    return [table.c[column] == value for column, value in key.items()]
