"""The kernel's own times of a traced packet's steps, from tracepoints, with bpftrace.

One bpftrace process watches the traced namespaces (filtered in the kernel by
namespace inode, and by the packet's trace flag, which the tcpdump filter of
the trace's iptables rules sets):

* ``sock:sk_data_ready`` on the netlink sockets of pktlab's trace listeners:
  the kernel queues a trace message on the socket and wakes it in the
  packet's own path, so this is the time of the netfilter step the message
  describes; the n-th stamp of a socket is its n-th message (netlink queues
  are in order, and a message the socket could not take has no stamp);
* ``net:netif_receive_skb`` (a device received the packet; remembered by the
  packet's data buffer for every packet of the namespaces, and reported only
  once the packet turns out to be traced, since the flag is set after the
  device step; a received packet has an input interface, which tells its entry
  from one a locally made packet left behind).  Keyed by the data buffer
  (``skb->head``), not the ``sk_buff``'s address: a clone (what a ping socket
  is handed) has an address of its own but shares the data, and an address
  recycled from an earlier packet once named that packet's receive (a test
  run saw an echo reply shown received by the client before the server sent
  it: the ping socket's clone had the address of an earlier, freed packet).  An entry is forgotten
  when its packet is freed (unless the data is shared with a clone);
  ``net:net_dev_queue``
  and ``net:net_dev_start_xmit`` (the packet goes to a device's queueing
  discipline, then to the device);
* ``sock:sk_data_ready`` on IPv4/IPv6 sockets (delivered to a socket),
  ``skb:consume_skb`` (used up, e.g. an echo request once answered) and
  ``skb:kfree_skb`` (dropped, with the kernel's reason).

Times are CLOCK_MONOTONIC (bpftrace's ``nsecs``), the clock of
``time.monotonic_ns()``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from ..errors import PktlabError
from ..kernel import bpftrace as _bpftrace

HEAD = 64  # bytes of each packet reported, from its IP header
MAP_KEYS = 65536  # packets received and not yet freed that the script can remember (bpftrace's map size)

_SKB_NS = """
  $ns = (uint32)0;
  if ($skb->dev != 0) {{ $ns = $skb->dev->nd_net.net->ns.inum; }}
  else if ($skb->sk != 0) {{ $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; }}
"""
# the device step of a packet that has just turned out to be traced, then this step
_REPORT = """
      if ($skb->skb_iif != 0) {{
        $r = @rx[$skb->head];
        if ($r.0 != 0 && $r.2 == $ns) {{
          printf("R %llu %u %llu %d\\n", $r.0, $r.2, $skb, $r.1); delete(@rx[$skb->head]);
        }}
      }}
      $p = $skb->head + $skb->network_header;
      $n = (int64)$skb->tail - (int64)$skb->network_header;
      $n = $n < 0 ? 0 : $n;
      printf("{tag} %llu %u %llu {fmt} %r\\n", nsecs, $ns, $skb, {args}, buf($p, $n < {head} ? $n : {head}));
"""

_SCRIPT = """
tracepoint:net:netif_receive_skb
{{
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = $skb->dev->nd_net.net->ns.inum;
  if ({namespaces}) {{ @rx[$skb->head] = (nsecs, $skb->dev->ifindex, $ns); }}
}}
tracepoint:net:net_dev_queue
{{
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = $skb->dev->nd_net.net->ns.inum;
  if ($skb->nf_trace && ({namespaces})) {{ {report_q} }}
}}
tracepoint:net:net_dev_start_xmit
{{
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = $skb->dev->nd_net.net->ns.inum;
  if ($skb->nf_trace && ({namespaces})) {{ {report_x} }}
}}
tracepoint:sock:sk_data_ready
{{
  $sk = (struct sock *)args->skaddr;
  if (args->family == 16) {{
    if (args->protocol == 12) {{
      $ino = $sk->sk_socket->file->f_inode->i_ino;
      if ({sockets}) {{
        @msgs[$ino] = @msgs[$ino] + 1;
        printf("N %llu %llu %llu\\n", nsecs, $ino, @msgs[$ino]);
      }}
    }}
  }} else if ($sk->sk_receive_queue.qlen > 0) {{
    $skb = (struct sk_buff *)$sk->sk_receive_queue.prev;
    if ($skb->nf_trace) {{
      $ns = $sk->__sk_common.skc_net.net->ns.inum;
      if ({namespaces}) {{ {report_s} }}
    }}
  }}
}}
tracepoint:skb:consume_skb
{{
  $skb = (struct sk_buff *)args->skbaddr;
  if ($skb->nf_trace) {{
    {skb_ns}
    if ({namespaces}) {{ {report_c} }}
  }}
  if (!$skb->cloned) {{ delete(@rx[$skb->head]); }}
}}
tracepoint:skb:kfree_skb
{{
  $skb = (struct sk_buff *)args->skbaddr;
  if ($skb->nf_trace) {{
    {skb_ns}
    if ({namespaces}) {{ {report_d} }}
  }}
  if (!$skb->cloned) {{ delete(@rx[$skb->head]); }}
}}
"""
_STAMP = re.compile(r"^N (\d+) (\d+) (\d+)$")
KINDS = {"R": "receive", "Q": "device queue", "X": "transmit", "S": "socket", "C": "consumed", "D": "drop"}


@dataclass(frozen=True)
class KernelStep:
    """One step of a traced packet at a device, a socket or its end, with the kernel's time."""

    t_ns: int  # CLOCK_MONOTONIC
    netns_inode: int
    kind: str  # receive, device queue, transmit, socket, consumed, drop
    skb: int  # the kernel's address of the packet (same packet within a host while it lives)
    ifindex: int | None  # receive, device queue, transmit
    head: bytes  # from the IP header (empty for receive: reported with the step after it)
    reason: str | None = None  # drop: the kernel's reason
    where: str | None = None  # drop: the kernel function that dropped it
    socket_proto: int | None = None  # socket: the socket's protocol (IPPROTO_*)


