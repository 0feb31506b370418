"""Link conditions: delay, jitter, random loss and a rate limit on a lab link, changeable while traffic flows.

``lab.link("client", "router").set(delay="20ms", loss=0.01, rate="10mbit")``
applies to both directions (``direction="a>b"`` or ``"b>a"`` for one).  This
kernel has no ``netem`` qdisc, so each condition is made of what it has:

* **rate**: a ``tbf`` qdisc where the direction's packets leave (the sending
  host's end of the veth pair; burst 4 ms of the rate, queue 50 ms), through
  pyroute2.
* **loss**: an iptables rule where they arrive (the receiving host's
  raw/PREROUTING, ``-i`` its end) dropping a random share
  (``-m statistic --mode random``).
* **delay** and **jitter**: a *delay line* on the queue where they leave:
  a pktlab session on the sending host (NFQUEUE 65100 + the interface's
  number) at the last place a packet passes before the interface —
  mangle/POSTROUTING, its rule at the end of the chain — holds every packet
  leaving the interface, the host's own and forwarded ones, and a thread
  accepts each one when its time has come.  So the delay comes after every
  handler of the sending host (a cache on a router sees a request before it
  waits for the link) and before the receiver's kernel stamps its arrival
  (as netem's would: ping shows it).  What pktlab sends is delayed too.
  Jitter adds a uniform random ±jitter per packet; packets keep their order
  (a packet never leaves before the one ahead of it).  The queue is fail-open
  (a stopped delay line delays nothing, it never black-holes) and holds up
  to 16,384 packets; the packet rate a delay line sustains is measured in
  BENCHMARKS.md.  A session of the user's at POSTROUTING of the same host
  comes first and ends the chain for what it accepts: those packets are not
  delayed (iptables gives a chain's packets to one queue).

A value of 0 removes a condition, ``None`` (the default) leaves it as it is;
:meth:`Link.clear` removes them all.  ``Lab.down()`` removes every condition
with the lab.
"""

from __future__ import annotations

import collections
import errno
import random
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import LabError, SessionError
from ..kernel import netns
from ..kernel import rules as _rules

if TYPE_CHECKING:
    from ..pipeline.holding import HeldPacket

DELAY_QUEUE_BASE = 65100  # a delay line's queue: this + the number of its interface (eth0 -> 65100)
DELAY_QUEUE_LEN = 16384  # packets a delay line can hold at once (the kernel passes more undelayed: fail-open)
TBF_LATENCY = "50ms"  # how long a packet may wait in the rate limiter's queue before it is dropped
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.IGNORECASE)
_TIME_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}
_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}
MAX_RATE = 32e9  # tbf's rate field holds bytes/s in 32 bits


def parse_time(value: Any, what: str) -> float:
    """Seconds from ``"20ms"``, ``"500us"``, ``"1s"`` or a number of seconds."""
    if isinstance(value, bool):
        raise LabError(f"{what} {value!r} is not a time; give it like '20ms' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _TIME.match(str(value))
        if not m:
            raise LabError(f"{what} {value!r} is not a time; give it like '20ms', '500us' or '1s'")
        seconds = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    if not 0 <= seconds <= 10:
        raise LabError(f"{what} {value!r} is out of range; give 0 (none) up to 10 s")
    return seconds


def parse_rate(value: Any) -> float:
    """Bits per second from ``"10mbit"``, ``"1gbit"``, ``"500kbit"`` or a number of bits per second."""
    if isinstance(value, bool):
        raise LabError(f"rate {value!r} is not a rate; give it like '10mbit'")
    if isinstance(value, int | float):
        bits = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise LabError(f"rate {value!r} is not a rate; give it like '10mbit', '500kbit' or '1gbit'")
        bits = float(m.group(1)) * _RATE_UNITS[(m.group(2) or "bit").lower()]
    if bits != 0 and not 8000 <= bits <= MAX_RATE:
        raise LabError(f"rate {value!r} is out of range; give 0 (no limit) or 8kbit up to 32gbit")
    return bits


def parse_loss(value: Any) -> float:
    """A probability from ``0.01`` or ``"1%"``."""
    try:
        p = float(str(value).strip().rstrip("%")) / 100 if isinstance(value, str) and "%" in value else float(value)
    except (TypeError, ValueError):
        raise LabError(f"loss {value!r} is not a share; give it like 0.01 or '1%'") from None
    if isinstance(value, bool) or not 0 <= p < 1:
        raise LabError(f"loss {value!r} is out of range; give 0 (none) up to below 1 (100 %)")
    return p


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:g} ms" if s >= 1e-3 else f"{s * 1e6:g} µs"


