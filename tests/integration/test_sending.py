"""Packets from handlers on the real kernel: pkt.reply answers in the server's (or the router's) place, s.send sends."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pktlab
from pktlab import Lab, PacketFormatError, SendError, SessionError
from pktlab.lab.network import wait_ready, wait_until
from tests.conftest import needs_live

pytestmark = needs_live

PORT = 9556

# a client that sends ``n`` questions from one socket and collects the answers its socket receives
# (the kernel delivers a datagram only if its UDP checksum is right)
ASK = """
import json, socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
got, end = [], time.monotonic() + 10
for i in range(n):
    s.sendto(b"q%d" % i, (dst, port))
while len(got) < n and time.monotonic() < end:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    got.append([data.decode(), peer[0], peer[1]])
print(json.dumps(got))
"""


def _receiver(host, port: int, count: int, keep: int = 0, bind: str = "0.0.0.0") -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    proc = host.popen(
        [sys.executable, "-m", "pktlab.lab.traffic", "udp-recv", "--bind", bind, "--port", str(port), "--count",
         str(count), "--timeout", "15", "--idle", "0.5", "--keep", str(keep)],  # fmt: skip
        stdin=subprocess.PIPE,
    )
    wait_ready(proc, f"UDP receiver in {host.role}")
    return proc


def _finish(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=20)  # closes its stdin: the receiver ends half a second later
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_questions_answered_by_pkt_reply_never_reach_the_servers_socket(lab: Lab, queue_num: int,
                                                                             ipv6: bool) -> None:  # fmt: skip
    """The server's INPUT queue answers each question itself and drops it: the client's socket gets every
    answer (from the server's address and port), the server's socket none of the questions, and an OUTPUT
    queue on the server never sees the answers (pktlab's own packets pass its rules by)."""
    server = lab.server.addr6 if ipv6 else lab.server.addr
    family = "ipv6" if ipv6 else "ipv4"
    s = pktlab.attach(queue_num, rule=f"-p udp --dport {PORT}", netns=lab.server, family=family)
    out = pktlab.attach(queue_num + 1000, rule=f"-p udp --sport {PORT}", hook="OUTPUT", netns=lab.server,
                        family=family)  # fmt: skip
    seen: list[bytes] = []

    @s.handler
    def answer(pkt):  # type: ignore[no-untyped-def]
        seen.append(bytes(pkt.udp.payload))
        pkt.reply(b"answer to " + pkt.udp.payload)
        return pkt.drop()

    try:
        recv = _receiver(lab.server, PORT, 20, bind="::" if ipv6 else "0.0.0.0")
        got = json.loads(lab.client.run([sys.executable, "-c", ASK, server, str(PORT), "20"], timeout=30).stdout)
        server_side = _finish(recv)
        assert wait_until(lambda: s.record.sent == 20, timeout=5)
    finally:
        s.detach()
        out.detach()
    assert sorted(d for d, _, _ in got) == sorted(f"answer to q{i}" for i in range(20))
    assert {(peer, port) for _, peer, port in got} == {(server, PORT)}
    assert server_side["received"] == 0 and len(seen) == 20
    assert out.record.n == 0
    df = s.df
    assert (df.direction == "sent").sum() == 20 and (df.verdict == "drop").sum() == 20
    assert set(df[df.direction == "sent"].sport) == {PORT}


def test_the_router_answers_pings_in_the_servers_name(router_lab: Lab, queue_num: int) -> None:
    """An ICMP echo request answered on the router's FORWARD queue: ping gets its replies; the server's
    kernel never sees a request (its InEchos counter stays)."""

    def echos_in() -> int:
        lines = [ln.split() for ln in router_lab.server.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if ln.startswith("Icmp:")]  # fmt: skip
        return int(lines[1][lines[0].index("InEchos")])

    s = pktlab.attach(queue_num, rule="-p icmp --icmp-type echo-request", hook="FORWARD", netns=router_lab.router)
    s.add_handler(lambda pkt: (pkt.reply(), pkt.drop())[1], "pong")
    before = echos_in()
    try:
        r = router_lab.ping(count=3)
    finally:
        s.detach()
    assert r.received == 3 and s.record.sent == 3
    assert echos_in() == before


def test_s_send_of_a_scapy_packet_is_received(lab: Lab, queue_num: int) -> None:
    from scapy.layers.inet import IP, UDP

    s = pktlab.attach(queue_num, rule=f"-p udp --dport {PORT}", netns=lab.server)
    try:
        recv = _receiver(lab.client, PORT + 1, 1, keep=1)
        sent = s.send(IP(src=lab.server.addr, dst=lab.client.addr) / UDP(sport=4242, dport=PORT + 1) / b"hello")
        got = _finish(recv)
    finally:
        s.detach()
    assert got["received"] == 1 and bytes.fromhex(got["payloads"][0]) == b"hello"
    assert sent.udp.dport == PORT + 1 and s.record.sent == 1


def test_sends_from_a_notebook_thread_and_from_handlers_at_once_all_arrive_intact(lab: Lab, queue_num: int) -> None:
    """s.send in this thread while the reader answers every question (pkt.reply) and rewrites it: both go
    through the session's one raw sender (in user-namespace mode the rewrite too); every packet of both
    arrives with its own bytes (the kernel delivers a UDP datagram only with a right checksum)."""
    from scapy.layers.inet import IP, UDP

    n = 300
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def answer_and_rewrite(pkt):
            seq = pkt.udp.payload[:4]
            pkt.reply(b"A" + seq)
            pkt.udp.payload = seq + b"rewritten"
            return pkt.accept()

        recv = _receiver(lab.client, PORT + 1, n, keep=n)
        flow = lab.start_udp(n, size=8, rate=3000, idle=1.0, keep=n)
        for i in range(n):
            s.send(IP(src=lab.server.addr, dst=lab.client.addr) / UDP(sport=4242, dport=PORT + 1) / (b"S%03d" % i))
        r = flow.wait()
        got = _finish(recv)
        status = s.status()
    finally:
        s.detach()
    assert sorted(bytes.fromhex(p) for p in got["payloads"]) == [b"S%03d" % i for i in range(n)]
    assert sorted(int.from_bytes(p[:4], "big") for p in r.payloads) == list(range(n))
    assert all(p[4:] == b"rewritten" for p in r.payloads)
    assert s.record.sent == 2 * n and status.internal_errors == 0 and not s.errors


def test_what_cannot_be_sent_says_why(lab: Lab, queue_num: int) -> None:
    from scapy.layers.inet import IP, UDP

    s = pktlab.attach(queue_num, rule=f"-p udp --dport {PORT}", netns=lab.server)
    try:
        with pytest.raises(SendError, match="no route to 10.99.0.1 in namespace"):
            s.send(IP(src=lab.server.addr, dst="10.99.0.1") / UDP(dport=9) / b"x")  # the lab has no default route
        with pytest.raises(SendError, match="larger than the MTU"):
            s.send(IP(src=lab.server.addr, dst=lab.client.addr, flags="DF") / UDP(dport=9) / bytes(3000))
        with pytest.raises(PacketFormatError, match="not an IPv4/IPv6 packet"):
            s.send(b"\x00" * 30)
        assert s.record.sent == 0
    finally:
        s.detach()
    with pytest.raises(SessionError, match="detached; attach"):
        s.send(IP(src=lab.server.addr, dst=lab.client.addr) / UDP(dport=9))
