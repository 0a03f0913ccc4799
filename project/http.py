"""uvicorn's HTTP protocol (httptools) with TCP_NODELAY on every connection.

With `--workers N`, uvicorn binds its listening socket itself with protocol 0, and asyncio
only disables Nagle's algorithm on sockets whose protocol is IPPROTO_TCP: each response
written in two parts (headers, then body) then waits for the client's delayed ACK, about
40 ms on Linux (measured: p50 13 ms with one worker, 60 ms with two). Setting the option
on each accepted connection removes the stall. `make run`, the tests and `make bench`
serve with `--http project.http:NoDelayHttpToolsProtocol --loop uvloop`.
"""

import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What every launcher passes to uvicorn.
UVICORN_OPTIONS = ["--http", "project.http:NoDelayHttpToolsProtocol", "--loop", "uvloop"]


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
