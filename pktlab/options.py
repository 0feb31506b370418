"""The options of ``attach()`` / ``Session``, each declared once: its name, default, help and how it is read.

``Session``'s signature takes its defaults from :data:`DEFAULT`, ``kernel/queue.py`` the queue's, and
``%pktlab attach``'s parser is made from :data:`ATTACH` (``notebook/magic.py``); ``tests/test_options.py``
fails if one of them disagrees with the declaration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from .errors import PktlabError

NETFILTER_HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def parse_deadline(text: str) -> float | None:
    """A deadline as the magic reads it: seconds, or ``none``/``off`` for no watchdog."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise PktlabError(f"--deadline {text!r} is not a number of seconds; use e.g. 0.05, or none") from None


class DeclaredParser(argparse.ArgumentParser):
    """An argparse parser that keeps what was declared: its arguments in order (``arguments``) and its
    subcommands with their help (``commands``), so that help texts and the docs' reference are made from the
    declaration (argparse itself has no public way to list them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: list[argparse.Action] = []
        self.commands: dict[str, tuple[str, DeclaredParser]] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if "-h" not in action.option_strings:  # -h is argparse's own
            self.arguments.append(action)
        return action

    def add_command(self, sub: Any, name: str, help: str) -> DeclaredParser:
        """``sub.add_parser(name, help=help)``, kept in :attr:`commands`."""
        parser = sub.add_parser(name, help=help)
        self.commands[name] = (help, parser)
        return parser


@dataclass(frozen=True)
class Option:
    """One keyword option of ``attach()``."""

    name: str
    default: Any
    help: str
    kind: Callable[[str], Any] | None = None  # how the magic reads a value (None: as text)
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the magic's flag when it is not --name-with-dashes (a switch: the one that flips it)
    magic: bool = True  # %pktlab attach offers it under this name (False: the magic has its own flag for it)

    @property
    def switch(self) -> bool:
        """A yes/no option: the magic's flag flips the default."""
        return isinstance(self.default, bool)

    def magic_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


ATTACH: tuple[Option, ...] = (
    Option("rule", None, "iptables match, e.g. '-p udp --dport 9000'"),
    Option("filter", None, "tcpdump filter run in the kernel, e.g. 'udp and dst port 53'"),
    Option("hook", "INPUT", "the netfilter hook of the queue rule", kind=str.upper, choices=NETFILTER_HOOKS),
    Option("table", None, "the iptables table of the queue rule (default: mangle; filter with --decide)"),
    Option("decide", False, "queue in the filter table like a firewall rule: what the handlers accept skips the "
           "rules below (default: observe, in mangle, so every firewall rule still applies)"),  # fmt: skip
    Option("family", "ipv4", "which IP versions the queue rule takes", choices=("ipv4", "ipv6", "both")),
    Option("allow_host", False, "attach in the host's own namespace", flag="--host"),
    Option("allow_all", False, "allow a rule with no match on the host", flag="--all"),
    Option("bypass", True, "the rule's --queue-bypass: no reader bound, the kernel passes packets", magic=False),
    Option("fail_open", True, "the queue's fail-open flag: a full queue passes packets", magic=False),
    Option("default", "accept", "the verdict of a packet no handler decided"),
    Option("on_error", "accept", "the verdict of a packet whose handler failed"),
    Option("max_len", 4096, "packets the kernel queue holds", kind=int),
    Option("copy", None, "how much of each packet to copy to the notebook: whole packets, the first 128 bytes, "
           "or headers until a handler reads further", choices=("full", "headers", "auto")),  # fmt: skip
    Option("copy_range", None, "copy the first N bytes of each packet", kind=int),
    Option("sock_bytes", 8 << 20, "the queue socket's receive buffer, bytes", kind=int),
    Option("batch", 64, "verdicts sent in one message (0: one message per packet)", kind=int, magic=False),
    Option("record_size", 100_000, "packets the record keeps", kind=int),
    Option("snaplen", 256, "bytes of each packet the record keeps (65535: whole packets, for to_pcap and Wireshark)",
           kind=int),  # fmt: skip
    Option("deadline", 0.5, "seconds a handler may take before its packet is rescued (none: no watchdog)",
           kind=parse_deadline),  # fmt: skip
    Option("name", None, "the session's name: 1-48 letters, digits, _ . - (it goes into its rules)"),
    Option("flow_verdicts", False, "ready for pkt.accept(flow=True) from the first packet (conntrack follows every "
           "connection)"),  # fmt: skip
    Option("gso", True, "have the kernel cut GSO packets into segments before queueing them (slower)",
           flag="--no-gso"),  # fmt: skip
)

DEFAULT = SimpleNamespace(**{o.name: o.default for o in ATTACH})  # DEFAULT.max_len, ...

# the options of pktlab.replay() / Session.from_capture / %pktlab replay: a capture has no kernel, so no rule,
# queue or copy options; its deadline may be longer (a replay runs as fast as it can, the machine's other work
# beside it), and its hook is only what pkt.hook says
REPLAY: tuple[Option, ...] = (
    Option("filter", None, "tcpdump filter: other packets go to the output unseen"),
    Option("hook", "INPUT", "what pkt.hook says", kind=str.upper, choices=NETFILTER_HOOKS),
    Option("default", "accept", "the verdict of a packet no handler decided"),
    Option("on_error", "accept", "the verdict of a packet whose handler failed"),
    Option("record_size", 100_000, "packets the record keeps", kind=int),
    Option("snaplen", 256, "bytes of each packet the record keeps (65535: whole packets)", kind=int),
    Option("deadline", 1.0, "seconds a handler may take before its packet is rescued (none: no watchdog)",
           kind=parse_deadline),  # fmt: skip
    Option("name", None, "the session's name: 1-48 letters, digits, _ . -"),
)
REPLAY_DEFAULT = SimpleNamespace(**{o.name: o.default for o in REPLAY})


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """Each option a magic offers, as its flag (``--max-len N``; a switch flips the default)."""
    for opt in options:
        if not opt.magic:
            continue
        if opt.switch:
            parser.add_argument(opt.magic_flag(), dest=opt.name, action="store_false" if opt.default else "store_true",
                                help=opt.help)  # fmt: skip
        else:
            parser.add_argument(opt.magic_flag(), dest=opt.name, default=opt.default, type=opt.kind,
                                choices=opt.choices, help=opt.help)  # fmt: skip
