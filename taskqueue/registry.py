"""Task types: a stable name, a handler, a payload serializer and a policy.

Apps register their types in their `tasks.py` (autodiscovered); settings may override a
type's policy through `TASKQUEUE["TASK_TYPES"][name]`, read at access time.
"""

import contextlib
import dataclasses
import importlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rest_framework import serializers

from taskqueue.conf import conf
from taskqueue.exceptions import InvalidPayload, UnknownTaskType

Handler = Callable[..., dict[str, Any] | None]

# Priority (higher = more urgent) → RQ queue. Workers listen to them in this order.
QUEUES = ("high", "default", "low")


def queue_for_priority(priority: int) -> str:
    if priority >= 5:
        return "high"
    if priority >= 2:
        return "default"
    return "low"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between attempts, in seconds."""

    base: float = 10.0
    factor: float = 2.0
    maximum: float = 600.0
    jitter: float = 0.25

    def delays(self, retries: int) -> list[int]:
        """The delay before each of `retries` retries, jitter drawn now."""
        return [
            max(
                0,
                round(
                    min(self.maximum, self.base * self.factor**i)
                    * random.uniform(1 - self.jitter, 1 + self.jitter)
                ),
            )
            for i in range(retries)
        ]


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 1
    timeout: int = 60
    priority: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    exclusive: bool = False
    # Whether a request identical to an active task returns that task (None: as exclusive).
    dedup: bool | None = None
    # The permission ("app_label.codename") a user needs to trigger this type.
    permission: str | None = None

    @property
    def queue(self) -> str:
        return queue_for_priority(self.priority)

    @property
    def deduplicates(self) -> bool:
        return self.exclusive if self.dedup is None else self.dedup

    def errors(self) -> list[str]:
        """What is wrong with this policy, in words; empty when it is valid."""
        problems = []
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            problems.append(f"max_attempts must be an integer >= 1, not {self.max_attempts!r}")
        if not isinstance(self.timeout, int) or self.timeout < 1:
            problems.append(f"timeout must be an integer >= 1 (seconds), not {self.timeout!r}")
        if not isinstance(self.priority, int):
            problems.append(f"priority must be an integer, not {self.priority!r}")
        if not isinstance(self.exclusive, bool) or not isinstance(self.dedup, bool | None):
            problems.append("exclusive and dedup must be true or false")
        b = self.backoff
        numbers = (b.base, b.factor, b.maximum, b.jitter)
        if not all(isinstance(n, (int, float)) and n >= 0 for n in numbers) or b.jitter > 1:
            problems.append("backoff needs base, factor, maximum >= 0 and 0 <= jitter <= 1")
        return problems

    def with_overrides(self, overrides: dict[str, Any]) -> "Policy":
        """This policy with settings overrides applied; ValueError on unknown keys."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown policy keys {unknown}; known: {sorted(known)}")
        values = dict(overrides)
        if isinstance(values.get("backoff"), dict):
            try:
                values["backoff"] = dataclasses.replace(self.backoff, **values["backoff"])
            except TypeError as exc:
                raise ValueError(f"bad backoff: {exc}") from None
        return dataclasses.replace(self, **values)


class StrictIntegerField(serializers.IntegerField):
    """An integer given as a JSON integer or a string of digits (query parameters).

    Unlike DRF's IntegerField it refuses booleans, floats (1.5, 1e309) and "1.0".
    """

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
        if isinstance(data, str) and re.fullmatch(r"[+-]?\d{1,30}", data.strip()):
            return int(data)
        self.fail("invalid")
        raise AssertionError("unreachable")  # self.fail raises


class StrictBooleanField(serializers.BooleanField):
    """A boolean given as JSON true/false or, in a query parameter, "true"/"false"/"1"/"0".

    DRF's BooleanField also takes the JSON numbers 0 and 1, which the schema calls invalid.
    """

    WORDS: ClassVar[dict[str, bool]] = {"true": True, "false": False, "1": True, "0": False}

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        if isinstance(data, str) and data.strip().lower() in self.WORDS:
            return self.WORDS[data.strip().lower()]
        self.fail("invalid", input=data)
        raise AssertionError("unreachable")  # self.fail raises


