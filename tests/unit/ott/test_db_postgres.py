"""The services on a PostgreSQL server (k8s/components/postgres), as far as it can be checked without one.

The services image carries SQLAlchemy's psycopg driver, so ``OTT_DATABASE_URL=postgresql+psycopg://...``
builds an engine; every table the services declare compiles to PostgreSQL DDL; the race of five
services creating the same tables is retried on PostgreSQL's errors as on SQLite's. No test here
connects: no PostgreSQL server runs in the unit tier (the kube tier's real-cluster tests do).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateTable

from ott import auth, cas, catalog, db, license, subscription  # noqa: F401  (they declare the tables)

URL = "postgresql+psycopg://ott:s3cret@ott-postgres:5432/ott"


def test_a_postgresql_url_builds_an_engine_with_the_psycopg_driver_without_connecting() -> None:
    engine = db.connect(URL)
    try:
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
        assert (engine.url.host, engine.url.port, engine.url.database) == ("ott-postgres", 5432, "ott")
        assert engine.pool.checkedout() == 0, "building the engine must not connect"
    finally:
        engine.dispose()


def test_every_table_the_services_declare_compiles_for_postgresql() -> None:
    engine = db.connect(URL)
    tables = db.metadata.sorted_tables
    assert len(tables) >= 5, [t.name for t in tables]
    for table in tables:
        ddl = str(CreateTable(table).compile(dialect=engine.dialect))
        assert ddl.startswith(f"\nCREATE TABLE {table.name} ("), ddl
    engine.dispose()


@pytest.mark.parametrize("error", [ProgrammingError, IntegrityError, OperationalError])
def test_creating_tables_retries_when_another_service_created_them_first(
    error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Engine] = []

    def create_all(engine: Engine, **_: Any) -> None:
        calls.append(engine)
        if len(calls) == 1:
            raise error("CREATE TABLE users", {}, Exception('relation "users" already exists'))

    monkeypatch.setattr(db.metadata, "create_all", create_all)
    db.create_tables(db.connect("sqlite://"))
    assert len(calls) == 2


def test_creating_tables_does_not_hide_another_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def create_all(engine: Engine, **_: Any) -> None:
        raise ProgrammingError("CREATE TABLE users", {}, Exception("permission denied for schema public"))

    monkeypatch.setattr(db.metadata, "create_all", create_all)
    with pytest.raises(ProgrammingError, match="permission denied"):
        db.create_tables(db.connect("sqlite://"))
