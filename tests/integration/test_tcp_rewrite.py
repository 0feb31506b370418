"""TCP payloads rewritten in flight on the router, lengths changed, the connection intact (real kernel).

Each test compares what the receiving application got, byte for byte, with
what the handler meant it to get.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from pktlab.packet._core import payload_sums_taken, shared_copies
from pktlab.pipeline._seqadj import payload_copies

import pktlab
from pktlab import Lab, Packet
from pktlab.lab.network import wait_until
from tests.conftest import needs_live
from tests.pipeline.test_verdict_writer import writer_threads

pytestmark = needs_live

PORT = 8080

SERVER = textwrap.dedent(
    """
    import http.server, json, sys
    body = sys.argv[1].encode() * int(sys.argv[2])
    close = sys.argv[4:] == ["close"]  # the body ends with the connection: no length to grow past
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0" if close else "HTTP/1.1"
        def do_GET(self):
            head = json.dumps(dict(self.headers)).encode() + b"\\n"
            data = head + body
            self.send_response(200)
            if not close:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *a):
            pass
    s = http.server.HTTPServer(("0.0.0.0", PORT), H)
    s.timeout = 20
    print("ready", flush=True)
    for _ in range(int(sys.argv[3])):
        s.handle_request()
    """
).replace("PORT", str(PORT))

CLIENT = textwrap.dedent(
    """
    import http.client, json, sys
    c = http.client.HTTPConnection(sys.argv[1], PORT, timeout=15)
    out = []
    for i in range(int(sys.argv[2])):
        c.request("GET", f"/{i}")
        r = c.getresponse()
        data = r.read()
        head, _, body = data.partition(b"\\n")
        out.append({"status": r.status, "headers": json.loads(head), "body": body.decode("latin-1")})
    print(json.dumps(out))
    """
).replace("PORT", str(PORT))


def rewrite_http(pkt):  # type: ignore[no-untyped-def]
    """A header into every request; in every response segment each '@' becomes 'AT' and each '#' goes."""
    tcp = pkt.tcp
    if tcp is None or not tcp.payload:
        return None
    h = pkt.http
    if h is not None and h.is_request:
        h.headers["X-Lab"] = "inserted by pktlab"
    elif tcp.sport == PORT:
        tcp.payload = tcp.payload.replace(b"@", b"AT").replace(b"#", b"")
    return None


def serve(lab: Lab, unit: str, repeat: int, requests: int, *, close: bool = False):  # type: ignore[no-untyped-def]
    args = [unit, str(repeat), str(requests)] + (["close"] if close else [])
    srv = lab.server.popen([sys.executable, "-c", SERVER, *args])
    assert srv.stdout is not None
    assert srv.stdout.readline().strip() == "ready"
    return srv


def through_router(lab: Lab, queue_num: int, handler, srv, requests: int, gso: bool = False):  # type: ignore[no-untyped-def]
    """``requests`` GETs from the client while a session on the router's FORWARD queue runs ``handler``."""
    s = pktlab.attach(queue_num, rule="-p tcp", hook="FORWARD", netns=lab.router, deadline=None, gso=gso)
    try:
        s.add_handler(handler, handler.__name__)
        return fetch(lab, requests), s
    finally:
        s.detach()
        srv.kill()
        srv.wait()


def assert_intact_with_markers(body: str, unit: str, repeat: int, least: int = 1000) -> None:
    assert body.replace("<~>", "~") == unit * repeat  # nothing lost, duplicated or moved
    assert body.count("<~>") >= least


def fetch(lab: Lab, requests: int) -> list[dict]:
    cli = lab.client.popen([sys.executable, "-c", CLIENT, lab.server.addr, str(requests)])
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, f"the client failed: {err.strip().splitlines()[-1:]}"
    return json.loads(out)


GSO = pytest.mark.parametrize("gso", [False, True], ids=["segments", "gso"])  # the queue with GSO packets whole


@GSO
def test_keep_alive_requests_grown_and_responses_rewritten(router_lab: Lab, queue_num: int, gso: bool) -> None:
    """Three requests on one connection, each grown by a header; each ~1.2 MB response rewritten
    (every '@' becomes 'AT', every '#' is removed): all complete, bodies as intended."""
    unit, repeat = "a cat @ the # door. ", 60000
    srv = serve(router_lab, unit, repeat, 3)
    got, s = through_router(router_lab, queue_num, rewrite_http, srv, 3, gso=gso)
    want = (unit * repeat).replace("@", "AT").replace("#", "")
    assert [r["status"] for r in got] == [200, 200, 200]
    assert all(r["headers"].get("X-Lab") == "inserted by pktlab" for r in got)
    assert all(r["body"] == want for r in got)
    assert not s.errors


