"""The soak: 20,000 tasks through real workers while a chaos loop kills and cancels.

    make soak                    (or: .venv/bin/python -m tests.soak.run --tasks 20000)

Two `manage.py rqworker` processes and one `rqcron` run against a Redis of the soak's own
(no persistence) and a database of its own (`<DATABASE_URL's server>/taskqueue_soak` on
PostgreSQL, else SQLite under var/soak). This process enqueues `soak_ping` tasks (a `ping`
that writes each handler run to a ledger; some slow) and a share of an exclusive type,
cancels 10% of them at random (recent ones, so that cancels meet queued, running and
finishing tasks), and every few seconds SIGKILLs a work horse or a whole worker (replaced
at once); once, it kills Redis and starts it again empty. Then it waits for every task to
end and checks the promise:

- every task is terminal (0 stuck);
- no (task, attempt) ran twice, every handler run is a recorded attempt, and none started
  before its lease or after its attempt or its task ended (so nothing ran after a cancel);
- every row agrees with its attempts (count, numbering, last outcome, result, error) and
  with RQ (no job of a terminal task still queued, scheduled or started; a completed
  task's job finished or gone, never failed);
- two runs of the exclusive type never overlapped.

The report goes to stdout and var/soak/latest.md; the exit status is 1 if a check failed.
Worker settings: heartbeat every 2 s, margin 4 s, reconciler grace 5 s (so that the
reconciler and the chaos meet often); the reconciler runs every 15 s, as in production.
"""

import argparse
import contextlib
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var" / "soak"
TERMINAL = {"completed", "failed", "cancelled"}
# RQ states in which a job would still run.
PENDING = {"queued", "scheduled", "deferred", "started"}
EPSILON = 0.005  # seconds of clock rounding allowed between the ledger and the rows

