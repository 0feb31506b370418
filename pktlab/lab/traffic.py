"""Bounded traffic programs run inside lab hosts.

Each program is started as ``python -P .../pktlab/lab/traffic.py KIND ...``
in a namespace (a file run alone: it imports only the standard library, and
scapy for DNS, so it starts without importing pktlab), is bounded by a count
and a time limit, and prints one JSON line with what it did.  Receivers print ``ready`` first so the caller can
start the sender only once the socket is bound.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

SEQ = struct.Struct("!I")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; named in the socket module from Python 3.12


def _ready() -> None:
    print("ready", flush=True)


def socket_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this UDP socket (its buffer was full): the ``drops`` column of /proc/net/udp."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] == inode:
                    return int(cols[-1])
    return 0


UDP_SEGMENT = 103  # <linux/udp.h>: the socket's sends become GSO packets cut into datagrams of this size


def udp_send(dst: str, port: int, count: int, size: int, rate: float, timeout: float, segment: int = 0) -> dict:
    """Send ``count`` numbered datagrams of ``size`` bytes at ``rate``/s (0: unpaced).

    ``segment``: each send is one GSO packet of ``size`` bytes that the kernel cuts into datagrams
    of ``segment`` bytes (UDP_SEGMENT) as late as it can; every one of them starts with its own
    number (send ``seq`` carries ``seq * n`` .. ``seq * n + n - 1`` for ``n`` segments).
    """
    size = max(size, SEQ.size)
    pad = bytes(size - SEQ.size)
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if segment:
        sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, segment)
        sizes = [min(segment, size - at) for at in range(0, size, segment)]
        pads = [bytes(max(0, n - SEQ.size)) for n in sizes]
    start = time.monotonic()
    deadline = start + timeout
    sent = errors = 0
    # the clock is read every 32 datagrams, so a fast flow costs few system calls; a slow one (up to 2,000/s) is
    # paced datagram by datagram, as a policer or shaper on its path expects a steady flow
    batch = 1 if 0 < rate <= 2000 else 32
    for seq in range(count):
        try:
            if segment:
                base = seq * len(sizes)
                sock.sendto(b"".join(SEQ.pack(base + i) + p for i, p in enumerate(pads)), (dst, port))
            else:
                sock.sendto(SEQ.pack(seq) + pad, (dst, port))
            sent += 1
        except OSError:
            errors += 1
        if seq % batch == batch - 1:
            now = time.monotonic()
            if now > deadline:
                break
            if rate > 0:
                ahead = (seq + 1) / rate - (now - start)
                if ahead > 0:
                    time.sleep(ahead)
    return {"sent": sent, "errors": errors, "seconds": time.monotonic() - start}


def udp_recv(port: int, count: int, timeout: float, idle: float, keep: int, bind: str) -> dict:
    """Receive numbered datagrams until ``count`` arrived or ``timeout``.

    It also stops ``idle`` seconds after the last datagram, and ``idle``
    seconds after its standard input closes (the caller closes it once the
    sender is done, so a flow that is entirely dropped ends quickly too).
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:  # as root, past net.core.rmem_max: a receiver that falls behind for a moment loses nothing
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((bind, port))
    sock.setblocking(False)
    _ready()
    start = time.monotonic()
    end = start + timeout
    watch = [sock, sys.stdin]
    seen: set[int] = set()
    received = duplicates = 0
    kept: list[str] = []
    first = last = None
    max_gap = 0.0
    while received < count:
        now = time.monotonic()
        limit = end if last is None else min(end, last + idle)
        if now >= limit:
            break
        readable, _, _ = select.select(watch, [], [], limit - now)
        if sys.stdin in readable and not sys.stdin.readline():
            watch = [sock]
            end = min(end, time.monotonic() + idle)
        if sock not in readable:
            continue
        while received < count:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            now = time.monotonic()
            if last is not None and now - last > max_gap:
                max_gap = now - last
            last = now
            if first is None:
                first = last
            received += 1
            if len(data) >= SEQ.size:
                seq = SEQ.unpack_from(data)[0]
                if seq in seen:
                    duplicates += 1
                seen.add(seq)
            if len(kept) < keep:
                kept.append(data.hex())
    drops = socket_drops(sock)
    missing: list[int] = []
    seq = 0
    while len(missing) < 100 and seq < count and len(missing) < count - len(seen):
        if seq not in seen:
            missing.append(seq)
        seq += 1
    return {
        "received": received,
        "unique": len(seen),
        "duplicates": duplicates,
        "missing": missing,
        "missing_count": count - len(seen),
        "payloads": kept,
        "seconds": (last or start) - (first or start),
        "max_gap": max_gap,
        "socket_drops": drops,
    }


