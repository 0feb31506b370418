"""The record at the TCP level, on a real lossy transfer, read against tshark's analysis of the exported file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import pktlab
from pktlab import Lab
from tests.conftest import needs_live

pytestmark = [needs_live, pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")]
NBYTES = 8 << 20
MARKS = {  # pktlab's analysis markers and the tshark display filter of each
    "retransmission": "tcp.analysis.retransmission or tcp.analysis.fast_retransmission "
                      "or tcp.analysis.spurious_retransmission",
    "out-of-order": "tcp.analysis.out_of_order",
    "duplicate ack": "tcp.analysis.duplicate_ack",
}


def _tshark(path: Path, display_filter: str, field: str = "frame.number") -> list[str]:
    """``field`` of each frame tshark's display filter picks in ``path``."""
    proc = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", field],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return proc.stdout.splitlines()


def test_retransmissions_in_the_record_are_the_ones_tshark_finds(router_lab: Lab, queue_num: int,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    lab = router_lab
    lab.link("router", "server").set(loss=0.05)  # dropped as it reaches the server: the router sees both copies
    s = pktlab.attach(queue_num, rule="-p tcp", hook="FORWARD", netns=lab.router, name="router")
    srv = pktlab.attach(queue_num + 1, rule="-p tcp", netns=lab.server, name="server-in")
    try:
        assert lab.tcp(NBYTES)["received"] == NBYTES
    finally:
        s.detach()
        srv.detach()
    df = s.df
    assert set(df["flow"]) == {0}
    assert (df.loc[0, "flags"], df.loc[0, "side"], df.loc[0, "seq"]) == ("S", "client", 0)
    synack = df[df["flags"] == "AS"].iloc[0]  # (the loss may have taken a SYN: then it came again)
    assert (synack["side"], synack["seq"], synack["ack"]) == ("server", 0, 1)  # relative: a SYN takes one
    assert df["seq_raw"].iloc[0] != 0 and (df["t"] >= 0).all() and df["t"].iloc[0] == 0
    data = df[df["side"] == "client"]
    assert int(data["len"].sum()) >= NBYTES  # what the client sent, its retransmissions included
    path = tmp_path / "router.pcapng"
    assert s.to_pcap(path) == s.record.n
    mine = {kind: {i + 1 for i, a in enumerate(df["analysis"]) if a and kind in a} for kind in MARKS}
    theirs = {kind: {int(x) for x in _tshark(path, MARKS[kind])} for kind in MARKS}
    print(f"\n{s.record.n} packets; pktlab: {mine}; tshark: {theirs}")
    assert mine == theirs, f"the capture is kept at {path}"
    assert mine["retransmission"] or mine["out-of-order"], "5 % loss and nothing was sent again"
    # both sessions in one file: every packet's comment names its session, one TCP stream
    both = tmp_path / "both.pcapng"
    assert pktlab.to_pcap([s, srv], both) == s.record.n + srv.record.n
    commented = _tshark(both, 'frame.comment contains "pktlab session=router verdict=accept handler=none"')
    assert len(commented) == s.record.n
    assert len(_tshark(both, 'frame.comment contains "pktlab session=server-in "')) == srv.record.n
    assert set(_tshark(both, "tcp", "tcp.stream")) == {"0"}


FETCH = """
import sys, time, urllib.request
for _ in range(100):  # the server may still be starting: at most 5 s
    try:
        body = urllib.request.urlopen(sys.argv[1], timeout=5).read()
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("the web server never answered")
sys.stdout.write(str(len(body)))
"""


def test_follow_gives_the_bytes_each_side_sent(router_lab: Lab, queue_num: int, tmp_path: Path) -> None:
    """A real web server and client: the session's reassembled streams are the request and the exact file."""
    import os

    site = tmp_path / "site"
    site.mkdir()
    content = os.urandom(300_000)
    (site / "blob.bin").write_bytes(content)
    site.chmod(0o755)
    lab = router_lab
    lab.link("client", "router").set(loss=0.03)  # retransmissions too: each byte must come out once
    server = lab.server.popen(["python3", "-m", "http.server", "8080", "--bind", lab.server.addr, "--directory",
                               str(site)], stderr=subprocess.DEVNULL)  # fmt: skip
    s = pktlab.attach(queue_num, rule="-p tcp --dport 8080", hook="FORWARD", netns=lab.router, snaplen=65535,
                      record_size=4000, name="web")  # fmt: skip
    s2 = pktlab.attach(queue_num + 1, rule="-p tcp --sport 8080", hook="FORWARD", netns=lab.router, snaplen=65535,
                       record_size=4000, name="web-back")  # fmt: skip
    try:
        got = lab.client.run(["python3", "-c", FETCH, f"http://{lab.server.addr}:8080/blob.bin"], timeout=60)
        assert got.stdout == str(len(content))
    finally:
        s.detach()
        s2.detach()
        server.kill()
        server.wait(5)
    both = tmp_path / "web.pcapng"
    pktlab.to_pcap([s, s2], both)
    merged = pktlab.replay(both, snaplen=65535, record_size=4000)  # both directions in one record, same pipeline
    merged.run()
    flows = set(merged.df["flow"].dropna())
    assert flows == {0}, flows
    f = merged.follow(0)
    assert f.missing == {"client": 0, "server": 0}
    assert f.client.startswith(b"GET /blob.bin HTTP/1.1\r\n")
    assert f.server.startswith(b"HTTP/1.0 200 OK\r\n") and f.server.endswith(content)
    assert len(f.server) - f.server.index(b"\r\n\r\n") - 4 == len(content)
    with pytest.raises(KeyError, match="no flow 7"):
        merged.follow(7)


def test_follow_shows_what_was_sent_and_what_a_rewrite_delivered(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p tcp --dport 9001", netns=lab.server, snaplen=65535, record_size=2000)
    try:

        @s.handler
        def shout(pkt):
            n = len(pkt.tcp.payload)
            if n:
                pkt.tcp.payload = b"A" * n  # the same length: the connection needs no adjustment
            return pkt.accept()

        assert lab.tcp(200_000)["received"] == 200_000
    finally:
        s.detach()
    sent, delivered = s.follow(0), s.follow(0, delivered=True)
    assert sent.client == bytes(200_000) and sent.missing["client"] == 0  # the client sends zeros
    assert delivered.client == b"A" * 200_000 and delivered.missing["client"] == 0
    assert s.df["modified"].sum() >= 1
