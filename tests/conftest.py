"""Shared fixtures: real labs on the real kernel, always torn down, leftovers checked."""

from __future__ import annotations

import itertools
import os
import subprocess

import pytest

from pktlab import Lab
from pktlab.kernel import netns, privilege

_QUEUES = itertools.count(10)


def _is_root() -> bool:
    """True in root mode: the host's own namespace and kernel tracepoints are ours."""
    return privilege.current().name == "root"


def _is_live() -> bool:
    """True when labs and queues work: root mode, or user-namespace mode (an ordinary user)."""
    return privilege.current().live


# what only root can do: kernel tracepoints (pktlab.trace's kernel times, pktlab.drops), the host's namespace
needs_root = pytest.mark.skipif(not _is_root(), reason="needs root: kernel tracepoints or the host's own namespace")


def root_only(why: str) -> pytest.MarkDecorator:
    """Skip outside root mode, saying why: what only root mode has, or what only root can set up for a test."""
    return pytest.mark.skipif(not _is_root(), reason=f"root mode only: {why}")


# a lab and a reader in different processes: root mode's shared /var/run/netns; an ordinary user's labs end
# with their process (tests/integration/test_userns.py kills one and checks nothing is left)
other_process = root_only("another process's lab (an ordinary user's labs end with their process: test_userns.py)")
# everything live: labs, queues, rules, in either privilege mode
needs_live = pytest.mark.skipif(not _is_live(), reason="no live mode here (neither root nor user namespaces)")


def pktlab_rules(ns: str | None) -> list[str]:
    """Every line of iptables-save / ip6tables-save in ``ns`` that is pktlab's (tagged by comment or BPF program)."""
    from pktlab.kernel.rules import FRONT_MAGIC

    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        proc = subprocess.run(netns.argv_in(ns, [tool]), capture_output=True, text=True, check=False)
        out += [line for line in proc.stdout.splitlines() if "pktlab" in line or f",0 0 0 {FRONT_MAGIC}," in line]
    return out


def my_namespaces() -> list[str]:
    return [n for n in netns.list_names() if n.startswith(f"pktlab-{os.getpid()}-")]


def read_every_view(pkt) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Read every layer, field, payload and option block of a packet.

    Returns (outcome, layer) pairs: "ok", "PacketFormatError", or the text of any
    other exception, which would be a bug in the views.
    """
    from pktlab import PacketFormatError

    outcomes = []
    for name in ("eth", "ip", "ipv6", "udp", "tcp", "icmp", "icmpv6", "transport", "dns"):
        try:
            layer = getattr(pkt, name)
            if layer is None:
                continue
            layer.as_dict()
            layer.payload  # noqa: B018
            if hasattr(type(layer), "options"):
                layer.options  # noqa: B018
            outcomes.append(("ok", name))
        except PacketFormatError:
            outcomes.append(("PacketFormatError", name))
        except Exception as exc:
            outcomes.append((f"{type(exc).__name__}: {exc}", name))
    repr(pkt)
    return outcomes


@pytest.fixture
def queue_num() -> int:
    """A queue number no other test in this run uses."""
    return next(_QUEUES)


@pytest.fixture
def lab():
    """A two-host lab, removed after the test whatever happened, and checked gone."""
    if not _is_live():
        pytest.skip("no live mode here (neither root nor user namespaces)")
    lab = Lab()
    names = [h.netns for h in lab.hosts.values()]
    try:
        yield lab
    finally:
        lab.down()
        left = [n for n in names if n in netns.list_names()]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def router_lab():
    if not _is_live():
        pytest.skip("no live mode here (neither root nor user namespaces)")
    lab = Lab("router")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(autouse=True, scope="session")
def _nothing_left_at_end():
    yield
    if _is_live():
        assert my_namespaces() == [], f"namespaces left at the end of the run: {my_namespaces()}"
    if _is_root():
        assert pktlab_rules(None) == [], "pktlab rules left in the host namespace"
