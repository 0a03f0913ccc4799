"""Failing fast while Redis does not answer, instead of waiting out a timeout per call.

A Redis cut off by a partition (or hung) does not refuse connections: it does not answer,
and every call waits out its timeout, REDIS_CONNECT_TIMEOUT to connect or
REDIS_SOCKET_TIMEOUT for a reply, then redis-py's retries. On the request path an enqueue
POST makes three calls (the token cache's generation, the throttle, the dispatch): with
Redis cut off from the web host it took 6-14 s, and a GET of a task 2 s, for as long as the
cut lasted (found by the scale-out drill). Once a call of this process has timed out, its
calls to Redis fail at once with `RedisCutOff` for REDIS_RETRY_AFTER seconds; the next call
after that tries for real. The callers already treat a RedisError as "Redis is down" (the
throttle lets the request through, the token cache reads the database, the task waits
`queued` for the reconciler). A refused connection (Redis down, its host up) fails fast by
itself and does not trip this.
"""

import time
from functools import cache
from typing import Any

import redis

from taskqueue.conf import conf

# The monotonic time until which this process does not ask Redis (a float: racing threads
# can only both set it, to about the same value).
_cut_off_until = 0.0


class RedisCutOff(redis.RedisError):
    """Redis did not answer a moment ago: not asked again yet. Not a ConnectionError, so
    redis-py does not retry it."""


def _check() -> None:
    left = _cut_off_until - time.monotonic()
    if left > 0:
        raise RedisCutOff(f"Redis did not answer; not asking again for {left:.1f} s")


def _trip() -> None:
    global _cut_off_until  # noqa: PLW0603  (one per process, by design)
    if conf.REDIS_RETRY_AFTER > 0:
        _cut_off_until = time.monotonic() + conf.REDIS_RETRY_AFTER


def reset() -> None:
    """Forget a past timeout (tests)."""
    global _cut_off_until  # noqa: PLW0603
    _cut_off_until = 0.0


class FailFast:
    """A mixin for redis-py's connection classes: check before connecting or sending, and
    trip on a timeout connecting or reading."""

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        _check()
        try:
            super().connect_check_health(*args, **kwargs)
        except redis.TimeoutError:
            _trip()
            raise

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        _check()
        super().send_packed_command(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.TimeoutError:
            _trip()
            raise


@cache
def fail_fast(connection_class: type) -> type:
    """`connection_class` (TCP, TLS or unix socket) with the FailFast behaviour."""
    if issubclass(connection_class, FailFast):
        return connection_class
    return type(f"FailFast{connection_class.__name__}", (FailFast, connection_class), {})