@GSO
def test_ten_megabytes_every_segment_grown(router_lab: Lab, queue_num: int, gso: bool) -> None:
    """Every data segment (or GSO packet) from the server gets two bytes more; 10 MB arrive intact, in order."""
    unit, repeat = "0123456789abcde~", 10 * 1024 * 1024 // 16
    srv = serve(router_lab, unit, repeat, 1, close=True)
    grown = []
    high: list[int] = []  # the end of the newest bytes seen

    def grow(pkt):
        tcp = pkt.tcp
        if tcp is None or tcp.sport != PORT or not tcp.payload:
            return None
        if gso and high and (tcp.seq - high[0]) % (1 << 32) >= 1 << 31:
            # sent again, and GSO cuts a retransmission anew: another first '~' would be a different edit of
            # bytes that went on already, which pktlab refuses (SeqAdjError); let it through as it is
            return None
        high[:] = [tcp.seq + len(tcp.payload)]
        tcp.payload = tcp.payload.replace(b"~", b"<~>", 1)  # one marker per segment, wherever it is cut
        grown.append(1)
        return None

    got, s = through_router(router_lab, queue_num, grow, srv, 1, gso=gso)
    least = 100 if gso else 1000  # 10 MB: ~7,000 segments, or ~160 GSO packets of up to 64 KiB
    assert len(grown) > least
    assert_intact_with_markers(got[0]["body"], unit, repeat, least)
    assert not s.errors


def test_gso_packets_rewritten_whole_deliver_exactly_the_intended_bytes(router_lab: Lab, queue_num: int) -> None:
    """With gso=True the router's queue gets the server's GSO packets whole (up to 64 KiB, checksum left
    to the kernel); a same-length rewrite of every packet and a growing one of each new packet both
    reach the client exactly as meant."""
    unit, repeat = "0123456789@bcde~", 4 * 1024 * 1024 // 16
    srv = serve(router_lab, unit, repeat, 1, close=True)
    seen = []
    kept: list = []  # the last large packet rewritten, kept past its verdict
    high: list[int] = []  # the end of the newest bytes seen

    def rewrite_gso(pkt):
        tcp = pkt.tcp
        if tcp is None or tcp.sport != PORT or not tcp.payload:
            return None
        seen.append((len(pkt), pkt.skb_info))
        tcp.payload = tcp.payload.replace(b"@", b"A")  # the same edit however a retransmission is cut
        if len(pkt) > 4096:
            kept[:] = [pkt]
        if not high or (tcp.seq - high[0]) % (1 << 32) < 1 << 31:  # new bytes (a retransmission is cut anew)
            high[:] = [tcp.seq + len(tcp.payload)]
            tcp.payload = tcp.payload.replace(b"~", b"<~>", 1)
        return None

    threads = writer_threads()
    copies = payload_copies()
    got, s = through_router(router_lab, queue_num, rewrite_gso, srv, 1, gso=True)
    body = got[0]["body"]
    assert body.replace("<~>", "~") == (unit * repeat).replace("@", "A")  # every byte as the handler meant
    big = [n for n, info in seen if info.gso]
    assert big and max(big) > 1500  # whole GSO packets, larger than the link's MTU
    assert all(info.csum_not_ready for _, info in seen if info.gso)
    assert 1 <= body.count("<~>") <= len(seen) and not s.errors
    # sequence adjustment took the payloads the handler read (as they arrived) and wrote (as they go) as its own:
    # no copy of either
    assert payload_copies() == copies
    # their verdicts (64 KiB each) went through the writer's thread, in order with the rest (where the kernel
    # takes new payloads: in a user namespace's lab the rewritten packets are sent from the host); detach ended it
    assert s.dispatcher.writes_threaded >= 1 or s.dispatcher.reinject is not None
    assert s.dispatcher.verdict_writer is None
    assert writer_threads() == threads
    # the kept packet's bytes went by reference to that thread: its next write goes to a copy of its own
    shared = shared_copies()
    kept[0].ip.ttl = 1
    assert shared_copies() == shared + (1 if s.dispatcher.reinject is None else 0)


