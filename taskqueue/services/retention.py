"""Retention: terminal tasks older than TASK_RETENTION_DAYS are deleted, in batches."""

import contextlib
import logging
import uuid
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from taskqueue import backend
from taskqueue.conf import conf
from taskqueue.models import Task, TaskAttempt, job_id_for

logger = logging.getLogger(__name__)


def prunable() -> Any:
    """Completed and cancelled tasks past the retention, failed ones past theirs."""
    now = timezone.now()
    keep = now - timedelta(days=conf.TASK_RETENTION_DAYS)
    keep_failed = now - timedelta(days=conf.FAILED_TASK_RETENTION_DAYS)
    return Task.objects.filter(
        Q(status__in=[Task.Status.COMPLETED, Task.Status.CANCELLED], finished_at__lt=keep)
        | Q(status=Task.Status.FAILED, finished_at__lt=keep_failed)
    )


def prune_tasks(*, dry_run: bool = False) -> dict[str, Any]:
    """Delete prunable tasks with their attempts and what Redis keeps of their jobs."""
    if dry_run:
        return {"dry_run": True, "tasks": prunable().count()}
    token = uuid.uuid4().hex
    try:
        locked = backend.acquire_lock("prune", token, ttl=3600)
    except backend.RedisError:
        locked = True  # the database is what matters; pruning twice at once is harmless
    if not locked:
        return {"skipped": 1}
    deleted = 0
    try:
        while ids := list(
            prunable().order_by("pk").values_list("pk", "dispatch")[: conf.PRUNE_BATCH_SIZE]
        ):
            pks = [pk for pk, _ in ids]
            with transaction.atomic():
                TaskAttempt.objects.filter(task_id__in=pks).delete()
                Task.objects.filter(retry_of__in=pks).update(retry_of=None)
                Task.objects.filter(pk__in=pks).delete()
            deleted += len(pks)
            with contextlib.suppress(backend.RedisError):  # else RQ's own TTLs expire them
                backend.delete_jobs([job_id_for(pk, dispatch) for pk, dispatch in ids])
    finally:
        with contextlib.suppress(backend.RedisError):
            backend.release_lock("prune", token)
    if deleted:
        logger.info("Pruned %s tasks past their retention", deleted)
    return {"dry_run": False, "tasks_deleted": deleted}
