"""The exceptions pktlab raises.

Every message names the cause and the fix, in one sentence where possible::

    PktlabError                      base of everything below
    ├── PrivilegeError               not root / no CAP_NET_ADMIN
    ├── MissingToolError             iptables, NetfilterQueue or another dependency is absent
    ├── RuleError                    iptables refused a rule (its own message is kept)
    ├── FilterError                  libpcap cannot compile a tcpdump filter (its message is kept)
    ├── QueueBusyError               the queue number is already bound by another reader
    ├── LabError                     a namespace or link could not be made or found
    ├── TeardownError                some steps of a teardown failed (the others ran; each failure is listed)
    ├── SessionError                 misuse of a session (detached, no session, bad option)
    ├── HandlerError                 a handler is not callable / returned a non-verdict
    ├── SendError                    a packet sent by pkt.reply / Session.send could not leave
    └── PacketFormatError            a view read past the end of a packet or met a bad length
        └── CopyRangeError           a read or write needs bytes of the packet the kernel did not copy
"""

from __future__ import annotations

import reprlib


class PktlabError(Exception):
    """Base class of all pktlab errors."""


class PrivilegeError(PktlabError):
    """The operation needs root or CAP_NET_ADMIN."""


class MissingToolError(PktlabError):
    """A system tool or Python package pktlab needs is not installed."""


def notebook_extra_missing(what: str, exc: ImportError) -> MissingToolError:
    """The error of a notebook feature whose packages are not installed: the core installs without Jupyter."""
    return MissingToolError(
        f"{what} needs pktlab's notebook extra ({exc.name or exc} is not installed); "
        "install it with pip install 'pktlab[notebook]'"
    )


_BRIEF = reprlib.Repr()  # (Python 3.11's takes no arguments)
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxset = _BRIEF.maxfrozenset = _BRIEF.maxdict = 3
_BRIEF.maxstring = _BRIEF.maxother = 60
BRIEF_LEN = 160  # characters at most


def brief(value: object) -> str:
    """``repr(value)`` cut to part of a line (a handler's wrong return, a wrong argument), never raising: a
    message must neither run to the size of a packet's bytes nor fail on the object it names."""
    try:
        text = _BRIEF.repr(value)
    except Exception as exc:  # (reprlib catches an instance's; a container's element can still raise)
        return f"<{type(value).__name__}, whose repr() raised {type(exc).__name__}>"
    return text if len(text) <= BRIEF_LEN else f"{text[: BRIEF_LEN - 20]}...{text[-17:]}"


class RuleError(PktlabError):
    """iptables refused a rule."""


class FilterError(PktlabError, ValueError):
    """A tcpdump filter expression cannot be compiled or used."""


class QueueBusyError(PktlabError):
    """The NFQUEUE number is already bound by another reader."""


class LabError(PktlabError):
    """A lab namespace or link could not be created, found or removed."""


class TeardownError(PktlabError):
    """A teardown ran every step it could, and some failed; ``failures`` lists them."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = list(failures or [])


class SessionError(PktlabError):
    """A session was used in a way it cannot be (detached, bad option...)."""


class HandlerError(PktlabError):
    """A handler is not usable (not callable, wrong signature, bad return)."""


class KernelHandlerError(HandlerError):
    """A handler cannot become nftables rules (``kernel=True``); the message names the line and the construct."""


class PacketFormatError(PktlabError, ValueError):
    """A packet is too short or has an inconsistent length for the view read."""


class CopyRangeError(PacketFormatError):
    """A handler read or wrote past the part of a packet the queue copied to user space (its copy range).

    ``needed`` is how many bytes from the packet's start the access needed, ``copied`` how many
    the kernel copied, ``length`` the packet's whole length.
    """

    def __init__(self, message: str, needed: int = 0, copied: int = 0, length: int = 0) -> None:
        super().__init__(message)
        self.needed, self.copied, self.length = needed, copied, length


class SendError(PktlabError):
    """A packet a handler or a cell sent could not leave (no route, too big, refused by the firewall)."""
