"""Run one maintenance operation in a fresh process; print its time and peak memory."""

import contextlib
import json
import resource
import sys
import threading
import time

import django
import psutil


def high_water_mib() -> float:
    """Peak RSS of this process since exec (VmHWM). ru_maxrss would include the RSS the
    parent had when it forked us: Linux carries it across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User and system time of this process (the memory sampler's included) and of the
    worker processes it has waited for (log_statistics' have ended when it returns)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class WorkerMemory(threading.Thread):
    """The peak RSS of the largest process this one forks (log_statistics' workers), sampled
    every 20 ms; pages shared with this process count in both."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = 0.0, threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.wait(0.02):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # ended meanwhile
                    self.peak = max(self.peak, child.memory_info().rss / 2**20)


def main() -> None:
    django.setup()
    from maintenance import operations

    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    workers = WorkerMemory()
    workers.start()
    started, cpu = time.perf_counter(), cpu_seconds()
    result = getattr(operations, name)(**kwargs)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    workers.done.set()
    workers.join()
    summary = {k: v for k, v in result.items() if isinstance(v, int | float)}
    print(json.dumps({"seconds": round(elapsed, 3), "cpu_s": round(cpu, 3),
                      "peak_rss_mib": round(high_water_mib(), 1),
                      "workers_peak_rss_mib": round(workers.peak, 1), **summary}))  # fmt: skip


if __name__ == "__main__":
    main()
