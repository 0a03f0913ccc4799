"""prune_tasks: retention per outcome, batches, attempts and Redis remnants."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from rq.job import Job

from taskqueue import backend
from taskqueue.models import Task, TaskAttempt
from taskqueue.services import prune_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def finished(status: str, days_ago: float, **fields) -> Task:
    moment = timezone.now() - timedelta(days=days_ago)
    task = Task.objects.create(task_type="ping", status=status, finished_at=moment, **fields)
    task.attempt_set.create(number=1, outcome="completed", finished_at=moment)
    return task


def test_terminal_tasks_past_retention_go_failures_are_kept_longer(redis_db):
    gone = [finished("completed", 31), finished("cancelled", 45), finished("failed", 91)]
    kept = [
        finished("completed", 29),
        finished("failed", 60),
        Task.objects.create(
            task_type="ping", status="queued", created_at=timezone.now() - timedelta(days=400)
        ),
        Task.objects.create(task_type="ping", status="leased"),
    ]
    assert prune_tasks(dry_run=True) == {"dry_run": True, "tasks": 3}
    assert prune_tasks() == {"dry_run": False, "tasks_deleted": 3}
    assert set(Task.objects.values_list("pk", flat=True)) == {t.pk for t in kept}
    assert not TaskAttempt.objects.filter(task_id__in=[t.pk for t in gone]).exists()


def test_pruning_works_in_batches_and_unlinks_retries(redis_db):
    olds = [finished("completed", 40) for _ in range(7)]
    retry = Task.objects.create(task_type="ping", retry_of=olds[0])
    with override_settings(TASKQUEUE={"PRUNE_BATCH_SIZE": 3}):
        assert prune_tasks()["tasks_deleted"] == 7
    retry.refresh_from_db()
    assert retry.retry_of is None


def test_pruning_deletes_what_redis_still_holds_of_the_jobs(redis_db):
    task = finished("completed", 40)
    backend.get_queue("default").enqueue(
        backend.JOB_FUNCTION, job_id=task.job_id, args=(task.pk, 0)
    )
    prune_tasks()
    assert not Job.exists(task.job_id, connection=redis_db)


def test_the_command_prints_what_it_did(redis_db, capsys):
    finished("completed", 40)
    call_command("prune_tasks", "--dry-run")
    assert '"tasks": 1' in capsys.readouterr().out
    call_command("prune_tasks")
    assert '"tasks_deleted": 1' in capsys.readouterr().out


def test_reconciler_actions_are_counted_for_monitoring(redis_db):
    from taskqueue.services import enqueue_task, reconcile_tasks

    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        enqueue_task("ping")
        enqueue_task("ping")
    with override_settings(TASKQUEUE={"RECONCILE_GRACE": 0}):
        reconcile_tasks()
    assert backend.action_totals("reconciler") == {"dispatched": 2}
