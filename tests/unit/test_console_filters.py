"""The console's template filters: one vocabulary and one clock."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.utils import timezone as django_timezone

from taskqueue.templatetags.taskqueue_console import ago, outcome_label, status_label, utc


@pytest.mark.parametrize(
    ("before", "shown"),
    [
        (timedelta(0), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(minutes=1), "1 minute ago"),
        (timedelta(hours=3, minutes=5), "3 hours, 5 minutes ago"),
    ],
)
def test_ago_says_just_now_under_a_minute(before, shown):
    assert ago(django_timezone.now() - before).replace("\xa0", " ") == shown


@pytest.mark.parametrize(
    ("moment", "shown"),
    [
        (datetime(2026, 11, 28, 22, 44, 17, 123000, tzinfo=UTC), "2026-11-28 22:44:17 UTC"),
        (datetime(2026, 11, 28, 17, 44, 17, tzinfo=timezone(timedelta(hours=-5))),
         "2026-11-28 22:44:17 UTC"),
        ("2026-11-28T22:44:17.123Z", "2026-11-28 22:44:17 UTC"),
        ("2026-11-28T23:44:17+01:00", "2026-11-28 22:44:17 UTC"),
        (None, "—"),
        ("", "—"),
    ],
)  # fmt: skip
def test_utc_shows_every_time_in_utc_24_hour(moment, shown):
    assert utc(moment) == shown


def test_running_is_the_word_for_leased_everywhere():
    assert (status_label("leased"), outcome_label("running")) == ("Running", "Running")
    assert status_label("unknown") == "unknown"
