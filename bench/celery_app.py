"""The Celery reference: prefork workers, Redis broker, django-celery-results on the same DB.

    celery -A bench.celery_app worker --pool prefork --concurrency N

CELERY_DB_REUSE_MAX (environment) sets Celery's Django fix-up option of that name: keep the
database connection for that many tasks instead of closing it after each.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

# kombu spells a unix socket redis+socket:// (the bench's Redis listens on one).
broker = os.environ["REDIS_URL"].replace("unix://", "redis+socket://", 1)

app = Celery("bench")
app.conf.update(
    broker_url=broker,
    result_backend="django-db",
    task_ignore_result=False,
    worker_hijack_root_logger=False,
)
if os.environ.get("CELERY_DB_REUSE_MAX"):
    app.conf["CELERY_DB_REUSE_MAX"] = int(os.environ["CELERY_DB_REUSE_MAX"])


@app.task(name="bench.noop")
def noop() -> None:
    return None