sys.path.insert(0, str(ROOT))
from scripts.embedded_redis import redis_server_binary  # noqa: E402
from tests.helpers import free_port  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=250, help="tasks enqueued a second")
    parser.add_argument("--cancel", type=float, default=0.10, help="share of tasks cancelled")
    parser.add_argument("--slow", type=float, default=0.05, help="share that sleep 50-500 ms")
    parser.add_argument("--exclusive", type=float, default=0.01, help="share of the exclusive type")
    parser.add_argument("--chaos-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args()


# --- set-up --------------------------------------------------------------------------------


def soak_database() -> str:
    """A fresh database for the soak: beside DATABASE_URL's on PostgreSQL, else SQLite."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{VAR / 'db.sqlite3'}"
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP DATABASE IF EXISTS taskqueue_soak WITH (FORCE)")
        connection.execute("CREATE DATABASE taskqueue_soak")
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/taskqueue_soak"))


class Redis:
    """The soak's own redis-server, without persistence: a restart loses everything."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        directory = VAR / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class Fleet:
    """The workers and the cron process; anything that exits is counted and replaced."""

    env: dict[str, str]
    size: int
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    cron: subprocess.Popen | None = None
    started: int = 0
    killed: set[int] = field(default_factory=set)
    unexpected_exits: list[str] = field(default_factory=list)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (VAR / "logs" / f"{name}.log").open("w")
        return subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self) -> None:
        self.started += 1
        name = f"soak-{self.started}"
        self.workers[name] = self._spawn(
            name, "rqworker", "high", "default", "low", "--with-scheduler", "--name", name
        )

    def start(self) -> None:
        for _ in range(self.size):
            self.start_worker()
        self.cron = self._spawn("cron", "rqcron", "taskqueue.cron")

    def supervise(self) -> None:
        for name, process in list(self.workers.items()):
            if process.poll() is not None:
                del self.workers[name]
                if process.pid not in self.killed:
                    said = (VAR / "logs" / f"{name}.log").read_text().strip().splitlines()
                    last = said[-1][-120:] if said else ""
                    self.unexpected_exits.append(f"{name} exited {process.returncode}: {last}")
                self.start_worker()
        if self.cron.poll() is not None:
            self.unexpected_exits.append(f"cron exited {self.cron.returncode}")
            self.cron = self._spawn(f"cron-{time.time():.0f}", "rqcron", "taskqueue.cron")

    def kill_horse(self) -> bool:
        import psutil

        for process in random.sample(list(self.workers.values()), len(self.workers)):
            with contextlib.suppress(psutil.NoSuchProcess):
                children = psutil.Process(process.pid).children()
                if children:
                    children[0].kill()
                    return True
        return False

    def kill_worker(self) -> None:
        name = random.choice(list(self.workers))
        process = self.workers[name]
        self.killed.add(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.supervise()  # its replacement starts now

    def stop(self) -> None:
        for process in [*self.workers.values(), self.cron]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers.values(), self.cron]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, fleet: Fleet, redis_server: Redis) -> dict:
    from taskqueue.exceptions import InvalidTransition
    from taskqueue.models import Task
    from taskqueue.services import CANCELLED, cancel_task, enqueue_task

    ids: list[int] = []
    cancel_answers: Counter = Counter()
    cancelled_asked: set[int] = set()
    chaos: Counter = Counter()
    errors: Counter = Counter()
    restart_at = args.tasks * 0.4
    redis_restarted = False
    next_chaos = time.monotonic() + args.chaos_every
    began = time.monotonic()
    for n in range(args.tasks):
        # Pace the enqueues.
        delay = began + n / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        draw = random.random()
        if draw < args.exclusive:
            task_type, seconds = "soak_exclusive", 0.02
        elif draw < args.exclusive + args.slow:
            task_type, seconds = "soak_ping", random.uniform(0.05, 0.5)
        else:
            task_type, seconds = "soak_ping", 0
        try:
            task, _ = enqueue_task(task_type, {"n": n, "seconds": seconds}, source="soak")
            ids.append(task.pk)
        except Exception as exc:  # counted and reported: a refused enqueue loses nothing
            errors[f"enqueue {type(exc).__name__}"] += 1
        if ids and random.random() < args.cancel:
            draw = random.random()
            if draw < 0.4:  # one running now, if any: the stop races its end
                leased = list(Task.objects.leased().values_list("pk", flat=True)[:10])
                target = random.choice(leased or ids)
            else:  # a recent one (queued, or about to run), or any
                target = random.choice(ids[-100:] if draw < 0.8 else ids)
            if target not in cancelled_asked:
                cancelled_asked.add(target)
                try:
                    answer = cancel_task(target, wait=0)
                    cancel_answers["cancelled" if answer == CANCELLED else "stopping"] += 1
                except InvalidTransition:
                    cancel_answers["already ended"] += 1
                except Exception as exc:
                    errors[f"cancel {type(exc).__name__}"] += 1
        if not redis_restarted and n >= restart_at:
            redis_server.kill()
            time.sleep(1.0)
            redis_server.start()
            redis_restarted = True
            chaos["redis restarted empty"] += 1
        if time.monotonic() >= next_chaos:
            if random.random() < 0.6:
                chaos["horse SIGKILLed" if fleet.kill_horse() else "no horse to kill"] += 1
            else:
                fleet.kill_worker()
                chaos["worker SIGKILLed"] += 1
            next_chaos = time.monotonic() + random.uniform(0.5, 1.5) * args.chaos_every
        if n % 200 == 0:
            fleet.supervise()
        if n % 2000 == 0:
            print(f"  {n} enqueued, chaos so far {dict(chaos)}", flush=True)
    enqueued_in = time.monotonic() - began

    print("  draining…", flush=True)
    drain_began = time.monotonic()
    deadline = drain_began + args.drain_timeout
    while True:
        fleet.supervise()
        left = Task.objects.exclude(status__in=TERMINAL).count()
        if left == 0 or time.monotonic() > deadline:
            break
        print(f"  {left} not terminal yet", flush=True)
        time.sleep(5)
    return {
        "ids": ids,
        "cancel_answers": cancel_answers,
        "chaos": chaos,
        "errors": errors,
        "enqueued_in": enqueued_in,
        "drained_in": time.monotonic() - drain_began,
        "total": time.monotonic() - began,
    }


# --- the checks ----------------------------------------------------------------------------


