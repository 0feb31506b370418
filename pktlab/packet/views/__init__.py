"""Protocol views: lazy, writable windows on a packet's bytes."""

from .base import Field, View
from .dns import DNS
from .ethernet import Ethernet
from .ip import IPv4, IPv6
from .transport import ICMP, TCP, UDP, ICMPv6, TCPFlags

__all__ = ["DNS", "Ethernet", "Field", "View", "IPv4", "IPv6", "UDP", "TCP", "ICMP", "ICMPv6", "TCPFlags"]
