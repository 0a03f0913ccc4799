"""The worker's scripts for RQ's bookkeeping write what RQ's own code writes.

One job goes through RQ's worker (its prepare_execution, prepare_job_execution and
handle_job_success), another through ours (taskqueue.backend.bookkeeping); every key
either touches is read back and compared, after naming the job, the worker and the
execution alike and blurring the clock (timestamps and the scores and expiries made of
them). Run against the installed RQ: an upgrade that changes its layout fails here.
"""

import json
import re
import zlib
from datetime import timedelta

import pytest
from rq import Queue
from rq.executions import prepare_execution
from rq.job import Job
from rq.utils import now
from rq.worker import Worker as RQWorker

from taskqueue import events
from taskqueue.worker import Worker

pytestmark = pytest.mark.django_db

ISO = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")
UNIX = re.compile(rb"^1\d{9}(\.\d+)?$")


def _blur(value: bytes, names: dict[bytes, bytes]) -> bytes:
    for name, alias in names.items():
        value = value.replace(name, alias)
    value = ISO.sub(b"<iso>", value)
    return UNIX.sub(b"<unix>", value)


def _snapshot(connection, names: dict[bytes, bytes], birth: dict) -> dict:
    """Every key, with its content blurred (the worker's hash: the fields written since its
    birth, whose fields differ between the two worker classes); expiries as 'persists' or
    rounded to ten seconds."""
    found = {}
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key)
        if kind == b"hash":
            content = {
                _blur(f, names): (b"<data>" if f == b"data" else _blur(v, names))
                for f, v in connection.hgetall(key).items()
                if birth.get(f) != v or not key.startswith(b"rq:worker:")
            }
        elif kind == b"zset":
            content = sorted(
                (_blur(m, names), "inf" if s == float("inf") else round(s - now().timestamp(), -1))
                for m, s in connection.zrange(key, 0, -1, withscores=True)
            )
        elif kind == b"list":
            content = [_blur(v, names) for v in connection.lrange(key, 0, -1)]
        elif kind == b"set":
            content = sorted(_blur(v, names) for v in connection.smembers(key))
        elif kind == b"stream":
            entries = [fields for _, fields in connection.xrange(key)]
            content = [
                {f: b"<value>" if f == b"return_value" else _blur(v, names) for f, v in e.items()}
                for e in entries
            ]
        else:
            content = connection.get(key)
        ttl = connection.ttl(key)
        found[_blur(key, names)] = (kind, content, "persists" if ttl < 0 else round(ttl, -1))
    return found


def _differences(ours: dict, rq: dict) -> str:
    return "\n".join(
        f"{key!r}: ours {ours.get(key)!r}, RQ's {rq.get(key)!r}"
        for key in sorted(ours.keys() | rq.keys())
        if ours.get(key) != rq.get(key)
    )


def _run(connection, worker, job: Job, queue: Queue, ours: bool, result: dict) -> tuple:
    """Start and finish `job` on `worker` as RQ does or as ours does: the snapshots after
    the start and after the end, and the job's data."""
    birth = connection.hgetall(worker.key)
    if ours:
        worker._mark_started(job, queue)
    else:
        worker.execution = prepare_execution(worker, job)
        worker.prepare_job_execution(job, remove_from_intermediate_queue=len(worker.queues) == 1)
    names = {job.id.encode(): b"J", worker.name.encode(): b"W", worker.execution.id.encode(): b"E"}
    started = _snapshot(connection, names, birth)
    job.ended_at = job.started_at + timedelta(milliseconds=5)
    job._result = result
    if ours:
        worker._finish_job(job, queue)
    else:
        worker.handle_job_success(job, queue, queue.started_job_registry)
        worker.set_state("idle")  # RQ's loop, as it waits for the next job; ours at the end
    finished = _snapshot(connection, names, birth)
    data = zlib.decompress(connection.hget(job.key, "data"))
    return started, finished, data


@pytest.mark.parametrize("queues", [["default"], ["high", "default", "low"]])
def test_start_and_finish_write_what_rq_writes(redis_db, queues) -> None:
    result = {"pong": True, "n": 1}
    snapshots = {}
    for ours in (False, True):
        redis_db.flushdb()
        listened = [Queue(name, connection=redis_db) for name in queues]
        queue = listened[queues.index("default")]
        job = queue.enqueue("taskqueue.execution.run_task", 1, 0, result_ttl=3600)
        worker_class = Worker if ours else RQWorker
        worker = worker_class(listened, connection=redis_db, name=f"w-{ours}")
        worker.register_birth()
        if len(queues) == 1:  # RQ's dequeue moves the job into the intermediate list
            redis_db.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
        else:
            redis_db.lpop(queue.key)
        job = Job.fetch(job.id, connection=redis_db)
        snapshots[ours] = _run(redis_db, worker, job, queue, ours, result)
    rq_started, rq_finished, rq_data = snapshots[False]
    our_started, our_finished, our_data = snapshots[True]
    assert our_started == rq_started, _differences(our_started, rq_started)
    assert our_finished == rq_finished, _differences(our_finished, rq_finished)
    assert our_data == rq_data
    assert b"rq:finished:default" in our_finished  # the comparison saw the registries
    assert b"rq:results:J" in our_finished


