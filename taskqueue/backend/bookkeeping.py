"""RQ's bookkeeping of a job enqueued, started and ended, each in one script call.

RQ's worker writes 15 to 20 commands when a job starts (its execution, the started
registry, the worker's and the job's hashes) and as many when it ends (the result, the
finished registry, the job's expiry, the execution's removal), each built by its own
objects and queued in a MULTI/EXEC pipeline, the job's whole hash rewritten and its data
recompressed on the way. That was more of the worker's CPU than anything else it does for
a task (docs/performance.md). Here the values are computed once in Python and the writes
are made by a script: the same keys, fields, scores and expiries RQ writes (rq 2.12, as
tests/integration/test_bookkeeping.py checks against RQ's own code), atomic as MULTI/EXEC
is, in one command with a dozen arguments.

The enqueue (RQ's enqueue_job for a job that depends on nothing: the queues set, the
job's hash, the queue's list, in a MULTI/EXEC of five commands) is one script too, given
the fields RQ's own Job.to_dict makes, so the hash is RQ's whatever its version.

Two differences, both on purpose: the job's hash is updated in the fields that changed
(status, ended_at) instead of rewritten whole, and not at all when it no longer exists (a
job deleted while it ran, by the reconciler or a cancel, is not brought back, which RQ's
whole-hash save did: its finished entry and result are not written either).
"""

from base64 import b64encode
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from taskqueue.backend.wire import Script

# Take the first job of the first queue that has one (KEYS from `first` on), moved into
# its intermediate list when `intermediate` is '1' (as RQ does for a worker of one queue),
# with the job's hash: RQ's dequeue (a pop, then a read of the job) in one step.
TAKE = """
local function take(first, prefix, intermediate)
  for k = first, #KEYS do
    local id
    if intermediate == '1' then
      id = redis.call('LMOVE', KEYS[k], KEYS[k] .. ':intermediate', 'LEFT', 'RIGHT')
    else
      id = redis.call('LPOP', KEYS[k])
    end
    if id then return {KEYS[k], id, redis.call('HGETALL', prefix .. id)} end
  end
  return false
end
"""

# KEYS: the execution's hash, the job's executions, the started registry, the worker's
# hash, the job's hash, the intermediate queue (or "" when the worker uses none).
# ARGV: the execution id, now (Unix seconds), now (RQ's ISO form), the worker's name, the
# heartbeat TTL, the executions' score, the started registry's score and member, the job id,
# then (channel, message) pairs to publish.
START = """
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'created_at', ARGV[2], 'last_heartbeat', ARGV[2],
           'worker_name', ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl + 60)
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
redis.call('HSET', KEYS[4], 'state', 'busy', 'current_job', ARGV[9],
           'current_job_working_time', '0', 'last_heartbeat', ARGV[3])
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('HSET', KEYS[5], 'last_heartbeat', ARGV[3], 'status', 'started',
           'started_at', ARGV[3], 'worker_name', ARGV[4])
if KEYS[6] ~= '' then redis.call('LREM', KEYS[6], 1, ARGV[9]) end
for i = 10, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: the worker's hash, the job's hash, the job's results, the finished registry, the
# execution's hash, the started registry, the job's executions, the job's dependents and
# its dependencies (as RQ names them), RQ's suspension flag (no job is taken while it is
# set), then the queues to take the next job from.
# ARGV: the working time (seconds), ended_at (ISO), the result TTL, the finished score, the
# worker's name, the result (RQ's serialized form), the execution id, its start and end
# (Unix seconds), the started registry's member, the job id, the job key prefix ("" to
# take no job) and the intermediate flag (see TAKE), then (channel, message) pairs.
FINISH = (
    TAKE
    + """
redis.call('HINCRBY', KEYS[1], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local ttl = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'status', 'finished', 'ended_at', ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', ARGV[5],
             'return_value', ARGV[6], 'execution_id', ARGV[7],
             'execution_started_at', ARGV[8], 'execution_ended_at', ARGV[9])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[3], ttl)
    redis.call('ZADD', KEYS[4], ARGV[4], ARGV[11])
    redis.call('EXPIRE', KEYS[2], ttl)
    redis.call('EXPIRE', KEYS[8], ttl)
    redis.call('EXPIRE', KEYS[9], ttl)
  elseif ttl < 0 then
    redis.call('PERSIST', KEYS[3])
    redis.call('ZADD', KEYS[4], '+inf', ARGV[11])
  end
end
redis.call('HDEL', KEYS[1], 'current_job')
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[10])
redis.call('ZREM', KEYS[7], ARGV[7])
redis.call('HSET', KEYS[1], 'state', 'idle')
for i = 14, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
if ARGV[12] ~= '' and redis.call('EXISTS', KEYS[10]) == 0 then
  return take(11, ARGV[12], ARGV[13])
