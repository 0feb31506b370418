"""Capture the datasets in datasets/ from real lab traffic, and write their manifest.

Run as root: `.venv/bin/python scripts/make_datasets.py`.  Each capture is what a
pktlab session saw at the server's INPUT hook (raw IP, whole packets).  Packet
timings, ports chosen by the kernel, TCP sequence numbers and checksums differ
from one run to the next; the kinds and counts of packets do not.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pktlab

OUT = Path(os.environ.get("PKTLAB_DATASETS_OUT", Path(__file__).resolve().parents[1] / "datasets"))


def capture(  # type: ignore[no-untyped-def]
    name: str,
    rule: str,
    traffic,
    description: str,
    *,
    topology: str = "pair",
    on: str = "server",
    hook: str = "INPUT",
    family: str = "ipv4",
) -> dict:
    with pktlab.Lab(topology) as lab:
        # gso=False: the captures show packets as they cross the wire (segments), not the kernel's GSO batches
        s = pktlab.attach(1, rule=rule, netns=lab[on], hook=hook, family=family, snaplen=65535, record_size=10_000,
                          gso=False)  # fmt: skip
        try:
            traffic(lab)
        finally:
            s.detach()
        path = OUT / f"{name}.pcap"
        n = s.to_pcap(path)
    return entry(name, path, n, description)


def entry(name: str, path: Path, n: int, description: str) -> dict:
    return {
        "name": name,
        "file": path.name,
        "description": description,
        "packets": n,
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "linktype": "raw IPv4/IPv6 (101)",
    }


def write_raw(path: Path, packets: list[tuple[float, bytes, int]]) -> None:
    """A raw-IP pcap of (time, bytes, original length) triples."""
    from pktlab.pipeline.export import write_pcap

    write_pcap(path, packets)

def read_raw(path: Path) -> list[tuple[float, bytes]]:
    from pktlab.pipeline.capture import read_capture

    return [(p.time, p.data) for p in read_capture(path)]


def merged(name: str, parts: list[str], description: str) -> dict:
    """One capture of several others, in time order."""
    pkts = sorted((p for part in parts for p in read_raw(OUT / f"{part}.pcap")), key=lambda p: p[0])
    path = OUT / f"{name}.pcap"
    write_raw(path, [(t, d, len(d)) for t, d in pkts])
    return entry(name, path, len(pkts), description)


def malformed(name: str, description: str) -> dict:
    """Real lab packets cut short or with broken headers, each kind once (see MALFORMED)."""
    udp = read_raw(OUT / "lab-udp.pcap")[0]
    tcp = read_raw(OUT / "lab-tcp.pcap")[0]
    udp6 = read_raw(OUT / "lab-udp6.pcap")[0]
    t = udp[0]
    out = []
    for i, (_what, data) in enumerate(_malformed(udp[1], tcp[1], udp6[1])):
        out.append((t + i * 0.001, data, len(data)))
    path = OUT / f"{name}.pcap"
    write_raw(path, out)
    return entry(name, path, len(out), description)


def _malformed(udp: bytes, tcp: bytes, udp6: bytes) -> list[tuple[str, bytes]]:
    def put(b: bytes, off: int, val: bytes) -> bytes:
        return b[:off] + val + b[off + len(val) :]

    return [
        ("IPv4 header cut at 10 bytes", udp[:10]),
        ("IPv4 header length field 3 (less than 20 bytes)", put(udp, 0, b"\x43")),
        ("IPv4 total length larger than the packet", put(udp, 2, b"\x05\xdc")),
        ("UDP length field larger than the datagram", put(udp, 24, b"\x04\x00")),
        ("UDP header cut after 4 bytes", udp[:24]),
        ("TCP data offset 15 (60 bytes) in a shorter segment", put(tcp, 32, b"\xf0")),
        ("TCP header cut after 12 bytes", tcp[:32]),
        ("IPv4 header checksum wrong", put(udp, 10, b"\xde\xad")),
        ("IPv6 payload length larger than the packet", put(udp6, 4, b"\x10\x00")),
        ("IPv6 header cut at 30 bytes", udp6[:30]),
        ("IP version 7", put(udp, 0, b"\x75")),
        ("one byte", udp[:1]),
    ]


MALFORMED = [what for what, _ in _malformed(bytes(64), bytes(64), bytes(64))]


def tftp_read(lab: pktlab.Lab) -> None:
    r = lab.tftp(1300)
    if not r.get("ok"):
        raise RuntimeError(f"the TFTP read in the lab failed: {r}")


def content(path: Path) -> list[Any]:
    """What a capture shows at the protocol level, without what changes from run to run.

    Addresses, protocols, well-known ports, ICMP types, UDP payloads (DNS as
    name/answers, TFTP as opcode/block), TCP as one line per connection (the
    flag letters seen and the bytes carried: segment boundaries depend on timing).
    Kernel-chosen ports, IP ids, TCP sequence numbers, times and checksums
    are left out.
    """
    from scapy.layers.dns import DNS
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    out: list[Any] = []
    tcp: dict[tuple[str, str], list[Any]] = {}
    for _, data in read_raw(path):
        if not data or data[0] >> 4 not in (4, 6) or len(data) < 20:
            out.append(("other", data.hex()))
            continue
        ip = IP(data) if data[0] >> 4 == 4 else IPv6(data)
        src, dst = ip.src, ip.dst
        if TCP in ip:
            flow = tcp.setdefault((src, dst), [set(), None, None])
            flow[0].add(str(ip[TCP].flags))
            n = len(ip[TCP].payload)
            if n:  # the sequence space covered, so a retransmitted segment does not count twice
                start = ip[TCP].seq
                flow[1] = start if flow[1] is None else min(flow[1], start)
                flow[2] = start + n if flow[2] is None else max(flow[2], start + n)
        elif DNS in ip:
            d = ip[DNS]
            out.append(("dns", src, dst, int(d.qr), d.qd[0].qname if d.qd else None,
                        sorted(str(rr.rdata) for rr in (d.an or []))))  # fmt: skip
        elif UDP in ip:
            u = ip[UDP]
            port = min(u.sport, u.dport)
            payload = bytes(u.payload)
            if 69 in (u.sport, u.dport) or port > 1024 and payload[:2] in (b"\x00\x03", b"\x00\x04"):
                out.append(("tftp", src, dst, payload[:4].hex() if payload[:2] != b"\x00\x01" else payload))
            else:
                out.append(("udp", src, dst, port if port < 1024 else u.dport, payload))
        elif ICMP in ip:
            out.append(("icmp", src, dst, int(ip[ICMP].type), int(ip[ICMP].seq)))
        else:
            out.append(("ip", src, dst, data.hex()))
    # the flag letters seen (whether a FIN rides on the last data segment depends on timing)
    out += [("tcp", s, d, sorted(set("".join(f))), (hi - lo) if lo is not None else 0)
            for (s, d), (f, lo, hi) in sorted(tcp.items())]  # fmt: skip
    return out


def serve_and_get(lab: pktlab.Lab, name: str, content: bytes) -> None:
    """One HTTP/1.1 GET of ``name`` from the client to a Python http.server on the server, through the router."""
    import tempfile

    from pktlab.lab.network import wait_until

    with tempfile.TemporaryDirectory() as root:
        Path(root, name).write_bytes(content)
        os.chmod(root, 0o755)
        lab.server.popen([sys.executable, "-m", "http.server", "8080", "--directory", root])
        if not wait_until(lambda: ":8080" in lab.server.run("ss -ltn").stdout, timeout=10):
            raise RuntimeError("the HTTP server in the lab did not start listening")
        # the body is read before exit: closing with unread data would make the client's kernel send a RST
        fetch = (
            "import urllib.request; "
            f"r = urllib.request.urlopen('http://{lab.server.addr}:8080/{name}', timeout=30); r.read(); print(r.status)"
        )
        lab.client.run([sys.executable, "-c", fetch], timeout=60)


def http_get(lab: pktlab.Lab) -> None:
    """One HTTP/1.1 GET of a small index.html."""
    serve_and_get(lab, "index.html", b"<h1>pktlab</h1>\n")


SLOW_PAGE_BYTES = 128 * 1024


def slow_page_content() -> bytes:
    """The page of ``lab-web-slow``: deterministic bytes, so a capture can be checked against them."""
    return bytes((i * 13 + 5) % 256 for i in range(SLOW_PAGE_BYTES))


def slow_page(lab: pktlab.Lab) -> None:
    """One HTTP GET of a 128 KiB page through a router whose links are slow (20 ms each way to the server) and
    lossy (10 % of what the router sends the client is lost on the way)."""
    lab.link("router", "server").set(delay="20ms")
    lab.link("client", "router").set(loss=0.1, direction="b>a")
    serve_and_get(lab, "page.bin", slow_page_content())


def nat_practice(name: str, description: str) -> dict:
    """What the router's NAT (the assignment's reference) sees of a little traffic: the NAT assignment's practice."""
    import make_grading_data  # beside this script

    def traffic(lab: pktlab.Lab) -> None:
        if not (lab.dns("nat.example.", answer="10.77.2.53").get("answered")
                and lab.tcp(4096, port=8080).get("received") == 4096 and lab.ping(1).received == 1):  # fmt: skip
            raise RuntimeError("the practice traffic did not get through the reference NAT")
        make_grading_data.from_outside(lab, (45000,), None, False)

    path = OUT / f"{name}.pcap"
    return entry(name, path, make_grading_data.nat_capture(path, traffic), description)


