"""Periodic jobs for `manage.py rqcron taskqueue.cron`: run exactly one such process.

The cron process only enqueues these jobs; workers run them.
"""

from rq import cron

from taskqueue.services.reconcile import reconcile_tasks

cron.register(
    reconcile_tasks,
    "high",
    interval=60,
    job_timeout=240,
    result_ttl=600,
    failure_ttl=86400,
    name="taskqueue.reconcile",
)
