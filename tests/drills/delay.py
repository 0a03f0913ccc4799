"""Added latency without netem: hold each packet of a netfilter queue, then accept it.

    ip netns exec NS python tests/drills/delay.py --queue 7 --delay 5 --jitter 2

This kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so the drill delays packets
itself: iptables rules in a host's namespace send every packet crossing its veth (both
directions) to NFQUEUE `--queue`; this process, bound to that queue in the same namespace,
gives each packet its verdict (ACCEPT) `delay` ± `jitter` ms (uniform) after it arrived.
The packets stay in the kernel (only their metadata is copied here) and are released in
their own time, so, as with netem's jitter, packets may be reordered. The rules use
`--queue-bypass`: if this process is not running, packets pass undelayed instead of being
dropped.

It speaks nfnetlink_queue directly (no libnetfilter_queue): bind, set copy-meta mode and a
queue length, then read packet messages and send verdicts.
"""

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQA_CFG_F_FAIL_OPEN = 1
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")
NFGEN_HDR = struct.Struct("!BBH")


def _attribute(kind: int, data: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(data), kind)
    return header + data + b"\0" * (-len(data) % 4)


def _message(kind: int, queue: int, attributes: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = NFGEN_HDR.pack(socket.AF_UNSPEC, 0, queue) + attributes
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind,
                          flags, 0, 0) + body  # fmt: skip


def _configure(sock: socket.socket, queue: int, attributes: bytes) -> None:
    sock.send(_message(NFQNL_MSG_CONFIG, queue, attributes, NLM_F_REQUEST | NLM_F_ACK))
    reply = sock.recv(65536)
    kind = NLMSG_HDR.unpack_from(reply)[1]
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, NLMSG_HDR.size)
        if error:
            raise OSError(-error, f"nfqueue config: {os.strerror(-error)}")


def open_queue(queue: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind((0, 0))
    _configure(sock, queue, _attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
    _configure(sock, queue, _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
    _configure(sock, queue, _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536)))
    flags = struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)  # a full queue passes packets, never drops
    _configure(sock, queue, _attribute(NFQA_CFG_MASK, flags) + _attribute(NFQA_CFG_FLAGS, flags))
    return sock


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one datagram."""
    ids, offset = [], 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind = NLMSG_HDR.unpack_from(data, offset)[:2]
        if length < NLMSG_HDR.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + NLMSG_HDR.size + NFGEN_HDR.size
            while at + 4 <= offset + length:
                size, attr = struct.unpack_from("=HH", data, at)
                if attr & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                    break
                at += max(4, (size + 3) & ~3)
        offset += (length + 3) & ~3
    return ids


def serve(queue: int, delay: float, jitter: float) -> None:
    sock = open_queue(queue)
    sock.setblocking(False)
    held: list[tuple[float, int]] = []  # (release at, packet id)
    print(f"delay: queue {queue} bound, {delay * 1000:.1f} ± {jitter * 1000:.1f} ms", flush=True)
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet = heapq.heappop(held)
            verdict = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet))
            sock.send(_message(NFQNL_MSG_VERDICT, queue, verdict))
        timeout = max(0.0, held[0][0] - now) if held else 1.0
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            continue
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: the kernel dropped messages; fail-open covers them
                break
            arrived = time.monotonic()
            for packet in _packet_ids(data):
                wait = max(0.0, random.uniform(delay - jitter, delay + jitter))
                heapq.heappush(held, (arrived + wait, packet))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, default=5.0, help="ms")
    parser.add_argument("--jitter", type=float, default=2.0, help="ms (uniform ±)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.queue, args.delay / 1000, args.jitter / 1000)


if __name__ == "__main__":
    main()
