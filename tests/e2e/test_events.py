"""Server-Sent Events over real HTTP, a real worker, and many idle clients."""

import http.client
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import psutil
import pytest
from django.conf import settings
from django.db import connection
from rest_framework.authtoken.models import Token

from taskqueue.models import Task
from taskqueue.services import enqueue_task
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BASE = "/api/system/maintenance"


@pytest.fixture
def token(django_user_model, redis_db) -> str:
    user = django_user_model.objects.create_superuser("watcher", password="x")
    return Token.objects.create(user=user).key


def open_stream(
    url: str, path: str, token: str | None, accept: str = "text/event-stream", **extra: str
) -> http.client.HTTPResponse:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    headers = {"Accept": accept, **{k.replace("_", "-"): v for k, v in extra.items()}}
    if token:
        headers["Authorization"] = f"Token {token}"
    conn.request("GET", path, headers=headers)
    return conn.getresponse()


def frames(response: http.client.HTTPResponse):
    """Yield the JSON of each `event: task` frame."""
    event = None
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "task":
            yield json.loads(line[6:])


@dataclass
class Event:
    id: int | None
    event: str
    data: dict


def events_of(response: http.client.HTTPResponse, *, within: float = 30):
    """Yield every event of the stream (keep-alives skipped); fail after `within` seconds."""
    deadline = time.monotonic() + within
    fields: dict[str, str] = {}
    for raw in response:
        assert time.monotonic() < deadline, "the stream did not say it in time"
        line = raw.decode().rstrip("\n")
        if line == "":
            if "event" in fields:
                event_id = int(fields["id"]) if "id" in fields else None
                yield Event(event_id, fields["event"], json.loads(fields.get("data", "{}")))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_task_is_streamed_from_queued_to_completed(live_server_url, token, worker_process):
    task, _ = enqueue_task("diagnostic", {"action": "progress", "seconds": 1.5})
    response = open_stream(live_server_url, f"{BASE}/tasks/{task.pk}/events", token)
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    seen = []
    worker_process()
    for frame in frames(response):
        seen.append(frame)
        if frame["status"] == "completed":
            break
    statuses = [f["status"] for f in seen]
    assert statuses[0] == "queued" and statuses[-1] == "completed"
    assert "leased" in statuses
    assert any(f["progress"] == 50 and f["progress_message"] == "half-way" for f in seen)
    assert response.read().strip() == b""  # the stream ends once the task is terminal


def test_progress_is_visible_mid_task_through_the_api(live_server_url, token, worker_process):
    task, _ = enqueue_task("diagnostic", {"action": "progress", "seconds": 3})
    worker_process()
    wait_for(lambda: Task.objects.get(pk=task.pk).progress == 50, timeout=30)
    response = open_stream(live_server_url, f"{BASE}/tasks/{task.pk}", token, "application/json")
    body = json.loads(response.read())
    assert (body["status"], body["progress"], body["progress_message"]) == (
        "leased",
        50,
        "half-way",
    )


def test_the_stream_is_authenticated_and_permission_checked(
    live_server_url, token, django_user_model
):
    task, _ = enqueue_task("ping")
    assert open_stream(live_server_url, f"{BASE}/tasks/{task.pk}/events", None).status == 401
    assert open_stream(live_server_url, f"{BASE}/tasks/999999/events", token).status == 404
    outsider = django_user_model.objects.create_user("outsider", password="x")
    other = Token.objects.create(user=outsider).key
    assert open_stream(live_server_url, f"{BASE}/tasks/{task.pk}/events", other).status == 403