def script(namespaces: list[int], sockets: list[int]) -> str:
    """The bpftrace program for these namespace inodes and trace listener socket inodes."""

    def report(tag: str, fmt: str, args: str) -> str:
        return _REPORT.format(tag=tag, fmt=fmt, args=args, head=HEAD)

    return _SCRIPT.format(
        sockets=" || ".join(f"$ino == {n}" for n in sockets) or "0",
        namespaces=" || ".join(f"$ns == {n}" for n in namespaces) or "0",
        skb_ns=_SKB_NS.format(),
        report_q=report("Q", "%d", "$skb->dev->ifindex"),
        report_x=report("X", "%d", "$skb->dev->ifindex"),
        report_s=report("S", "%d", "$sk->sk_protocol"),
        report_c=report("C", "%d", "0"),
        report_d=report("D", "%d %s", "args->reason, ksym(args->location)"),
    )


TRACEPOINTS = ("sock/sk_data_ready", "net/netif_receive_skb", "net/net_dev_queue", "net/net_dev_start_xmit",
               "skb/consume_skb", "skb/kfree_skb")  # fmt: skip


def available() -> str:
    """What the timeline needs, checked (for ``pktlab doctor``); raises with the fix if something is missing."""
    import os

    _bpftrace.require()
    _bpftrace.ensure_tracefs()
    missing = [t for t in TRACEPOINTS if not os.path.exists(f"{_bpftrace.TRACEFS}/events/{t}/format")]
    if missing:
        raise PktlabError(f"this kernel lacks the tracepoints {', '.join(missing)}; pktlab.trace needs them")
    return f"bpftrace and the {len(TRACEPOINTS)} tracepoints of the timeline (kernel times, drops)"


def parse_line(line: str, reasons: dict[int, str]) -> KernelStep | tuple[int, int, int] | None:
    """One line of the script: a step, a message stamp ``(socket inode, n, t_ns)``, or ``None`` (not ours)."""
    m = _STAMP.match(line)
    if m:
        t, ino, n = (int(x) for x in m.groups())
        return ino, n, t
    if line[:2] not in ("R ", "Q ", "X ", "S ", "C ", "D "):
        return None
    tag = line[0]
    parts = line.split(" ", 6 if tag == "D" else 5)
    t, ns, skb = int(parts[1]), int(parts[2]), int(parts[3])
    kind = KINDS[tag]
    if tag == "R":
        return KernelStep(t, ns, kind, skb, int(parts[4]), b"")
    if tag == "D":
        reason = reasons.get(int(parts[4]), f"reason {parts[4]}")
        head = _bpftrace.unescape(parts[6] if len(parts) > 6 else "")
        return KernelStep(t, ns, kind, skb, None, head, reason, parts[5])
    head = _bpftrace.unescape(parts[5] if len(parts) > 5 else "")
    if tag == "S":
        return KernelStep(t, ns, kind, skb, None, head, socket_proto=int(parts[4]))
    return KernelStep(t, ns, kind, skb, None if tag == "C" else int(parts[4]), head)


class KernelClock:
    """The bpftrace process of one trace: message stamps by socket, and the device/socket/drop steps."""

    def __init__(self, namespaces: list[int], sockets: list[int]) -> None:
        self.stamps: dict[int, dict[int, int]] = {s: {} for s in sockets}  # socket inode -> n -> t_ns
        self.steps: list[KernelStep] = []
        self._lock = threading.Lock()
        self._reasons = _bpftrace.drop_reasons()
        self._proc = _bpftrace.BpftraceProcess(
            script(namespaces, sockets), self._on_line, "the timeline's tracepoints",
            env={"BPFTRACE_MAP_KEYS_MAX": str(MAP_KEYS)},
        )  # fmt: skip

    def start(self) -> KernelClock:
        self._proc.start()
        return self

    @property
    def lost(self) -> int:
        """Events the kernel could not hand to bpftrace (its per-CPU buffers were full)."""
        return self._proc.lost

    def _on_line(self, line: str) -> None:
        got = parse_line(line, self._reasons)
        with self._lock:
            if isinstance(got, KernelStep):
                self.steps.append(got)
            elif got is not None:
                ino, n, t = got
                self.stamps.setdefault(ino, {})[n] = t

    def stop(self) -> str:
        """Stop bpftrace; what it said on stderr, if anything."""
        return self._proc.stop()
