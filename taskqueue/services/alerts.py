"""In-product alerts: log at ERROR and mail ADMINS once per condition, until it clears.

Evaluated every 60 s by the cron process. The conditions and their thresholds (settings):
`failure_rate` (FAILURE_RATE_THRESHOLD over the last hour), `queue_waiting`
(ALERT_QUEUE_AGE_SECONDS), `no_worker`, `reconciler_rescued` (the reconciler had to act
since the last evaluation). Which alerts fire is kept in Redis, so every process agrees and
nothing is sent twice.
"""

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

from django.core.mail import mail_admins
from django.utils import timezone

from taskqueue import backend
from taskqueue.conf import conf
from taskqueue.services import monitoring

logger = logging.getLogger(__name__)

STATE = "taskqueue:alerts:firing"
SEEN = "taskqueue:alerts:reconciler-seen"
# overdue_dispatched: a retry or deferral RQ's scheduler did not move (no worker runs one).
RESCUES = (
    "dispatched",
    "redispatched",
    "overdue_dispatched",
    "redis_lost",
    "worker_lost",
    "outcome_copied",
)


def conditions() -> dict[str, str]:
    """The alert conditions that hold now, with a sentence each."""
    firing = {}
    rate = monitoring.failure_rate_alert(timedelta(hours=1))
    if rate["firing"]:
        firing["failure_rate"] = (
            f"{rate['rate']:.0%} of the tasks that finished in the last hour failed "
            f"({rate['failed']} of {rate['failed'] + rate['completed']}; threshold "
            f"{rate['threshold']:.0%})."
        )
    for queue in monitoring.queue_stats():
        age = queue["oldest_age_seconds"]
        if age is not None and age > conf.ALERT_QUEUE_AGE_SECONDS:
            firing[f"queue_waiting:{queue['name']}"] = (
                f"The oldest job on queue {queue['name']} has waited {age:.0f} s "
                f"(threshold {conf.ALERT_QUEUE_AGE_SECONDS} s; {queue['depth']} waiting)."
            )
    if not any(worker["alive"] for worker in monitoring.worker_stats()):
        firing["no_worker"] = "No worker is alive: tasks are not being run."
    rescued = _new_rescues()
    if rescued:
        firing["reconciler_rescued"] = (
            "The reconciler had to rescue tasks since the last check: "
            + ", ".join(f"{n} {action}" for action, n in sorted(rescued.items()))
            + " (see docs/reliability.md)."
        )
    return firing


def _new_rescues() -> dict[str, int]:
    totals = backend.action_totals("reconciler")
    connection = backend.get_connection()
    first_look = not connection.exists(SEEN)
    seen = {k.decode(): int(v) for k, v in connection.hgetall(SEEN).items()}
    connection.hset(SEEN, mapping={**totals, "_": 0})
    if first_look:
        return {}  # a baseline: what happened before monitoring started is history
    return {
        action: totals.get(action, 0) - seen.get(action, 0)
        for action in RESCUES
        if totals.get(action, 0) > seen.get(action, 0)
    }


def check_alerts() -> dict[str, Any]:
    """Evaluate the conditions; notify those that start and those that clear."""
    token = uuid.uuid4().hex
    if not backend.acquire_lock("alerts", token, ttl=120):
        return {"skipped": 1}
    try:
        now_firing = conditions()
        connection = backend.get_connection()
        before = {k.decode(): json.loads(v) for k, v in connection.hgetall(STATE).items()}
        started = sorted(set(now_firing) - set(before))
        cleared = sorted(set(before) - set(now_firing))
        for name in started:
            since = timezone.now().isoformat()
            connection.hset(STATE, name, json.dumps({"since": since, "message": now_firing[name]}))
            logger.error("ALERT %s: %s", name, now_firing[name])
            mail_admins(f"ALERT {name}", now_firing[name], fail_silently=True)
        for name in cleared:
            connection.hdel(STATE, name)
            logger.warning("Alert %s cleared (it fired since %s)", name, before[name]["since"])
            mail_admins(f"cleared {name}", f"Cleared: {before[name]['message']}",
                        fail_silently=True)  # fmt: skip
        return {"firing": sorted(now_firing), "started": started, "cleared": cleared}
    finally:
        backend.release_lock("alerts", token)


def firing_alerts() -> dict[str, dict[str, str]]:
    """The alerts firing as of the last evaluation: name → {since, message}."""
    raw = backend.get_connection().hgetall(STATE)
    return {k.decode(): json.loads(v) for k, v in raw.items()}
