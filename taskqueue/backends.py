"""A `django.tasks` backend on this engine: any app's `@task` functions run here.

    TASKS = {"default": {"BACKEND": "taskqueue.backends.TaskQueueBackend"}}

A `@task` function is a task type named by its dotted path, registered when its module is
imported (a worker imports it from that path, as Django's database backend does). Its
policy comes from the decorator's keyword arguments (`max_attempts`, `timeout`,
`exclusive`, `dedup`, `backoff`), then `TASKQUEUE["TASK_TYPES"][path]`; `queue_name` is the
RQ queue (high, default, low). `enqueue()` records a `Task` row whose payload is
`{"args": [...], "kwargs": {...}}` and dispatches an RQ job once the caller's transaction
commits, as `enqueue_task` always does; the result's id is the task id. A function that is
the handler of one of our own types (the four maintenance operations) enqueues that type,
with its payload validation, policy and permission.

Status mapping (docs/django-tasks.md): queued/retrying → READY, leased → RUNNING,
completed → SUCCESSFUL, failed/cancelled → FAILED.
"""

import json
import logging
import math
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core import checks
from django.utils import timezone
from django.utils.module_loading import import_string
from rest_framework import serializers

from taskqueue import backend as rq_backend
from taskqueue import progress
from taskqueue.conf import conf
from taskqueue.exceptions import InvalidPayload, TaskError, UnknownTaskType
from taskqueue.models import Task as TaskRow
from taskqueue.registry import (
    QUEUES,
    Backoff,
    PayloadSerializer,
    Policy,
    TaskType,
    get_task_type,
    is_registered,
    register,
    type_for_handler,
)

try:  # Django 6.0 and later: the framework's own
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task
    from django.tasks.base import TaskError as ResultError
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task
    from django_tasks.base import TaskError as ResultError
    from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started

__all__ = ["QueueTask", "TaskQueueBackend", "task", "task_backends"]

logger = logging.getLogger(__name__)

STATUS = {
    TaskRow.Status.QUEUED: TaskResultStatus.READY,
    TaskRow.Status.RETRYING: TaskResultStatus.READY,
    TaskRow.Status.LEASED: TaskResultStatus.RUNNING,
    TaskRow.Status.COMPLETED: TaskResultStatus.SUCCESSFUL,
    TaskRow.Status.FAILED: TaskResultStatus.FAILED,
    TaskRow.Status.CANCELLED: TaskResultStatus.FAILED,
}
# The exception class reported for an attempt that ended without one of the function's
# own (a timeout, a lost worker, a stop): the engine's TaskError, with the code in its text.
ENGINE_ERROR = "taskqueue.exceptions.TaskError"
# Task.task_type's length.
MAX_PATH = 100
DEFAULT_TIMEOUT = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTask(Task):
    """A django.tasks Task with this engine's policy: the decorator's keyword arguments.

    `@task(max_attempts=3, timeout=30, exclusive=True, backoff={"base": 5})`; None leaves
    the backend's default (`OPTIONS`) or, for `dedup`, follows `exclusive`."""

    max_attempts: int | None = None
    timeout: int | None = None
    exclusive: bool | None = None
    dedup: bool | None = None
    backoff: dict[str, float] | None = None


class FunctionPayload(PayloadSerializer):
    """A django.tasks call: its positional and keyword arguments, as JSON."""

    args = serializers.ListField(child=serializers.JSONField(), default=list)
    kwargs = serializers.DictField(child=serializers.JSONField(), default=dict)

    @classmethod
    def clean_payload(cls, payload: dict[str, Any]) -> dict[str, Any]:
        """What the fields say, in plain Python: the enqueue and every attempt run it."""
        errors = {name: ["Unknown field."] for name in sorted(set(payload) - {"args", "kwargs"})}
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        if not isinstance(args, list):
            errors["args"] = ["Expected a list."]
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            errors["kwargs"] = ["Expected an object."]
        if errors:
            raise InvalidPayload(errors)
        return {"args": args, "kwargs": kwargs}


