"""DPI where only a flow's first packets reach Python (pktlab.name_filter): real TLS (openssl s_server, curl) and
plain HTTP through a router, each flow decided by the name it asks for, in both privilege modes."""

from __future__ import annotations

import pktlab
from pktlab import Lab
from pktlab.packet.tls import client_hello_length, server_name
from tests.conftest import needs_live, pktlab_rules

ALLOWED, BLOCKED = "www.lab.example", "blocked.lab.example"


def test_the_server_name_of_a_client_hello_even_cut_in_two() -> None:
    from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    hello = bytes(TLS(msg=[TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=b"a.lab")])])]))
    assert server_name(hello) == "a.lab" and client_hello_length(hello) == len(hello)
    assert server_name(hello[:40]) is None and client_hello_length(hello[:40]) == len(hello)  # wait for the rest
    assert server_name(bytes(TLS(msg=[TLSClientHello(ext=[])]))) == ""  # a ClientHello without a name
    assert server_name(b"GET / HTTP/1.1\r\nHost: a.lab\r\n\r\n") is None and client_hello_length(b"GET /") is None


@needs_live
def test_blocked_names_are_reset_and_other_flows_stay_in_the_kernel(router_lab: Lab, queue_num: int) -> None:
    lab = router_lab
    with pktlab.WebServer(lab, [ALLOWED, BLOCKED], size=4 << 20) as web:
        s = pktlab.attach(queue_num, rule="-p tcp", hook="FORWARD", netns=lab.router, flow_verdicts=True)
        try:
            handler = pktlab.name_filter({BLOCKED})
            s.add_handler(handler, "by_name")
            for tls in (True, False):
                before = s.record.n
                r = web.fetch(ALLOWED, tls=tls)
                assert r.ok and r.bytes == 4 << 20, r
                # SYN, SYN-ACK, ACK and the first data (ClientHello or request) decide; the other ~100 stay below
                assert s.record.n - before <= 8, s.record.n - before
                b = web.fetch(BLOCKED, tls=tls, timeout=10)
                assert not b.ok and b.error == f"curl: ({35 if tls else 56}) Recv failure: Connection reset by peer"
            assert dict(handler.names) == {(ALLOWED, "accept"): 2, (BLOCKED, "drop"): 2}
            accepted = [f for f in s.flows_offloaded if f.verdict == "accept"]
            assert sorted(f.dport for f in accepted) == [web.http_port, web.tls_port]
            assert all(f.packets is None or f.packets > 50 for f in accepted)  # conntrack's count: the whole flow
            # out of the path and back: every rule comes back, the flows' accept rule in front of the queue too
            rules = sorted(pktlab_rules(lab.router.netns))
            with s.out_of_path():
                assert web.fetch(ALLOWED, path="/cert.pem").ok and pktlab_rules(lab.router.netns) == []
            assert len(rules) == 2 and sorted(pktlab_rules(lab.router.netns)) == rules  # the queue's, the flows'
        finally:
            s.detach()
    assert pktlab_rules(lab.router.netns) == []


def test_name_filter_imports_the_tls_layer_when_made_not_on_the_first_client_hello() -> None:
    """scapy's TLS layer takes ~0.3 s to import: paid in the reading thread on a flow's first ClientHello it held
    that packet past a loaded machine's 500 ms deadline (the watchdog then passed the flow undecided)."""
    import subprocess
    import sys

    code = ("import sys, pktlab\n"
            "before = 'scapy.layers.tls.record' in sys.modules\n"
            "pktlab.name_filter({'blocked.example'})\n"
            "print(before, 'scapy.layers.tls.record' in sys.modules)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
