"""Engines, sessions and schema upgrades.

`open_database(url)` returns a `Database` whose schema is at the Alembic head (upgrading an
empty or older database first). SQLite gets WAL mode, a busy timeout and foreign keys, so two
processes logging parts to one file wait for each other instead of failing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.orm import Session, sessionmaker

from station.errors import StorageError
from station.storage.models import Part

SQLITE_BUSY_TIMEOUT_S = 30.0  # also PostgreSQL's lock_timeout
# libpq: a server that does not answer the connection, or a link that stops acknowledging,
# fails within seconds rather than never
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                   "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000}


class RecordRefused(StorageError):
    """The database refuses a record for good (a constraint, a value no column takes), not
    for a while."""


_wait = threading.local()  # .deadline: time.monotonic() by which a lock wait must end


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 (DB-API objects)
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns (NORMAL may roll back at a power loss), so a
    # verdict is durable before the line hears it and before its journal copy is deleted
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={_wait_ms()}")
    cur.close()


def _wait_ms() -> int:
    """How long a lock wait may take now: the busy timeout, cut at the thread's deadline."""
    deadline = getattr(_wait, "deadline", None)
    wait_s = SQLITE_BUSY_TIMEOUT_S
    if deadline is not None:
        wait_s = min(wait_s, deadline - time.monotonic())
    return max(int(wait_s * 1000), 0)


def _sqlite_begin(conn) -> None:  # noqa: ANN001
    conn.exec_driver_sql(f"PRAGMA busy_timeout={_wait_ms()}")
    # Take the write lock up front: two processes reading then writing in WAL mode would
    # otherwise fail with "database is locked" instead of waiting for each other.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_read(conn) -> None:  # noqa: ANN001
    conn.exec_driver_sql(f"PRAGMA busy_timeout={_wait_ms()}")
    conn.exec_driver_sql("BEGIN")  # deferred: in WAL mode a reader never blocks a writer


def _pg_begin(conn) -> None:  # noqa: ANN001
    """Lock waits end as SQLite's do (the busy timeout, cut at the thread's deadline), and
    under a deadline every statement too: a part's database work fails within its budget."""
    ms = max(_wait_ms(), 1)  # 0 would mean no limit
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
    if getattr(_wait, "deadline", None) is not None:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")


def make_engine(url: str, writing: bool = True) -> Engine:
    """The engine of `url`; SQLite transactions take the write lock at BEGIN unless not
    `writing` (sessions that only read: `Database.reading`)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StorageError(
            f"database URL {url!r} is not valid",
            hint="use e.g. sqlite:///data/station.db or postgresql+psycopg://user@host/db",
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if (file := sqlite_file(url)) is not None:
            folder = file.parent
            if blocking := next((p for p in (folder, *folder.parents) if p.is_file()), None):
                raise StorageError(
                    f"database {parsed.database}: {blocking} is a file, not a folder",
                    hint="fix --url or the recipe's storage.database_url",
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create database folder {folder}: {exc.strerror or exc}",
                    hint=f"create {folder} by hand or let this user write in its parent, or "
                    "fix --url or the recipe's storage.database_url",
                ) from None
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin if writing else _sqlite_begin_read)
        return engine
    try:
        if parsed.get_backend_name() != "postgresql":
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, pool_pre_ping=True, connect_args=dict(PG_CONNECT_ARGS))
        event.listen(engine, "begin", _pg_begin)
        return engine
    except (ImportError, SQLAlchemyError) as exc:
        raise StorageError(
            f"cannot use database URL {parsed.render_as_string()}: {exc}",
            hint="install the driver, e.g. pip install 'station[postgres]'",
        ) from None


@dataclass
class Database:
    engine: Engine
    url: str

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reader: Engine | None = None  # SQLite's reads, made on first `reading()`
        self._readers: sessionmaker[Session] | None = None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only (long ones: verify, exports, pages): on SQLite it does not
        hold the write lock, so the station's part writes never wait for it. Nothing it
        changes is committed (closed, not rolled back: what it loaded stays readable);
        database failures surface as in `session`."""
        if self._readers is None:
            if self.engine.dialect.name == "sqlite":
                self._reader = make_engine(self.url, writing=False)
            self._readers = sessionmaker(self._reader or self.engine, expire_on_commit=False)
        with self._guarded(self._readers()) as session:
            yield session

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error.

        Database failures surface as StorageError (locked database, full disk, lost server,
        a refused row); an IntegrityError is passed on as it is, for callers that retry on it
        (a part number taken by another writer).
        """
        with self._guarded(self._sessions()) as session:
            yield session
            session.commit()

    @contextlib.contextmanager
    def _guarded(self, session: Session) -> Iterator[Session]:
        """`session`, rolled back and closed whatever happens; database errors as StorageError
        (IntegrityError passed on as it is)."""
        try:
            yield session
        except IntegrityError:
            session.rollback()
            raise
        except (DBAPIError, StatementError) as exc:
            session.rollback()
            # a value no column takes (too long) or the driver cannot send (not a number):
            # refused for good, however often retried
            if isinstance(exc, DataError) or not isinstance(exc, DBAPIError):
                why = _reason(exc)
                raise RecordRefused(f"database {self.safe_url} refused a value: {why}") from None
            # the database itself: locked, gone, full (for a while)
            raise failure(f"database {self.safe_url} failed", self.url, exc) from None
        except SQLAlchemyError as exc:
            session.rollback()
            raise failure(f"database {self.safe_url} failed", self.url, exc) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextlib.contextmanager
    def deadline(self, at: float | None) -> Iterator[None]:
        """Lock waits of transactions in this thread end by `at` (time.monotonic()); past it,
        a locked database fails at once. On PostgreSQL every statement ends by it too. None:
        the default busy timeout (PostgreSQL: lock_timeout, no statement limit)."""
        before = getattr(_wait, "deadline", None)
        _wait.deadline = at
        try:
            yield
        finally:
            _wait.deadline = before

    @property
    def safe_url(self) -> str:
        return hide_password(self.url)

    def last_sequence(self, recipe: str) -> int:
        """The recipe's highest part number so far (0 before its first part)."""
        with self.session() as s:
            return self.next_sequence(s, recipe) - 1

    def next_sequence(self, session: Session, recipe: str) -> int:
        current = session.scalar(select(func.max(Part.sequence)).where(Part.recipe == recipe))
        return (current or 0) + 1

    def create_part(self, recipe: str, at_least: int = 1, **fields: object) -> Part:
        """Insert and commit a new Part with the next sequence number of its recipe (at least
        `at_least`).

        Safe with several writers: on a sequence clash (another process took the number
        between our read and insert) it retries with the next one.
        """
        for _ in range(20):
            try:
                with self.session() as s:
                    seq = max(self.next_sequence(s, recipe), at_least)
                    part = Part(recipe=recipe, sequence=seq, **fields)
                    s.add(part)
                return part
            except IntegrityError:
                continue
        raise StorageError(f"could not allocate a part number for recipe {recipe!r}")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._reader is not None:
            self._reader.dispose()