def _fmt_rate(bits: float) -> str:
    for unit, k in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= k:
            return f"{bits / k:g} {unit}"
    return f"{bits:g} bit/s"


@dataclass(frozen=True)
class Conditions:
    """What one direction of a link does to its packets (0: nothing)."""

    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, ± around the delay
    loss: float = 0.0  # probability a packet is dropped
    rate: float = 0.0  # bits per second (0: no limit)

    def describe(self) -> str:
        parts = []
        if self.delay or self.jitter:
            parts.append(f"delay {_fmt_time(self.delay)}" + (f" ± {_fmt_time(self.jitter)}" if self.jitter else ""))
        if self.loss:
            parts.append(f"loss {self.loss * 100:g} %")
        if self.rate:
            parts.append(f"rate {_fmt_rate(self.rate)}")
        return ", ".join(parts) or "no conditions"


class DelayLine:
    """Holds every packet leaving ``ifname`` of namespace ``netns_name`` for its delay, then accepts it."""

    def __init__(self, netns_name: str, ifname: str, delay: float, jitter: float) -> None:
        from ..pipeline.session import Session

        self.delay, self.jitter = delay, jitter
        self._due: collections.deque[tuple[float, HeldPacket]] = collections.deque()
        self._last_due = 0.0
        self._lock = threading.Lock()  # the reading thread appends, the releasing one takes
        self._wake = threading.Event()
        self._stop = False
        self._random = random.Random()
        self.released = 0
        self.errors = 0
        self.session = Session(DELAY_QUEUE_BASE + _if_number(ifname), rule=f"-o {ifname}", hook="POSTROUTING",
                               table="mangle", netns=netns_name, family="both", deadline=None, record_size=1024,
                               snaplen=64, copy_range=128, max_len=DELAY_QUEUE_LEN, name=f"delay-{ifname}")  # fmt: skip
        # what pktlab sends is delayed too; after the user's rules of the chain
        self.session.rule = replace(self.session.rule, skip_sent=False, last=True)
        self.session.say_failures = False
        self.session.hold(lambda pkt: True).on_add = self._arrived
        self.session.attach()
        self._thread = threading.Thread(target=self._run, name=f"pktlab-delay-{ifname}", daemon=True)
        self._thread.start()

    def set(self, delay: float, jitter: float) -> None:
        """New delay and jitter, for the packets that arrive from now on."""
        self.delay, self.jitter = delay, jitter
        self._wake.set()

    def _arrived(self, h: HeldPacket) -> None:
        """On the reader thread, as the packet is held: its time to leave, never before the one ahead."""
        with self._lock:
            d = self.delay + (self._random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
            due = max(h.since + max(0.0, d), self._last_due)
            self._last_due = due
            was_empty = not self._due
            self._due.append((due, h))
        if was_empty:
            self._wake.set()

    def _run(self) -> None:
        due = self._due
        while not self._stop:
            if not due:
                self._wake.wait(0.25)
                self._wake.clear()
                continue
            wait = due[0][0] - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            with self._lock:
                _, h = due.popleft()
            try:
                h.accept()
                self.released += 1
            except SessionError:  # released meanwhile (the session detaches)
                self.errors += 1

    def stop(self) -> None:
        """Stop delaying: the thread ends, the rule goes, packets still held leave now (accepted)."""
        self._stop = True
        self._wake.set()
        self._thread.join(5)
        self.session.detach()


class LinkEnd:
    """One direction of a link: what leaves ``host`` through ``ifname`` and arrives at ``peer`` on ``peer_if``."""

    def __init__(self, host: Any, ifname: str, peer: Any, peer_if: str, label: str) -> None:
        self.host, self.ifname = host, ifname
        self.peer, self.peer_if = peer, peer_if
        self.label = label
        self.conditions = Conditions()
        self._delay_line: DelayLine | None = None
        self._loss_rules: _rules.RuleSet | None = None
        self._loss_seq = 0

    def apply(self, new: Conditions) -> None:
        """Make the kernel do ``new``; what did not change is not touched.

        ``conditions`` follows each step as it is made, so that after a failure
        it says what the kernel does (and applying the old conditions undoes it).
        """
        c = self.conditions
        if new.rate != c.rate:
            self._set_rate(new.rate)
            self.conditions = c = replace(c, rate=new.rate)
        if new.loss != c.loss:
            self._set_loss(new.loss)
            self.conditions = c = replace(c, loss=new.loss)
        if (new.delay, new.jitter) != (c.delay, c.jitter):
            self._set_delay(new.delay, new.jitter)
            self.conditions = c = replace(c, delay=new.delay, jitter=new.jitter)

    def _set_rate(self, bits: float) -> None:
        try:
            netns.call_in(self.host.netns, set_tbf, self.ifname, bits)
        except Exception as exc:
            raise LabError(f"cannot set the rate of {self.label} ({exc}); is the lab still up?") from None

    def _set_loss(self, p: float) -> None:
        old = self._loss_rules
        new = None
        if p:
            self._loss_seq += 1
            tag = _rules.make_tag(f"loss-{self.peer_if}-{self._loss_seq}")
            new = _rules.RuleSet(tag, self.peer.netns)
            match = ("-i", self.peer_if, "-m", "statistic", "--mode", "random", "--probability", f"{p:.6f}")
            rule = _rules.TargetRule("PREROUTING", match, ("-j", "DROP"))
            new.install([rule])  # the new rule first, then the old one goes: never a moment of no loss rule
        if old is not None:
            old.remove()
        self._loss_rules = new

    def _set_delay(self, delay: float, jitter: float) -> None:
        """Start, change or stop the delay line."""
        if not delay and not jitter:
            if self._delay_line is not None:
                line, self._delay_line = self._delay_line, None
                line.stop()
            return
        if self._delay_line is None:
            self._delay_line = DelayLine(self.host.netns, self.ifname, delay, jitter)
        else:
            self._delay_line.set(delay, jitter)

    @property
    def delay_line(self) -> DelayLine | None:
        """The session that delays this direction's packets (None: no delay)."""
        return self._delay_line

    def clear(self) -> list[str]:
        """Remove every condition of this direction; returns what failed (each step is tried)."""
        failures = []
        c = self.conditions
        steps = (("delay", self._delay_line is not None, lambda: self._set_delay(0, 0)),
                 ("loss", self._loss_rules is not None, lambda: self._set_loss(0)),
                 ("rate", bool(c.rate), lambda: self._set_rate(0)))  # fmt: skip
        for what, present, step in steps:
            if not present:  # nothing of ours there (a qdisc the user put on the link stays)
                continue
            try:
                step()
                c = replace(c, **({"delay": 0.0, "jitter": 0.0} if what == "delay" else {what: 0.0}))
            except Exception as exc:
                failures.append(f"{self.label} {what}: {exc}")
        self.conditions = c
        return failures

    def remove(self) -> None:
        """Remove every condition of this direction (each step is tried); raise LabError naming what failed."""
        failures = self.clear()
        if failures:
            raise LabError(f"some conditions could not be removed: {'; '.join(failures)}")


class Link:
    """The veth link between two hosts of a lab; ``set()`` its conditions (see the module's doc)."""

    def __init__(self, lab: Any, a: Any, b: Any, ends: dict[tuple[str, str], LinkEnd]) -> None:
        """``ends``: the lab's two directions of this link, by (from, to) role (shared by every Link of the pair)."""
        self.lab = lab
        self.a, self.b = a, b
        self.ends = {"a>b": ends[(a.role, b.role)], "b>a": ends[(b.role, a.role)]}

    @property
    def name(self) -> str:
        return f"{self.a.role}-{self.b.role}"

    def set(
        self,
        *,
        delay: Any = None,
        jitter: Any = None,
        loss: Any = None,
        rate: Any = None,
        direction: str = "both",
    ) -> Link:
        """Set conditions on the link (``None``: unchanged, 0: none); ``direction`` ``"both"``, ``"a>b"``, ``"b>a"``.

        ``a`` is the first host named in ``lab.link(a, b)``.  Everything is
        checked before anything changes.  Returns the link.
        """
        if self.lab.closed:
            raise LabError("this lab is down; make a new one with pktlab.Lab()")
        if direction not in ("both", "a>b", "b>a"):
            raise LabError(f"direction {direction!r} is not 'both', 'a>b' ({self.a.role} to {self.b.role}) or 'b>a'")
        changes: dict[str, float] = {}
        if delay is not None:
            changes["delay"] = parse_time(delay, "delay")
        if jitter is not None:
            changes["jitter"] = parse_time(jitter, "jitter")
        if loss is not None:
            changes["loss"] = parse_loss(loss)
        if rate is not None:
            changes["rate"] = parse_rate(rate)
        ends = list(self.ends.values()) if direction == "both" else [self.ends[direction]]
        for end in ends:
            new = replace(end.conditions, **changes)
            if new.jitter > new.delay:
                raise LabError(
                    f"jitter {_fmt_time(new.jitter)} is larger than the delay {_fmt_time(new.delay)} of {end.label}; "
                    "a packet cannot leave before it arrived: give a delay of at least the jitter"
                )
        before = [(end, end.conditions) for end in ends]
        try:
            for end in ends:
                end.apply(replace(end.conditions, **changes))
        except BaseException:
            for end, old in before:  # no half-set link: undo what was made, then say why
                try:
                    end.apply(old)
                except Exception:
                    pass
            raise
        return self

    def clear(self) -> None:
        """Remove every condition in both directions; each step is tried, the failures are raised together."""
        failures = [f for end in self.ends.values() for f in end.clear()]
        if failures:
            raise LabError(f"some conditions of link {self.name} could not be removed: {'; '.join(failures)}")

    @property
    def conditions(self) -> dict[str, Conditions]:
        """Per direction (``"client -> router"`` ...), what the link does now."""
        return {end.label: end.conditions for end in self.ends.values()}

    def describe(self) -> list[str]:
        return [f"link {end.label} ({end.host.role} {end.ifname} -> {end.peer.role} {end.peer_if}): "
                f"{end.conditions.describe()}" for end in self.ends.values()]  # fmt: skip

    def __repr__(self) -> str:
        return f"<Link {self.name}: " + "; ".join(self.describe()) + ">"


def _if_number(ifname: str) -> int:
    m = re.search(r"(\d+)$", ifname)
    return int(m.group(1)) if m else 0


def set_tbf(ifname: str, bits: float) -> None:
    """Limit what leaves ``ifname`` (in the calling thread's namespace) to ``bits`` per second (0: no limit)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl import TC_H_ROOT

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if bits:
            burst = max(int(bits / 8 * 0.004), 3200)  # 4 ms of the rate, at least two full frames
            ipr.tc("replace", "tbf", idx, 0x10000, rate=f"{int(bits)}bit", burst=burst, latency=TBF_LATENCY)
        else:
            try:
                ipr.tc("del", index=idx, handle=0x10000, parent=TC_H_ROOT)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):  # EINVAL/ENOENT: no root qdisc of ours
                    raise