def test_the_result_reads_back_as_rq_s(redis_db) -> None:
    queue = Queue("default", connection=redis_db)
    job = queue.enqueue("taskqueue.execution.run_task", 1, 0, result_ttl=3600)
    worker = Worker([queue], connection=redis_db, name="w")
    worker.register_birth()
    redis_db.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    job = Job.fetch(job.id, connection=redis_db)
    worker._mark_started(job, queue)
    job.ended_at = now()
    job._result = {"pong": True}
    worker._finish_job(job, queue)
    fetched = Job.fetch(job.id, connection=redis_db)
    assert fetched.get_status() == "finished"
    assert fetched.return_value() == {"pong": True}
    assert fetched.latest_result().execution_id
    assert job.id in queue.finished_job_registry.get_job_ids()
    assert queue.started_job_registry.get_job_ids() == []
    assert redis_db.llen(queue.intermediate_queue_key) == 0


def test_a_job_deleted_while_it_ran_is_not_written_back(redis_db) -> None:
    """The reconciler (or a cancel) deleted the job while it ran: its end clears the
    worker's bookkeeping and leaves no fragment of the job (RQ's save wrote it back)."""
    queue = Queue("default", connection=redis_db)
    job = queue.enqueue("taskqueue.execution.run_task", 1, 0, result_ttl=3600)
    worker = Worker([queue], connection=redis_db, name="w")
    worker.register_birth()
    redis_db.lpop(queue.key)
    job = Job.fetch(job.id, connection=redis_db)
    with events.held():
        worker._mark_started(job, queue)
    redis_db.delete(job.key)
    job.ended_at = now()
    job._result = {"pong": True}
    worker._finish_job(job, queue)
    assert not redis_db.exists(job.key)
    assert not redis_db.exists(f"rq:results:{job.id}")
    assert queue.finished_job_registry.get_job_ids() == []
    assert queue.started_job_registry.get_job_ids() == []
    assert redis_db.hget(worker.key, "state") == b"idle"
    assert not redis_db.hexists(worker.key, "current_job")
    assert redis_db.hget(worker.key, "successful_job_count") == b"1"


@pytest.mark.parametrize("task_type", ["ping", "cleanup_runs"])  # without and with retries
def test_dispatch_writes_what_rq_s_enqueue_writes(redis_db, task_type) -> None:
    """backend.dispatch's one script against RQ's Queue.enqueue in a pipeline (what the
    dispatch was), for the same task: every key, the job's data included, is the same."""
    from taskqueue import backend
    from taskqueue.models import Task
    from taskqueue.registry import get_task_type

    spec = get_task_type(task_type)
    task = Task.objects.create(
        task_type=task_type, max_attempts=spec.policy.max_attempts, queue=spec.queue or "default"
    )
    snapshots = {}
    for ours in (False, True):
        redis_db.flushdb()
        if ours:
            backend.dispatch(task, publish=[events.created(task)])
        else:
            queue = backend.get_queue(task.queue)
            with redis_db.pipeline() as pipeline:
                queue.enqueue(backend.JOB_FUNCTION, **backend.job_options(task), pipeline=pipeline)
                pipeline.execute()
        job_key = f"rq:job:{task.job_id}"
        data = zlib.decompress(redis_db.hget(job_key, "data"))
        keys = _snapshot(redis_db, {task.job_id.encode(): b"J"}, {})
        fields = keys[b"rq:job:J"][1]
        if b"retry_intervals" in fields:  # the backoff's jitter: their number only
            fields[b"retry_intervals"] = len(json.loads(fields[b"retry_intervals"]))
        snapshots[ours] = (keys, data)
    (rq_keys, rq_data), (our_keys, our_data) = snapshots[False], snapshots[True]
    assert our_keys == rq_keys, _differences(our_keys, rq_keys)
    assert our_data == rq_data
    assert {b"rq:queues", b"rq:job:J", f"rq:queue:{task.queue}".encode()} <= set(our_keys)
    job = Job.fetch(task.job_id, connection=redis_db)
    assert (job.args, job.meta, job.timeout) == (
        (task.pk, 0),
        {"task_type": task_type},
        task.timeout,
    )
    assert job.retries_left == (spec.policy.max_attempts - 1 or None)