def police_practice(lab: pktlab.Lab) -> None:
    if lab.udp(200, size=500 - 28, rate=200).received != 200:
        raise RuntimeError("the practice flow lost datagrams on its way")


NEW_IN_0_4 = {  # the captures of the NAT and policer assignments' practice cells
    "lab-nat": lambda: nat_practice(
        "lab-nat",
        "what a NAT on the router sees (the NAT assignment's practice): a DNS exchange, a TCP connection to port "
        "8080 and a ping from the client 10.77.1.1, their replies to the router's 10.77.2.1 (ports 40000-40002), "
        "and a datagram from the server to the router's port 45000 that belongs to no flow",
    ),
    "lab-police": lambda: capture(
        "lab-police",
        "-p udp",
        police_practice,
        "200 numbered 500-byte UDP datagrams at 200 a second (100,000 bytes/s), client -> server port 9000, seen "
        "forwarded by the router (the policer assignment's practice)",
        topology="router",
        on="router",
        hook="FORWARD",
    ),
}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    entries = [
        capture(
            "lab-udp",
            "-p udp --dport 9000",
            lambda lab: lab.udp(20, size=32),
            "20 numbered UDP datagrams, client 10.77.1.1 -> server 10.77.1.2 port 9000 (first 4 payload "
            "bytes: the sequence number)",
        ),
        capture(
            "lab-icmp",
            "-p icmp",
            lambda lab: lab.ping(4, interval=0.05),
            "4 ICMP echo requests from the client, seen at the server",
        ),
        capture(
            "lab-tcp",
            "-p tcp --dport 9001",
            lambda lab: lab.tcp(32 * 1024),
            "one TCP connection to port 9001 carrying 32 KiB: handshake, data segments, teardown "
            "(client -> server direction)",
        ),
        capture(
            "lab-dns",
            "-p udp -m multiport --ports 53",
            lambda lab: lab.dns("lab.example.", answer="10.77.2.53"),
            "one DNS query (A, lab.example.) and its answer, seen forwarded by the router of a "
            "client-router-server lab",
            topology="router",
            on="router",
            hook="FORWARD",
        ),
        capture(
            "lab-http",
            "-p tcp -m multiport --ports 8080",
            http_get,
            "one HTTP/1.1 GET of /index.html and its HTTP/1.0 200 response (Python's http.server): the "
            "whole connection, both directions, seen forwarded by the router",
            topology="router",
            on="router",
            hook="FORWARD",
        ),
        capture(
            "lab-udp6",
            "-p udp --dport 9000",
            lambda lab: lab.udp(10, size=32, ipv6=True),
            "10 numbered UDP datagrams over IPv6, fd77:1::1 -> fd77:1::2 port 9000",
            family="ipv6",
        ),
    ]
    entries.append(
        capture(
            "lab-udp-sizes",
            "-p udp --dport 9000",
            lambda lab: (lab.udp(20, size=600), lab.udp(20, size=100)),
            "20 numbered 600-byte UDP datagrams, then 20 of 100 bytes, client -> server port 9000 "
            "(the quickstart's traffic in replay mode)",
        )
    )
    entries.append(
        capture(
            "lab-tftp",
            "-p udp",
            tftp_read,
            "one TFTP read (RFC 1350, octet mode) of a 1,300-byte file: the request to port 69, three "
            "DATA blocks from the server's transfer port and their ACKs, seen forwarded by the router",
            topology="router",
            on="router",
            hook="FORWARD",
        )
    )
    entries.append(
        capture(
            "lab-web-slow",
            "-p tcp -m multiport --ports 8080",
            slow_page,
            "one HTTP/1.1 GET of a 128 KiB page (Python's http.server) over slow and lossy links: 20 ms each way "
            "between router and server, 10 % loss from router to client; both directions, seen forwarded by the "
            "router (notebook 09's slow web page in replay mode)",
            topology="router",
            on="router",
            hook="FORWARD",
        )
    )
    entries.append(
        merged(
            "dns-and-http",
            ["lab-dns", "lab-http"],
            "lab-dns and lab-http in one capture, in time order: a DNS exchange and an HTTP/1.1 connection",
        )
    )
    entries.append(
        malformed(
            "lab-malformed",
            "12 real lab packets cut short or with broken headers, one of each: " + "; ".join(MALFORMED),
        )
    )
    entries += [make() for make in NEW_IN_0_4.values()]
    manifest = OUT / "MANIFEST.json"
    manifest.write_text(json.dumps(entries, indent=2) + "\n")
    for e in entries:
        print(f"{e['file']}: {e['packets']} packets, {e['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
