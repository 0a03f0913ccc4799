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

The behaviour a caller sees is redis-py's: the reply as redis-py parses it, a script that
Redis lacks loaded and called again (NOSCRIPT), a connection that was dropped (Redis
restarted, say) made anew and the call sent once more, and any other error raised as the
RedisError it is, the connection closed so that no reply is left half read on it.
"""

import os
import threading
from hashlib import sha1
from typing import Any

import redis
from redis.exceptions import NoScriptError

_held = threading.local()


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
                return connection.read_response()
            except NoScriptError:
                if attempt == 2:
                    raise
                client.script_load(self.source)
            except redis.ConnectionError:
                connection.disconnect()
                if attempt:  # once again on a new connection, as redis-py's retry would
                    raise
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
    return connection