@GSO
def test_headers_rewritten_in_place_leave_the_payloads_uncopied_and_the_stream_intact(
    router_lab: Lab, queue_num: int, gso: bool
) -> None:
    """A handler that writes only header fields (DSCP, TTL) of every packet of a stream: its payloads are copied
    once, with their checksum sum, when the first field is written; the fix-up sums only the headers, and
    sequence adjustment neither copies nor compares them — it stays out while no connection has state, and
    takes them by identity once one has (here: the request was grown)."""
    unit, repeat = "0123456789@bcde~", 2 * 1024 * 1024 // 16

    def mark_responses(pkt):
        tcp = pkt.tcp
        if tcp is not None and tcp.sport == PORT:
            pkt.ip.tos = 0x20
            pkt.ip.ttl -= 1
        return None

    def grow_request_mark_responses(pkt):
        tcp = pkt.tcp
        if tcp is None:
            return None
        if tcp.dport == PORT and tcp.payload.startswith(b"GET "):  # grown: the connection gets adjustment state
            tcp.payload = tcp.payload.replace(b"\r\n\r\n", b"\r\nX-Lab: inserted by pktlab\r\n\r\n")
        elif tcp.sport == PORT and len(tcp.payload) > 0:  # (read as it arrived: no copy of it either)
            pkt.ip.ttl -= 1
        return None

    for handler, requests in ((mark_responses, 1), (grow_request_mark_responses, 2)):
        srv = serve(router_lab, unit, repeat, requests)
        copies, sums = payload_copies(), payload_sums_taken()
        got, s = through_router(router_lab, queue_num, handler, srv, requests, gso=gso)
        assert [g["body"] for g in got] == [unit * repeat] * requests and not s.errors, handler.__name__
        if handler is grow_request_mark_responses:
            assert all(g["headers"]["X-Lab"] == "inserted by pktlab" for g in got)
        assert payload_copies() == copies, handler.__name__
        assert payload_sums_taken() - sums >= len(unit * repeat) // 65536, handler.__name__  # one per packet at least


@GSO
def test_segments_dropped_once_are_retransmitted_while_others_are_grown(
    router_lab: Lab, queue_num: int, gso: bool
) -> None:
    """The handler drops a few data segments the first time (retransmissions, SACK) and grows the
    rest.  Bytes it dropped come again after later bytes went on at their places, so their length
    cannot change: the handler passes them as they are (however the sender cuts the retransmission).
    The transfer completes intact, every other segment grown."""
    unit, repeat = "0123456789abcde~", 2 * 1024 * 1024 // 16
    srv = serve(router_lab, unit, repeat, 1, close=True)
    count = 0
    dropped: list[tuple[int, int]] = []  # (first, end) sequence numbers of what the handler dropped
    again: list[int] = []
    high: list[int] = []  # the end of the newest bytes seen

    def lossy(pkt):
        nonlocal count
        tcp = pkt.tcp
        if tcp is None or tcp.sport != PORT or not tcp.payload:
            return None
        first, end = tcp.seq, tcp.seq + len(tcp.payload)
        if any(first < b and a < end for a, b in dropped) or (high and (first - high[0]) % (1 << 32) >= 1 << 31):
            again.append(first)
            return None  # sent again (a dropped segment, or bytes already seen): through as it is
        high[:] = [end]
        count += 1
        if count in ((4, 8, 12) if gso else (40, 80, 120)):  # 2 MB: ~1,400 segments, or ~32 GSO packets
            dropped.append((first, end))
            return pkt.drop()
        tcp.payload = tcp.payload.replace(b"~", b"<~>", 1)
        return None

    got, s = through_router(router_lab, queue_num, lossy, srv, 1, gso=gso)
    assert len(dropped) == 3 and len(again) >= 3
    assert_intact_with_markers(got[0]["body"], unit, repeat, 10 if gso else 1000)
    assert not s.errors


def _stream(packets: list[bytes], sport: int) -> bytes:
    """The TCP byte stream a list of IP packets carries from ``sport``, reassembled by sequence number."""
    got: dict[int, int] = {}
    first = None
    for data in packets:
        tcp = Packet(None, data).tcp
        if tcp is None or tcp.sport != sport:
            continue
        if tcp.flags.syn:
            first = (tcp.seq + 1) % (1 << 32)
            continue
        for i, b in enumerate(tcp.payload):
            got.setdefault((tcp.seq + i) % (1 << 32), b)
    assert first is not None
    out, pos = bytearray(), first
    while pos in got:
        out.append(got[pos])
        pos = (pos + 1) % (1 << 32)
    return bytes(out)


