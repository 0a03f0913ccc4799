"""Our scripts' calls (taskqueue.backend.wire) behave as redis-py's Script calls do."""

import os

import pytest
import redis
from redis.connection import PythonRespSerializer

from taskqueue.backend import wire

ECHO = "return {KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], #ARGV}"
ARGS = ["é ü", 42, 0.1, b"\x00\xff"]


def _client_id(client: redis.Redis) -> int:
    """The id of the connection this thread keeps for our scripts."""
    connection = wire._connection(client)
    connection.send_command("CLIENT", "ID")
    return connection.read_response()


def test_a_call_writes_the_bytes_redis_py_would_and_gets_its_reply(redis_db) -> None:
    script = wire.Script(ECHO)
    words = ["EVALSHA", script.sha, 1, "k", *ARGS]
    # redis-py's own packing of the same command, chunk by chunk
    expected = b"".join(PythonRespSerializer(6000, redis_db.get_encoder().encode).pack(*words))
    script(keys=["k"], args=ARGS, client=redis_db)  # connected, and the script loaded
    sent = []
    connection = wire._connection(redis_db)
    original = connection.send_packed_command
    connection.send_packed_command = lambda chunks, **kw: (
        sent.extend(chunks),
        original(chunks, **kw),
    )
    try:
        reply = script(keys=["k"], args=ARGS, client=redis_db)
    finally:
        del connection.send_packed_command
    assert b"".join(sent) == expected
    assert reply == redis_db.register_script(ECHO)(keys=["k"], args=ARGS)
    assert reply == [b"k", "é ü".encode(), b"42", b"0.1", b"\x00\xff", 4]


def test_a_script_redis_lacks_is_loaded_and_called_again(redis_db) -> None:
    script = wire.Script("return 7")
    assert script(keys=[], args=[], client=redis_db) == 7
    redis_db.script_flush()
    assert script(keys=[], args=[], client=redis_db) == 7


def test_a_dropped_connection_is_made_anew_and_the_call_sent_once_more(redis_db) -> None:
    first = _client_id(redis_db)
    redis_db.client_kill_filter(_id=first)  # as a restarted Redis drops every client
    script = wire.Script("return redis.call('INCR', KEYS[1])")
    assert script(keys=["counter"], args=[], client=redis_db) == 1
    assert redis_db.get("counter") == b"1"  # sent once on the new connection, not twice
    assert _client_id(redis_db) != first


def test_an_error_is_raised_as_redis_py_raises_it_and_the_connection_stays_usable(redis_db) -> None:
    with pytest.raises(redis.ResponseError, match="boom"):
        wire.Script("return redis.error_reply('boom')")(keys=[], args=[], client=redis_db)
    assert wire.Script("return 1")(keys=[], args=[], client=redis_db) == 1
    with pytest.raises(redis.DataError):
        wire.Script("return 1")(keys=[], args=[True], client=redis_db)


def test_a_forked_child_calls_on_a_connection_of_its_own(redis_db) -> None:
    parent = _client_id(redis_db)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id, or 0 on any error
        try:
            os.write(write, str(_client_id(redis_db)).encode())
        except BaseException:
            os.write(write, b"0")
        os._exit(0)
    os.close(write)
    child = int(os.read(read, 64) or b"0")
    os.close(read)
    os.waitpid(pid, 0)
    assert child not in (0, parent)
    assert _client_id(redis_db) == parent  # the parent's connection was left alone
