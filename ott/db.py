"""The data layer: one SQLAlchemy engine per process, from ``OTT_DATABASE_URL``.

SQLite is the default (WAL journal, full sync, a busy timeout) so that several service
processes share one file and a ``kill -9`` loses no committed write. Any URL SQLAlchemy
understands works: every query goes through SQLAlchemy Core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

metadata = MetaData()


def connect(url: str) -> Engine:
    """An engine for ``url``; for SQLite, the file's folder is created and the pragmas set."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 15})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.close()

    return engine


def create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create every table the imported service modules declared (idempotent).

    Services start together and share one database: two may race to create the same table,
    so "already exists" from the loser is retried (and then finds the table there).
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except OperationalError as exc:
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
