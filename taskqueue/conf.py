"""The TASKQUEUE settings dict, read at access time so override_settings works."""

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    "USE_TASK_QUEUE": True,
    "TASK_TYPES": {},
    "ENABLE_DIAGNOSTICS": False,
    # Seconds RQ keeps a finished job's result and a failed job; the database keeps history.
    "RESULT_TTL": 3600,
    "FAILURE_TTL": 7 * 24 * 3600,
    # An exclusive task that finds its type's lock taken is re-dispatched after this delay.
    "EXCLUSIVE_RETRY_DELAY": 5,
    # The reconciler leaves tasks younger than this alone (their job may be on its way),
    # and gives up on an attempt this long past its timeout whatever RQ says.
    "RECONCILE_GRACE": 30,
    "LEASE_EXPIRY_MARGIN": 180,
    "RECONCILE_BATCH": 1000,
    # Active (queued, running, retrying) tasks allowed per type before enqueue refuses.
    "MAX_ACTIVE_PER_TYPE": 100,
    # A worker (or rqcron) whose heartbeat is older than this is not alive. RQ workers
    # heartbeat at least every worker_ttl - 15 s (405 s by default) while idle.
    "WORKER_STALE_SECONDS": 480,
    # The dashboard calls a worker stale when its heartbeat is older than the interval the
    # worker says it heartbeats at in its state (idle: every 10 s; busy: every
    # JOB_MONITORING_INTERVAL) plus this; and flags a queue whose oldest job has waited more
    # than IDLE_WAIT_SECONDS while a worker listening on it says it is idle.
    "HEARTBEAT_GRACE": 15,
    "IDLE_WAIT_SECONDS": 15,
    "CRON_STALE_SECONDS": 180,
    # How often a worker checks on its work horse and heartbeats (RQ's 30 s), and how long
    # past a missed heartbeat RQ's cleanup waits before calling the job abandoned (RQ's 60 s):
    # together they bound how long a task whose whole worker died stays `leased`.
    "JOB_MONITORING_INTERVAL": 30,
    "HEARTBEAT_MARGIN": 60,
    # The worker's long-lived work horse: replaced after this many tasks or above this
    # resident size, and killed this long after an attempt's timeout if the handler ignores
    # the timeout raised into it.
    "HORSE_MAX_TASKS": 1000,
    "HORSE_MAX_RSS_MB": 512,
    "HORSE_KILL_GRACE": 1.0,
    # How long a cancel of a running task waits for the worker to confirm the stop (or for
    # the attempt to end first) before it answers "stopping".
    "STOP_WAIT_SECONDS": 2.0,
    # A retry or deferral this late past its time in RQ's scheduled registry is dispatched
    # by the reconciler (RQ's scheduler is gone, or no worker runs one).
    "SCHEDULE_GRACE": 10,
    # Retention: terminal tasks older than this many days are pruned daily.
    "TASK_RETENTION_DAYS": 30,
    "FAILED_TASK_RETENTION_DAYS": 90,
    "PRUNE_BATCH_SIZE": 2000,
    # Failure rate over the last hour above which the system is degraded (with enough tasks).
    "FAILURE_RATE_THRESHOLD": 0.25,
    "FAILURE_RATE_MIN_TASKS": 5,
    # A queue whose oldest job waits longer than this fires the `queue_waiting` alert.
    "ALERT_QUEUE_AGE_SECONDS": 600,
    # Prepare the worker's two hot statements once per PostgreSQL session (False behind a
    # pooler that does not keep sessions, such as PgBouncer in transaction mode).
    "PREPARE_STATEMENTS": True,
    # Seconds an API token's user is remembered by each web process (0: read every time).
    "TOKEN_CACHE_SECONDS": 5,
    # Bounds on Redis calls made on the request path, in seconds.
    "REDIS_CONNECT_TIMEOUT": 2.0,
    "REDIS_SOCKET_TIMEOUT": 10.0,
    # After a Redis call timed out (Redis cut off or hung), a process's calls fail at once
    # for this many seconds instead of each waiting out its timeout (0: never).
    "REDIS_RETRY_AFTER": 5.0,
}


class TaskQueueSettings:
    """Attribute access to TASKQUEUE[name], falling back to DEFAULTS."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown TASKQUEUE setting {name!r}")
        return getattr(settings, "TASKQUEUE", {}).get(name, DEFAULTS[name])


conf = TaskQueueSettings()
