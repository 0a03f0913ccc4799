"""Index changes a live system can take while it runs.

Django's own AddIndex, RemoveIndex and AlterField(db_index=...) lock the table for as long
as they scan it, and within one migration's transaction they hold that lock to the end: on
a task table of millions of rows every enqueue, lease, end and console read waits. On
PostgreSQL `Concurrently` does their database part as `CREATE INDEX CONCURRENTLY` and
`DROP INDEX CONCURRENTLY` instead, which let reads and writes go on. A replaced index is
built under a temporary name beside the old one, then swapped in, so the table is never
without it (a unique one keeps refusing duplicates throughout). Each step looks first
whether it is done, so a migration that was interrupted (killed, a deadlock, a lost
connection) is simply run again; the invalid index an interrupted build leaves is dropped
and built again. Elsewhere (SQLite) the operations run as they are.

The migration that uses it must not be atomic on PostgreSQL, which builds an index
concurrently only outside a transaction: `atomic = connection.vendor != "postgresql"` keeps
it one transaction elsewhere. Going back runs Django's operations, in one transaction.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.db import transaction
from django.db.migrations.operations.base import Operation


@dataclass(frozen=True)
class Build:
    """Index `name`, built (or rebuilt) as `sql` describes; done when its definition, as
    PostgreSQL prints it, contains `marker`."""

    name: str
    sql: str  # "CREATE [UNIQUE] INDEX CONCURRENTLY {name} ON ...": {name} is filled in
    marker: str

    def deconstruct(self) -> tuple[str, tuple, dict[str, Any]]:  # for the migration writer
        return f"{__name__}.{type(self).__qualname__}", (), asdict(self)


@dataclass(frozen=True)
class DropFieldIndex:
    """The index Django gave a field (a foreign key's), by Django's name for it."""

    table: str
    column: str

    deconstruct = Build.deconstruct


class Concurrently(Operation):
    """`operations`, with their database part on PostgreSQL done by `steps`, in order."""

    reversible = True
    atomic = False

    def __init__(self, operations: Sequence[Operation], steps: Sequence[Build | DropFieldIndex]):
        self.operations = list(operations)
        self.steps = list(steps)

    def deconstruct(self) -> tuple[str, list, dict[str, Any]]:
        return self.__class__.__qualname__, [], {"operations": self.operations, "steps": self.steps}

    def describe(self) -> str:
        return f"{len(self.operations)} index changes (concurrently on PostgreSQL)"

    def state_forwards(self, app_label: str, state: Any) -> None:
        for operation in self.operations:
            operation.state_forwards(app_label, state)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any,
                          to_state: Any) -> None:  # fmt: skip
        if schema_editor.connection.vendor != "postgresql":
            for operation in self.operations:
                state = from_state.clone()
                operation.state_forwards(app_label, state)
                operation.database_forwards(app_label, schema_editor, from_state, state)
                from_state = state
            return
        models = {operation.model_name_lower for operation in self.operations}
        alias = schema_editor.connection.alias
        if not any(self.allow_migrate_model(alias, to_state.apps.get_model(app_label, name))
                   for name in models):  # fmt: skip
            return
        for step in self.steps:
            if isinstance(step, Build):
                _build(schema_editor, step)
            else:
                name = schema_editor._create_index_name(step.table, [step.column], suffix="")
                schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_quote(name)}")

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any,
                           to_state: Any) -> None:  # fmt: skip
        """Django's way, locks and all, as SeparateDatabaseAndState undoes its operations
        (`to_state` is the state before them)."""
        before = {}
        for operation in self.operations:
            before[operation] = to_state
            to_state = to_state.clone()
            operation.state_forwards(app_label, to_state)
        with transaction.atomic(using=schema_editor.connection.alias):  # all or nothing
            for operation in reversed(self.operations):
                from_state, to_state = to_state, before[operation]
                operation.database_backwards(app_label, schema_editor, from_state, to_state)


def _build(schema_editor: Any, step: Build) -> None:
    """Index `step.name` as `step.sql` builds it: beside the index it replaces, under a
    temporary name, then swapped in (each part skipped when it is done)."""
    temporary = f"{step.name[:50]}_building"
    if schema_editor.collect_sql:  # sqlmigrate: every statement, as on the old schema
        current = built = None
    else:
        current, built = _index(schema_editor, step.name), _index(schema_editor, temporary)
        if current is not None and current[1] and step.marker in current[0]:
            return  # built, and swapped in
        if built is not None and not built[1]:  # an interrupted build's invalid leftover
            schema_editor.execute(f"DROP INDEX CONCURRENTLY {_quote(temporary)}")
            built = None
    if built is None:
        schema_editor.execute(step.sql.format(name=_quote(temporary)))
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_quote(step.name)}")
    schema_editor.execute(f"ALTER INDEX {_quote(temporary)} RENAME TO {_quote(step.name)}")


def _index(schema_editor: Any, name: str) -> tuple[str, bool] | None:
    """(definition, valid) of index `name`, or None when there is none."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_indexdef(indexrelid), indisvalid FROM pg_index"
            " WHERE indexrelid = to_regclass(%s)",
            [_quote(name)],
        )
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