def read_ledger(path: Path) -> tuple[Counter, dict, dict]:
    """Counts of runs per (task, attempt), and run/end times of each."""
    runs: Counter = Counter()
    started: dict[tuple[int, int], list[float]] = defaultdict(list)
    ended: dict[tuple[int, int], float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            event, task_id, attempt, at, _pid = line.split()
            key = (int(task_id), int(attempt))
            if event == "run":
                runs[key] += 1
                started[key].append(float(at))
            else:
                ended[key] = float(at)
    return runs, started, ended


def check(ledger: Path) -> tuple[dict[str, list[str]], dict]:
    """Every violation of the promise found, by check; and the figures to report."""
    from taskqueue import backend
    from taskqueue.models import Task, TaskAttempt

    problems: dict[str, list[str]] = defaultdict(list)
    tasks = {task.pk: task for task in Task.objects.all()}
    attempts: dict[int, list[TaskAttempt]] = defaultdict(list)
    for attempt in TaskAttempt.objects.order_by("task_id", "number"):
        attempts[attempt.task_id].append(attempt)
    runs, started, ended = read_ledger(ledger)

    for task in tasks.values():
        if task.status not in TERMINAL:
            problems["stuck (not terminal)"].append(f"#{task.pk} {task.status}")

    for key, count in runs.items():
        if count > 1:
            problems["attempt ran twice"].append(f"task #{key[0]} attempt {key[1]}: {count} runs")
    for (task_id, number), times in started.items():
        task = tasks.get(task_id)
        recorded = {a.number: a for a in attempts.get(task_id, [])}
        attempt = recorded.get(number)
        if task is None or attempt is None:
            problems["run without a recorded attempt"].append(f"task #{task_id} attempt {number}")
            continue
        for at in times:
            if at < attempt.started_at.timestamp() - EPSILON:
                problems["run before its lease"].append(f"task #{task_id} attempt {number}")
            if attempt.finished_at and at > attempt.finished_at.timestamp() + EPSILON:
                problems["run after its attempt ended"].append(f"task #{task_id} attempt {number}")
            if task.finished_at and at > task.finished_at.timestamp() + EPSILON:
                problems["run after its task ended"].append(
                    f"task #{task_id} ({task.status}) attempt {number}"
                )

    for task in tasks.values():
        mine = attempts.get(task.pk, [])
        last = mine[-1] if mine else None
        where = f"#{task.pk} {task.status}"
        if [a.number for a in mine] != list(range(1, len(mine) + 1)) or task.attempts != len(mine):
            problems["attempts miscounted"].append(
                f"{where}: attempts={task.attempts}, rows {len(mine)}"
            )
        if task.status in TERMINAL and any(a.outcome == "running" for a in mine):
            problems["attempt left running"].append(where)
        if task.status == "completed":
            if not last or last.outcome != "completed" or task.result is None or task.error_code:
                problems["completed row disagrees"].append(f"{where}: last attempt {last}")
            if task.cancelled_by_id or task.stop_requested_at:
                problems["completed row disagrees"].append(f"{where}: carries a stop")
            if last and runs[(task.pk, last.number)] != 1:
                problems["completed without a handler run"].append(where)
        elif task.status == "failed":
            if not last or last.outcome not in ("failed", "stopped") or not task.error_code:
                problems["failed row disagrees"].append(f"{where}: last attempt {last}")
        elif task.status == "cancelled" and (
            task.result is not None or (last and last.outcome == "completed")
        ):
            problems["cancelled row disagrees"].append(f"{where}: last attempt {last}")

    # RQ's view of each task's current job.
    states = backend.job_states([task.job_id for task in tasks.values()])
    rq_seen: Counter = Counter()
    for task in tasks.values():
        status = states[task.job_id].status
        rq_seen[(task.status, status or "gone")] += 1
        if task.status in TERMINAL and status in PENDING:
            problems["RQ would still run a terminal task"].append(
                f"#{task.pk} {task.status}: {status}"
            )
        if task.status == "completed" and status not in (None, "finished"):
            problems["RQ disagrees with a completed task"].append(f"#{task.pk}: {status}")
        if task.status == "cancelled" and status == "finished":
            problems["RQ disagrees with a cancelled task"].append(f"#{task.pk}: finished")
    leftovers = backend.get_connection().keys("rq:queue:*")
    for key in leftovers:
        if key.decode() != "rq:queue:cron" and backend.get_connection().llen(key):
            problems["jobs left in a queue"].append(key.decode())

    # Exclusive runs: [start, end] intervals, where a killed run ends when its attempt did.
    intervals = []
    for task in tasks.values():
        if task.task_type != "soak_exclusive":
            continue
        for attempt in attempts.get(task.pk, []):
            key = (task.pk, attempt.number)
            for at in started.get(key, []):
                end = ended.get(key) or (attempt.finished_at and attempt.finished_at.timestamp())
                intervals.append((at, end or float("inf"), key))
    intervals.sort()
    for (_, end, key), (start, _, other) in itertools.pairwise(intervals):
        if start < end:
            problems["exclusive runs overlapped"].append(f"{key} and {other}")

    outcomes = Counter(
        f"{a.outcome} {a.error_code}".strip() for rows in attempts.values() for a in rows
    )
    durations = [
        (t.finished_at - t.created_at).total_seconds()
        for t in tasks.values()
        if t.status == "completed" and t.finished_at
    ]
    figures = {
        "tasks": Counter(t.status for t in tasks.values()),
        "attempts": sum(len(rows) for rows in attempts.values()),
        "handler runs": sum(runs.values()),
        "exclusive runs": len(intervals),
        "outcomes": outcomes,
        "rq": rq_seen,
        "latency p50": statistics.median(durations) if durations else None,
        "latency max": max(durations) if durations else None,
    }
    return problems, figures


def report(args: argparse.Namespace, outcome: dict, problems: dict, figures: dict) -> str:
    def counts(counter: Counter) -> str:
        return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items(), key=str))

    lines = [
        f"# Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"{args.tasks} tasks ({args.exclusive:.0%} exclusive, {args.slow:.0%} slow), "
        f"{args.workers} workers, seed {args.seed}, "
        f"database {os.environ['DATABASE_URL'].split(':')[0]}.",
        "",
        f"- enqueued in {outcome['enqueued_in']:.0f} s, drained {outcome['drained_in']:.0f} s "
        f"later; {outcome['total']:.0f} s in all",
        f"- chaos: {counts(outcome['chaos'])}",
        f"- cancels asked: {sum(outcome['cancel_answers'].values())} "
        f"({counts(outcome['cancel_answers'])})",
        f"- tasks: {counts(figures['tasks'])}",
        f"- attempts recorded: {figures['attempts']}; handler runs in the ledger: "
        f"{figures['handler runs']}; exclusive runs: {figures['exclusive runs']}",
        f"- attempt outcomes: {counts(figures['outcomes'])}",
        f"- (task status, RQ job status): {counts(figures['rq'])}",
        f"- completed tasks, enqueue to end: p50 {figures['latency p50'] or 0:.2f} s, "
        f"max {figures['latency max'] or 0:.1f} s",
        f"- errors in the driver: {counts(outcome['errors']) or 'none'}",
        f"- processes that exited unasked: {', '.join(outcome['unexpected']) or 'none'}",
        "",
        "## Checks",
        "",
    ]
    names = [
        "stuck (not terminal)",
        "attempt ran twice",
        "run without a recorded attempt",
        "run before its lease",
        "run after its attempt ended",
        "run after its task ended",
        "attempts miscounted",
        "attempt left running",
        "completed row disagrees",
        "completed without a handler run",
        "failed row disagrees",
        "cancelled row disagrees",
        "RQ would still run a terminal task",
        "RQ disagrees with a completed task",
        "RQ disagrees with a cancelled task",
        "jobs left in a queue",
        "exclusive runs overlapped",
    ]
    for name in names + sorted(set(problems) - set(names)):
        found = problems.get(name, [])
        lines.append(
            f"- {name}: {len(found)}" + (f" (e.g. {'; '.join(found[:5])})" if found else "")
        )
    lines += ["", "PASS" if not problems else "FAIL", ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    args.seed = args.seed if args.seed is not None else random.randrange(10**6)
    random.seed(args.seed)
    shutil.rmtree(VAR, ignore_errors=True)
    (VAR / "logs").mkdir(parents=True)
    ledger = VAR / "ledger"
    redis_server = Redis(free_port())
    redis_server.start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.soak.settings",
        "DATABASE_URL": soak_database(),
        "REDIS_URL": redis_server.url,
        "VAR_DIR": str(VAR),
        "SOAK_LEDGER": str(ledger),
        "TASKQUEUE_JOB_MONITORING_INTERVAL": "2",
        "TASKQUEUE_HEARTBEAT_MARGIN": "4",
        "TASKQUEUE_RECONCILE_GRACE": "5",
        "TASKQUEUE_SCHEDULE_GRACE": "5",
        "TASKQUEUE_MAX_ACTIVE_PER_TYPE": str(args.tasks + 1),
    }
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    fleet = Fleet(env, args.workers)
    fleet.start()
    print(f"Soak: {args.tasks} tasks, {args.workers} workers, seed {args.seed}", flush=True)
    try:
        outcome = run(args, fleet, redis_server)
    finally:
        fleet.stop()
    outcome["unexpected"] = fleet.unexpected_exits
    problems, figures = check(ledger)
    redis_server.kill()
    text = report(args, outcome, problems, figures)
    (VAR / "latest.md").write_text(text)
    print(text)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
