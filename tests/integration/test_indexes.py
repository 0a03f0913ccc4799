"""The task table's indexes: what an enqueue and each change of status have to write."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from taskqueue.models import Task, TaskAttempt

pytestmark = pytest.mark.django_db

# Indexes of columns that are mostly empty: partial, so that the empty rows stay out.
PARTIAL = {
    "taskqueue_task_finished": "finished_at",
    "taskqueue_task_requested_by": "requested_by_id",
    "taskqueue_task_cancelled_by": "cancelled_by_id",
    "taskqueue_task_retry_of": "retry_of_id",
    "taskqueue_task_one_active_per_dedup_key": "dedup_key",
}


def _indexes(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    return {name: info for name, info in found.items() if info["index"] or info["unique"]}


def test_the_mostly_empty_columns_indexes_leave_the_empty_rows_out() -> None:
    found = _indexes(Task._meta.db_table)
    for name, column in PARTIAL.items():
        assert found[name]["columns"] == [column], name
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                [Task._meta.db_table],
            )
            definitions = dict(cursor.fetchall())
        for name, column in PARTIAL.items():
            assert f"{column} IS NOT NULL" in definitions[name], definitions[name]
        # and nothing else indexes those columns (Django's default index on a foreign key)
        others = [d for n, d in definitions.items() if n not in PARTIAL]
        for column in PARTIAL.values():
            assert not [d for d in others if f"({column})" in d], column


def test_an_attempt_is_found_by_its_task_through_the_unique_index_alone() -> None:
    found = _indexes(TaskAttempt._meta.db_table)
    on_task = [info["columns"] for info in found.values() if info["columns"][:1] == ["task_id"]]
    assert on_task == [["task_id", "number"]]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's plans")
def test_deleting_a_user_finds_their_tasks_by_the_partial_index() -> None:
    user = get_user_model().objects.create_user("someone")
    Task.objects.create(task_type="ping", requested_by=user)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        # the query Django's SET_NULL runs when a user is deleted
        cursor.execute(
            "EXPLAIN SELECT id FROM taskqueue_task WHERE requested_by_id IN (%s)", [user.pk]
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert re.search(r"\btaskqueue_task_requested_by\b", plan), plan  # the partial one


def test_identical_active_tasks_of_a_deduplicated_type_still_collide() -> None:
    from django.db import IntegrityError, transaction

    Task.objects.create(task_type="ping", dedup_key="k", status=Task.Status.QUEUED)
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(task_type="ping", dedup_key="k", status=Task.Status.LEASED)
    Task.objects.create(task_type="ping", dedup_key="k", status=Task.Status.COMPLETED)
    Task.objects.create(task_type="ping", status=Task.Status.QUEUED)
    Task.objects.create(task_type="ping", status=Task.Status.QUEUED)  # no key: no collision
