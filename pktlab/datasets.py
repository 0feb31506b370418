"""The small captures in ``datasets/``: ``pktlab.datasets.load("lab-dns")``.

Each was made from real lab traffic by ``scripts/make_datasets.py`` and is
listed in ``datasets/MANIFEST.json`` with what it shows, its packet count and
its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PktlabError


def _data_dir() -> Path:
    """Where the datasets are: $PKTLAB_DATASETS, the checkout's datasets/, or where a wheel installed them."""
    if "PKTLAB_DATASETS" in os.environ:
        return Path(os.environ["PKTLAB_DATASETS"])
    checkout = Path(__file__).resolve().parents[1] / "datasets"
    installed = Path(sys.prefix) / "share" / "pktlab" / "datasets"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


DATA_DIR = _data_dir()


def manifest() -> list[dict[str, Any]]:
    """The manifest's entries (name, file, description, packets, bytes, sha256, linktype)."""
    path = DATA_DIR / "MANIFEST.json"
    if not path.exists():
        raise PktlabError(f"no dataset manifest at {path}; set PKTLAB_DATASETS to the repository's datasets/ folder")
    return json.loads(path.read_text())


def names() -> list[str]:
    return [e["name"] for e in manifest()]


@dataclass(frozen=True)
class Dataset:
    """One capture: its manifest entry and file."""

    name: str
    path: Path
    description: str
    packets_expected: int
    sha256: str

    def verify(self) -> None:
        """Raise unless the file is the one the manifest describes."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise PktlabError(f"{self.path.name} differs from its manifest (sha256 {digest[:12]}...); regenerate it")

    def packets(self) -> list[Any]:
        """The packets as :class:`pktlab.Packet` objects (IP views ready), capture time in ``time``."""
        from .packet.model import Packet
        from .pipeline.capture import frames

        return [Packet(None, p.data, p.time, p.link) for p in frames(self.path)]

    def scapy(self) -> Any:
        """The packets as scapy parsed them (read by libpcap, like every capture pktlab reads), times kept."""
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether

        from .pipeline.capture import frames

        out = []
        for f in frames(self.path):
            pkt = Ether(f.data) if f.link == "ethernet" else (IPv6 if f.data[:1] >= b"\x60" else IP)(f.data)
            pkt.time = f.time
            out.append(pkt)
        return out

    def __repr__(self) -> str:
        return f"<Dataset {self.name}: {self.packets_expected} packets, {self.description}>"


def load(name: str) -> Dataset:
    """The dataset called ``name`` (see :func:`names`)."""
    for e in manifest():
        if e["name"] == name:
            return Dataset(e["name"], DATA_DIR / e["file"], e["description"], e["packets"], e["sha256"])
    raise PktlabError(f"no dataset named {name!r}; the datasets are {', '.join(names())}")


def resolve(source: str | os.PathLike[str]) -> Path:
    """A capture path from a path or a dataset name."""
    p = Path(source)
    try:
        if p.exists():
            return p
    except OSError:  # a relative path under a directory this process may not read
        pass
    if isinstance(source, str) and os.sep not in source and not source.endswith((".pcap", ".pcapng")):
        return load(source).path
    raise PktlabError(f"no capture file {str(source)!r}; give a pcap/pcapng path or one of: {', '.join(names())}")


def trace_names() -> list[str]:
    """The recorded traces in ``datasets/traces/`` (made by ``scripts/make_trace_datasets.py``)."""
    return sorted(p.stem for p in (DATA_DIR / "traces").glob("*.json"))


def trace(name: str) -> Any:
    """A recorded :class:`pktlab.Trace` (what ``pktlab.trace`` gave on a lab), for machines that cannot trace."""
    from .measure.timeline import Trace

    path = DATA_DIR / "traces" / f"{name}.json"
    if not path.exists():
        raise PktlabError(f"no recorded trace named {name!r}; the recorded traces are {', '.join(trace_names())}")
    return Trace.load(str(path))
