"""Our scripts' calls (taskqueue.backend.wire) behave as redis-py's Script calls do."""

import os
import select

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


def test_a_connection_redis_closed_while_idle_is_made_anew_before_the_call(
    redis_db, monkeypatch
) -> None:
    monkeypatch.setattr(wire, "IDLE_CHECK_SECONDS", 0.0)  # every call finds it idle
    first = _client_id(redis_db)
    redis_db.client_kill_filter(_id=first)  # as a restarted Redis drops every client
    script = wire.Script("return redis.call('INCR', KEYS[1])")
    assert script(keys=["counter"], args=[], client=redis_db) == 1
    assert redis_db.get("counter") == b"1"
    assert _client_id(redis_db) != first


def test_a_call_whose_reply_is_lost_is_not_sent_again(redis_db) -> None:
    script = wire.Script("return redis.call('INCR', KEYS[1])")
    script(keys=["counter"], args=[], client=redis_db)  # loaded, connected
    connection = wire._connection(redis_db)
    original = connection.read_response

    def lost(**kwargs):
        original(**kwargs)  # Redis ran it; its reply never arrives
        connection.read_response = original  # once: a call sent again would succeed
        raise redis.ConnectionError("Connection closed by server.")

    connection.read_response = lost
    try:
        with pytest.raises(redis.ConnectionError):
            script(keys=["counter"], args=[], client=redis_db)
    finally:
        vars(connection).pop("read_response", None)
    assert redis_db.get("counter") == b"2"  # run once for that call, not twice


class _Interrupted(BaseException):
    """As a signal handler's exception (a job's timeout) raised between send and read."""


def test_a_call_interrupted_before_its_reply_leaves_no_reply_for_the_next(redis_db) -> None:
    echo = wire.Script("return ARGV[1]")
    echo(keys=[], args=["warm"], client=redis_db)
    connection = wire._connection(redis_db)

    def interrupted(**kwargs):
        raise _Interrupted

    connection.read_response = interrupted
    try:
        with pytest.raises(_Interrupted):
            echo(keys=[], args=["first"], client=redis_db)
    finally:
        del connection.read_response
    assert echo(keys=[], args=["second"], client=redis_db) == b"second"


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
    readable, _, _ = select.select([read], [], [], 10)
    child = int(os.read(read, 64) or b"0") if readable else 0
    os.close(read)
    os.waitpid(pid, 0)
    assert child not in (0, parent)
    assert _client_id(redis_db) == parent  # the parent's connection was left alone
