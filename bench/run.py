"""`make bench`: the project measured beside the engines under it, in one run.

Starts its own servers on loopback — a fresh Redis, PostgreSQL when one answers on
127.0.0.1:5432 (a database of its own; else SQLite), uvicorn with 2 workers, rqworker
processes — runs every scenario with its reference, and writes bench/results/latest.json
and latest.md (medians of several repeats and the ratio to the reference).

Both servers are reached the same way, so that no engine gets the cheaper transport: by
their unix sockets (PostgreSQL's where the local server has one), or with `--tcp` both on
loopback TCP. Raw RQ talks to Redis only, the mirror and Celery to PostgreSQL too: with
Redis on a socket and PostgreSQL on TCP (the bench until 2026-12-07) every round trip of
the mirror's paid the dearer transport, raw RQ's none.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from project.http import UVICORN_OPTIONS  # noqa: E402
from scripts.embedded_redis import embedded_redis  # noqa: E402

PYTHON = sys.executable
RESULTS = ROOT / "bench" / "results"
PING = "ping task (mirrored)"


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


# Where the local PostgreSQL server keeps its socket (Debian's, the default of libpq there).
PG_SOCKET_DIR = Path(os.environ.get("BENCH_PG_SOCKET_DIR", "/var/run/postgresql"))


def database_url(workdir: Path, *, tcp: bool = False) -> str:
    """A PostgreSQL database of the bench's own when the local server answers, else SQLite.
    BENCH_DATABASE names it (taskqueue_bench), so that two runs at once keep apart. Reached
    by the server's unix socket when it has one (unless `tcp`), else 127.0.0.1:5432."""
    name = os.environ.get("BENCH_DATABASE", "taskqueue_bench")
    probe = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False)
    if probe.returncode == 0 and shutil.which("psql"):
        for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
        if not tcp and _socket_admits_us(name):
            return f"postgres://postgres@{quote(str(PG_SOCKET_DIR), safe='')}/{name}"
        return f"postgres://postgres@127.0.0.1:5432/{name}"
    return f"sqlite:///{workdir / 'bench.sqlite3'}"


def _socket_admits_us(name: str) -> bool:
    """Whether the server's socket is there and lets us in (its pg_hba.conf may ask for
    peer authentication on local connections where TCP trusts)."""
    if not (PG_SOCKET_DIR / ".s.PGSQL.5432").exists():
        return False
    command = ["psql", "-h", str(PG_SOCKET_DIR), "-U", "postgres", "-d", name, "-qAtc", "SELECT 1"]
    probe = subprocess.run(command, capture_output=True, check=False)
    return probe.returncode == 0


