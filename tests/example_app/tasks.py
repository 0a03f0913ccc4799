"""`@task` functions as any Django app writes them: nothing here imports the task queue.

On Django 5.2 the import is the backport's (`django_tasks`); on 6.x it is `django.tasks`.
"""

import os
import time
from pathlib import Path

try:
    from django.tasks import TaskContext, task
except ImportError:
    from django_tasks import TaskContext, task


@task()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@task()
async def add_async(a: int, b: int) -> int:
    return a + b


@task(priority=10, queue_name="low")
def low_priority() -> str:
    return "low"


@task()
def fail(message: str) -> None:
    raise ValueError(message)


@task()
def exit_now() -> None:
    raise SystemExit("exiting from a task")


@task()
def returns_a_set() -> object:
    return {1, 2}


@task(takes_context=True)
def whoami(context: TaskContext) -> dict:
    return {"id": context.task_result.id, "attempt": context.attempt}


@task()
def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


@task(takes_context=True, max_attempts=3, backoff={"base": 0, "jitter": 0})
def flaky(context: TaskContext, fail_times: int) -> int:
    """Fails its first `fail_times` attempts, then returns the attempt number."""
    if context.attempt <= fail_times:
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    return context.attempt


@task(exclusive=True)
def one_at_a_time(key: str) -> str:
    return key


@task(timeout=1)
def overruns() -> None:
    time.sleep(30)


@task()
def write_marker(path: str) -> str:
    Path(path).write_text(str(os.getpid()))
    return path
