"""Run one maintenance operation in a fresh process; print its time and peak memory."""

import json
import resource
import sys
import time

import django


def high_water_mib() -> float:
    """Peak RSS of this process since exec (VmHWM). ru_maxrss would include the RSS the
    parent had when it forked us: Linux carries it across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    django.setup()
    from maintenance import operations

    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    started = time.perf_counter()
    result = getattr(operations, name)(**kwargs)
    elapsed = time.perf_counter() - started
    peak = high_water_mib()
    summary = {k: v for k, v in result.items() if isinstance(v, int | float)}
    print(json.dumps({"seconds": round(elapsed, 3), "peak_rss_mib": round(peak, 1), **summary}))


if __name__ == "__main__":
    main()
