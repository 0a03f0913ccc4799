"""The benchmark's own arithmetic and report (the runs themselves are `make bench`)."""

import json

from bench.run import RESULTS, Bench, markdown


def test_the_committed_markdown_is_what_the_committed_json_renders_to() -> None:
    results = json.loads((RESULTS / "latest.json").read_text())
    rendered = markdown(results)
    assert rendered == (RESULTS / "latest.md").read_text()
    assert "p99 vs bare view" in rendered and "Per task: CPU ms" in rendered
    assert "Celery prefork + django-celery-results" in rendered and "Hard limits" in rendered


def test_cpu_per_task_leaves_out_server_processes_that_came_or_went() -> None:
    before = {"cpu_bench_ms": 1.0, "cpu_workers_ms": 2.0, "postgres": {10: 5.0, 11: 9.0}}
    after = {"cpu_bench_ms": 1.5, "cpu_workers_ms": 4.0, "postgres": {10: 6.0, 12: 0.5}}
    costs = Bench.cpu_per_task(before, after, count=1000)
    # seconds → ms per task: only pid 10 was there at both ends
    assert costs == {
        "cpu_bench_ms": 0.5,
        "cpu_workers_ms": 2.0,
        "cpu_postgres_ms": 1.0,
        "cpu_redis_ms": 0.0,
    }
