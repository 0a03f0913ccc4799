"""The event hub: one Redis pub/sub connection per web process, fanned out to streams."""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

import redis.asyncio as redis_asyncio
from django.conf import settings
from redis import RedisError

from taskqueue.conf import conf

logger = logging.getLogger(__name__)


class EventHub:
    """One Redis pub/sub connection per web process, fanned out to the waiting streams.

    A stream registers a queue for its task's channel; the hub's single listener puts each
    message into the queues of that channel. After a reconnection every stream gets a
    `resync` item, since messages published meanwhile are lost.
    """

    RESYNC = b"resync"
    EVERYTHING = "*"  # subscribe to this to get every task's messages

    def __init__(self) -> None:
        self.queues: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self.ready = asyncio.Event()
        self.listener: asyncio.Task | None = None

    def _start(self) -> None:
        if self.listener is None or self.listener.done():
            self.listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        from taskqueue.events import CHANNEL_PREFIX

        delay = 0.5
        while True:
            client = redis_asyncio.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=conf.REDIS_CONNECT_TIMEOUT
            )
            try:
                pubsub = client.pubsub()
                await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                self.ready.set()
                self._broadcast(self.RESYNC)
                delay = 0.5
                async for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        channel = message["channel"].decode()
                        for name in (channel, self.EVERYTHING):
                            for queue in list(self.queues.get(name, ())):
                                queue.put_nowait(message["data"])
            except (RedisError, OSError) as exc:
                logger.warning("Event hub lost Redis (%s); reconnecting in %.1fs", exc, delay)
            finally:
                self.ready.clear()
                await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    def _broadcast(self, item: bytes) -> None:
        for queues in self.queues.values():
            for queue in queues:
                queue.put_nowait(item)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, *, timeout: float = 5) -> AsyncIterator[asyncio.Queue]:
        """A queue of the channel's messages; raises TimeoutError if Redis is unreachable."""
        self._start()
        await asyncio.wait_for(self.ready.wait(), timeout)
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[channel].add(queue)
        try:
            yield queue
        finally:
            self.queues[channel].discard(queue)
            if not self.queues[channel]:
                del self.queues[channel]


_hubs: dict[int, EventHub] = {}


def event_hub() -> EventHub:
    """The hub of the running event loop (one per loop, so per web process)."""
    loop = asyncio.get_running_loop()
    return _hubs.setdefault(id(loop), EventHub())