def alembic_config(url: str):  # noqa: ANN201 (alembic.config.Config, imported lazily)
    from alembic.config import Config

    here = Path(__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> str:
    """Apply migrations up to `revision`; returns the revision the database is now at."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.util.exc import CommandError

    engine = make_engine(url)
    try:
        reach(engine, url)
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or "base"
    except SQLAlchemyError as exc:
        raise failure(f"cannot upgrade database {hide_password(url)}", url, exc) from None
    except CommandError as exc:  # e.g. an unknown revision
        raise StorageError(
            f"cannot upgrade database {hide_password(url)}: {exc}",
            hint="give a revision of station/storage/migrations, or none for the newest",
        ) from None
    finally:
        engine.dispose()


def reach(engine: Engine, url: str) -> None:
    """Connect once, so that a server that cannot be reached (or an SQLite file that cannot
    be opened) is said so, with its fix, before anything is read or migrated."""
    try:
        engine.connect().close()
    except SQLAlchemyError as exc:
        if make_url(url).get_backend_name() == "sqlite":
            raise failure(f"cannot open database {hide_password(url)}", url, exc) from None
        raise StorageError(
            f"cannot reach database {hide_password(url)}: {_reason(exc)}",
            hint="check that the database server is running and the URL's host, port, user "
            "and password (--url or the recipe's storage.database_url), or use the default "
            "SQLite database sqlite:///data/station.db",
        ) from None


def failure(message: str, url: str, exc: SQLAlchemyError) -> StorageError:
    """StorageError `<message>: <the driver's reason>`, with the fix of a known SQLite
    failure as its hint (a folder it cannot write, a full disk, a file that is no database)."""
    why = _reason(exc)
    return StorageError(f"{message}: {why}", hint=sqlite_hint(url, why))


def sqlite_hint(url: str, reason: str) -> str | None:
    """How to fix the SQLite failure `reason` of the database at `url`; None when unknown."""
    file = sqlite_file(url)
    if file is None:
        return None
    text = reason.lower()
    if "unable to open database file" in text:
        return (
            f"check that the folder {file.parent} exists and this user may write in it "
            f"(SQLite adds -wal and -shm files there), and that {file.name} is not a folder"
        )
    if "database or disk is full" in text:
        return f"free space on the disk that holds {file.parent} (df -h {file.parent}), then retry"
    if "file is not a database" in text:
        return (
            f"{file} is not a SQLite database: move it away, or point --url or the recipe's "
            "storage.database_url at another file"
        )
    return None


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's message, first line only (PostgreSQL adds detail lines)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hide_password(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def open_database(url: str, migrate: bool = True) -> Database:
    """Open the database at `url`, upgrading its schema to head unless `migrate` is False."""
    if migrate:
        upgrade(url)
    return Database(make_engine(url), url)


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL; None for another database, an in-memory one or a URL that
    does not parse (make_engine says what is wrong with it)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    name = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return Path(name) if name and name != ":memory:" else None


def existing_database(url: str) -> Database:
    """Open a database the station has written, never creating one: StorageError naming the
    fix when there is none at `url` or it has no station tables."""
    from sqlalchemy import inspect

    file = sqlite_file(url)
    if file is not None and not file.is_file():
        raise StorageError(
            f"no database at {file}", hint="check --url or the recipe's storage.database_url"
        )
    db = Database(make_engine(url), url)
    try:
        reach(db.engine, url)
        with db.engine.connect() as conn:
            has = inspect(conn).has_table("parts")
    except SQLAlchemyError as exc:
        raise failure(f"cannot read database {hide_password(url)}", url, exc) from None
    if not has:
        raise StorageError(
            f"database {hide_password(url)} has no station tables", hint="run `station db upgrade`"
        )
    return db
