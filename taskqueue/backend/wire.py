"""Our scripts' calls, written to Redis without redis-py's per-call machinery.

Every task costs three calls of our scripts (the enqueue's, and a worker's start and end
of the job), each with 15 to 45 arguments. Through redis-py's client a call takes its
connection from the pool (a lock, and a non-blocking read to check that no reply is left
unread: three system calls), packs each argument through its encoder (several isinstance
checks an argument) and goes through its retry wrapper: about 60 µs of CPU a call here,
more than the round trip's own system calls (docs/performance.md). A `Script` here packs
the command in one pass and sends it on a connection this thread keeps for our scripts
alone, made by the client's pool (so with its settings, its FailFast checks and its health
checks), outside the pool's list.

What a caller sees is what redis-py's pool gives it: the reply as redis-py parses it, a
script that Redis lacks loaded and called again (NOSCRIPT), a connection that Redis closed
while it was idle (a restart, say) found before the call and made anew, as the pool's check
does, and a connection that failed before the command was sent made anew and the call sent
on it. A call whose reply is lost after it was sent is never sent again (Redis may have run
it): the error is raised, as is any other, and the connection closed on any error other than
Redis's own reply, so that no reply is left unread on it for the next call to take.
"""

import os
import threading
import time
from hashlib import sha1
from typing import Any

import redis
from redis.exceptions import NoScriptError

_held = threading.local()
os.register_at_fork(after_in_child=lambda: _held.__dict__.pop("connections", None))

# A connection idle for longer than this is checked before a call, as the pool checks every
# connection it hands out: for a close by Redis (EOF) or a reply left unread.
IDLE_CHECK_SECONDS = 1.0


class Script:
    """A Lua script, called as redis-py's Script is: `script(keys=..., args=..., client=...)`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()  # noqa: S324 (Redis's name for it)
        self._head = b"$7\r\nEVALSHA\r\n$40\r\n" + self.sha.encode() + b"\r\n"

    def __call__(self, *, keys: list, args: list, client: redis.Redis) -> Any:
        words = [*map(_word, keys), *map(_word, args)]
        count = str(len(keys)).encode()
        packed = b"".join(
            [
                b"*%d\r\n" % (len(words) + 3),
                self._head,
                b"$%d\r\n%b\r\n" % (len(count), count),
                *(b"$%d\r\n%b\r\n" % (len(word), word) for word in words),
            ]
        )
        for attempt in range(3):
            connection = _connection(client)
            try:
                connection.send_packed_command([packed])
            except redis.ConnectionError:  # nothing reached Redis: on a new connection
                connection.disconnect()
                if attempt:
                    raise
                continue
            try:
                reply = connection.read_response()
            except NoScriptError:
                if attempt == 2:
                    raise
                client.script_load(self.source)
                continue
            except redis.ResponseError:  # Redis's own reply, read whole
                raise
            except BaseException:  # even a timeout raised by a signal between the two
                connection.disconnect()
                raise
            connection.wire_used_at = time.monotonic()
            return reply
        raise AssertionError("not reached")


def _word(value: Any) -> bytes:
    """An argument as redis-py's encoder writes it (str in UTF-8, numbers by repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise redis.DataError(f"Invalid input of type {type(value).__name__} for a script")


def _connection(client: redis.Redis) -> Any:
    """This thread's connection for our scripts on `client`'s server (a new one after a
    fork: a child does not share its parent's socket)."""
    pool = client.connection_pool
    held = _held.__dict__.setdefault("connections", {})
    key = (pool, os.getpid())
    connection = held.get(key)
    if connection is None:  # with the pool's settings, outside its list and count
        connection = held[key] = pool.connection_class(**pool.connection_kwargs)
        connection.wire_used_at = 0.0
    elif time.monotonic() - connection.wire_used_at > IDLE_CHECK_SECONDS:
        try:
            if connection.can_read(timeout=0):  # a reply nobody read: start afresh
                connection.disconnect()
        except (redis.ConnectionError, redis.TimeoutError, OSError):  # closed by Redis
            connection.disconnect()
    return connection