class Bench:
    def __init__(self, workdir: Path, redis_url: str, quick: bool, *, tcp: bool = False) -> None:
        self.workdir, self.quick = workdir, quick
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DATABASE_URL": database_url(workdir, tcp=tcp),
            "REDIS_URL": redis_url,
            "VAR_DIR": str(workdir),
            "ENQUEUE_THROTTLE_RATE": "100000000/min",
            "TASKQUEUE_MAX_ACTIVE_PER_TYPE": "100000",
            "TASKQUEUE_DIAGNOSTICS": "1",  # the limits scenario's sleeping task
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(self.env)
        self.processes: list[subprocess.Popen] = []
        self.repeats = 2 if quick else 3

    def servers(self) -> str:
        """How the engines reach PostgreSQL and Redis, for the results' heading."""

        def way(url: str) -> str:
            return "loopback TCP" if "127.0.0.1" in url else "a unix socket"

        database, redis = self.env["DATABASE_URL"], self.env["REDIS_URL"]
        if database.startswith("sqlite"):
            return f"SQLite; Redis on {way(redis)}"
        return f"PostgreSQL on {way(database)}, Redis on {way(redis)}"

    # -- processes ---------------------------------------------------------------------

    def start(self, command: list[str], name: str, **env: str) -> subprocess.Popen:
        out = (self.workdir / f"{name}.log").open("a")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes.remove(process)

    def stop_all(self) -> None:
        for process in list(self.processes):
            self.stop(process)

    def workers(self, count: int, worker_class: str | None = None) -> list[subprocess.Popen]:
        from rq.worker import Worker

        from taskqueue import backend

        # Every engine logs at WARNING, as Celery's workers here do (--loglevel): rqworker's
        # level comes from its verbosity, not LOG_LEVEL; at its default (INFO) RQ writes two
        # lines a job, about 0.2 ms of a worker's CPU each time.
        command = [PYTHON, "manage.py", "rqworker", "high", "default", "low", "--verbosity", "0"]
        if worker_class:
            command += ["--worker-class", worker_class]
        started = [self.start(command, f"worker-{n}") for n in range(count)]
        deadline = time.monotonic() + 60
        pids = {process.pid for process in started}  # not a stopped one's leftover record
        while not pids <= {w.pid for w in Worker.all(connection=backend.get_connection())}:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.1)
        return started

    def celery_workers(self, count: int, reuse_max: str | None) -> list[subprocess.Popen]:
        """One Celery worker with a prefork pool of `count` processes."""
        from bench.celery_app import app

        env = {"CELERY_DB_REUSE_MAX": reuse_max} if reuse_max else {}
        command = [PYTHON, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool",
                   "prefork", "--concurrency", str(count), "--loglevel", "WARNING"]  # fmt: skip
        started = [self.start(command, f"celery-{count}", **env)]
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError("celery did not start")
        return started

    # -- set-up ------------------------------------------------------------------------

    def setup(self) -> None:
        log(f"database: {self.env['DATABASE_URL'].split('://')[0]}; migrating")
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=self.env, check=True
        )
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        user = get_user_model().objects.create_superuser("bench", password="bench")
        self.token = Token.objects.create(user=user).key
        self.port = 18000 + os.getpid() % 1000
        self.url = f"http://127.0.0.1:{self.port}"
        self.web = self.start(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "project.asgi:application",
                "--port",
                str(self.port),
                "--workers",
                "2",
                "--no-access-log",
                *UVICORN_OPTIONS,
                "--log-level",
                "warning",
            ],
            "web",
            DATABASE_POOL="1",
        )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", self.url + "/api/schema/"], check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("web server did not start")
            time.sleep(0.2)

    def wrk(self, path: str, connections: int, seconds: int, **env: str) -> dict:
        threads = min(connections, 2)
        result = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(ROOT / "bench" / "wrk.lua"),
                self.url + path,
            ],
            env={**self.env, "WRK_TOKEN": self.token, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(x for x in result.stdout.splitlines() if x.startswith("WRKJSON "))
        data = json.loads(line[8:])
        data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
        return data

    def repeat_wrk(self, path: str, connections: int, **env: str) -> dict:
        from taskqueue.models import Task

        # Warm-up, not measured: every server thread opens its connections once.
        self.wrk(path, connections, 1, **env)
        if env.get("WRK_METHOD") == "POST":  # no worker drains them: start each run empty
            Task.objects.filter(status="queued").delete()
        runs = [
            self.wrk(path, connections, 3 if self.quick else 5, **env) for _ in range(self.repeats)
        ]
        return {
            "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
            "p95_ms": statistics.median(r["p95_us"] for r in runs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
            "rps": statistics.median(r["rps"] for r in runs),
            "errors": sum(r["socket_errors"] + r["status_errors"] for r in runs),
        }

    # -- scenarios ---------------------------------------------------------------------

    def enqueue(self) -> dict:
        from taskqueue import backend

        log("1. enqueue: raw queue.enqueue")
        queue = backend.get_queue("low")
        latencies = []
        for _ in range(2000):
            started = time.perf_counter()
            queue.enqueue("bench.jobs.noop")
            latencies.append((time.perf_counter() - started) * 1000)
        queue.empty()
        latencies.sort()
        raw = {
            "p50_ms": statistics.median(latencies),
            "p95_ms": latencies[1899],
            "p99_ms": latencies[1979],
            "rps": 1000 / statistics.mean(latencies),
        }
        rows = {"raw queue.enqueue (1 client, in process)": {1: raw}}
        for label, path in (
            ("bare view: INSERT + enqueue", "/bench/bare-enqueue"),
            ("POST health-check (this project)", "/api/system/maintenance/health-check"),
        ):
            rows[label] = {}
            for connections in (1, 8, 32):
                log(f"1. enqueue: {label} at {connections} clients")
                rows[label][connections] = self.repeat_wrk(path, connections, WRK_METHOD="POST")
                backend.get_queue("low").empty()
                backend.get_queue("default").empty()
        return rows

    # What each throughput run starts and runs: (kind of worker, its option).
    THROUGHPUT_KINDS = {
        PING: ("rq", None),
        "raw RQ no-op, forking Worker": ("rq", "rq.worker.Worker"),
        "raw RQ no-op, SimpleWorker": ("rq", "rq.worker.SimpleWorker"),
        "Celery prefork + django-celery-results": ("celery", None),
        "Celery prefork + django-celery-results, CELERY_DB_REUSE_MAX=1000": ("celery", "1000"),
    }

    def throughput(self) -> dict:
        """Every kind drains `count` jobs, round after round, each kind in turn on workers
        started for it (the order reversed every other round): a slow spell of the machine
        falls on all kinds alike, and each kind's ratio to `ping` is the median of the
        rounds' ratios, measured side by side."""
        from django.db import connection

        count = 500 if self.quick else 2000
        rounds = 3 if self.quick else 5
        results: dict = {"tasks": count, "rounds": rounds}
        try:
            import bench.celery_app  # noqa: F401
        except ImportError:
            log("2. throughput: Celery is not installed (bench/requirements.txt): skipped")
            celery = False
        else:
            celery = True
        kinds = {k: v for k, v in self.THROUGHPUT_KINDS.items() if celery or v[0] != "celery"}
        for n in self.worker_counts:
            runs: dict[str, list[float]] = {kind: [] for kind in kinds}
            costs: dict[str, list[dict]] = {kind: [] for kind in kinds}
            log(f"2. throughput, {n} workers: {', '.join(kinds)}")
            for round_ in range(rounds):
                order = list(kinds) if round_ % 2 == 0 else list(kinds)[::-1]
                for kind in order:
                    rate, cost = self.throughput_run(kind, n, count)
                    runs[kind].append(rate)
                    costs[kind].append(cost)
                log(f"2. throughput, {n} workers, round {round_ + 1}/{rounds}: "
                    + ", ".join(f"{runs[kind][-1]:.0f}" for kind in kinds) + " tasks/s")  # fmt: skip
            ping = runs[PING]
            for kind in kinds:
                results.setdefault(kind, {})[n] = {
                    "tasks_per_s": statistics.median(runs[kind]),
                    "runs": [round(r, 1) for r in runs[kind]],
                    # ping's rate over this kind's, round by round
                    "ping_ratio": round(
                        statistics.median(a / b for a, b in zip(ping, runs[kind], strict=True)), 3
                    ),
                    **{k: statistics.median(c[k] for c in costs[kind]) for k in costs[kind][0]},
                }
        results["database"] = connection.vendor
        return results

    def throughput_run(self, kind: str, n: int, count: int) -> tuple[float, dict]:
        """One drain of `count` jobs of `kind` on `n` workers started for it (and warmed
        up: horses forked, statements prepared); its rate and its costs per task."""
        engine, option = self.THROUGHPUT_KINDS[kind]
        if engine == "rq":
            workers = self.workers(n, worker_class=option)
        else:
            workers = self.celery_workers(n, reuse_max=option)
        try:
            self.clear_results()
            self.drain(kind, 20 * n)
            self.clear_results()
            before = self.counters()
            cpu_before = self.cpu(workers)
            started = time.perf_counter()
            self.drain(kind, count)
            rate = count / (time.perf_counter() - started)
            cpu = self.cpu_per_task(cpu_before, self.cpu(workers), count)
            time.sleep(1.2)  # PostgreSQL publishes its counters about every second
            return rate, {**self.per_task(before, self.counters(), count), **cpu}
        finally:
            for worker in workers:
                self.stop(worker)

    def clear_results(self) -> None:
        from django.db import connection

        from taskqueue import backend
        from taskqueue.models import Task

        Task.objects.all().delete()
        # The raw kinds count their jobs in the finished registry, whose count drops the
        # entries older than their result TTL (10 minutes) as it goes: a run that began
        # with entries of 10 minutes before would never see its count reached.
        backend.get_connection().delete(backend.get_queue("default").finished_job_registry.key)
        if "django_celery_results_taskresult" in connection.introspection.table_names():
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM django_celery_results_taskresult")

    def drain(self, kind: str, count: int) -> None:
        """Enqueue `count` jobs of `kind` and return once all have completed."""
        from django.db import connection

        from taskqueue import backend
        from taskqueue.models import Task
        from taskqueue.services import enqueue_task

        if kind.startswith("raw"):
            queue = backend.get_queue("default")
            registry = queue.finished_job_registry
            base = registry.count
            for _ in range(count):
                queue.enqueue("bench.jobs.noop", result_ttl=600)
            while registry.count - base < count:
                time.sleep(0.02)
        elif kind.startswith("Celery"):
            from bench.celery_app import noop

            for _ in range(count):
                noop.delay()
            sql = "SELECT count(*) FROM django_celery_results_taskresult WHERE status = 'SUCCESS'"
            while True:
                with connection.cursor() as cursor:
                    cursor.execute(sql)
                    if cursor.fetchone()[0] >= count:
                        break
                time.sleep(0.05)
        else:
            if kind.startswith("@task"):
                from bench.djtasks import noop

                for _ in range(count):
                    noop.enqueue()
            else:
                for _ in range(count):
                    enqueue_task("ping")
            done = Task.objects.filter(status="completed")
            while done.count() < count:
                time.sleep(0.05)

    def counters(self) -> dict:
        from django.db import connection

        from taskqueue import backend

        stats = backend.get_connection().info("commandstats")
        counters = {"redis": sum(v["calls"] for v in stats.values())}
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted "
                    "FROM pg_stat_database WHERE datname = current_database()"
                )
                counters["commits"], counters["rows"] = cursor.fetchone()
        return counters

    def cpu(self, workers: list[subprocess.Popen]) -> dict:
        """CPU seconds used so far by each part: this process (it enqueues), the workers with
        their work horses, and, per process, the PostgreSQL server and Redis."""

        def used(process: psutil.Process, children: bool = False) -> float:
            times = process.cpu_times()
            extra = times.children_user + times.children_system if children else 0.0
            return times.user + times.system + extra

        parts: dict = {"cpu_bench_ms": used(psutil.Process()), "cpu_workers_ms": 0.0}
        for worker in workers:  # the rqworker command's process, its reaped and live horses
            with suppress(psutil.Error):
                parent = psutil.Process(worker.pid)
                parts["cpu_workers_ms"] += used(parent, children=True)
                parts["cpu_workers_ms"] += sum(used(child) for child in parent.children())
        for process in psutil.process_iter(["name"]):
            name = process.info["name"] or ""
            key = "postgres" if name.startswith("postgres") else None
            key = "redis" if "redis-server" in name else key
            if key:
                with suppress(psutil.Error):
                    parts.setdefault(key, {})[process.pid] = used(process)
        return parts

    @staticmethod
    def cpu_per_task(before: dict, after: dict, count: int) -> dict:
        """ms per task; server processes that came or went in between are left out."""
        costs = {
            k: (after[k] - before[k]) * 1000 / count for k in ("cpu_bench_ms", "cpu_workers_ms")
        }
        for key in ("postgres", "redis"):
            pids = before.get(key, {}).keys() & after.get(key, {}).keys()
            used = sum(after[key][pid] - before[key][pid] for pid in pids)
            costs[f"cpu_{key}_ms"] = used * 1000 / count
        return {k: round(v, 2) for k, v in costs.items()}

    @staticmethod
    def per_task(before: dict, after: dict, count: int) -> dict:
        return {f"{k}_per_task": round((after[k] - before[k]) / count, 2) for k in before}

    def status(self) -> dict:
        from taskqueue.models import Task

        total = 20_000 if self.quick else 100_000
        log(f"3. status: {total} tasks")
        Task.objects.all().delete()
        now = datetime.now(tz=UTC)
        statuses = ["completed"] * 8 + ["failed", "cancelled"]
        types = ["health_check", "cleanup_runs", "cleanup_temp_files", "log_statistics"]
        Task.objects.bulk_create(
            [
                Task(
                    task_type=types[n % 4],
                    status=statuses[n % 10],
                    created_at=now - timedelta(seconds=n),
                    finished_at=now,
                    attempts=1,
                )
                for n in range(total)
            ],
            batch_size=5000,
        )
        from django.db import connection

        with connection.cursor() as cursor:  # a table at rest, not one mid-autovacuum
            table = Task._meta.db_table
            cursor.execute(
                f"VACUUM ANALYZE {table}" if connection.vendor == "postgresql" else "ANALYZE"
            )
        one = Task.objects.order_by("-id").first()
        detail = f"/api/system/maintenance/tasks/{one.pk}"
        etag = subprocess.run(
            [
                "curl",
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
                f"Authorization: Token {self.token}",
                self.url + detail,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        etag = next(
            x.split(":", 1)[1].strip() for x in etag.splitlines() if x.lower().startswith("etag")
        )
        rows = {}
        for label, path, extra in (
            ("GET one task (200)", detail, {}),
            ("GET one task (304, If-None-Match)", detail, {"WRK_ETAG": etag}),
            ("GET list, first page", "/api/system/maintenance/tasks", {}),
            (
                "GET list, filtered page",
                "/api/system/maintenance/tasks?status=failed&task_type=cleanup_runs",
                {},
            ),
        ):
            rows[label] = {c: self.repeat_wrk(path, c, **extra) for c in (1, 8)}
            log(f"3. status: {label}: p99 {rows[label][1]['p99_ms']:.1f} ms at 1 client")
        rows["tasks_in_table"] = total
        return rows

    def memory(self) -> dict:
        """Worker + horse RSS sampled every 1,000 tasks (after the first 1,000: warm-up)."""
        from taskqueue.models import Task
        from taskqueue.services import enqueue_task

        count = 4000 if self.quick else 20_000
        requests = 2000 if self.quick else 10_000
        log(f"5. memory: {count} tasks through one worker, {requests} POSTs to the web")
        web = list(psutil.Process(self.web.pid).children(recursive=True))
        web_rest = sum(p.memory_info().rss for p in web)
        (worker,) = self.workers(1)
        parent = psutil.Process(worker.pid)

        def rss() -> float:
            processes = [parent, *parent.children(recursive=True)]
            return sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20

        Task.objects.all().delete()
        done = Task.objects.filter(status="completed")
        samples = []
        for batch in range(count // 1000):
            for _ in range(1000):
                enqueue_task("ping")
            while done.count() < (batch + 1) * 1000:
                time.sleep(0.1)
            samples.append(round(rss(), 1))
        self.stop(worker)
        self.wrk("/api/system/maintenance/health-check", 8, max(3, requests // 1000),
                 WRK_METHOD="POST")  # fmt: skip
        web_after = sum(p.memory_info().rss for p in web)
        steady = samples[1:] or samples
        return {
            "tasks": count,
            "requests": requests,
            "worker_rss_samples_mib": samples,
            "worker_rss_spread_pct": round((max(steady) - min(steady)) / min(steady) * 100, 1),
            "web_rss_mib": [round(web_rest / 2**20, 1), round(web_after / 2**20, 1)],
        }

    TASK_KINDS = (PING, "@task no-op (django.tasks backend)")

    def django_tasks(self) -> dict:
        """`ping` and a `@task` no-op through the django.tasks backend, interleaved batches
        on the same two workers: the backend's cost over our own types, drift cancelled."""
        count = 300 if self.quick else 1000
        rounds = 4 if self.quick else 8
        workers = self.workers(2)
        rates: dict[str, list[float]] = {kind: [] for kind in self.TASK_KINDS}
        cpu: dict[str, list[float]] = {kind: [] for kind in self.TASK_KINDS}
        try:
            for n in range(rounds):
                order = self.TASK_KINDS if n % 2 == 0 else self.TASK_KINDS[::-1]
                for kind in order:
                    self.clear_results()
                    cpu_before = self.cpu(workers)
                    started = time.perf_counter()
                    self.drain(kind, count)
                    rates[kind].append(count / (time.perf_counter() - started))
                    spent = self.cpu_per_task(cpu_before, self.cpu(workers), count)
                    cpu[kind].append(sum(spent[part] for part in PARTS))
                log(f"7. django.tasks: round {n + 1}/{rounds}")
        finally:
            for worker in workers:
                self.stop(worker)
        ping, backend = (statistics.median(rates[kind]) for kind in self.TASK_KINDS)
        ratios = [a / b for a, b in zip(*(rates[kind] for kind in self.TASK_KINDS), strict=True)]
        return {
            "tasks": count,
            "rounds": rounds,
            "workers": 2,
            **{
                kind: {
                    "tasks_per_s": statistics.median(rates[kind]),
                    "runs": [round(r, 1) for r in rates[kind]],
                    "cpu_ms": round(statistics.median(cpu[kind]), 3),
                }
                for kind in self.TASK_KINDS
            },
            "ping_over_backend": round(statistics.median(ratios), 3),
            "overall_ratio": round(ping / backend, 3),
        }

    def limits(self) -> dict:
        """A 2 s timeout on a handler that sleeps 10 s, and a stop of a running task, on one
        worker: when each attempt really ended, and whether the next task had a new horse."""
        from taskqueue.models import Task
        from taskqueue.services import cancel_task, enqueue_task

        repeats = 3 if self.quick else 5
        log(f"6. limits: {repeats} timeouts and {repeats} stops")
        (worker,) = self.workers(1)

        def run(task_type: str, payload: dict | None = None, **options: int) -> Task:
            task, _ = enqueue_task(task_type, payload, **options)
            while Task.objects.get(pk=task.pk).status not in ("completed", "failed", "cancelled"):
                time.sleep(0.01)
            return Task.objects.get(pk=task.pk)

        timeouts, fresh, stops = [], [], []
        for _ in range(repeats):
            before = run("ping").result["pid"]
            task = run("diagnostic", {"action": "sleep", "seconds": 10}, timeout=2, max_attempts=1)
            attempt = task.attempt_set.get()
            timeouts.append((attempt.finished_at - attempt.started_at).total_seconds())
            fresh.append(run("ping").result["pid"] != before and task.error_code == "timeout")
        for _ in range(repeats):
            task, _ = enqueue_task("diagnostic", {"action": "sleep", "seconds": 60}, max_attempts=1)
            while Task.objects.get(pk=task.pk).status != "leased":
                time.sleep(0.005)
            time.sleep(0.3)  # the handler is asleep
            asked = time.perf_counter()
            answer = cancel_task(task.pk, wait=5)
            stops.append((time.perf_counter() - asked, answer))
        self.stop(worker)
        return {
            "timeout_s": [round(t, 2) for t in timeouts],
            "next_task_fresh_horse": fresh,
            "stop_s": [round(t, 3) for t, _ in stops],
            "stop_answers": [a for _, a in stops],
        }

    OPERATIONS = ("cleanup_runs", "cleanup_temp_files", "log_statistics")

    def operations(self) -> dict:
        """Each operation in a fresh process, over data made for it; log_statistics several
        times (it only reads), beside `grep -c` over the same files. Only those of
        `self.operation_names` (--operations) and their data."""
        runs = 100_000 if self.quick else 1_000_000
        files = 100_000 if self.quick else 1_000_000
        log_bytes = (100 if self.quick else 1024) * 2**20
        chosen = self.operation_names
        log("4. operations at scale: preparing data")
        if "cleanup_runs" in chosen:
            self.make_runs(runs)
        if "cleanup_temp_files" in chosen:
            self.make_temp_files(files)
        if "log_statistics" in chosen:
            write_logs(self.workdir / "log", log_bytes)
        os.sync()  # what was written is on disk: the operations do not wait for it
        results = {}
        for name, kwargs, size, unit, count in (
            ("cleanup_runs", {"max_age_hours": 24},
             f"{runs:,} runs ({runs // 10:,} artifact dirs)", "runs/s", runs),
            ("cleanup_temp_files", {"max_age_hours": 24}, f"{files:,} files", "files/s", files),
        ):  # fmt: skip
            if name not in chosen:
                continue
            log(f"4. operations: {name} over {size}")
            result = self.operation(name, kwargs)
            results[name] = {
                "over": size,
                "rate": count / result["seconds"],
                "unit": unit,
                **result,
            }
        if "log_statistics" in chosen:
            results["log_statistics"] = self.log_statistics(log_bytes)
            results["grep -c (reference)"] = self.grep_logs()
        return results

    def operation(self, name: str, kwargs: dict) -> dict:
        out = subprocess.run(
            [PYTHON, "-m", "bench.op", name, json.dumps(kwargs)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def log_statistics(self, size: int) -> dict:
        runs = []
        for n in range(self.repeats):
            log(f"4. operations: log_statistics over {size / 2**30:.2f} GiB ({n + 1})")
            runs.append(self.operation("log_statistics", {"hours": 24}))
        median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        return {
            "over": f"{size / 2**30:.2f} GiB of logs ({len(list((self.workdir / 'log').iterdir()))} files)",
            "runs_s": [r["seconds"] for r in runs],
            "rate": median["bytes_read"] / median["seconds"] / 1e6,
            "unit": "MB/s",
            **median,
        }

    def grep_logs(self) -> dict:
        """`grep -c` over the same files: how fast they can be read and matched at all."""
        paths = sorted(str(p) for p in (self.workdir / "log").iterdir())
        size = sum(os.path.getsize(p) for p in paths)
        times = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            subprocess.run(["grep", "-c", "-F", " ERROR ", *paths], env={**self.env, "LC_ALL": "C"},
                           capture_output=True, check=True)  # fmt: skip
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        return {"over": "the same files", "seconds": seconds, "runs_s": [round(t, 3) for t in times],
                "rate": size / seconds / 1e6, "unit": "MB/s", "peak_rss_mib": None}  # fmt: skip

    def make_runs(self, count: int) -> None:
        """`count` finished runs three days old, every tenth with an artifact directory."""
        from maintenance.models import Run

        old = datetime.now(tz=UTC) - timedelta(days=3)
        for start in range(0, count, 50_000):
            Run.objects.bulk_create(
                [Run(name="bench", status="succeeded", created_at=old, finished_at=old,
                     artifacts_dir=f"b/{n}" if n % 10 == 0 else "")
                 for n in range(start, min(count, start + 50_000))],
                batch_size=5000,
            )  # fmt: skip
        for n in range(0, count, 10):
            (self.workdir / "artifacts" / "b" / str(n)).mkdir(parents=True)
            (self.workdir / "artifacts" / "b" / str(n) / "out").write_bytes(b"x" * 512)

    def make_temp_files(self, count: int) -> None:
        """`count` files three days old, in 500 directories."""
        stamp = time.time() - 3 * 86400
        for n in range(500):
            (self.workdir / "tmp" / f"d{n}").mkdir(parents=True)
        for n in range(count):
            fd = os.open(self.workdir / "tmp" / f"d{n % 500}" / f"f{n}", os.O_WRONLY | os.O_CREAT)
            os.write(fd, b"y" * 100)
            os.utime(fd, (stamp, stamp))
            os.close(fd)


def write_logs(directory: Path, size: int) -> None:
    """`size` bytes of log lines in the project's format, in 64 MiB files, over 20 hours."""
    directory.mkdir(parents=True, exist_ok=True)
    levels = ["INFO"] * 7 + ["WARNING"] * 2 + ["ERROR"]
    start = datetime.now(tz=UTC) - timedelta(hours=20)
    written, n, part = 0, 0, 0
    while written < size:
        lines = []
        for _ in range(100_000):
            moment = start + timedelta(microseconds=n * 1000)
            stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
            level = levels[n % 10]
            lines.append(
                f"{stamp} {level:<8} app.module{n % 7} [{1000 + n % 50}] "
                f"request {n} for order {n * 7 % 100003} took {n % 997} ms\n"
            )
            n += 1
        chunk = "".join(lines).encode()
        with (directory / f"app.log.2026{part:010d}").open("ab") as handle:
            handle.write(chunk)
        written += len(chunk)
        if written // (64 * 2**20) > part:
            part += 1


def markdown(results: dict) -> str:
    out = [
        f"Measured {results['when']} on {results['machine']}; database "
        f"{results['throughput']['database']}; medians of {results['repeats']} runs.",
        "",
    ]
    if "servers" in results:
        out += [f"Servers: {results['servers']}.", ""]
    for rerun in results.get("partial_reruns", []):
        servers = f" (servers: {rerun['servers']})" if "servers" in rerun else ""
        out += [f"Re-run {rerun['when']}: {', '.join(rerun['scenarios'])}{servers}.", ""]
    enq = results["enqueue"]
    bare = enq["bare view: INSERT + enqueue"]
    out += [
        "### 1. Enqueue endpoint",
        "",
        "| endpoint | clients | p50 ms | p95 ms | p99 ms | req/s | p99 vs bare view |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, by_c in enq.items():
        for c, r in by_c.items():
            ratio = (
                r["p99_ms"] / bare[c]["p99_ms"]
                if c in bare and label != "bare view: INSERT + enqueue"
                else None
            )
            out.append(
                f"| {label} | {c} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['rps']:.0f} | {f'{ratio:.2f}×' if ratio else '—'} |"
            )
    out += throughput_markdown(results["throughput"])
    st = results["status"]
    out += [
        "",
        f"### 3. Status ({st['tasks_in_table']:,} tasks in the table)",
        "",
        "| request | clients | p50 ms | p95 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|",
    ]
    for label, by_c in st.items():
        if isinstance(by_c, dict):
            for c, r in by_c.items():
                out.append(
                    f"| {label} | {c} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.0f} |"
                )
    out += operations_markdown(results["operations"])
    mem = results["memory"]
    out += [
        "",
        f"### 5. Memory (RSS, MiB, {mem['tasks']:,} tasks through one worker)",
        "",
        "- worker + work horse, every 1,000 tasks: "
        + ", ".join(str(v) for v in mem["worker_rss_samples_mib"]),
        f"- spread after the first 1,000 (warm-up): {mem['worker_rss_spread_pct']}%",
        f"- web (uvicorn's 2 workers, summed), at rest → after {mem['requests']:,} POSTs: "
        f"{mem['web_rss_mib'][0]} → {mem['web_rss_mib'][1]}",
        "",
    ]
    if "limits" in results:
        lim = results["limits"]
        out += [
            "### 6. Hard limits (one worker, real processes)",
            "",
            f"- timeout 2 s, handler sleeps 10 s: attempt ended after {lim['timeout_s']} s; "
            f"next task in a new horse: {lim['next_task_fresh_horse']}",
            f"- stop of a running task, DELETE to confirmed `cancelled`: {lim['stop_s']} s "
            f"({', '.join(sorted(set(lim['stop_answers'])))})",
            "",
        ]
    if "django_tasks" in results:
        out += django_tasks_markdown(results["django_tasks"])
    return "\n".join(out)


def operations_markdown(ops: dict) -> list[str]:
    out = [
        "",
        "### 4. Operations at scale (a fresh process each; peak RSS of that process, and of its "
        "largest worker process)",
        "",
        "| operation | over | seconds | rate | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, r in ops.items():
        rate = f"{r['rate']:,.0f} {r['unit']}" if "rate" in r else "—"
        rss = "—" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        if r.get("workers_peak_rss_mib"):
            rss += f" (workers {r['workers_peak_rss_mib']:.0f})"
        runs = f" (runs: {', '.join(f'{t:.2f}' for t in r['runs_s'])})" if "runs_s" in r else ""
        seconds = f"{r['seconds']:.1f}" if r["seconds"] >= 10 else f"{r['seconds']:.2f}"
        out.append(f"| {name} | {r['over']} | {seconds}{runs} | {rate} | {rss} |")
    return out


def django_tasks_markdown(dt: dict) -> list[str]:
    out = [
        f"### 7. django.tasks backend ({dt['workers']} workers, {dt['rounds']} interleaved "
        f"rounds of {dt['tasks']} tasks each)",
        "",
        "| kind | tasks/s (median) | runs | CPU ms per task (enqueue, workers, PostgreSQL, Redis) |",
        "|---|---|---|---|",
    ]
    for kind in Bench.TASK_KINDS:
        r = dt[kind]
        runs = ", ".join(f"{v:.0f}" for v in r["runs"])
        out.append(f"| {kind} | {r['tasks_per_s']:.0f} | {runs} | {r['cpu_ms']:.2f} |")
    out += [
        "",
        f"`ping` over the backend, median of the paired rounds: {dt['ping_over_backend']:.2f}× "
        f"(of the medians: {dt['overall_ratio']:.2f}×); above 1 the backend is slower.",
        "",
    ]
    return out


PARTS = ("cpu_bench_ms", "cpu_workers_ms", "cpu_postgres_ms", "cpu_redis_ms")


def throughput_markdown(thr: dict) -> list[str]:
    kinds = [k for k in Bench.THROUGHPUT_KINDS if k in thr]
    counts = sorted({n for k in kinds for n in thr[k]}, key=int)
    out = [
        "",
        f"### 2. End-to-end throughput ({thr['tasks']} tasks, enqueue to last completed)",
        "",
        f"Tasks a second (median of {thr['rounds']} rounds, each kind in turn in every round);"
        " in brackets, the mirrored `ping` against each reference: the median of the rounds'"
        " ratios, side by side:",
        "",
        "| workers | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for n in counts:
        cells = []
        for kind in kinds:
            rate = thr[kind].get(n, {}).get("tasks_per_s")
            if rate is None:
                cells.append("—")
            elif kind == PING:
                cells.append(f"**{rate:.0f}**")
            else:
                cells.append(f"{rate:.0f} (ping {thr[kind][n]['ping_ratio']:.2f}×)")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Per task: CPU ms (the enqueuing process, workers with their horses or pool, "
        "PostgreSQL, Redis, total), database commits and rows, Redis commands:",
        "",
        "| workers | kind | enqueue | workers | PostgreSQL | Redis | total CPU | commits | rows | Redis cmds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        for kind in kinds:
            r = thr[kind].get(n)
            if not r or "cpu_workers_ms" not in r:
                continue
            cells = [f"{r[k]:.2f}" for k in PARTS] + [f"**{sum(r[k] for k in PARTS):.2f}**"]
            cells += [str(r.get("commits_per_task", "—")), str(r.get("rows_per_task", "—"))]
            cells.append(str(r["redis_per_task"]))
            out.append(f"| {n} | {kind} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="scenarios to run")
    parser.add_argument("--workers", default="1,2,4", help="worker counts for throughput")
    parser.add_argument("--operations", nargs="*", choices=Bench.OPERATIONS,
                        default=Bench.OPERATIONS, help="the operations scenario's operations")  # fmt: skip
    parser.add_argument("--no-save", action="store_true", help="print, keep old results")
    parser.add_argument("--tcp", action="store_true",
                        help="PostgreSQL and Redis on loopback TCP, not unix sockets")  # fmt: skip
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk (make bench does it)")
    workdir = Path(tempfile.mkdtemp(prefix="tq-bench-"))
    RESULTS.mkdir(exist_ok=True)
    with embedded_redis(workdir / "redis", tcp=args.tcp) as redis_url:
        bench = Bench(workdir, redis_url, args.quick, tcp=args.tcp)
        bench.worker_counts = [int(n) for n in args.workers.split(",")]
        bench.operation_names = args.operations
        try:
            bench.setup()
            results = {
                "when": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
                "repeats": bench.repeats,
                "quick": args.quick,
                "servers": bench.servers(),
            }
            scenarios = ("enqueue", "status", "throughput", "memory", "operations", "limits",
                         "django_tasks")  # fmt: skip
            for name in scenarios:
                if args.only is None or name in args.only:
                    results[name] = getattr(bench, name)()
        finally:
            bench.stop_all()
    if args.no_save:
        print(json.dumps(results, indent=2, default=str))
        shutil.rmtree(workdir, ignore_errors=True)
        return
    if args.only is not None and (RESULTS / "latest.json").exists():
        # A partial run updates the scenarios it ran and keeps the others.
        previous = json.loads((RESULTS / "latest.json").read_text())
        if "operations" in results:  # --operations may have run some of them only
            results["operations"] = {**previous.get("operations", {}), **results["operations"]}
        results = {
            **previous,
            **{k: v for k, v in results.items() if k in args.only},
            "partial_reruns": [
                *previous.get("partial_reruns", []),
                {"when": results["when"], "scenarios": args.only, "servers": results["servers"]},
            ],
        }
    results = json.loads(json.dumps(results, default=str))
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "latest.md").write_text(markdown(results))
    log(f"results in {RESULTS}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
