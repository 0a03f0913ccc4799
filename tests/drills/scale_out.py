"""The scale-out drill: three worker hosts, a web host, partitions, outages and clock skew.

    make drill-scale-out            (or, as root: .venv/bin/python tests/drills/scale_out.py)

Builds a small deployment on this machine (tests/drills/fleet.py): Redis and PostgreSQL of
the drill's own on the default namespace, worker hosts h1-h3 and a web host in network
namespaces, 5 ± 2 ms added each way on every link, one rqcron (on h1). Then:

1. throughput: the same tasks through 1, 3 and 6 workers on the hosts, and through as many
   on loopback (10,000 tasks on the hosts by default), each checked exactly once;
2. a worker host partitioned mid-task for longer than the heartbeat margin;
3. Redis unreachable from the web for 30 s while clients POST; then PostgreSQL restarted;
4. one worker host's clock a few seconds off (libfaketime);

and, at the end, the soak's checks over every task of the run (tests/soak/run.py: the
ledger against the attempts, every row against its attempts and against RQ). The report
goes to stdout, var/drills/scale-out.md and (with --write-docs) the results section of
docs/scale-out.md. Exit status 1 if a check failed. Needs root (namespaces, iptables).
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.drills.fleet import Fleet  # noqa: E402
from tests.drills.hosts import Cleanup  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="through the hosts, in all")
    parser.add_argument("--loopback-tasks", type=int, default=5_000)
    parser.add_argument("--workers", default="1,3,6", help="worker counts of the stages")
    parser.add_argument("--delay", type=float, default=5.0, help="ms added each way")
    parser.add_argument("--jitter", type=float, default=2.0, help="± ms")
    parser.add_argument("--only", default="throughput,partition,outages,skew")
    parser.add_argument("--write-docs", action="store_true", help="update docs/scale-out.md")
    return parser.parse_args()


def shares(total: int, counts: list[int]) -> list[int]:
    """`total` tasks split in proportion to the worker counts."""
    weights = sum(counts)
    sizes = [total * count // weights for count in counts]
    sizes[-1] += total - sum(sizes)
    return sizes


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("The drill needs root (network namespaces, iptables).")
    cleanup = Cleanup()
    try:
        fleet = Fleet(cleanup, delay_ms=args.delay, jitter_ms=args.jitter)
        fleet.migrate()
        os.environ.update(fleet.env(None))
        import django

        django.setup()
        failed = drill(args, fleet)
    finally:
        cleanup.run()
    sys.exit(1 if failed else 0)


def drill(args: argparse.Namespace, fleet: Fleet) -> bool:
    """Every phase, the last checks and the report; whether something failed."""
    from tests.drills import faults, report, throughput

    phases = set(args.only.split(","))
    cron = fleet.start_cron(fleet.host("h1"))
    rtt = {name: fleet.round_trip_ms(fleet.host(name)) for name in ("h1", "web")}
    rtt["loopback"] = fleet.round_trip_ms(None)
    print(f"Redis round trips (ms): {rtt}", flush=True)
    stages, first = [], 0
    counts = [int(n) for n in args.workers.split(",")]
    if "throughput" in phases:
        for where, total in (("hosts", args.tasks), ("loopback", args.loopback_tasks)):
            for workers, size in zip(counts, shares(total, counts), strict=True):
                stages.append(throughput.run_stage(fleet, where, workers, size, first))
                first += size
                print(stages[-1], flush=True)
    names = [fleet.start_worker(fleet.host(h)) for h in ("h1", "h2", "h3") for _ in (1, 2)]
    fleet.wait_registered(names)
    results = run_faults(fleet, phases, faults.Counter(first + 1000))
    checked = settle_and_check(fleet, cron)
    failed = bool(checked[0]) or any(_problems(result) for result in results.values())
    failed |= any(stage.not_exactly_once for stage in stages)
    text = report.render(args, stages, results, checked, rtt, failed)
    report.write(text, ROOT, args.write_docs)
    print(text)
    return failed


def run_faults(fleet: Fleet, phases: set[str], counter: object) -> dict:
    from tests.drills import faults, outages, partition, skew

    results = {}
    if "partition" in phases:
        results["partition"] = partition.run(fleet, counter, faults.reconciler_actions())
        print(results["partition"], flush=True)
    if "outages" in phases:
        web = fleet.start_web()
        token = faults.api_token()
        faults.wait_until(lambda: faults.http("GET", f"{web}/api/", "x")["status"], 60)
        results["redis"] = outages.redis_from_web(fleet, web, token)
        print(results["redis"], flush=True)
        results["postgres"] = outages.postgres_restart(fleet, web, token, counter)
        print(results["postgres"], flush=True)
    if "skew" in phases:
        results["skew"] = skew.run(fleet, counter)
        print(results["skew"], flush=True)
    return results


def _problems(result: dict) -> list:
    if "problems" in result:
        return result["problems"]
    return [p for value in result.values() if isinstance(value, dict) for p in _problems(value)]


def settle_and_check(fleet: Fleet, cron: object) -> tuple[dict, dict]:
    """Stop the cron, let the workers drain what it enqueued, stop them; then check."""
    from taskqueue import backend
    from tests.drills import faults, report
    from tests.drills.hosts import kill_tree

    kill_tree(cron)
    queues = [f"rq:queue:{name}" for name in ("high", "default", "low")]
    connection = backend.get_connection()
    faults.wait_until(lambda: not any(connection.llen(key) for key in queues), 60)
    time.sleep(2)
    fleet.stop_workers()
    return report.final_checks(fleet)


if __name__ == "__main__":
    main()
