"""Shared fixtures: a real Redis (flushed around each test), workers, the test database URL."""

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from project.http import UVICORN_OPTIONS
from scripts.embedded_redis import redis_server_binary
from tests.helpers import (
    ROOT,
    free_port,
    http_status,
    snapshot,
    stop_process_group,
    subprocess_env,
    wait_for,
)

# Keys this project writes: RQ's, our locks, the cache's. Anything else is someone's data.
OUR_PREFIXES = (b"rq:", b"taskqueue:", b"cache:")


@pytest.fixture(scope="session", autouse=True)
def diagnostics() -> None:
    """Register the diagnostic task types (off by default outside tests)."""
    from taskqueue.tasks import register_diagnostics

    register_diagnostics()


@pytest.fixture(scope="session")
def redis_connection() -> redis.Redis:
    from taskqueue import backend

    conn = backend.get_connection()
    try:
        conn.ping()
    except redis.RedisError as exc:
        pytest.exit(f"No Redis at REDIS_URL ({exc}); run the suite with `make test`.", returncode=3)
    foreign = [key for key in conn.scan_iter(count=1000) if not key.startswith(OUR_PREFIXES)]
    if foreign:
        pytest.exit(
            f"The Redis database at REDIS_URL holds keys that are not ours ({foreign[:3]}); "
            "refusing to flush it. Point REDIS_URL at an empty database index.",
            returncode=3,
        )
    return conn


@pytest.fixture
def redis_db(redis_connection: redis.Redis) -> Iterator[redis.Redis]:
    redis_connection.flushdb()
    yield redis_connection
    redis_connection.flushdb()


@pytest.fixture
def run_worker(redis_db: redis.Redis) -> Callable[..., None]:
    """Drain the queues with our forking worker in burst mode, in this process."""
    from taskqueue import backend
    from taskqueue.registry import QUEUES
    from taskqueue.worker import Worker

    def run(**kwargs: object) -> None:
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        worker = Worker([backend.get_queue(name) for name in QUEUES], connection=redis_db)
        try:
            worker.work(burst=True, **kwargs)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    return run


@pytest.fixture
def worker_process(
    redis_db: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real `manage.py rqworker` processes; stopped (whole process group) after."""
    processes: list[subprocess.Popen] = []

    def start(*args: str, name: str | None = None, **env: str) -> subprocess.Popen:
        log = (tmp_path / f"worker-{len(processes)}.log").open("w")
        command = [sys.executable, "manage.py", "rqworker", "high", "default", "low", *args]
        if name:
            command += ["--name", name]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        stop_process_group(process)
    for log in sorted(tmp_path.glob("worker-*.log")):  # shown by pytest if the test failed
        print(f"--- {log.name}\n{log.read_text()[-5000:]}")


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[dict[str, Path]]:
    paths = {name: tmp_path / name.lower() for name in ("TEMP_DIR", "ARTIFACTS_DIR", "LOG_DIR")}
    for path in paths.values():
        path.mkdir()
    with override_settings(MAINTENANCE=paths):
        yield paths


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A tree outside every root; the test fails if anything in it changes."""
    root = tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    (root / "file.txt").write_text("keep me")
    (root / "dir" / "nested.txt").write_text("keep me too")
    for path in (root / "file.txt", root / "dir" / "nested.txt", root / "dir"):
        os.utime(path, (1, 1))  # ancient: any sweep that reached here would delete them
    before = snapshot(root)
    yield root
    assert snapshot(root) == before, "something outside the configured root changed"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """Hashing with PBKDF2 costs ~0.2 s per user; tests do not need it to be slow."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def live_server_url(web_server: tuple[str, subprocess.Popen]) -> str:
    return web_server[0]


@pytest.fixture(scope="session")
def web_server(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The project under uvicorn (ASGI, as `make run` serves it), on the test database."""
    port = free_port()
    log = (tmp_path_factory.mktemp("web") / "web.log").open("w")
    command = [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log", *UVICORN_OPTIONS]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=subprocess_env(
            ENQUEUE_THROTTLE_RATE="100000/min",
            TASKQUEUE_MAX_ACTIVE_PER_TYPE="1000",
            DATABASE_POOL="1",  # as `make run` serves the web: bounded connections
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_status(url + "/api/schema/") == 401, timeout=30)
    yield url, process
    stop_process_group(process)
    log.close()


def user_with(django_user_model, username: str, *, staff: bool = True, perms: tuple = ()):
    user = django_user_model.objects.create_user(username, password="pw-" + username)
    user.is_staff = staff
    user.save()
    for codename in perms:
        app_label, code = codename.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=code)
        )
    return user


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw-root")


@pytest.fixture
def api(admin_user, redis_db) -> APIClient:
    """A superuser authenticated by token."""
    return token_client(admin_user)


@pytest.fixture
def make_client(django_user_model, redis_db):
    def make(username: str, *, staff: bool = True, perms: tuple = ()) -> APIClient:
        return token_client(user_with(django_user_model, username, staff=staff, perms=perms))

    return make


@pytest.fixture
def private_redis() -> Iterator:
    """A Redis of this test's own, without persistence, that the test may kill."""
    directory = Path(tempfile.mkdtemp(prefix="tq-redis-"))
    sock = directory / "redis.sock"
    command = [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
               "--appendonly", "no", "--dir", str(directory)]  # fmt: skip

    class Server:
        url = f"unix://{sock}"
        process: subprocess.Popen | None = None

        def start(self) -> None:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            wait_for(sock.exists, timeout=10)

        def kill(self) -> None:
            self.process.kill()
            self.process.wait()
            sock.unlink(missing_ok=True)

    server = Server()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


@pytest.fixture(params=["compiled", "pattern"])
def log_scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """log_statistics' chunks counted by the compiled scanner, then by the pattern it stands
    for (as where it could not be built)."""
    from maintenance.logstats import chunks

    if request.param == "pattern":
        monkeypatch.setattr(chunks, "_scan", None)
    elif chunks._scan is None:
        pytest.skip("the compiled scanner is not built (no compiler)")
    return request.param
