"""Compiling a Python handler into nftables rules: what each construct becomes, and what is refused and why.

Whether the kernel runs the rules as Python runs the function is tests/integration/test_kernel_handlers.py.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network  # noqa: F401 - the handlers below name them

import pytest

import pktlab
from pktlab.errors import KernelHandlerError
from pktlab.kernel.handler_compile import KERNEL_ACCEPT, compile_handler

BLOCKED = {22, 23}


def firewall(pkt):  # type: ignore[no-untyped-def]
    if pkt.tcp is not None and pkt.tcp.dport in BLOCKED:
        return pkt.drop()
    if pkt.udp is not None and (pkt.udp.dport == 53 or pkt.udp.dport in range(5000, 6000)):
        pkt.ip.ttl = 9
        return pkt.accept(mark=5)
    if ip_address(pkt.ip.src) in ip_network("10.77.1.0/24") and not pkt.ip.ttl < 3:
        pkt.ip.dst = "10.77.2.99"
        if pkt.tcp and pkt.tcp.flags.syn:
            pkt.tcp.dport = 8080
        else:
            pkt.set_mark(7)
    elif pkt.icmp is not None and pkt.icmp.type == 8:
        return pkt.drop()
    return None


def _rules(fn, family: str = "ipv4") -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(r.chain, r.text) for r in compile_handler(fn, family=family).rules]


def test_each_construct_becomes_its_rule() -> None:
    c = compile_handler(firewall)
    assert c.rewrites and c.name == "firewall"
    assert _rules(firewall) == [
        ("main", "meta l4proto tcp tcp dport { 22, 23 } drop"),  # a set from the module, read when compiled
        ("main", f"meta l4proto udp udp dport == 53 ip ttl set 9 meta mark set {5 | KERNEL_ACCEPT:#x} accept"),
        ("main", f"meta l4proto udp udp dport 5000-5999 ip ttl set 9 meta mark set {5 | KERNEL_ACCEPT:#x} accept"),
        ("main", "ip saddr 10.77.1.0/24 ip ttl >= 3 goto @main_if7"),  # evaluated once, before the rewrites
        ("main", "goto @main_else7"),
        ("main_if7", "ip daddr set 10.77.2.99"),
        ("main_if7", "meta l4proto tcp tcp flags & 0x02 == 0x02 goto @main_if7_if9"),
        ("main_if7", "goto @main_if7_else9"),
        ("main_else7", "meta l4proto icmp icmp type == 8 drop"),
        ("main_else7", "goto @main_after7"),
        ("main_after7", "return"),
        ("main_if7_if9", "tcp dport set 8080"),
        ("main_if7_if9", "goto @main_after7"),  # both inner branches go on to what follows the outer if
        ("main_if7_else9", "meta mark set 0x7"),
        ("main_if7_else9", "goto @main_after7"),
    ]
    shown = c.describe()
    assert "tcp dport { 22, 23 } drop" in shown
    assert "# line 20: if pkt.tcp is not None and pkt.tcp.dport in BLOCKED" in shown  # its line in this file


def test_ipv6_fields_and_presence() -> None:
    def v6(pkt):  # type: ignore[no-untyped-def]
        if pkt.ipv6 is not None and pkt.ipv6.hlim <= 2 and pkt.udp is None:
            return pkt.drop()
        if pkt.ipv6 is not None and ip_address(pkt.ipv6.dst) in ip_network("fd00::/8"):
            pkt.ipv6.hlim = 64
            pkt.ipv6.dscp = 10
            return pkt.accept()
        return None

    assert _rules(v6, "both") == [
        ("main", "meta nfproto ipv6 ip6 hoplimit <= 2 meta l4proto != udp drop"),
        ("main", f"meta nfproto ipv6 ip6 daddr fd00::/8 ip6 hoplimit set 64 ip6 dscp set 10 meta mark set meta mark | "
                 f"{KERNEL_ACCEPT:#x} accept"),  # fmt: skip
        ("main", "return"),
    ]


REFUSED = {  # body: (the line refused, what the message says)
    "for port in (1, 2):\n        pass": (2, "a for loop cannot run in the kernel"),
    "if len(pkt.payload) > 3:\n        return pkt.drop()": (2, "(one side must be a header field)"),
    "if pkt.tcp.dport == 22:\n        return pkt.drop()": (2, "pkt.tcp.dport is used where the packet may have no tcp"),
    "pkt.ip.ttl -= 1": (2, "an augmented assignment cannot run in the kernel"),
    "seen.append(pkt.ip.src)": (2, "a call cannot run in the kernel"),
    "if pkt.udp is not None:\n        return pkt.accept(flow=True)": (3, "a flow verdict"),
    "if pkt.ip.dst == '::1':\n        return pkt.drop()": (2, "the IPv6 address ::1 for an IPv4 field"),
    "if pkt.udp is not None and pkt.udp.dport == 70000:\n        return pkt.drop()": (2, "the value 70000 for a field"),
    "pkt.ip.proto = 17": (2, "writing pkt.ip.proto cannot run in the kernel"),
    "if pkt.ip.ttl > 3:\n        return 'accept'": (3, "returning anything but pkt.accept(), pkt.drop() or None"),
    "return pkt.accept(mark=0x10000000)": (2, "bit 0x10000000 is pktlab's own"),
}


@pytest.mark.parametrize("body", list(REFUSED))
def test_what_cannot_run_in_the_kernel_is_refused_with_its_line(body: str) -> None:
    src = f"def h(pkt):\n    {body}\n"
    line, says = REFUSED[body]
    with pytest.raises(KernelHandlerError) as e:
        compile_handler(src)
    msg = str(e.value)
    assert says in msg, msg
    assert msg.startswith(f"line {line} ({src.splitlines()[line - 1].strip()})"), msg
    assert msg.endswith("without kernel=True the handler runs in Python as it is")


def test_a_cells_lines_are_numbered_as_the_cell_shows_them() -> None:
    src = "def h(pkt):\n    if pkt.udp is not None:\n        while True:\n            pass\n"
    with pytest.raises(KernelHandlerError, match=r"^line 2 \(while True:\)"):
        compile_handler(src, first_line=0)


def _is_syn(b: bytes) -> bool:
    return b[9] == 6 and bool(b[(b[0] & 15) * 4 + 13] & 0x02)


def test_a_kernel_handler_runs_in_python_in_a_replay_with_the_same_verdicts() -> None:
    def kh(pkt):  # type: ignore[no-untyped-def]
        if pkt.udp is not None and pkt.udp.dport == 53:
            return pkt.drop()
        if pkt.ip is not None and pkt.ip.ttl >= 64:
            pkt.ip.ttl = 63
        return None

    results = []
    for kernel in (True, False):
        s = pktlab.replay("dns-and-http")
        s.handler(kh, kernel=kernel)
        assert s.chain.in_kernel is False and [h.name for h in s.chain.active] == ["kh"]
        s.run()
        results.append((dict(s.record.counts), [bytes(b) for _, b, _ in s.outputs]))
        if kernel:
            assert list(s.kernel_rules["rule"])[0] == "meta l4proto udp udp dport == 53 drop"
            assert s.kernel_rules["packets"].isna().all()  # nothing ran in a kernel
    (kernel_counts, kernel_out), (py_counts, py_out) = results
    assert kernel_counts == py_counts and kernel_counts[pktlab.DROP] == 1
    # the same bytes, but for SYNs: behind a Python handler (which may grow segments) pktlab takes 64 bytes off
    # their MSS; a kernel handler changes no length, so its SYNs keep theirs, as they do live
    assert [b for b in kernel_out if not _is_syn(b)] == [b for b in py_out if not _is_syn(b)]
    syns = [(k, p) for k, p in zip(kernel_out, py_out, strict=True) if _is_syn(k)]
    assert syns and all(b"\x02\x04\x05\xb4" in k and b"\x02\x04\x05\x74" in p for k, p in syns)


def test_kernel_handlers_go_in_front_of_python_ones() -> None:
    s = pktlab.replay("dns-and-http")
    def firewall(pkt):  # type: ignore[no-untyped-def]
        if pkt.tcp is not None and pkt.tcp.dport == 22:
            return pkt.drop()
        return None

    s.add_handler(lambda pkt: None, "py")
    s.handler(firewall, kernel=True)
    assert s.handlers == ["firewall", "py"]
    with pytest.raises(pktlab.HandlerError, match="kernel handlers run before the queue"):
        s.add_handler(lambda pkt: None, "early", before="firewall")
    s.add_handler(lambda pkt: None, "firewall")  # the same name in Python: it moves behind the kernel handlers
    assert s.handlers == ["py", "firewall"] and s.chain["firewall"].kernel is None