class TaskQueueBackend(BaseTaskBackend):
    task_class = QueueTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        if "QUEUES" not in params:
            self.queues = set(QUEUES)
        self.max_attempts = int(self.options.get("MAX_ATTEMPTS", 1))
        self.timeout = int(self.options.get("TIMEOUT", DEFAULT_TIMEOUT))

    # --- validation -----------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """Django's checks, then ours: a known queue, a valid policy, a path that fits."""
        super().validate_task(task)
        if type_for_handler(task.func) is not None:
            return  # one of our own types: its policy is registered already
        if len(task.module_path) > MAX_PATH:
            raise InvalidTaskError(
                f"The task's path {task.module_path!r} is longer than {MAX_PATH} characters."
            )
        problems = self._policy(task).errors()
        if problems:
            raise InvalidTaskError(f"Invalid task policy: {'; '.join(problems)}.")
        self._register(task)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        unknown = sorted(self.queues - set(QUEUES))
        if unknown:
            yield checks.Error(
                f"TASKS[{self.alias!r}]['QUEUES'] names queues the workers do not listen to: "
                f"{unknown}; this backend's queues are {list(QUEUES)}.",
                id="taskqueue.E004",
            )

    def _policy(self, task: Task) -> Policy:
        extra = {
            name: getattr(task, name, None)
            for name in ("max_attempts", "timeout", "exclusive", "dedup")
        }
        defaults = {"max_attempts": self.max_attempts, "timeout": self.timeout}
        for name, default in defaults.items():
            if extra[name] is None:
                extra[name] = default
        backoff = getattr(task, "backoff", None)
        try:
            backoff = Backoff(**backoff) if isinstance(backoff, dict) else backoff or Backoff()
        except TypeError as exc:
            raise InvalidTaskError(f"Invalid backoff: {exc}.") from None
        return Policy(
            max_attempts=extra["max_attempts"],
            timeout=extra["timeout"],
            priority=task.priority,
            exclusive=bool(extra["exclusive"]),
            dedup=extra["dedup"],
            backoff=backoff,
        )  # fmt: skip

    def _register(self, task: Task) -> None:
        policy = self._policy(task)
        register(
            task.module_path,
            serializer=FunctionPayload,
            description=(task.func.__doc__ or "").strip().split("\n", 1)[0],
            queue=task.queue_name,
            replace=True,
            max_attempts=policy.max_attempts,
            timeout=policy.timeout,
            priority=policy.priority,
            exclusive=policy.exclusive,
            dedup=policy.dedup,
            backoff=policy.backoff,
        )(_handler_for(task.module_path))

    # --- enqueue --------------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        from taskqueue.services import enqueue_task

        # Django's checks ran when the Task was made; again here, as the built-in backends
        # do. Ours too, unless the type is registered (the policy cannot change since).
        own = type_for_handler(task.func)
        if own is not None or is_registered(task.module_path):
            super().validate_task(task)
        else:
            self.validate_task(task)
        args, kwargs = list(args), dict(kwargs)
        if own is not None:
            if args:
                raise InvalidTaskError(f"{own.name} takes keyword arguments only.")
            name, payload = own.name, _json_arguments(kwargs, "kwargs")
            options: dict[str, Any] = {}
        else:
            name = task.module_path
            payload = {
                "args": _json_arguments(args, "args"),
                "kwargs": _json_arguments(kwargs, "kwargs"),
            }
            options = {"priority": task.priority, "queue": task.queue_name}
        try:
            row, _ = enqueue_task(
                name, payload, source=f"django.tasks:{self.alias}"[:100], run_after=task.run_after,
                **options,
            )  # fmt: skip
        except InvalidPayload as exc:
            raise InvalidTaskError(f"Invalid arguments for {name}: {exc.errors}") from None
        if not conf.USE_TASK_QUEUE:  # it ran inline already: read what it did
            row = TaskRow.objects.with_attempt_history().get(pk=row.pk)
        result = self._result(row, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    # --- results --------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        try:
            pk = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        row = TaskRow.objects.with_attempt_history().filter(pk=pk).first()
        task = _task_of(row.task_type) if row is not None else None
        if task is None:
            raise TaskResultDoesNotExist(result_id)
        return self._result(row, task)

    def _result(self, row: TaskRow, task: Task) -> TaskResult:
        history = getattr(row, "attempt_history", None) or []
        own = type_for_handler(task.func) is not None
        payload = row.payload or {}
        result = TaskResult(
            task=task,
            id=str(row.pk),
            status=STATUS[row.status],
            enqueued_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at if row.status in TaskRow.TERMINAL_STATUSES else None,
            last_attempted_at=_when(history[-1]["started_at"]) if history else None,
            args=[] if own else payload.get("args", []),
            kwargs=payload if own else payload.get("kwargs", {}),
            backend=self.alias,
            errors=_errors(row, history),
            worker_ids=[attempt["worker_name"] for attempt in history],
        )
        if row.status == TaskRow.Status.COMPLETED:
            value = (row.result or {}).get("return_value") if not own else row.result
            object.__setattr__(result, "_return_value", value)
        return result


def _json_arguments(value: Any, where: str) -> Any:
    """`value` as JSON gives it back, or TypeError naming what does not round-trip."""
    problem = _not_json(value, where)
    if problem:
        raise TypeError(f"Task arguments must round-trip through JSON: {problem}.")
    return json.loads(json.dumps(value))


def _not_json(value: Any, where: str) -> str | None:  # noqa: PLR0911
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot hold"
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if problem := _not_json(item, f"{where}[{index}]"):
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, which JSON would make a string"
            if problem := _not_json(item, f"{where}[{key!r}]"):
                return problem
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    from django.utils.dateparse import parse_datetime

    parsed = parse_datetime(str(value).replace(" ", "T"))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


def _errors(row: TaskRow, history: list[dict[str, Any]]) -> list[ResultError]:
    """One error per failed attempt: the function's exception class (its path leads the
    message) and, for the last one, the traceback kept on the task."""
    failed = [attempt for attempt in history if attempt["outcome"] in ("failed", "stopped")]
    errors = []
    for n, attempt in enumerate(failed, start=1):
        path, _, _ = (attempt["error_message"] or "").partition(": ")
        if attempt["error_code"] not in ("exception", "invalid_result") or "." not in path:
            path = ENGINE_ERROR
        last = n == len(failed)
        errors.append(
            ResultError(exception_class_path=path, traceback=row.error_traceback if last else "")
        )
    return errors


def _task_of(task_type: str) -> Task | None:
    """The django.tasks Task a task type runs: a `@task` object at its dotted path, or the
    exposed Task of one of our own types (maintenance.tasks), or None."""
    try:
        spec = get_task_type(task_type)
    except UnknownTaskType:
        return None
    if "." in task_type:
        try:
            found = import_string(task_type)
        except ImportError:
            return None
        return found if isinstance(found, Task) else None
    return _exposed.get(spec.name)


_exposed: dict[str, Task] = {}


def expose(task_type: str, **options: Any) -> Task:
    """One of our own types as a django.tasks Task (`.enqueue(**payload)`)."""
    spec: TaskType = get_task_type(task_type)
    exposed = task(spec.handler, **options)
    _exposed[task_type] = exposed
    return exposed


class ReturnValueNotJSON(TypeError):
    """A `@task` function returned what JSON cannot hold: the attempt fails, not retried."""


def _handler_for(path: str):
    """The handler that runs the `@task` function at `path` for one attempt."""

    def run(args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        task = import_string(path)
        backend = task.get_backend()
        sender = type(backend)
        task_id, attempt = progress.current_attempt() or (0, 1)
        worker = rq_backend.current_job().worker_name
        started = timezone.now()
        result = TaskResult(
            task=task,
            id=str(task_id),
            status=TaskResultStatus.RUNNING,
            enqueued_at=None,
            started_at=started,
            finished_at=None,
            last_attempted_at=started,
            args=args,
            kwargs=kwargs,
            backend=task.backend,
            errors=[],
            worker_ids=[""] * (attempt - 1) + [worker],
        )
        task_started.send(sender, task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            problem = _not_json(value, "the return value")
            if problem:
                raise ReturnValueNotJSON(f"Task return values must be JSON: {problem}")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            if rq_backend.is_timeout(exc):
                raise
            _finish(sender, result, TaskResultStatus.FAILED, exc)
            code = "invalid_result" if isinstance(exc, ReturnValueNotJSON) else "exception"
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
            raise TaskError(
                code, f"{kind}: {exc}", retryable=code == "exception",
                traceback="".join(traceback.format_exception(exc)),
            ) from exc  # fmt: skip
        _finish(sender, result, TaskResultStatus.SUCCESSFUL)
        return {"return_value": json.loads(json.dumps(value))}

    run.__name__ = run.__qualname__ = path.rpartition(".")[2]
    run.__doc__ = f"Runs the django.tasks function {path}."
    return run


def _finish(
    sender: type, result: TaskResult, status: Any, exc: BaseException | None = None
) -> None:
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    if exc is not None:
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        trace = "".join(traceback.format_exception(exc))
        result.errors.append(ResultError(exception_class_path=kind, traceback=trace))
    try:
        task_finished.send(sender, task_result=result)
    except Exception:
        logger.exception("A task_finished receiver failed for task %s", result.id)
