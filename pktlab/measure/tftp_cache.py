"""A TFTP cache on the path: a handler that learns files from transfers it sees and serves repeats itself.

The experiment of PacketScript's packet cache (its figure 4.4), written as a
pktlab handler: on a router's FORWARD queue it watches read requests
(RFC 1350, octet mode) and the DATA blocks that answer them; once a file has
passed completely, a new read request for it never reaches the server: the
cache drops it and answers from the server's address itself, block by block,
as the client acknowledges (``Session.send`` for the first block from a new
transfer port, ``pkt.reply`` to each acknowledgement for the next).

``cache = TftpCache(session)``; ``session.add_handler(cache, "tftp-cache")``.
``cache.files`` (name -> size), ``cache.hits``, ``cache.misses``.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

RRQ, DATA, ACK = 1, 3, 4
BLOCK = 512
TFTP_PORT = 69


class TftpCache:
    """A verdict function that caches TFTP files passing through and serves them again."""

    def __init__(self, session: Any, *, first_port: int = 50000) -> None:
        self.session = session
        self.blocks: dict[str, list[bytes]] = {}  # a complete file's blocks, by file name
        self.learning: dict[tuple[str, int], tuple[str, list[bytes]]] = {}  # client (addr, port) -> name, blocks
        self.serving: dict[tuple[str, int, int], str] = {}  # (client addr, client port, our port) -> name
        self.hits = 0
        self.misses = 0
        self._ports = itertools.cycle(range(first_port, first_port + 10000))

    @property
    def files(self) -> dict[str, int]:
        """The files the cache can serve, with their sizes."""
        return {name: sum(len(b) for b in blocks) for name, blocks in self.blocks.items()}

    def __call__(self, pkt: Any) -> Any:
        u = pkt.udp
        if u is None or len(u.payload) < 4:
            return None
        data = u.payload
        op = struct.unpack_from("!H", data)[0]
        if op == RRQ and u.dport == TFTP_PORT:
            return self._request(pkt, data)
        if op == DATA and (pkt.ip.dst, u.dport) in self.learning:
            self._learn((pkt.ip.dst, u.dport), data)
            return None
        if op == ACK and (pkt.ip.src, u.sport, u.dport) in self.serving:
            return self._next_block(pkt, data)
        return None

    def _request(self, pkt: Any, data: bytes) -> Any:
        name = data[2:].split(b"\x00")[0].decode(errors="replace")
        client = (pkt.ip.src, pkt.udp.sport)
        if name not in self.blocks:
            self.misses += 1
            self.learning[client] = (name, [])  # the server answers; its blocks are learnt on the way
            return None
        from scapy.layers.inet import IP, UDP

        self.hits += 1
        port = next(self._ports)  # a new transfer id, as a server would pick (RFC 1350)
        self.serving[(client[0], client[1], port)] = name
        first = struct.pack("!HH", DATA, 1) + self.blocks[name][0]
        self.session.send(IP(src=pkt.ip.dst, dst=client[0]) / UDP(sport=port, dport=client[1]) / first)
        return pkt.drop()  # the server never sees the request

    def _learn(self, client: tuple[str, int], data: bytes) -> None:
        name, blocks = self.learning[client]
        number = struct.unpack_from("!H", data, 2)[0]
        if number == len(blocks) + 1:  # a resent block is not learnt twice
            blocks.append(data[4:])
            if len(data) - 4 < BLOCK:  # the last block: the file is complete
                self.blocks[name] = blocks
                del self.learning[client]

    def _next_block(self, pkt: Any, data: bytes) -> Any:
        key = (pkt.ip.src, pkt.udp.sport, pkt.udp.dport)
        blocks = self.blocks[self.serving[key]]
        acked = struct.unpack_from("!H", data, 2)[0]
        if acked < len(blocks):
            pkt.reply(struct.pack("!HH", DATA, acked + 1) + blocks[acked])
        else:
            del self.serving[key]  # the last block was acknowledged
        return pkt.drop()  # acknowledgements of the cache's blocks are the cache's