def _server_connections(process: psutil.Process) -> int:
    """The database connections the server process holds."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                           " AND datname = current_database()")  # fmt: skip
            return cursor.fetchone()[0]
    name = str(connection.settings_dict["NAME"])
    return sum(1 for f in process.open_files() if f.path.startswith(name))


def test_two_hundred_idle_clients_hold_no_thread_and_no_database_connection(
    web_server, token, capsys
):
    url, server = web_server
    process = psutil.Process(server.pid)
    task, _ = enqueue_task("ping")  # no worker: it stays queued, the streams stay open
    parsed = urlparse(url)
    request = (
        f"GET {BASE}/tasks/{task.pk}/events HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f"Authorization: Token {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    threads_before, rss_before = process.num_threads(), process.memory_info().rss
    clients = []
    try:
        for _ in range(200):
            sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
            sock.sendall(request)
            clients.append(sock)
        for sock in clients:  # every stream has answered with its first frame
            received = b""
            while b"event: task" not in received:
                received += sock.recv(4096)
            assert b" 200 OK" in received
        time.sleep(0.5)
        threads, rss = process.num_threads(), process.memory_info().rss
        held = _server_connections(process)
        with capsys.disabled():
            print(
                f"\n200 idle SSE clients: server threads {threads_before} -> {threads}, "
                f"RSS {rss_before / 2**20:.1f} -> {rss / 2**20:.1f} MiB "
                f"({(rss - rss_before) / 200 / 1024:.1f} KiB per client), "
                f"database connections held by the server: {held}"
            )
        assert threads <= threads_before + 8  # the thread pool may grow, not one per client
        assert held <= settings.WEB_THREADS + 4  # at most the web's pool, idle; none per client
    finally:
        for sock in clients:
            sock.close()


def test_the_global_stream_announces_new_tasks_and_numbers_every_event(
    live_server_url, token, worker_process
):
    response = open_stream(live_server_url, f"{BASE}/events", token)
    assert response.status == 200
    stream = events_of(response)
    task, _ = enqueue_task("ping")  # created with no worker running: only its creation says
    created = next(stream)
    assert (created.event, created.data["task_id"], created.data["status"]) == (
        "task",
        task.pk,
        "queued",
    )
    assert (created.data["task_type"], created.data["attempts"]) == ("ping", 0)
    worker_process()
    seen = [created]
    for event in stream:
        seen.append(event)
        if event.data.get("task_id") == task.pk and event.data["status"] == "completed":
            break
    assert [e.data["status"] for e in seen] == ["queued", "leased", "completed"]
    ids = [e.id for e in seen]
    assert None not in ids and ids == sorted(set(ids))
    updated = Task.objects.get(pk=task.pk).updated_at  # an id is the change's time in µs
    assert ids[-1] >= int(updated.timestamp() * 1_000_000) - 1000


def test_a_client_coming_back_with_last_event_id_gets_what_it_missed(live_server_url, token):
    first = open_stream(live_server_url, f"{BASE}/events", token)
    stream = events_of(first)
    seen, _ = enqueue_task("ping")
    last = next(stream)
    assert last.data["task_id"] == seen.pk
    first.close()
    missed, _ = enqueue_task("ping")  # while the client was away: created, and cancelled
    cancelled, _ = enqueue_task("ping")
    cancelled.cancel()

    again = open_stream(live_server_url, f"{BASE}/events", token, Last_Event_ID=str(last.id))
    replay = {}
    ids = []
    for event in events_of(again):
        replay[event.data["task_id"]] = event.data["status"]
        ids.append(event.id)
        if replay.get(missed.pk) == "queued" and replay.get(cancelled.pk) == "cancelled":
            break
    assert ids == sorted(set(ids)) and ids[0] > last.id

    # From too long ago (or with a number that is no id), the client is told to resync.
    old = open_stream(live_server_url, f"{BASE}/events", token, Last_Event_ID="1")
    assert next(events_of(old)).event == "resync"


def test_a_task_stream_resumes_with_the_state_now_and_rounds_progress(live_server_url, token):
    task = Task.objects.create(task_type="ping", status="queued")
    task.lease(dispatch=0, worker_name="w1")
    task.report_progress(attempt=1, percent=100 / 3, message="a third")
    path = f"{BASE}/tasks/{task.pk}/events"
    response = open_stream(live_server_url, path, token, Last_Event_ID="5")
    stream = events_of(response)
    now = next(stream)
    assert (now.data["status"], now.data["progress"]) == ("leased", 33.3)
    assert now.id > 5
    task.report_progress(attempt=1, percent=200 / 3, message="two thirds")
    later = next(stream)
    assert (later.data["progress"], later.data["progress_message"]) == (66.7, "two thirds")
    assert later.id > now.id
