"""Malformed packets are the packet's fault, never pktlab's: truncated, bit-flipped and random packets
replayed through handlers that touch every view give no pktlab internal error and no crash, and the
record reads at the TCP level (s.df, s.flows, s.follow) without an exception.

The replay runs in a subprocess, so that a crash in compiled code fails this test instead of the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FUZZ = r"""
import json, random, sys

from scapy.utils import RawPcapReader

import pktlab
from pktlab import PktlabError, datasets, testing

rng = random.Random(int(sys.argv[2]))
base = []
for name in ("lab-tcp", "lab-udp", "lab-icmp", "lab-dns", "lab-http", "lab-udp6", "lab-malformed"):
    reader = RawPcapReader(str(datasets.resolve(name)))
    skip = 14 if reader.linktype == 1 else 0
    base += [bytes(data[skip:]) for data, _ in reader][:100]
    reader.close()
packets = []
for data in base:
    for _ in range(2):  # truncated anywhere
        packets.append(data[: rng.randrange(0, len(data) + 1)])
    for _ in range(6):  # a few bits flipped in the headers
        flipped = bytearray(data)
        for _ in range(rng.randrange(1, 9)):
            i = rng.randrange(min(len(flipped), 64))
            flipped[i] ^= 1 << rng.randrange(8)
        packets.append(bytes(flipped))
for _ in range(2 * len(base)):  # random bytes, half of them starting like IPv4 or IPv6
    data = bytearray(rng.randbytes(rng.randrange(1, 120)))
    if rng.random() < 0.5:
        data[0] = (rng.choice((0x40, 0x60)) | (data[0] & 0x0F))
    packets.append(bytes(data))
path = testing.capture(sys.argv[1], packets)

READS = ("version", "proto", "summary", "payload", "transport", "flow", "dns", "http")
FIELDS = {
    "ip": ("src", "dst", "ttl", "len", "id", "flags", "frag", "proto", "checksum", "ihl", "tos"),
    "ipv6": ("src", "dst", "hlim", "plen", "nh", "flow"),
    "tcp": ("sport", "dport", "seq", "ack", "flags", "flagbits", "window", "checksum", "payload", "options"),
    "udp": ("sport", "dport", "len", "checksum", "payload"),
    "icmp": ("type", "code", "id", "seq", "checksum", "payload"),
}
odd = []  # exceptions a view raised that are not pktlab's own (PacketFormatError and kin)


def look(fn):
    try:
        return fn()
    except PktlabError:
        return None
    except AttributeError as exc:  # a field this view does not have: the fuzz's list, not pktlab's fault
        if "has no attribute" not in str(exc):
            odd.append(repr(exc))
    except Exception as exc:
        odd.append(f"{type(exc).__name__}: {exc}")


def touch_every_view(pkt):
    for name in READS:
        look(lambda: getattr(pkt, name))
    look(lambda: repr(pkt))
    look(lambda: len(pkt))
    look(lambda: pkt.raw[0:40])
    for layer, names in FIELDS.items():
        view = look(lambda: getattr(pkt, layer))
        if view is not None:
            for n in names:
                look(lambda: getattr(view, n))
    if look(lambda: pkt.ip) is not None:
        look(lambda: setattr(pkt.ip, "ttl", 9))  # a write: the packet is fixed up at its verdict
    return None


s = pktlab.replay(str(path))
s.add_handler(touch_every_view, "touch")
s.run()
st = s.status()
try:  # the record read at the TCP level: every malformed packet is a row, never an exception
    df, flows = s.df, s.flows
    for fid in sorted(set(df["flow"].dropna()))[:50]:
        s.follow(int(fid))
    tcp_level = [len(df), len(flows)]
except Exception as exc:
    tcp_level = [f"{type(exc).__name__}: {exc}"]
print(json.dumps({"packets": len(packets), "record": s.record.n, "internal": st.internal_errors, "tcp_level": tcp_level,
                  "last_internal": st.last_internal_error, "handler_errors": len(s.errors), "odd": odd[:5],
                  "odd_count": len(odd)}))
"""


def test_malformed_packets_cause_no_internal_error_and_no_crash(tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        out = subprocess.run([sys.executable, "-c", FUZZ, str(tmp_path / f"fuzz{seed}.pcap"), str(seed)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, f"seed {seed}: exit {out.returncode}\n{out.stderr[-3000:]}"
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["packets"] > 500 and got["record"] == got["packets"], got
        assert got["internal"] == 0, f"seed {seed}: pktlab internal errors: {got}"
        assert got["odd_count"] == 0, f"seed {seed}: views raised what is not a PacketFormatError: {got}"
        assert got["handler_errors"] == 0, got
        assert got["tcp_level"][0] == got["packets"], got  # s.df, s.flows and s.follow read every packet
