"""pkt.uid and pkt.gid: the owner of a local packet's socket, as the queue says (NFQA_CFG_F_UID_GID), real kernel."""

from __future__ import annotations

import os

import pktlab
from pktlab import Lab
from pktlab.kernel import privilege
from pktlab.lab.network import wait_until
from tests.conftest import needs_live

pytestmark = needs_live

NOBODY, NOGROUP = 65534, 65534


def _send(lab: Lab, addr: str, n: int, *as_user: str) -> None:
    code = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"[s.sendto(b'x', ('{addr}', 9555)) for _ in range({n})]"
    )
    # Debian's python (scripts/setup.sh installs python3-venv): nobody may read it, unlike a venv under /root
    lab.client.run([*as_user, "/usr/bin/python3", "-c", code])


def test_local_packets_carry_their_sockets_owner_and_forwarded_ones_none(router_lab: Lab, queue_num: int) -> None:
    """Datagrams sent by nobody and by root from the client: the client's OUTPUT queue names each
    sender; the router's FORWARD queue sees the same datagrams with no socket: None."""
    out = pktlab.attach(queue_num, rule="-p udp --dport 9555", hook="OUTPUT", netns=router_lab.client, deadline=None)
    fwd = pktlab.attach(queue_num + 1000, rule="-p udp --dport 9555", hook="FORWARD", netns=router_lab.router,
                        deadline=None)  # fmt: skip
    owners: list = []
    passing: list = []
    try:
        out.add_handler(lambda pkt: owners.append((pkt.uid, pkt.gid)), "owners")
        fwd.add_handler(lambda pkt: passing.append((pkt.uid, pkt.gid)), "passing")
        if privilege.current().name == "root":
            nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups"]
            first, second = (NOBODY, NOGROUP), (0, 0)
        else:  # an ordinary user's lab maps one user, its own (root inside): the queue names the user outside
            nobody, first = [], (os.getuid(), os.getgid())
            second = first
        _send(router_lab, router_lab.server.addr, 3, *nobody)
        _send(router_lab, router_lab.server.addr, 2)
        assert wait_until(lambda: len(owners) == 5 and len(passing) == 5, timeout=10), (owners, passing)
    finally:
        out.detach()
        fwd.detach()
    assert owners == [first] * 3 + [second] * 2
    assert passing == [(None, None)] * 5


def test_a_capture_has_no_owner(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pktlab.testing import capture, udp

    r = pktlab.replay(capture(tmp_path / "u.pcap", [udp(payload=b"x")]))
    got: list = []
    r.add_handler(lambda pkt: got.append((pkt.uid, pkt.gid)), "h")
    r.run()
    assert got == [(None, None)]
