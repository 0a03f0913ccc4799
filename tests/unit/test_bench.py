"""The benchmark's own arithmetic and report (the runs themselves are `make bench`)."""

import json

import pytest

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


def test_the_bench_can_put_its_redis_on_loopback_tcp(tmp_path) -> None:
    """`bench/run.py --tcp`: its Redis on a loopback port, so that PostgreSQL and Redis are
    reached the same way (a real redis-server, stopped after)."""
    import redis

    from scripts.embedded_redis import embedded_redis

    with embedded_redis(tmp_path / "redis", tcp=True) as url:
        assert url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    with pytest.raises(redis.ConnectionError):  # stopped with the block
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_the_results_say_how_the_servers_were_reached() -> None:
    bench = Bench.__new__(Bench)
    bench.env = {"DATABASE_URL": "postgres://postgres@%2Fvar%2Frun%2Fpostgresql/b",
                 "REDIS_URL": "unix:///tmp/r.sock"}  # fmt: skip
    assert bench.servers() == "PostgreSQL on a unix socket, Redis on a unix socket"
    bench.env = {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/b",
                 "REDIS_URL": "redis://127.0.0.1:4100/0"}  # fmt: skip
    assert bench.servers() == "PostgreSQL on loopback TCP, Redis on loopback TCP"