def tcp_send(dst: str, port: int, nbytes: int, timeout: float) -> dict:
    """Connect and send ``nbytes`` bytes, then close."""
    start = time.monotonic()
    with socket.create_connection((dst, port), timeout=timeout) as sock:
        chunk = bytes(65536)
        left = nbytes
        while left > 0:
            n = sock.send(chunk[: min(left, len(chunk))])
            left -= n
            if time.monotonic() - start > timeout:
                break
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    return {"sent": nbytes - left, "seconds": time.monotonic() - start}


def tcp_recv(port: int, timeout: float, bind: str) -> dict:
    """Accept one connection and count the bytes until it closes."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(1)
    srv.settimeout(timeout)
    _ready()
    start = time.monotonic()
    total = 0
    try:
        conn, peer = srv.accept()
    except TimeoutError:
        return {"received": 0, "seconds": 0.0, "timeout": True, "peer": None}
    with conn:
        conn.settimeout(max(0.1, timeout - (time.monotonic() - start)))
        try:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                total += len(data)
        except TimeoutError:
            return {"received": total, "seconds": time.monotonic() - start, "timeout": True, "peer": peer[0]}
    return {"received": total, "seconds": time.monotonic() - start, "timeout": False, "peer": peer[0]}


def dns_serve(answer: str, count: int, timeout: float, port: int) -> dict:
    """Answer up to ``count`` DNS queries (A records of ``answer`` for any name), then stop."""
    from scapy.layers.dns import DNS, DNSRR

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(timeout)
    _ready()
    answered = queries = 0
    peers: list[str] = []  # the addresses queries came from (a NAT's, say), each once
    while answered < count:
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            break
        queries += 1
        if peer[0] not in peers:
            peers.append(peer[0])
        q = DNS(data)
        if q.qr != 0 or not q.qd:
            continue
        name = q.qd[0].qname
        reply = DNS(
            id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd, an=[DNSRR(rrname=name, type="A", ttl=60, rdata=answer)]
        )
        sock.sendto(bytes(reply), peer)
        answered += 1
    return {"answered": answered, "queries": queries, "peers": peers}


def dns_query(server: str, name: str, timeout: float, port: int) -> dict:
    """Send one A query to ``server`` and report the answer and who it came from."""
    import random

    from scapy.layers.dns import DNS, DNSQR

    qid = random.randrange(1, 65535)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.sendto(bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name))), (server, port))
    try:
        data, peer = sock.recvfrom(4096)
    except TimeoutError:
        return {"answered": False}
    r = DNS(data)
    addrs = [rr.rdata for rr in (r.an or []) if rr.type == 1]
    return {"answered": True, "from": peer[0], "id_ok": r.id == qid, "rcode": int(r.rcode), "addresses": addrs}


TFTP_BLOCK = 512


def tftp_content(size: int) -> bytes:
    """The file a lab TFTP server serves: ``size`` deterministic bytes."""
    return bytes((i * 7 + 3) % 251 for i in range(size))


def tftp_serve(size: int, timeout: float, port: int) -> dict:
    """Serve one read request (RFC 1350, octet mode) of a ``size``-byte file, then stop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    _ready()
    # a request, or the caller closing our stdin (its reader is done: nothing is coming)
    readable, _, _ = select.select([sock, sys.stdin], [], [], timeout)
    if sock not in readable:
        return {"served": False, "reason": "no request"}
    req, peer = sock.recvfrom(1024)
    if req[:2] != b"\x00\x01":
        return {"served": False, "reason": f"opcode {req[:2].hex()} is not a read request"}
    filename = req[2:].split(b"\x00")[0].decode(errors="replace")
    data = tftp_content(size)
    xfer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new transfer id (port), as RFC 1350 says
    xfer.bind(("0.0.0.0", 0))
    xfer.settimeout(1.0)
    block, sent, deadline = 1, 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = data[(block - 1) * TFTP_BLOCK : block * TFTP_BLOCK]
        xfer.sendto(struct.pack("!HH", 3, block) + chunk, peer)
        try:
            ack, _ = xfer.recvfrom(1024)
        except TimeoutError:
            continue  # resend the block
        if ack[:2] == b"\x00\x04" and struct.unpack("!H", ack[2:4])[0] == block:
            sent += len(chunk)
            if len(chunk) < TFTP_BLOCK:
                return {"served": True, "file": filename, "bytes": sent, "blocks": block}
            block += 1
    return {"served": False, "reason": "timeout", "bytes": sent}


