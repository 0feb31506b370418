"""pktlab's own nftables tables in a namespace: found by name, and those of processes that are gone removed.

Flow verdicts (``pktlab_flows_<pid>_...``) and kernel handlers (``pktlab_kh_<pid>_...``) each keep a table per
session; the table's name carries its owner's PID, so a killed process's tables can be told from a live one's.
"""

from __future__ import annotations

import re

from . import netns as _netns
from .proc import pid_alive


def matching(netns: str | None, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    """``nft list tables`` lines of ``netns`` that ``pattern`` matches (its groups ``name`` and ``pid``)."""
    out = _netns.run(netns, ["nft", "list", "tables"], check=False).stdout
    return [m for line in out.splitlines() if (m := pattern.match(line.strip()))]


def sweep(netns: str | None, pattern: re.Pattern[str]) -> list[str]:
    """Delete the tables ``pattern`` matches whose owning process is gone; their names."""
    removed = []
    for m in matching(netns, pattern):
        if not pid_alive(int(m.group("pid"))):
            _netns.run(netns, ["nft", "delete", "table", "inet", m.group("name")], check=False)
            removed.append(m.group("name"))
    return removed