end
return false
"""
)
# ARGV: the job key prefix and the intermediate flag (see TAKE), then (channel, message)
# pairs to publish first.
# KEYS: RQ's set of queues, the queue, the job's hash. ARGV: the job id, the number of
# words of the job's fields that follow, those fields (name, value, ...), then (channel,
# message) pairs to publish.
ENQUEUE = """
local n = tonumber(ARGV[2])
redis.call('SADD', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], unpack(ARGV, 3, 2 + n))
redis.call('RPUSH', KEYS[2], ARGV[1])
for i = 3 + n, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return 1
"""
POP = (
    TAKE
    + """
for i = 3, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return take(1, ARGV[1], ARGV[2])
"""
)
_start = Script(START)  # EVALSHA, loading it into a Redis that lacks it (wire.Script)
_finish = Script(FINISH)
_pop = Script(POP)
_enqueue = Script(ENQUEUE)


@dataclass(frozen=True)
class Keys:
    """The registries' keys of a queue, named once (RQ builds an object for each)."""

    started: str
    finished: str

    @classmethod
    def of(cls, queue_name: str, connection: Any) -> "Keys":
        return cls(
            StartedJobRegistry(queue_name, connection=connection).key,
            FinishedJobRegistry(queue_name, connection=connection).key,
        )


@dataclass(frozen=True)
class Taking:
    """Where the next job is taken from: the queues' keys in order, the job key prefix and
    whether it goes into the queue's intermediate list ("1") or not ("0")."""

    queues: tuple[str, ...]
    prefix: str
    intermediate: str


def enqueue(queue: Queue, job: Job, events: list) -> None:
    """RQ's enqueue of `job` (made by queue.create_job; no dependencies, at the back), and
    `events` ((channel, message) pairs) published after it."""
    job.origin, job.enqueued_at, job._status = queue.name, now(), JobStatus.QUEUED
    fields = [word for pair in job.to_dict().items() for word in pair]
    _enqueue(keys=[queue.redis_queues_keys, queue.key, job.key],
             args=[job.id, len(fields), *fields, *_flat(events)],
             client=queue.connection)  # fmt: skip


def take(connection: Any, taking: Taking, events: list | None = None) -> list | None:
    """The next job taken (see `finish`), or None when every queue is empty; `events`
    ((channel, message) pairs) published first."""
    return _pop(keys=list(taking.queues),
                args=[taking.prefix, taking.intermediate, *_flat(events or [])],
                client=connection) or None  # fmt: skip


def start(
    worker: Any, job: Job, *, keys: Keys, ttl: int, intermediate: str, events: list
) -> Execution:
    """RQ's start of `job` on `worker` (its prepare_execution and prepare_job_execution),
    the job's and worker's objects updated as RQ's would be, and `events` ((channel,
    message) pairs) published; the new execution."""
    moment = now()
    execution = Execution(uuid4().hex, job.id, worker.connection, worker_name=worker.name)
    execution.created_at = execution.last_heartbeat = moment
    stamp, iso, whole = moment.timestamp(), utcformat(moment), int(moment.timestamp())
    job.worker_name, job.last_heartbeat, job.started_at = worker.name, moment, moment
    job._status = JobStatus.STARTED
    worker._state, worker.last_heartbeat = WorkerStatus.BUSY, moment
    worker.current_job_working_time = 0
    _start(
        keys=[execution.key, _executions_key(job), keys.started, worker.key, job.key,
              intermediate],
        args=[execution.id, stamp, iso, worker.name, ttl, whole + ttl + 60, whole + ttl,
              execution.composite_key, job.id, *_flat(events)],
        client=worker.connection,
    )  # fmt: skip
    return execution


def finish(
    worker: Any, job: Job, *, keys: Keys, result_ttl: int, result: Any,
    execution: Execution | None, events: list, take: Taking | None = None,
) -> list | None:  # fmt: skip
    """RQ's end of a job that succeeded (its handle_job_success, for a job without
    dependents that does not repeat, kept for `result_ttl` seconds, -1 for ever: not 0),
    `job.ended_at` set by the caller; with `take`, the next job taken in the same step
    ([queue key, job id, the job's hash as a flat list], or None if there was none, or if
    the workers are suspended: `rq suspend` then stops the worker after this job)."""
    ended = job.ended_at
    value = b64encode(job.serializer.dumps(result)).decode()
    started = execution.created_at.timestamp() if execution else ""
    taken = _finish(
        keys=[worker.key, job.key, Result.get_key(job.id), keys.finished,
              execution.key if execution else "", keys.started, _executions_key(job),
              job.dependents_key, job.dependencies_key, WORKERS_SUSPENDED,
              *(take.queues if take else ())],
        args=[(ended - job.started_at).total_seconds(), utcformat(ended), result_ttl,
              int(ended.timestamp()) + result_ttl, worker.name, value,
              execution.id if execution else "", started, ended.timestamp(),
              execution.composite_key if execution else "", job.id,
              take.prefix if take else "", take.intermediate if take else "0",
              *_flat(events)],
        client=worker.connection,
    )  # fmt: skip
    worker._state, worker.execution = WorkerStatus.IDLE, None
    return taken or None


def _executions_key(job: Job) -> str:
    return ExecutionRegistry.key_template.format(job.id)


def _flat(pairs: list[tuple[str, str]]) -> list[str]:
    return [word for pair in pairs for word in pair]
