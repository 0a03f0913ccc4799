"""A TCP proxy on loopback that a test can cut, to make a server unreachable for a while, or
have lose one reply of PostgreSQL's (a statement that committed while its client was told
nothing: an ambiguous commit)."""

import contextlib
import socket
import threading


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a server; cut() drops every connection and refuses new."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.stopped = threading.Event()
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.marker: bytes | None = None  # lose_reply_to(): what the statement carries
        self.armed: socket.socket | None = None  # the client connection that sent it
        self.reply_lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, client), daemon=True
                ).start()

    # PostgreSQL's ReadyForQuery, idle: whatever the client sent before it is committed.
    IDLE = b"Z\x00\x00\x00\x05I"

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                with self.lock:
                    if source is client and self.marker and self.marker in data:
                        self.marker, self.armed = None, client
                    lose = source is not client and self.armed is client and self.IDLE in data
                    if lose:
                        self.armed = None
                if lose:  # the server has committed and answered: the answer goes nowhere
                    self.reply_lost.set()
                    break
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
            self.sockets.clear()

    def lose_reply_to(self, marker: bytes) -> None:
        """The next statement whose message carries `marker` runs and commits, and then its
        connection is closed before the client reads the reply (once)."""
        with self.lock:
            self.marker = marker

    def restore(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.stopped.set()
        self.cut()
        self.listener.close()
