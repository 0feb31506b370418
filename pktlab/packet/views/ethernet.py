"""Ethernet II (with 802.1Q/802.1ad tags), present when a packet was read with ``link="ethernet"``.

Packets from a queue start at the IP header; frames from a capture file may
carry Ethernet in front, and then every IP and transport view sits after it.
"""

from __future__ import annotations

from .base import Field, View


class Ethernet(View):
    """Destination and source MAC addresses, the EtherType, and the VLAN tag if any."""

    __slots__ = ()
    layer = "eth"
    header_len_min = 14
    dst = Field(0, 48, "mac")
    src = Field(48, 48, "mac")
    type = Field(96, 16)

    @property
    def vlan(self) -> int | None:
        """The (outer) VLAN id of a tagged frame, else None."""
        buf = self._pkt._buf
        if self.type in (0x8100, 0x88A8) and len(buf) >= self._off + 16:
            return ((buf[self._off + 14] << 8) | buf[self._off + 15]) & 0x0FFF
        return None

    @property
    def header_len(self) -> int:
        l3 = self._pkt._l3
        return l3 if l3 > 0 else 14