def tftp_get(server: str, filename: str, timeout: float, port: int) -> dict:
    """Read ``filename`` from a TFTP server (octet mode) and report what arrived."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    sock.sendto(b"\x00\x01" + filename.encode() + b"\x00octet\x00", (server, port))
    got = bytearray()
    expect = 1
    while True:
        try:
            pkt, peer = sock.recvfrom(TFTP_BLOCK + 4)
        except TimeoutError:
            return {"complete": False, "bytes": len(got), "seconds": time.monotonic() - start}
        op, block = struct.unpack("!HH", pkt[:4])
        if op != 3:
            return {"complete": False, "bytes": len(got), "opcode": op}
        if block == expect:
            got += pkt[4:]
            expect += 1
        sock.sendto(struct.pack("!HH", 4, block), peer)
        if len(pkt) - 4 < TFTP_BLOCK:
            break
    return {"complete": True, "bytes": len(got), "ok": bytes(got) == tftp_content(len(got)),
            "seconds": time.monotonic() - start, "from": list(peer)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pktlab.lab.traffic")
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("udp-send")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, default=9000)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--rate", type=float, default=0.0)
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--segment", type=int, default=0)
    r = sub.add_parser("udp-recv")
    r.add_argument("--port", type=int, default=9000)
    r.add_argument("--count", type=int, default=10)
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument("--idle", type=float, default=1.0)
    r.add_argument("--keep", type=int, default=0)
    r.add_argument("--bind", default="0.0.0.0")
    t = sub.add_parser("tcp-send")
    t.add_argument("--dst", required=True)
    t.add_argument("--port", type=int, default=9001)
    t.add_argument("--bytes", type=int, default=1 << 20)
    t.add_argument("--timeout", type=float, default=30.0)
    u = sub.add_parser("tcp-recv")
    u.add_argument("--port", type=int, default=9001)
    u.add_argument("--timeout", type=float, default=30.0)
    u.add_argument("--bind", default="0.0.0.0")
    ds = sub.add_parser("dns-serve")
    ds.add_argument("--answer", required=True)
    ds.add_argument("--count", type=int, default=1)
    ds.add_argument("--timeout", type=float, default=10.0)
    ds.add_argument("--port", type=int, default=53)
    dq = sub.add_parser("dns-query")
    dq.add_argument("--server", required=True)
    dq.add_argument("--name", required=True)
    dq.add_argument("--timeout", type=float, default=10.0)
    dq.add_argument("--port", type=int, default=53)
    ts = sub.add_parser("tftp-serve")
    ts.add_argument("--size", type=int, default=1300)
    ts.add_argument("--timeout", type=float, default=10.0)
    ts.add_argument("--port", type=int, default=69)
    tg = sub.add_parser("tftp-get")
    tg.add_argument("--server", required=True)
    tg.add_argument("--file", default="lab.bin")
    tg.add_argument("--timeout", type=float, default=10.0)
    tg.add_argument("--port", type=int, default=69)
    a = p.parse_args(argv)
    try:
        out = _run(a)
    except OSError as exc:  # one line the caller shows, not a traceback cut at 300 characters
        where = f" (port {a.port})" if hasattr(a, "port") else ""
        hint = "; a flow from an earlier, interrupted cell may still hold it" if exc.errno == 98 else ""
        print(f"pktlab.lab.traffic {a.kind}{where}: {exc.strerror or exc}{hint}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(out), flush=True)
    return 0


def _run(a: argparse.Namespace) -> dict:
    if a.kind == "tftp-serve":
        out = tftp_serve(a.size, a.timeout, a.port)
    elif a.kind == "tftp-get":
        out = tftp_get(a.server, a.file, a.timeout, a.port)
    elif a.kind == "dns-serve":
        out = dns_serve(a.answer, a.count, a.timeout, a.port)
    elif a.kind == "dns-query":
        out = dns_query(a.server, a.name, a.timeout, a.port)
    elif a.kind == "udp-send":
        out = udp_send(a.dst, a.port, a.count, a.size, a.rate, a.timeout, a.segment)
    elif a.kind == "udp-recv":
        out = udp_recv(a.port, a.count, a.timeout, a.idle, a.keep, a.bind)
    elif a.kind == "tcp-send":
        out = tcp_send(a.dst, a.port, a.bytes, a.timeout)
    else:
        out = tcp_recv(a.port, a.timeout, a.bind)
    return out


if __name__ == "__main__":
    sys.exit(main())
