"""The task queue's exceptions: domain errors with a stable `code`, never HTTP."""

from typing import Any


class TaskQueueError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "task_queue_error"
    default_message = "Task queue error."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class TaskNotFound(TaskQueueError):
    code = "task_not_found"
    default_message = "No such task."


class UnknownTaskType(TaskQueueError):
    code = "unknown_task_type"
    default_message = "No such task type."


class InvalidTransition(TaskQueueError):
    code = "invalid_transition"
    default_message = "The task is not in a state that allows this."


class QueueUnavailable(TaskQueueError):
    code = "queue_unavailable"
    default_message = "The queue (Redis) is unreachable."


class TooManyActiveTasks(TaskQueueError):
    code = "too_many_active_tasks"
    default_message = "Too many tasks of this type are waiting or running; try again later."


class InvalidPayload(TaskQueueError):
    code = "invalid_payload"
    default_message = "The payload is not valid for this task type."

    def __init__(self, errors: dict[str, Any], message: str | None = None) -> None:
        self.errors = errors
        super().__init__(message)


class TaskError(Exception):
    """Raised by a handler to fail its task with a chosen `code`.

    `retryable=False` ends the task at once, whatever attempts remain. `traceback`, when
    given, is the one recorded (the failure this error reports), instead of this error's.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool = False, traceback: str | None = None
    ) -> None:
        self.code = code
        self.message = message
        self.retryable = retryable
        self.traceback = traceback
        super().__init__(message)
