"""Task types, policies and payload validation (no database, no Redis)."""

import pytest
from django.core import checks
from django.test import override_settings
from rest_framework import serializers

from taskqueue.checks import check_task_types
from taskqueue.exceptions import InvalidPayload, UnknownTaskType
from taskqueue.registry import (
    Backoff,
    PayloadSerializer,
    Policy,
    get_task_type,
    queue_for_priority,
)


@pytest.mark.parametrize(
    ("priority", "queue"),
    [(9, "high"), (5, "high"), (4, "default"), (2, "default"), (1, "low"), (-3, "low")],
)
def test_priority_maps_to_queue(priority: int, queue: str) -> None:
    assert queue_for_priority(priority) == queue


def test_backoff_grows_exponentially_up_to_the_maximum_without_jitter() -> None:
    assert Backoff(base=2, factor=3, maximum=50, jitter=0).delays(5) == [2, 6, 18, 50, 50]


def test_backoff_jitter_stays_within_its_band() -> None:
    for _ in range(200):
        (delay,) = Backoff(base=100, factor=2, maximum=1000, jitter=0.2).delays(1)
        assert 80 <= delay <= 120


def test_policy_reports_what_is_wrong() -> None:
    problems = Policy(max_attempts=0, timeout=0, backoff=Backoff(jitter=2)).errors()
    assert len(problems) == 3
    assert "max_attempts" in problems[0]
    assert Policy().errors() == []


def test_policy_overrides_apply_and_unknown_keys_are_refused() -> None:
    policy = Policy(max_attempts=2).with_overrides({"max_attempts": 5, "backoff": {"base": 1}})
    assert policy.max_attempts == 5
    assert policy.backoff.base == 1
    with pytest.raises(ValueError, match="unknown policy keys"):
        Policy().with_overrides({"retries": 3})


class Sample(PayloadSerializer):
    hours = serializers.IntegerField(min_value=1, max_value=10)


def test_payload_serializer_rejects_unknown_fields() -> None:
    serializer = Sample(data={"hours": 2, "extra": 1})
    assert not serializer.is_valid()
    assert serializer.errors == {"extra": ["Unknown field."]}


def test_task_type_without_serializer_accepts_only_an_empty_payload() -> None:
    ping = get_task_type("ping")
    assert ping.validate_payload(None) == {}
    with pytest.raises(InvalidPayload) as caught:
        ping.validate_payload({"x": 1})
    assert caught.value.errors == {"x": ["Unknown field."]}
    with pytest.raises(InvalidPayload):
        ping.validate_payload([1, 2])


def test_unknown_task_type_is_an_error() -> None:
    with pytest.raises(UnknownTaskType):
        get_task_type("no_such_type")


def test_settings_override_the_registered_policy() -> None:
    with override_settings(TASKQUEUE={"TASK_TYPES": {"ping": {"timeout": 7}}}):
        assert get_task_type("ping").policy.timeout == 7
    assert get_task_type("ping").policy.timeout == 30


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"no_such_type": {"timeout": 5}}, "taskqueue.E002"),
        ({"ping": {"retries": 3}}, "taskqueue.E003"),
        ({"ping": {"max_attempts": 0}}, "taskqueue.E003"),
        ("not a dict", "taskqueue.E001"),
    ],
)
def test_system_checks_explain_bad_task_type_settings(overrides: object, check_id: str) -> None:
    with override_settings(TASKQUEUE={"TASK_TYPES": overrides}):
        messages = check_task_types()
    assert [m.id for m in messages] == [check_id]
    assert all(isinstance(m, checks.Error) and m.hint for m in messages)


def test_system_checks_pass_with_the_shipped_settings() -> None:
    assert check_task_types() == []
