"""Server-Sent Events: a task's state on every change, until it is terminal; every task's.

An async view: a waiting client holds no thread and no database connection, only a queue
fed by the process's single Redis pub/sub listener (backend.EventHub). The database is
read at the start and after a Redis reconnection, in a pooled thread, connection closed.

Every event has an `id:`, increasing along a stream and never below the time (microseconds
since the epoch) of the change it carries. Pub/sub keeps nothing, so a client that comes
back with `Last-Event-ID` is resumed from the database, the truth: the task's state now
(a task's stream), or the state of every task changed since that time, less
RESUME_SLACK_SECONDS (the global stream); or, if that is too much, a `resync` event.
"""

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.core.handlers.asgi import ASGIRequest
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from taskqueue import backend, events
from taskqueue.api.authentication import CachedTokenAuthentication
from taskqueue.api.event_ids import (
    EventIds,
    changed_since,
    last_event_id,
    now_version,
    version_of,
)
from taskqueue.models import MAX_ID, Task

KEEPALIVE_SECONDS = 15


def _error(status: int, code: str, detail: str) -> JsonResponse:
    response = JsonResponse({"detail": detail, "code": code}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Token"
    return response


def _authorize(request: HttpRequest, task_id: int | None) -> JsonResponse | None:
    """None when the caller may read this task's events, else the error to answer."""
    try:
        if not hasattr(request, "user"):  # reached without Django's middleware (ASGI route)
            request.session = import_module(settings.SESSION_ENGINE).SessionStore(
                request.COOKIES.get(settings.SESSION_COOKIE_NAME)
            )
            request.user = get_user(request)
        drf_request = Request(
            request, authenticators=[CachedTokenAuthentication(), SessionAuthentication()]
        )
        try:
            user = drf_request.user
        except AuthenticationFailed as exc:
            return _error(401, "authentication_failed", str(exc.detail))
        if not user.is_authenticated:
            return _error(401, "not_authenticated", "Authentication credentials were not provided.")
        if not (user.is_staff and user.has_perm("taskqueue.view_task")):
            return _error(
                403, "permission_denied", "You do not have permission to perform this action."
            )
        if task_id is not None and (
            task_id > MAX_ID or not Task.objects.filter(pk=task_id).exists()
        ):
            return _error(404, "not_found", "Not found.")
        return None
    finally:
        connections.close_all()  # this pooled thread keeps no connection for the stream


def _snapshot(task_id: int) -> dict[str, Any] | None:
    try:
        task = Task.objects.filter(pk=task_id).first()
        return events.snapshot(task) if task else None
    finally:
        connections.close_all()


def _frame(data: dict[str, Any], ids: EventIds, raw: str | None = None) -> str:
    """An `event: task` with its id; `raw` is `data` as published, sent as it is."""
    body = raw if raw is not None else json.dumps(data, cls=DjangoJSONEncoder)
    return f"id: {ids.next(version_of(data))}\nevent: task\ndata: {body}\n\n"


def _resync(ids: EventIds) -> str:
    """Events were lost: the client re-reads what it shows (the dashboard refreshes)."""
    return f"id: {ids.next(now_version())}\nevent: resync\ndata: {{}}\n\n"


async def _subscribe(
    request: HttpRequest, task_id: int | None, channel: str
) -> tuple[HttpResponse | None, Any]:
    """(an error response, None) or (None, the open subscription's context and queue)."""
    refused = await sync_to_async(_authorize, thread_sensitive=False)(request, task_id)
    if refused is not None:
        return refused, None
    subscription = backend.event_hub().subscribe(channel)
    try:
        queue = await subscription.__aenter__()
    except TimeoutError:
        return _error(503, "queue_unavailable", "Live events are unavailable; poll instead."), None
    return None, (subscription, queue)


async def _items(queue: asyncio.Queue) -> AsyncIterator[bytes | None]:
    """The queue's items as they come, and None after each KEEPALIVE_SECONDS of silence."""
    while True:
        try:
            yield await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
        except TimeoutError:
            yield None


async def task_events(request: HttpRequest, pk: int) -> HttpResponse:
    """GET …/tasks/{id}/events: `event: task` frames with status, attempts, progress."""
    refused, opened = await _subscribe(request, pk, events.channel(pk))
    if refused is not None:
        return refused
    subscription, queue = opened
    ids = EventIds(last_event_id(request) or 0)

    async def stream() -> AsyncIterator[str]:
        try:
            snapshot = await sync_to_async(_snapshot, thread_sensitive=False)(pk)
            yield "retry: 3000\n\n"
            if snapshot is None:
                return
            yield _frame(snapshot, ids)  # the state now: what a resuming client missed
            if snapshot["status"] in events.TERMINAL:
                return
            async for item in _items(queue):
                if item is None:
                    yield ": keep-alive\n\n"
                    continue
                if item == backend.EventHub.RESYNC:
                    snapshot = await sync_to_async(_snapshot, thread_sensitive=False)(pk)
                else:
                    snapshot = json.loads(item)
                if snapshot is None:
                    return
                yield _frame(snapshot, ids)
                if snapshot["status"] in events.TERMINAL:
                    return
        finally:
            await subscription.__aexit__(None, None, None)

    return _streaming(stream())


async def all_events(request: HttpRequest) -> HttpResponse:
    """GET …/events: an `event: task` frame for every task created and every change of any
    task (the dashboard); with `Last-Event-ID`, first what changed since."""
    refused, opened = await _subscribe(request, None, backend.EventHub.EVERYTHING)
    if refused is not None:
        return refused
    subscription, queue = opened
    last = last_event_id(request)
    ids = EventIds(last or 0)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n\n"
            if last is not None:  # subscribed first: nothing falls between replay and live
                replay = await sync_to_async(changed_since, thread_sensitive=False)(last)
                if replay is None:
                    yield _resync(ids)
                for snapshot in replay or ():
                    yield _frame(snapshot, ids)
            async for item in _items(queue):
                if item is None:
                    yield ": keep-alive\n\n"
                elif item == backend.EventHub.RESYNC:
                    yield _resync(ids)
                else:
                    yield _frame(json.loads(item), ids, item.decode())
        finally:
            await subscription.__aexit__(None, None, None)

    return _streaming(stream())


def _streaming(body: AsyncIterator[str]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response.events = body  # closed by the ASGI route when the client goes away
    return response


EVENTS_PATH = re.compile(r"/api/system/maintenance/(?:tasks/([0-9]{1,19})/)?events")


def route_events(django_app: Any) -> Any:
    """An ASGI app serving the event streams itself and everything else with `django_app`.

    Django's ASGI handler gives every request a thread-sensitive context whose thread lives
    as long as the request; for a stream that lasts minutes that is a thread per client.
    Served here, a waiting client costs a coroutine and a queue.
    """

    async def application(scope: dict, receive: Any, send: Any) -> None:
        match = EVENTS_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") != "GET":
            await django_app(scope, receive, send)
            return
        task_id = int(match.group(1)) if match.group(1) else None
        request = ASGIRequest(scope, io.BytesIO())
        if task_id is None:
            response = await all_events(request)
        else:
            response = await task_events(request, task_id)
        await _send(response, receive, send)

    return application


async def _send(response: HttpResponse, receive: Any, send: Any) -> None:
    headers = [(b"content-type", response["Content-Type"].encode())]
    headers += [
        (k.lower().encode(), v.encode()) for k, v in response.items() if k != "Content-Type"
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if not isinstance(response, StreamingHttpResponse):
        await send({"type": "http.response.body", "body": response.content})
        return

    async def pump() -> None:
        async for chunk in response.streaming_content:
            body = chunk if isinstance(chunk, bytes) else chunk.encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(disconnected())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await response.events.aclose()
