"""Migrations a running system takes: the index changes of 0005 on a live PostgreSQL.

Each test migrates a database of its own to 0004 in a subprocess (`manage.py migrate`, as an
operator would), then to the end, and compares the task tables' indexes with the test
database's, which the same migrations built on an empty schema.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from tests.helpers import ROOT, database_url, subprocess_env

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's locks"),
    pytest.mark.django_db,
]

TABLES = ("taskqueue_task", "taskqueue_taskattempt")
INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s)"
INVALID = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE NOT i.indisvalid"
)


@pytest.fixture
def scratch() -> Iterator[str]:
    """The URL of an empty database of this test's own."""
    server, _, _ = database_url().rpartition("/")
    name = f"taskqueue_migration_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def migrate(url: str, *target: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "migrate", *target, "-v0"],
        cwd=ROOT,
        env=subprocess_env(DATABASE_URL=url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def migrated(process: subprocess.Popen, timeout: float = 120) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output


def insert_task(db: psycopg.Connection, **values: object) -> None:
    """A row in the task table as it is now: every required column without a default
    filled with an empty value of its type."""
    empty = {"boolean": False, "jsonb": "{}", "timestamp with time zone": "now()"}
    columns = db.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'taskqueue_task' AND is_nullable = 'NO'"
        " AND column_default IS NULL AND is_identity = 'NO'"
    ).fetchall()
    row = {
        name: empty.get(kind, 0 if kind in ("integer", "smallint", "bigint") else "")
        for name, kind in columns
    }
    row |= values
    names = ", ".join(row)
    db.execute(
        f"INSERT INTO taskqueue_task ({names}) VALUES ({', '.join(['%s'] * len(row))})",
        list(row.values()),
    )


def indexes(url: str | None = None) -> dict[str, str]:
    if url is None:
        with connection.cursor() as cursor:
            cursor.execute(INDEXES, [list(TABLES)])
            return dict(cursor.fetchall())
    with psycopg.connect(url) as db:
        assert db.execute(INVALID).fetchall() == [], "an invalid index is left"
        return dict(db.execute(INDEXES, [list(TABLES)]).fetchall())


def test_tasks_are_written_and_read_while_0005_waits_for_a_long_transaction(scratch) -> None:
    """A transaction that has written a task and stays open (a long report, an admin bulk
    action) holds the table: the migration waits for it. With plain CREATE/DROP INDEX the
    migration's waiting request for the table's lock queues every later statement behind
    it, so enqueues, leases and console reads all stop until that transaction ends. Built
    concurrently, they go on."""
    migrated(migrate(scratch, "taskqueue", "0004"))
    with psycopg.connect(scratch) as holder, psycopg.connect(scratch, autocommit=True) as other:
        insert_task(holder, task_type="long", status="leased")  # and the transaction stays open
        migration = migrate(scratch)
        try:
            deadline = time.monotonic() + 60
            while not other.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query ILIKE %s",
                ["%index%"],
            ).fetchone():
                assert migration.poll() is None, migration.communicate()[0]
                assert time.monotonic() < deadline, "the migration never reached the index"
                time.sleep(0.05)
            other.execute("SET lock_timeout = '3s'")
            insert_task(other, task_type="ping", status="queued")  # an enqueue
            other.execute("UPDATE taskqueue_task SET status = 'leased' WHERE task_type = 'ping'")
            count = other.execute("SELECT count(*) FROM taskqueue_task").fetchone()[0]
            assert count == 1  # the holder's row is not committed yet
        finally:
            holder.commit()
            migrated(migration)
    assert indexes(scratch) == indexes()


def test_0005_run_again_after_an_interruption_finishes_the_indexes(scratch) -> None:
    """What a killed run leaves: an index whose build failed (PostgreSQL keeps it, invalid),
    and a replacement built but not yet swapped in (the old index dropped, the new one still
    under its temporary name). Run again, the migration ends with the same indexes as a run
    that was never interrupted."""
    migrated(migrate(scratch, "taskqueue", "0004"))
    with psycopg.connect(scratch, autocommit=True) as db:
        insert_task(db, task_type="ping", status="completed")
        insert_task(db, task_type="ping", status="completed")
        with pytest.raises(psycopg.errors.UniqueViolation):  # a build that failed half way
            db.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY taskqueue_task_requested_by_building"
                " ON taskqueue_task (task_type)"
            )
        assert db.execute(INVALID).fetchall() == [("taskqueue_task_requested_by_building",)]
        db.execute(
            "CREATE INDEX taskqueue_task_finished_building ON taskqueue_task (finished_at)"
            " WHERE finished_at IS NOT NULL"
        )
        db.execute("DROP INDEX taskqueue_task_finished")
    migrated(migrate(scratch))
    assert indexes(scratch) == indexes()


def test_0005_undone_is_one_transaction_so_an_interrupted_undo_runs_again(scratch) -> None:
    """`migrate taskqueue 0004` killed while it waits for a lock: what it had done is rolled
    back, and the undo runs again to the end (statement by statement, the first run's
    dropped foreign key and re-created index made the second fail)."""
    migrated(migrate(scratch))
    with psycopg.connect(scratch) as holder, psycopg.connect(scratch, autocommit=True) as watch:
        holder.execute("SELECT count(*) FROM auth_user")  # a foreign key's re-add waits for it
        undo = migrate(scratch, "taskqueue", "0004")
        deadline = time.monotonic() + 60
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        while not (backend := watch.execute(waiting).fetchone()):
            assert undo.poll() is None, undo.communicate()[0]
            assert time.monotonic() < deadline, "the undo never waited for the lock"
            time.sleep(0.05)
        undo.kill()
        undo.wait()
        holder.rollback()
        gone = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
        while watch.execute(gone, backend).fetchone():
            assert time.monotonic() < deadline, "the killed undo's backend stayed"
            time.sleep(0.05)
    migrated(migrate(scratch, "taskqueue", "0004"))
    migrated(migrate(scratch))
    assert indexes(scratch) == indexes()