def test_the_capture_of_the_connection_replays_to_the_same_rewritten_bytes(
    router_lab: Lab, queue_num: int, tmp_path: Path
) -> None:
    """The keep-alive exchange (smaller), live and replayed from the record's capture: the same verdicts,
    and the replay's output carries, in both directions, the bytes the live client and server got."""
    unit, repeat = "a cat @ the # door. ", 3000
    srv = serve(router_lab, unit, repeat, 3)

    s = pktlab.attach(
        queue_num,
        rule="-p tcp",
        hook="FORWARD",
        netns=router_lab.router,
        deadline=None,
        snaplen=65535,
        record_size=4096,
    )
    try:
        s.add_handler(rewrite_http)
        got = fetch(router_lab, 3)
    finally:
        s.detach()
        srv.kill()
        srv.wait()
    n = s.to_pcap(tmp_path / "live.pcap")
    assert n == s.record.n < 4096

    r = pktlab.replay(tmp_path / "live.pcap")
    r.add_handler(rewrite_http)
    r.run()
    fields = ["proto", "src", "dst", "sport", "dport", "size", "verdict", "handler", "error", "modified"]
    assert s.df[fields].astype(str).values.tolist() == r.df[fields].astype(str).values.tolist()
    out = [data for _, data, _ in r.outputs]
    responses = _stream(out, PORT)
    want = (unit * repeat).replace("@", "AT").replace("#", "")
    assert responses.count(want.encode()) == 3 == len(got)
    assert all(r_["body"] == want for r_ in got)
    requests = _stream(out, next(Packet(None, d).tcp.sport for d in out if Packet(None, d).tcp.dport == PORT))
    assert requests.count(b"X-Lab: inserted by pktlab\r\n") == 3


def test_a_full_queue_drops_instead_of_passing_unadjusted_segments(router_lab: Lab, queue_num: int) -> None:
    """A fail-open queue of 16 packets, every response segment grown: once a connection has adjusted
    sequence numbers, a full queue drops (TCP sends again, through the handler) instead of passing
    segments with their old numbers, which would corrupt the stream.  The handler stops on one segment
    until the kernel has dropped something (the sender has far more than 16 segments in flight by then);
    the transfer completes intact, and the queue is fail-open again once the connection's state is gone.

    (16 places hold the first flight, sent before any verdict: the state exists before the queue can
    overflow.  What passes unseen before a connection's first rewrite cannot be adjusted: see
    docs/explanation/seqadj.md.)
    """
    unit, repeat = "0123456789abcde~", 2 * 1024 * 1024 // 16
    srv = serve(router_lab, unit, repeat, 1, close=True)
    # gso=False: the test counts segments (300 of them before the stall, 16 queue places against a flight)
    s = pktlab.attach(queue_num, rule="-p tcp", hook="FORWARD", netns=router_lab.router, deadline=None, max_len=16,
                      gso=False)  # fmt: skip
    seen: dict = {"grown": 0}

    def grow_and_stall_once(pkt):  # type: ignore[no-untyped-def]
        tcp = pkt.tcp
        if tcp is None or tcp.sport != PORT or not tcp.payload:
            return None
        tcp.payload = tcp.payload.replace(b"~", b"<~>", 1)
        seen["grown"] += 1
        if seen["grown"] == 300:
            seen["holding"] = s.source.holding_when_full
            seen["drops"] = wait_until(lambda: s.kernel_counters().queue_dropped > 0, timeout=10)
        return None

    try:
        s.add_handler(grow_and_stall_once)
        got = fetch(router_lab, 1)
        assert wait_until(lambda: not s.source.holding_when_full, timeout=15), "the state did not expire"
        after = s.status()
    finally:
        s.detach()
        srv.kill()
        srv.wait()
    assert seen["holding"] is True and seen["drops"] is True
    # every segment the handler grew carries its marker unless its rewrite was refused: a dropped segment whose
    # retransmission comes after the kept-back segments behind it were let go (reorder window) cannot grow (the
    # bytes after it reached the receiver at their old places) and goes as it was, with the error verdict.  How
    # many such refusals there are is a race with TCP's retransmission; that each one is counted is not
    refused = after.counters["errors"]
    assert all(f.error.startswith("SeqAdjError") for f in s.errors), s.errors[:1]
    assert_intact_with_markers(got[0]["body"], unit, repeat, least=1000 - refused)
    assert after.tcp_adjusted == 0 and not after.holding_when_full
    assert after.passed_unseen == 0
