"""Run one maintenance operation in a fresh process; print its time and peak memory."""

import json
import resource
import sys
import time

import django


def main() -> None:
    django.setup()
    from maintenance import operations

    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    started = time.perf_counter()
    result = getattr(operations, name)(**kwargs)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {k: v for k, v in result.items() if isinstance(v, int | float)}
    print(json.dumps({"seconds": round(elapsed, 3), "peak_rss_mib": round(peak, 1), **summary}))


if __name__ == "__main__":
    main()
