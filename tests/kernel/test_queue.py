"""The NFQUEUE source's checks and its batch verdict message (no kernel: the real path is in integration)."""

from __future__ import annotations

import socket
import struct

import pytest

from pktlab import PktlabError
from pktlab.kernel.queue import QueueSource, batch_verdict_prefix


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"copy_range": 0}, "copy range 0 is out of range"),
        ({"copy_range": 70000}, "copy range 70000 is out of range"),
        ({"max_len": 0}, "max_len 0 is out of range"),
        ({"sock_bytes": 100}, "sock_bytes"),
    ],
)
def test_settings_out_of_range_are_refused(options: dict, message: str) -> None:
    with pytest.raises(PktlabError, match=message):
        QueueSource(1, **options)


def test_a_new_source_is_idle() -> None:
    q = QueueSource(5)
    assert not q.running and not q.paused and q.enobufs == 0 and q.counters() is None
    q.stop()  # stopping what never started is a no-op


def test_batch_verdict_prefix_is_an_nfnetlink_verdict_batch_header() -> None:
    p = batch_verdict_prefix(258)
    assert len(p) == 24
    length, msg_type, flags, _seq, _pid = struct.unpack("=IHHII", p[:16])
    assert length == 32 and msg_type == (3 << 8) | 3 and flags == 1  # NFNL_SUBSYS_QUEUE, VERDICT_BATCH, REQUEST
    family, version, res_id = struct.unpack("!BBH", p[16:20])
    assert family == socket.AF_UNSPEC and version == 0 and res_id == 258
    assert struct.unpack("=HH", p[20:24]) == (12, 2)  # NFQA_VERDICT_HDR: 4-byte header + verdict + id