class PayloadSerializer(serializers.Serializer):
    """Base for payload serializers: unknown fields are an error, not ignored."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        errors = {name: ["Unknown field."] for name in unknown}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**exc.detail, **errors}) from None
        if errors:
            raise serializers.ValidationError(errors)
        return value


@dataclass(frozen=True)
class TaskType:
    name: str
    handler: Handler
    serializer: type[serializers.Serializer] | None
    base_policy: Policy
    description: str = ""
    # Where the type runs when its policy's priority does not say (django.tasks' queue_name).
    queue: str | None = None
    # What people read (the console); `name` is what the database, Redis and the API keep.
    title: str = ""

    @property
    def policy(self) -> Policy:
        overrides = conf.TASK_TYPES.get(self.name)
        return self.base_policy.with_overrides(overrides) if overrides else self.base_policy

    def validate_payload(self, payload: Any) -> dict[str, Any]:
        """The cleaned payload, or InvalidPayload with field messages."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise InvalidPayload({"payload": ["Expected a JSON object."]})
        if self.serializer is None:
            if payload:
                raise InvalidPayload({name: ["Unknown field."] for name in sorted(payload)})
            return {}
        # A serializer may validate in plain Python (DRF's machinery costs ~70 µs a call,
        # on the enqueue path and again in the worker); it still describes the fields.
        clean = getattr(self.serializer, "clean_payload", None)
        if clean is not None:
            return clean(payload)
        serializer = self.serializer(data=payload)
        if not serializer.is_valid():
            raise InvalidPayload(dict(serializer.errors))
        return dict(serializer.validated_data)


_registry: dict[str, TaskType] = {}


def register(
    name: str,
    *,
    serializer: type[serializers.Serializer] | None = None,
    description: str = "",
    queue: str | None = None,
    replace: bool = False,
    title: str = "",
    **policy: Any,
) -> Callable[[Handler], Handler]:
    """Decorator: register `handler` as the task type `name` with its policy and `title`
    (in words, for people; by default the name with spaces for underscores).

    `replace`: a type already registered under `name` is replaced (django.tasks' `using()`
    makes a new Task of the same function), not an error."""

    def decorator(handler: Handler) -> Handler:
        if name in _registry and _registry[name].handler is not handler and not replace:
            raise ValueError(f"Task type {name!r} is already registered")
        summary = (handler.__doc__ or "").strip().split("\n", 1)[0]
        _registry[name] = TaskType(
            name=name,
            handler=handler,
            serializer=serializer,
            base_policy=Policy(**policy),
            description=description or summary,
            queue=queue,
            title=title or _humanize(name),
        )
        return handler

    return decorator


def _humanize(name: str) -> str:
    if "." in name:  # a django.tasks function, named by its dotted path: kept as it is
        return name
    return name.replace("_", " ").capitalize()


def task_title(name: str) -> str:
    """The title of the task type `name` in words; the name itself if it is not registered."""
    spec = _registry.get(name)
    return spec.title if spec else name


def unregister(name: str) -> None:
    _registry.pop(name, None)


def get_task_type(name: str) -> TaskType:
    """The type `name`. A dotted name not registered yet (a django.tasks function, whose
    type is its path: it registers when its module is imported) imports its module first,
    as Django's own database backend does with the path it stores."""
    spec = _registry.get(name)
    if spec is None and "." in name:
        module = name.rpartition(".")[0]
        with contextlib.suppress(ImportError, ValueError):
            importlib.import_module(module)
        spec = _registry.get(name)
    if spec is None:
        raise UnknownTaskType(f"Unknown task type {name!r}.")
    return spec


def is_registered(name: str) -> bool:
    return name in _registry


def type_for_handler(handler: Callable[..., Any]) -> TaskType | None:
    """The registered type whose handler is `handler`, if any."""
    return next((spec for spec in _registry.values() if spec.handler is handler), None)


def task_types() -> list[TaskType]:
    return sorted(_registry.values(), key=lambda t: t.name)
