"""Hosts on one machine: network namespaces on veth pairs, with latency and partitions.

Each host `name` is the namespace `tqdrill-<name>`, joined to the default namespace by a
veth pair: `10.77.<n>.1` on the default side (where the drill's Redis and PostgreSQL
listen), `10.77.<n>.2` in the host. Everything the host sends or receives on its veth goes
through two chains of its own namespace's iptables:

- `drill-cut`, first: empty, or DROP rules while the host is partitioned (all traffic) or
  while one of its peers is unreachable (one TCP port, both directions): silent drops,
  as a partition looks to TCP;
- an NFQUEUE rule, whose packets `tests/drills/delay.py` (run in the namespace) releases
  `delay` ± `jitter` ms later: the latency, in both directions.

Nothing is added to the default namespace but the host-side ends of the veths and their
addresses; deleting a namespace removes its veth pair and its rules. `Cleanup` undoes
everything, in reverse order, at exit, on SIGINT/SIGTERM, or when the drill fails.
"""

import atexit
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import stop_process_group

PREFIX = "tqdrill-"
SUBNET = "10.77"
ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Cleanup:
    """A stack of undo actions, run once, last first: at exit, on a signal, or by hand."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self._done = False
        atexit.register(self.run)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def push(self, what: str, action: Callable[[], object]) -> None:
        self._actions.append((what, action))

    def _on_signal(self, signum: int, frame: object) -> None:
        raise SystemExit(f"interrupted by signal {signum}")  # the finally blocks, then run()

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # keep undoing the rest
                print(f"cleanup: {what} failed: {exc}", file=sys.stderr)


def kill_tree(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL it and every descendant (the suite's
    `stop_process_group`), unless it has already exited."""
    if process.poll() is None:
        stop_process_group(process, timeout)


@dataclass
class Host:
    name: str
    index: int

    @property
    def namespace(self) -> str:
        return PREFIX + self.name

    @property
    def address(self) -> str:
        """This host's address, as its peers see it."""
        return f"{SUBNET}.{self.index}.2"

    @property
    def gateway(self) -> str:
        """The default namespace's address on this host's link (Redis, PostgreSQL)."""
        return f"{SUBNET}.{self.index}.1"

    @property
    def veth(self) -> tuple[str, str]:
        """(the default namespace's end, the host's end)."""
        return f"tqd{self.index}{self.name}o"[:15], f"tqd{self.index}{self.name}i"[:15]

    def iptables(self, *rule: str) -> None:
        run("ip", "netns", "exec", self.namespace, "iptables", "-w", *rule)


@dataclass
class Network:
    """The hosts, their links and the processes running in them."""

    cleanup: Cleanup
    logs: Path
    delay_ms: float = 5.0
    jitter_ms: float = 2.0
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def add(self, name: str) -> Host:
        host = Host(name, len(self.hosts) + 1)
        self._refuse_collisions(host)
        outside, inside = host.veth
        self.cleanup.push(f"namespace {host.namespace}", lambda: self._delete(host))
        run("ip", "netns", "add", host.namespace)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", host.namespace)
        run("ip", "addr", "add", f"{host.gateway}/24", "dev", outside)
        run("ip", "link", "set", outside, "up")
        ns = ("ip", "netns", "exec", host.namespace)
        run(*ns, "ip", "addr", "add", f"{host.address}/24", "dev", inside)
        run(*ns, "ip", "link", "set", inside, "up")
        run(*ns, "ip", "link", "set", "lo", "up")
        host.iptables("-N", "drill-cut")
        for chain, direction in (("INPUT", "-i"), ("OUTPUT", "-o")):
            host.iptables("-A", chain, direction, inside, "-j", "drill-cut")
            if self.delay_ms:
                host.iptables("-A", chain, direction, inside, "-j", "NFQUEUE",
                              "--queue-num", str(host.index), "--queue-bypass")  # fmt: skip
        if self.delay_ms:
            self.spawn(host, "delay", [sys.executable, str(ROOT / "tests/drills/delay.py"),
                                       "--queue", str(host.index), "--delay", str(self.delay_ms),
                                       "--jitter", str(self.jitter_ms)])  # fmt: skip
        self.hosts[name] = host
        return host

    def _refuse_collisions(self, host: Host) -> None:
        if host.namespace in run("ip", "netns", "list").stdout.split():
            sys.exit(f"Namespace {host.namespace} exists: another drill runs, or one was"
                     f" SIGKILLed (ip netns del {host.namespace}).")  # fmt: skip
        if f" {host.gateway}/" in run("ip", "-o", "addr").stdout:
            sys.exit(f"{host.gateway} is already assigned here; refusing to touch it.")

    def _delete(self, host: Host) -> None:
        for process in self.processes:
            if process.args[3:4] == [host.namespace]:
                kill_tree(process, timeout=3)
        run("ip", "netns", "del", host.namespace, check=False)  # its veth pair goes with it
        run("ip", "link", "del", host.veth[0], check=False)

    def spawn(self, host: Host | None, name: str, argv: list[str],
              env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
        """Start `argv` in `host` (None: the default namespace), logging to logs/<name>.log."""
        prefix = ["ip", "netns", "exec", host.namespace] if host else []
        log = (self.logs / f"{name}.log").open("a")
        process = subprocess.Popen([*prefix, *argv], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        self.processes.append(process)
        self.cleanup.push(f"process {name}", lambda: kill_tree(process, timeout=5))
        return process

    # Faults.

    def partition(self, host: Host) -> None:
        """Drop everything the host sends or receives on its link, silently."""
        host.iptables("-A", "drill-cut", "-j", "DROP")

    def block_port(self, host: Host, port: int) -> None:
        """Drop the host's traffic to and from TCP `port` (one peer unreachable)."""
        host.iptables("-A", "drill-cut", "-p", "tcp", "--dport", str(port), "-j", "DROP")
        host.iptables("-A", "drill-cut", "-p", "tcp", "--sport", str(port), "-j", "DROP")

    def heal(self, host: Host) -> None:
        host.iptables("-F", "drill-cut")
