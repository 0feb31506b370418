"""tcpdump filters compiled by libpcap (no kernel needed; tcpdump itself is the reference)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from pktlab import FilterError
from pktlab.kernel import bpf

DATA = Path(__file__).resolve().parents[2] / "datasets"
EXPRS = ["udp", "udp and dst port 9000", "icmp", "tcp[tcpflags] & tcp-syn != 0", "ip6", "not port 53", "len > 100"]
needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")


@needs_tcpdump
@pytest.mark.parametrize("expr", EXPRS)
def test_program_is_what_tcpdump_lists(expr: str) -> None:
    ref = subprocess.run(["tcpdump", "-d", "-y", "RAW", expr], capture_output=True, text=True, check=True).stdout
    assert bpf.compile(expr).dump().split() == ref.split()


@needs_tcpdump
@pytest.mark.parametrize("expr", EXPRS)
def test_matches_select_what_tcpdump_selects_on_the_captures(expr: str) -> None:
    for pcap in sorted(DATA.glob("*.pcap")):
        out = subprocess.run(
            ["tcpdump", "-nn", "-r", str(pcap), expr], capture_output=True, text=True, check=True
        ).stdout
        prog = bpf.compile(expr)
        assert sum(prog.matches(bytes(p)) for p in rdpcap(str(pcap))) == len(out.splitlines()), pcap.name


def test_bytecode_is_in_xt_bpf_form() -> None:
    prog = bpf.compile("udp and dst port 53")
    n, *insns = prog.bytecode.split(",")
    assert int(n) == len(insns) == len(prog)
    assert all(len(i.split()) == 4 for i in insns)
    assert prog.match_args()[:3] == ["-m", "bpf", "--bytecode"]
    assert prog.matches(bytes(IP() / UDP(dport=53))) and not prog.matches(bytes(IP() / UDP(dport=54)))
    assert prog.matches(bytes(IPv6() / UDP(dport=53)))  # one program for both families
    assert not prog.matches(bytes(IP() / TCP(dport=53)))
    assert "ret" in prog._repr_html_()


def test_invalid_expression_gives_libpcaps_message() -> None:
    with pytest.raises(FilterError, match="libpcap cannot compile the filter 'udp and dst prot 53': .*prot"):
        bpf.compile("udp and dst prot 53")
    with pytest.raises(FilterError, match="tcpdump syntax"):
        bpf.compile("icmp and (")


def test_too_long_for_the_kernel_is_refused_before_iptables() -> None:
    long = " or ".join(f"dst port {p}" for p in range(1000, 1100))
    prog = bpf.compile(long)
    assert len(prog) > bpf.XT_BPF_MAX_INSTRUCTIONS
    with pytest.raises(FilterError, match="at most 64"):
        prog.match_args()


def test_ethernet_link() -> None:
    from scapy.layers.l2 import Ether

    prog = bpf.compile("icmp", link="ethernet")
    assert prog.matches(bytes(Ether() / IP() / ICMP()))
    assert not bpf.compile("icmp").matches(bytes(Ether() / IP() / ICMP()))
