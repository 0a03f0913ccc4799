"""Periodic jobs for `manage.py rqcron taskqueue.cron`: run exactly one such process.

The cron process only enqueues these jobs; workers run them.
"""

from rq import cron

from taskqueue.services.alerts import check_alerts
from taskqueue.services.reconcile import reconcile_tasks
from taskqueue.services.retention import prune_tasks
from taskqueue.services.schedules import run_due_schedules

# Every 15 s: an overdue retry is dispatched within SCHEDULE_GRACE + 15 s of its time.
cron.register(
    reconcile_tasks,
    "high",
    interval=15,
    job_timeout=240,
    result_ttl=600,
    failure_ttl=86400,
    name="taskqueue.reconcile",
)

cron.register(
    prune_tasks,
    "low",
    cron="17 3 * * *",  # daily, 03:17 UTC
    job_timeout=3600,
    result_ttl=86400,
    failure_ttl=7 * 86400,
    name="taskqueue.prune",
)

cron.register(
    check_alerts,
    "high",
    interval=60,
    job_timeout=60,
    result_ttl=600,
    failure_ttl=86400,
    name="taskqueue.alerts",
)

cron.register(
    run_due_schedules,
    "high",
    interval=30,
    job_timeout=60,
    result_ttl=300,
    failure_ttl=86400,
    name="taskqueue.schedules",
)
