"""The record ring and its exports (synthetic entries, no kernel needed)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from pktlab import ACCEPT, DROP, SessionError
from pktlab import testing as t
from pktlab.pipeline.export import to_pcap
from pktlab.pipeline.record import Record


def entry(i: int, verdict=ACCEPT, err=None):
    return t.entry(id=i, time=1700000000.0 + i, packet=t.udp(sport=1000 + i, payload=b"x", raw=True),
                   verdict=verdict, handler="h" if verdict is DROP else None, handler_us=2.5, error=err)  # fmt: skip


def test_ring_keeps_the_newest_and_counts_all() -> None:
    r = Record(capacity=5)
    for i in range(12):
        r.append(entry(i, DROP if i % 3 == 0 else ACCEPT, "boom" if i == 11 else None))
    assert r.n == 12 and len(r) == 5
    assert [e.id for e in r] == [7, 8, 9, 10, 11]
    assert r.counts[DROP] == 4 and r.counts[ACCEPT] == 8 and r.errors == 1
    assert r.counters()["packets"] == 12


@pytest.mark.parametrize("capacity", [1, 2, 3])
def test_a_ring_smaller_than_its_write_ahead_keeps_the_newest(capacity: int) -> None:
    # a put fetches the memory of the entry two ahead: in a ring of 1 to 3 that wraps round onto live entries
    r = Record(capacity=capacity, snaplen=65535)
    for i in range(7):
        r.append(entry(i))
    assert [e.id for e in r] == list(range(7 - capacity, 7))
    assert [bytes(e.head)[-1:] for e in r] == [b"x"] * capacity and r.n == 7


def test_dataframe_columns_and_values() -> None:
    r = Record(capacity=10)
    for i in range(3):
        r.append(entry(i, DROP if i == 1 else ACCEPT))
    df = r.df()
    assert list(df.columns)[:10] == ["time", "direction", "id", "hook", "size", "proto", "src", "dst", "sport", "dport"]
    assert set(df.direction) == {"in"}
    assert list(df["sport"]) == [1000, 1001, 1002]
    assert list(df["verdict"]) == ["accept", "drop", "accept"]
    assert df.loc[1, "handler"] == "h" and df.loc[0, "handler_us"] == 2.5
    assert set(df["hook"]) == {"INPUT"} and set(df["proto"]) == {"udp"}


class _Named:
    """What export.to_pcap takes: a name and a record (a session has both)."""

    def __init__(self, name: str, record: Record) -> None:
        self.name, self.record = name, record


def test_empty_record_gives_empty_frame_and_valid_pcap(tmp_path) -> None:
    r = Record(capacity=3)
    assert len(r.df()) == 0
    assert to_pcap(_Named("s", r), tmp_path / "e.pcapng") == 0
    assert len(rdpcap(str(tmp_path / "e.pcapng"))) == 0


def test_pcap_keeps_wire_length_and_says_it_was_cut(tmp_path, capsys) -> None:
    r = Record(capacity=3)
    r.append(entry(1)._replace(size=1500))  # seen 1500 bytes, kept the head
    to_pcap(_Named("s", r), tmp_path / "p.pcapng")
    p = rdpcap(str(tmp_path / "p.pcapng"))[0]
    assert p.wirelen == 1500 and UDP in p and p[UDP].dport == 9000
    assert p.comments == [b"pktlab session=s verdict=accept handler=none cut to 29 of 1500 bytes (the record's snaplen)"]  # noqa: E501
    said = capsys.readouterr().err
    assert "1 of 1 packets were cut to the record's snaplen (256 bytes); attach with snaplen=65535" in said


def test_sessions_merge_in_time_order(tmp_path) -> None:
    a, b = Record(capacity=10), Record(capacity=10)
    for i in (0, 2, 4):
        a.append(entry(i))
    for i in (1, 3):
        b.append(entry(i, DROP, err="Traceback ...\nValueError: bad"))
    b.append(entry(5)._replace(verdict="sent"))
    assert to_pcap([_Named("client", a), _Named("server", b)], tmp_path / "m.pcapng") == 6
    pkts = rdpcap(str(tmp_path / "m.pcapng"))
    assert [p[UDP].sport for p in pkts] == [1000, 1001, 1002, 1003, 1004, 1005]
    assert [p.comments[0].split()[1] for p in pkts] == [b"session=client", b"session=server"] * 3
    assert pkts[1].comments == [b"pktlab session=server verdict=drop handler=h error=ValueError: bad"]
    assert pkts[5].direction == 2  # pktlab sent it: outbound
    with pytest.raises(SessionError, match="same name"):
        to_pcap([_Named("x", a), _Named("x", b)], tmp_path / "bad.pcapng")
    with pytest.raises(SessionError, match=r"a session \(or a list of them\) and then the path"):
        to_pcap(str(tmp_path / "swapped.pcapng"), [_Named("x", a)])  # type: ignore[arg-type]


def test_count_since_counts_the_newest_entries() -> None:
    r = Record(capacity=4)
    for i in range(6):  # times 1700000000 .. +5; the ring holds the last four
        r.append(entry(i))
    assert r.ring.count_since(1700000000.0 + 3) == 3
    assert r.ring.count_since(0) == 4
    assert r.ring.count_since(1800000000.0) == 0


def test_a_record_too_large_for_memory_is_refused_with_the_size_that_fits() -> None:
    with pytest.raises(ValueError, match=r"6\.1 GiB .* record_size=16,384 or fewer"):
        Record(100_000, 65535)
    assert Record(1_000, 65535).capacity == 1_000  # whole packets, a record of a thousand: fine


def test_each_entry_carries_when_its_verdict_was_decided_on_the_kernels_clock() -> None:
    import time

    r = Record(capacity=10)
    before = time.monotonic_ns()
    for i in range(3):
        r.append(entry(i))
    after = time.monotonic_ns()
    decided = [e.decided_ns for e in r]
    assert before <= decided[0] <= decided[1] <= decided[2] <= after  # CLOCK_MONOTONIC, as bpftrace's nsecs
