"""The TCP-level reading of a record, on made-up segments (the live test reads tshark against a real transfer)."""

from __future__ import annotations

import pytest

from pktlab import testing as t
from pktlab.pipeline.tcp_analysis import analyse, flag_letters, follow

C, S = dict(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80), dict(src="10.0.0.2", dst="10.0.0.1", sport=80,
                                                                          dport=40000)  # fmt: skip


def _e(i: int, ms: float, verdict: str = "accept", cut: int | None = None, **seg):
    pkt = t.tcp(raw=True, **seg)
    return t.entry(id=i, time=1_700_000_000.0 + ms / 1000, packet=pkt[:cut] if cut else pkt, size=len(pkt),
                   verdict=verdict)  # fmt: skip


def _exchange():
    """A handshake, three data segments of which the second is sent again, the server's answer and ACKs."""
    return [
        _e(1, 0.0, flags="S", seq=999, **C),
        _e(2, 0.1, flags="SA", seq=4999, ack=1000, **S),
        _e(3, 0.2, flags="A", seq=1000, ack=5000, **C),
        _e(4, 0.3, flags="PA", seq=1000, ack=5000, payload=b"GET / ", **C),
        _e(5, 0.4, flags="PA", seq=1006, ack=5000, payload=b"HTTP/1.1\r\n", verdict="drop", **C),
        _e(6, 0.5, flags="PA", seq=1016, ack=5000, payload=b"\r\n", **C),
        _e(7, 0.6, flags="A", seq=5000, ack=1006, **S),
        _e(8, 0.7, flags="A", seq=5000, ack=1006, **S),
        _e(9, 0.8, flags="A", seq=5000, ack=1006, **S),
        _e(10, 0.85, flags="PA", seq=1006, ack=5000, payload=b"HTTP/1.1\r\n", **C),
        _e(11, 400.0, flags="PA", seq=1006, ack=5000, payload=b"HTTP/1.1\r\n", **C),
        _e(12, 400.1, flags="PA", seq=5000, ack=1018, payload=b"200 OK", **S),
    ]


def test_flows_sides_flags_and_relative_numbers() -> None:
    rows = analyse(_exchange())
    assert [r["flow"] for r in rows] == [0] * 12
    assert [r["side"] for r in rows[:3]] == ["client", "server", "client"]
    assert [r["flags"] for r in rows[:4]] == ["S", "AS", "A", "AP"] and flag_letters(0x11) == "AF"
    assert [(r["seq"], r["ack"]) for r in rows[:4]] == [(0, None), (0, 1), (1, 1), (1, 1)]
    assert rows[3]["seq_raw"] == 1000 and rows[3]["len"] == 6 and rows[1]["ack_raw"] == 1000
    assert rows[0]["t"] == 0 and rows[11]["t"] == pytest.approx(0.4001)


def test_wiresharks_markers() -> None:
    marks = [r["analysis"] for r in analyse(_exchange())]
    assert marks[5] is None  # a segment after a gap is not a retransmission (Wireshark: previous segment lost)
    assert marks[6] is None and marks[7] == marks[8] == "duplicate ack"
    assert marks[9] == "fast retransmission"  # two duplicate ACKs, the segment they ask for, within 20 ms
    assert marks[10] == "retransmission"  # long after: a timeout's
    late = analyse([*_exchange(), _e(13, 401.0, flags="PA", seq=1006, ack=5006, payload=b"HTTP/1.1\r\n", **C)])
    assert late[12]["analysis"] == "spurious retransmission"  # the server had acked all of it (ack 1018)


def test_follow_reassembles_once_and_counts_what_is_missing() -> None:
    entries = _exchange()
    f = follow(entries, 0)
    assert f.client == b"GET / HTTP/1.1\r\n\r\n" and f.server == b"200 OK" and f.missing == {"client": 0, "server": 0}
    assert follow(entries, 0, delivered=True) == f  # the dropped segment was sent again
    resent = [e for e in entries if e.id not in (10, 11)]  # as if the dropped segment had never been sent again
    assert follow(resent, 0).client == b"GET / HTTP/1.1\r\n\r\n"  # what the client sent
    gap = follow(resent, 0, delivered=True)  # what went on to the server
    assert gap.client == b"GET / \r\n" and gap.missing["client"] == 10
    cut = follow([*entries[:11], _e(12, 400.1, cut=41, flags="PA", seq=5000, ack=1018, payload=b"200 OK", **S)], 0)
    assert cut.server == b"2" and cut.missing["server"] == 5  # the record kept 41 bytes: 40 of headers, 1 of payload
    with pytest.raises(KeyError, match="no flow 3"):
        follow(entries, 3)


@pytest.mark.skipif(__import__("shutil").which("tshark") is None, reason="tshark is not installed")
def test_tshark_marks_the_same_segments(tmp_path) -> None:
    import subprocess

    from pktlab.pipeline.export import to_pcap
    from pktlab.pipeline.record import Record

    entries = [*_exchange(), _e(13, 401.0, flags="PA", seq=1006, ack=5006, payload=b"HTTP/1.1\r\n", **C)]
    record = Record(capacity=20)
    for e in entries:
        record.append(e)
    named = type("Named", (), {"name": "made", "record": record})()
    to_pcap(named, tmp_path / "made.pcapng")
    expert = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "made.pcapng"), "-T", "fields", "-e",
                             "_ws.expert.message"], capture_output=True, text=True, check=True).stdout  # fmt: skip
    theirs = [line.lower() for line in expert.splitlines()]
    for row, said in zip(analyse(entries), theirs, strict=True):
        for mark, words in (("fast retransmission", "fast retransmission"), ("spurious", "spurious"),
                            ("duplicate ack", "duplicate ack"), ("out-of-order", "out-of-order")):  # fmt: skip
            assert (mark in (row["analysis"] or "")) == (words in said), (row, said)
        resent = "retransmission" in (row["analysis"] or "")  # tshark says it of fast and spurious ones too
        assert resent == ("a (suspected) retransmission" in said), (row, said)


def test_flows_from_the_record_have_verdicts_and_the_client_first() -> None:
    from pktlab.pipeline.tcp_analysis import flow_summary

    (f,) = flow_summary(_exchange())
    assert (f["a"], f["aport"], f["b"], f["bport"]) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (f["packets_ab"], f["packets_ba"], f["accepted"], f["dropped"]) == (7, 5, 11, 1)
    assert f["retransmissions"] == 2 and f["tcp_state"] == "established"
    (late,) = flow_summary(_exchange()[1:])  # the record begins with the server's SYN-ACK
    assert (late["a"], late["b"]) == ("10.0.0.1", "10.0.0.2")  # still the client first
    closed = [*_exchange(), _e(13, 401, flags="FA", seq=1018, ack=5006, **C), _e(14, 402, flags="FA", seq=5006,
              ack=1019, **S), _e(15, 403, flags="S", seq=77, **C)]  # fmt: skip
    first, again = flow_summary(closed)
    assert first["tcp_state"] == "closed" and again["tcp_state"] == "syn-sent" and again["flow"] == 1


def test_follow_delivered_has_the_handlers_rewrites() -> None:
    entries = _exchange()
    new = t.tcp(raw=True, flags="PA", seq=5000, ack=1018, payload=b"404 NO", **S)  # a handler changed the answer
    entries[11] = entries[11]._replace(modified=True)
    by_id = {12: new}
    f = follow(entries, 0, delivered=True, rewritten=lambda e: by_id.get(e.id) if e.modified else None)
    assert f.server == b"404 NO" and follow(entries, 0).server == b"200 OK"  # sent, and delivered
