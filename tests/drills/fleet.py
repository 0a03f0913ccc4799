"""The deployment under drill: Redis and PostgreSQL on the default namespace, three worker
hosts, a web host, one rqcron; every process is the project's own command.

Settings every process shares (the ones docs/scale-out.md says must match): SECRET_KEY,
the database, Redis, and the TASKQUEUE timings. Workers heartbeat every 2 s with a 4 s
margin (production: 30 s and 60 s) and the reconciler's grace is 5 s, so that a lost
worker is noticed in seconds; the reconciler runs every 15 s, as in production.
"""

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from project.http import UVICORN_OPTIONS
from tests.drills.hosts import ROOT, Cleanup, Host, Network, kill_tree, run
from tests.drills.services import Postgres, Redis

WORKER_HOSTS = ("h1", "h2", "h3")
WEB_PORT = 8000
TIMINGS = {
    "TASKQUEUE_JOB_MONITORING_INTERVAL": "2",
    "TASKQUEUE_HEARTBEAT_MARGIN": "4",
    "TASKQUEUE_RECONCILE_GRACE": "5",
    "TASKQUEUE_SCHEDULE_GRACE": "5",
}
FAKETIME_LIBRARY = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


@dataclass
class Fleet:
    cleanup: Cleanup
    delay_ms: float = 5.0
    jitter_ms: float = 2.0
    base: Path = field(init=False)
    network: Network = field(init=False)
    postgres: Postgres = field(init=False)
    redis: Redis = field(init=False)
    workers: dict[str, object] = field(default_factory=dict)  # name -> Popen
    skews: dict[str, float] = field(default_factory=dict)  # worker name -> clock offset (s)
    started: int = 0

    def __post_init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="tqdrill-"))
        self.cleanup.push(f"directory {self.base}", lambda: run("rm", "-rf", str(self.base)))
        self.logs = self.base / "logs"
        self.logs.mkdir()
        self.cleanup.push("saving the logs", self._save_logs)
        (self.base / "var" / "log").mkdir(parents=True)
        (self.base / "var" / "log" / "app.log").touch()
        self.ledger = self.base / "ledger"
        self.network = Network(self.cleanup, self.logs, self.delay_ms, self.jitter_ms)
        for name in (*WORKER_HOSTS, "web"):
            self.network.add(name)
        gateways = [host.gateway for host in self.network.hosts.values()]
        self.postgres = Postgres(self.base, gateways, self.cleanup)
        self.redis = Redis(self.base, gateways, self.cleanup)

    def _save_logs(self) -> None:
        """Keep the processes' logs (and PostgreSQL's, Redis's) in var/drills/logs/."""
        kept = ROOT / "var" / "drills" / "logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(self.logs, kept)
        for extra in (self.base / "pg" / "log", self.base / "redis" / "redis.log"):
            if extra.exists():
                shutil.copy(extra, kept / f"{extra.parent.name}-{extra.name}")

    def host(self, name: str) -> Host:
        return self.network.hosts[name]

    def env(self, host: Host | None, **extra: str) -> dict[str, str]:
        """The environment of a process on `host` (None: the default namespace, loopback)."""
        address = host.gateway if host else "127.0.0.1"
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
            "DJANGO_SETTINGS_MODULE": "tests.soak.settings",
            "SECRET_KEY": "drill-secret-key-the-same-on-every-host",
            "DATABASE_URL": self.postgres.url(address),
            "REDIS_URL": self.redis.url(address),
            "VAR_DIR": str(self.base / "var"),
            "LOG_DIR": str(self.base / "var" / "log"),
            "SOAK_LEDGER": str(self.ledger),
            "TASKQUEUE_DIAGNOSTICS": "1",
            "TASKQUEUE_MAX_ACTIVE_PER_TYPE": "1000000",
            "ENQUEUE_THROTTLE_RATE": "1000000/min",
            "PYTHONUNBUFFERED": "1",
            **TIMINGS,
            **extra,
        }

    def manage(self, host: Host | None, name: str, *args: str, skew: float = 0,
               **extra: str) -> object:  # fmt: skip
        env = self.env(host, **extra)
        if skew:  # this host's clocks are `skew` seconds off (see tests/drills/skew.py)
            env |= {"LD_PRELOAD": FAKETIME_LIBRARY, "FAKETIME": f"{skew:+g}"}
        argv = [sys.executable, str(ROOT / "manage.py"), *args]
        return self.network.spawn(host, name, argv, env)

    def start_worker(self, host: Host | None, *, skew: float = 0) -> str:
        self.started += 1
        name = f"{host.name if host else 'lo'}-w{self.started}"
        self.workers[name] = self.manage(host, name, "rqworker", "high", "default", "low",
                                         "--with-scheduler", "--name", name, skew=skew)  # fmt: skip
        if skew:
            self.skews[name] = skew
        return name

    def stop_workers(self, names: list[str] | None = None) -> None:
        """Warm shutdown (SIGTERM): each finishes its running task, then exits."""
        for name in list(self.workers) if names is None else names:
            kill_tree(self.workers.pop(name), timeout=30)

    def wait_registered(self, names: list[str], timeout: float = 60) -> None:
        """Until every worker named is registered in Redis and waiting for jobs."""
        from rq import Worker

        from taskqueue import backend

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {w.name: w.get_state() for w in Worker.all(connection=backend.get_connection())}
            if all(seen.get(name) == "idle" for name in names):
                return
            for name in names:
                if self.workers[name].poll() is not None:
                    raise SystemExit(f"worker {name} exited; see {self.logs / name}.log")
            time.sleep(0.2)
        raise SystemExit(f"workers not registered after {timeout} s: {names}")

    def start_cron(self, host: Host | None) -> object:
        return self.manage(host, "cron", "rqcron", "taskqueue.cron")

    def start_web(self) -> str:
        host = self.host("web")
        env = self.env(host, DATABASE_POOL="1", ALLOWED_HOSTS=host.address)
        argv = [sys.executable, "-m", "uvicorn", "project.asgi:application",
                "--host", host.address, "--port", str(WEB_PORT), "--no-access-log",
                *UVICORN_OPTIONS]  # fmt: skip
        self.network.spawn(host, "web", argv, env)
        return f"http://{host.address}:{WEB_PORT}"

    def round_trip_ms(self, host: Host | None) -> float:
        """The median time of a Redis PING from `host` (loopback: None), in ms."""
        address = host.gateway if host else "127.0.0.1"
        code = (
            "import redis, statistics, time\n"
            f"r = redis.Redis(host='{address}', port={self.redis.port}); r.ping()\n"
            "times = []\n"
            "for _ in range(200):\n"
            "    began = time.perf_counter(); r.ping()\n"
            "    times.append(time.perf_counter() - began)\n"
            "print(statistics.median(times) * 1000)\n"
        )
        prefix = ["ip", "netns", "exec", host.namespace] if host else []
        return float(run(*prefix, sys.executable, "-c", code).stdout)

    def migrate(self) -> None:
        import subprocess

        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT,
                       env=self.env(None), check=True)  # fmt: skip
