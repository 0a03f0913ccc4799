"""The drill's own PostgreSQL cluster and Redis, which it may stop, restart and cut off.

Both listen on 127.0.0.1 (the drill's driver, and the loopback runs) and on the default
namespace's end of each host's link; neither is the shared server of this machine.
PostgreSQL runs as the `postgres` user from a data directory under the drill's temporary
directory (initdb refuses root), with a unix socket in a directory of its own.
"""

import contextlib
import glob
import shutil
import subprocess
import time
from pathlib import Path

import psycopg

from scripts.embedded_redis import redis_server_binary
from tests.drills.hosts import Cleanup, kill_tree
from tests.helpers import free_port

DATABASE = "drill"


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit(f"No {name} under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return found[-1]


class Postgres:
    """A private cluster; `stop()`/`start()` restart it (the data survives)."""

    def __init__(self, base: Path, addresses: list[str], cleanup: Cleanup) -> None:
        self.dir = base / "pg"
        self.data = self.dir / "data"
        self.sockets = self.dir / "socket"
        self.port = free_port()
        self.addresses = ["127.0.0.1", *addresses]
        for directory in (self.dir, self.sockets):
            directory.mkdir(parents=True)
            shutil.chown(directory, "postgres", "postgres")
        base.chmod(0o755)  # the postgres user must reach its directory
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.77.0.0/16 trust\n")
        cleanup.push("PostgreSQL", self.kill)
        self.start()
        with psycopg.connect(self.url("127.0.0.1", "postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                       capture_output=True, cwd=self.dir)  # fmt: skip

    def url(self, address: str, database: str = DATABASE) -> str:
        return f"postgres://postgres@{address}:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-c listen_addresses='{','.join(self.addresses)}' -c port={self.port}"
            f" -c unix_socket_directories='{self.sockets}' -c max_connections=300"
            " -c shared_buffers=256MB"
        )
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                          "-w", "-t", "60", "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def kill(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")


class Redis:
    """A private redis-server without persistence."""

    def __init__(self, base: Path, addresses: list[str], cleanup: Cleanup) -> None:
        self.dir = base / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.addresses = ["127.0.0.1", *addresses]
        self.process: subprocess.Popen | None = None
        cleanup.push("Redis", self.stop)
        self.start()

    def url(self, address: str) -> str:
        return f"redis://{address}:{self.port}/0"

    def start(self) -> None:
        command = [redis_server_binary(), "--port", str(self.port), "--bind", *self.addresses,
                   "--protected-mode", "no", "--save", "", "--appendonly", "no",
                   "--maxmemory-policy", "noeviction", "--dir", str(self.dir),
                   "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        self.process = subprocess.Popen(command, start_new_session=True)
        import redis

        client = redis.Redis.from_url(self.url("127.0.0.1"))
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            kill_tree(self.process, timeout=5)
