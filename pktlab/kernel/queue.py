"""Where packets come from: the kernel's NFQUEUE, read in a background thread.

``QueueSource`` binds a NetfilterQueue inside the lab's namespace (the
reader thread ``setns``-es itself there, the rest of the process stays put)
and calls ``callback(nfq_packet)`` for each packet; the callback must give
the verdict before it returns.  Stopping drains what the kernel still holds
(the session removes its rules first), then unbinds from the reader thread
itself, so no packet is left in the kernel queue to be dropped by the unbind.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import LabError, MissingToolError, PktlabError, PrivilegeError, QueueBusyError
from ..options import DEFAULT
from . import netns, switch_interval
from . import proc as kernel
from ._reader import QueueReader, configure_queue, send_copy_range
from .privilege import require_place

NETLINK_NETFILTER = 12  # the netlink family of netfilter's queue (and conntrack) messages
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3  # enum nfqnl_msg_types: PACKET, VERDICT, CONFIG, VERDICT_BATCH
NFQA_VERDICT_HDR = 2
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQA_CFG_F_FAIL_OPEN = 1
NLM_F_REQUEST = 1


_PORT_HOLDER: list[socket.socket] = []
_PORT_LOCK = threading.Lock()


def hold_process_port() -> None:
    """Keep this process's own netlink port id (its PID) taken, once, for as long as it lives.

    ``NetfilterQueue(sockfd=...)`` binds the given socket to the port id that its own throwaway
    socket got here, in *this* namespace.  The first netlink socket of a process gets the PID,
    and so would every later throwaway once the previous one is closed: two queues in one lab
    host would ask for the same port there (EADDRINUSE).  With the PID held, each throwaway gets
    a random port id of its own.
    """
    with _PORT_LOCK:
        if not _PORT_HOLDER:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            s.bind((0, 0))
            _PORT_HOLDER.append(s)


def batch_verdict_prefix(queue: int) -> bytes:
    """The first 24 bytes of an NFQNL_MSG_VERDICT_BATCH message for ``queue``.

    nlmsghdr (host order), nfgenmsg (queue number big-endian) and the
    NFQA_VERDICT_HDR attribute header; the dispatcher appends the verdict and
    the highest packet id (both big-endian).
    """
    nlmsg, nfgen, nla, verdict = struct.Struct("=IHHII"), struct.Struct("!BBH"), struct.Struct("=HH"), 8
    total = nlmsg.size + nfgen.size + nla.size + verdict
    return (
        nlmsg.pack(total, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, 0, 0)
        + nfgen.pack(socket.AF_UNSPEC, 0, queue)
        + nla.pack(nla.size + verdict, NFQA_VERDICT_HDR)
    )


def fail_open_message(queue: int, fail_open: bool) -> bytes:
    """An NFQNL_MSG_CONFIG message that sets (or clears) NFQA_CFG_F_FAIL_OPEN on ``queue`` and nothing else.

    Without NLM_F_ACK: the kernel applies it while the message is sent and
    answers only an error (none is possible for a queue this socket has bound),
    so the reading thread can send it between two packets without waiting for
    an answer that would arrive among the packets.
    """
    nlmsg, nfgen = struct.Struct("=IHHII"), struct.Struct("!BBH")
    head, value = struct.Struct("=HH"), struct.Struct("!I")  # attribute header (host order), value (network)
    total = nlmsg.size + nfgen.size + 2 * (head.size + value.size)
    return (
        nlmsg.pack(total, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, NLM_F_REQUEST, 0, 0)
        + nfgen.pack(socket.AF_UNSPEC, 0, queue)
        + head.pack(head.size + value.size, NFQA_CFG_FLAGS)
        + value.pack(NFQA_CFG_F_FAIL_OPEN if fail_open else 0)
        + head.pack(head.size + value.size, NFQA_CFG_MASK)
        + value.pack(NFQA_CFG_F_FAIL_OPEN)
    )


def _import_nfq() -> Any:
    try:
        import netfilterqueue
    except ImportError as exc:
        raise MissingToolError(
            f"NetfilterQueue cannot be imported ({exc}); run `make setup`, or "
            "`apt-get install libnetfilter-queue-dev && pip install --no-binary netfilterqueue netfilterqueue`"
        ) from None
    return netfilterqueue


HEADERS_RANGE = 128  # copy="headers": IPv4 with options and TCP with options (120 bytes) fit, IPv6 and TCP too
FULL_RANGE = 65535  # the largest copy range: every IP packet, GSO packets too, whole
COPY_MODES = ("full", "headers", "auto")


class QueueSource:
    """Packets from NFQUEUE ``queue`` in namespace ``netns`` (None: this process's).

    ``copy_range`` bytes of each packet are copied to user space; ``copy_auto`` starts
    with :data:`HEADERS_RANGE` and copies whole packets from the first one a handler
    read past its copied part (:meth:`grow_copy`).
    """

    def __init__(
        self,
        queue: int,
        *,
        netns: str | None = None,
        max_len: int = DEFAULT.max_len,
        copy_range: int = 65535,
        sock_bytes: int = DEFAULT.sock_bytes,
        fail_open: bool = True,
        gso: bool = False,
        copy_auto: bool = False,
    ) -> None:
        if not 0 < copy_range <= 65535:
            raise PktlabError(f"copy range {copy_range} is out of range; use 1..65535 bytes")
        if not 1 <= max_len <= 0xFFFFFFFF:
            raise PktlabError(
                f"max_len {max_len} is out of range; the kernel queue must hold 1 to 4,294,967,295 packets "
                "(the default is 4096)"
            )
        if not 4096 <= sock_bytes <= 0x7FFFFFFF:
            raise PktlabError(
                f"sock_bytes {sock_bytes} is out of range; use 4096 .. 2,147,483,647 bytes (default 8 MiB)"
            )
        self.queue = queue
        self.fail_open = fail_open
        self.gso = gso  # NFQA_CFG_F_GSO: GSO packets queued whole, offloaded checksums left to the kernel
        self._reader = QueueReader()
        self._fd = -1
        self._q: Any = None
        self.retired_threads: list[threading.Thread] = []
        self._enobufs_before = 0  # counted by the readers of earlier runs (start() after stop())
        self.netns = netns
        self.max_len = max_len
        self.copy_range = copy_range
        self.copy_auto = copy_auto
        self._copy_start = copy_range  # where copy_auto starts again (start(), reset_copy())
        self.sock_bytes = sock_bytes
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stop = False
        self._stops_itself = False  # stop() was called on the reading thread (a handler detached its session)
        self._drain_until = 0.0
        self._paused = False
        self._steps = 0  # packets to let through while paused (step())
        self._stepped = threading.Condition()
        self._on_bound: Callable[[int], None] | None = None
        self._after_read: Callable[[], None] | None = None
        self._before_unbind: Callable[[], None] | None = None
        # called by the reading thread after each read (True when stopping): the dispatcher passes
        # packets it kept back (TCP segments after a gap in their stream) that waited long enough, and
        # says in how many seconds it wants to be called again (None: only after the next read)
        self.on_idle: Callable[[bool], float | None] | None = None
        self._idle_again: float | None = None
        self.internal_errors = 0
        self.last_internal_error: str | None = None
        self.holding_when_full = False  # a fail-open queue made fail-closed for now (hold_when_full)
        # told the owner (uid, gid) of each packet's local socket before the packet is dispatched
        # (``sink.owner``; the dispatcher puts it on the packet)
        self.owner_sink: Any = None
        # (target, capsule): the dispatcher's C path each parsed message is offered to first
        # (QueueReader.set_fast): packets no handler sees are verdicted without a packet object
        self.fast_path: tuple[Any, Any] | None = None

    @property
    def reader(self) -> QueueReader:
        """The compiled reader of the queue's socket (its counters: batches, enobufs)."""
        return self._reader

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread_id(self) -> int | None:
        """The reading thread's id (benchmarks pin it to a CPU); None before it starts."""
        return self._thread.native_id if self._thread is not None else None

    def start(
        self,
        callback: Callable[[Any], None],
        *,
        on_bound: Callable[[int], None] | None = None,
        after_read: Callable[[], None] | None = None,
        before_unbind: Callable[[], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Bind the queue and start reading; raises if the bind fails.

        ``on_bound(fd)`` is called with the queue's netlink socket once bound;
        ``after_read()`` each time the socket has been read empty; ``before_unbind()`` by the reading thread
        once it stops, before the socket is unbound (what still writes to the socket finishes then).
        """
        t = self._thread
        if self._stops_itself and t is not None and t is not threading.current_thread():
            t.join(timeout)  # detached by its own handler: it gives what is queued its verdict, then lets go
        if self.running:
            raise PktlabError(f"the reader of queue {self.queue} is already running; stop() it first")
        self._on_bound, self._after_read, self._before_unbind = on_bound, after_read, before_unbind
        # a source can be started again after stop(): a fresh reader, nothing left of the last run's state
        self._stop = False  # a pause made before start() holds: the first packets wait for step() or resume()
        self._steps = 0
        self.copy_range = self._copy_start
        self._enobufs_before += self._reader.enobufs
        self._reader = self._new_reader()
        nfq_mod = _import_nfq()
        require_place(f"bind NFQUEUE {self.queue}", self.netns)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        ready = threading.Event()
        box: dict[str, BaseException] = {}
        self._thread = threading.Thread(
            target=self._run, args=(nfq_mod, callback, ready, box), name=f"pktlab-queue-{self.queue}", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise PktlabError(f"the reader of queue {self.queue} did not start within {timeout} s")
        if "error" in box:
            self._thread.join()
            self._close_pipe()
            raise box["error"]

    def _new_reader(self) -> QueueReader:
        reader = QueueReader()
        reader.sink = self.owner_sink
        if self.fast_path is not None:
            reader.set_fast(*self.fast_path)
        return reader

    def describe_copy(self) -> str:
        """How much of each packet is copied, in words (for status())."""
        if self.copy_auto:
            now = "whole packets now" if self.copy_range > self._copy_start else "headers so far"
            return f"auto (the first {self._copy_start} bytes, whole packets once a handler reads further; {now})"
        if self.copy_range >= FULL_RANGE:
            return "full (whole packets)"
        return f"the first {self.copy_range} bytes" + (" (headers)" if self.copy_range == HEADERS_RANGE else "")

    def grow_copy(self, copied: int) -> bool:
        """A handler needed more of a packet than the ``copied`` bytes: True if a repeat will copy more.

        Called by the reading thread, in the callback.  With ``copy_auto`` the queue's copy
        range becomes :data:`FULL_RANGE` for every packet queued from now on (packets queued
        before still come with the smaller copy: a repeat sends them through the queue again).
        """
        if self.copy_range > copied:
            return True
        if not self.copy_auto or self.copy_range >= FULL_RANGE or self._fd < 0:
            return False
        send_copy_range(self._fd, self.queue, FULL_RANGE)
        self.copy_range = FULL_RANGE
        return True

    def reset_copy(self) -> None:
        """``copy_auto``: copy headers only again (the handlers changed; they may need less)."""
        if self.copy_auto and self._fd >= 0 and self.copy_range != self._copy_start:
            send_copy_range(self._fd, self.queue, self._copy_start)
            self.copy_range = self._copy_start

    def _bind(self, nfq_mod: Any, callback: Callable[[Any], None]) -> Any:
        try:
            if self.netns is None:
                q = nfq_mod.NetfilterQueue()
            else:  # the socket is made inside the lab host (by its helper in user-namespace mode) and read here
                hold_process_port()
                sock = netns.socket_in(self.netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
                try:
                    q = nfq_mod.NetfilterQueue(sockfd=sock.fileno())
                finally:
                    sock.close()  # NetfilterQueue keeps a duplicate
        except OSError as exc:
            raise PrivilegeError(f"cannot open the netfilter queue socket ({exc}); run `pktlab doctor`") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "rcvbuf limit": we read the real size below
            try:
                q.bind(self.queue, callback, max_len=self.max_len, range=self.copy_range, sock_len=self.sock_bytes)
            except OSError:
                other = kernel.queue_counters(self.netns).get(self.queue)
                where = f"namespace {self.netns}" if self.netns else "the host namespace"
                who = f" (netlink port {other.portid})" if other else ""
                raise QueueBusyError(
                    f"queue {self.queue} is already bound by another reader{who} in {where}; "
                    "detach that session (%pktlab detach / s.detach()) or pick another queue number"
                ) from None
        try:
            configure_queue(q, self.copy_range, self.fail_open, self.gso)
        except OSError as exc:
            q.unbind()
            raise PktlabError(
                f"queue {self.queue} was bound but could not be configured ({exc}); detach and retry"
            ) from None
        return q

    def _run(self, nfq_mod: Any, callback: Callable[[Any], None], ready: threading.Event, box: dict) -> None:
        try:
            q = self._bind(nfq_mod, callback)
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        fd = self._fd = q.get_fd()
        self._q = q
        if self._on_bound is not None:
            self._on_bound(fd)
        switch_interval.reader_started()  # a computing thread gives the GIL up to this one within 0.5 ms
        ready.set()
        self._serve(q, self._reader)

    def _successor(self, reader: QueueReader) -> None:
        self._serve(self._q, reader)

    def _serve(self, q: Any, reader: QueueReader) -> None:
        """Read until stopped; a reader retired by :meth:`replace_reader` returns and leaves the queue bound."""
        reading = select.poll()
        reading.register(self._fd, select.POLLIN)
        reading.register(self._wake_r, select.POLLIN)
        waiting = select.poll()  # while paused: only the wake pipe, packets stay in the kernel
        waiting.register(self._wake_r, select.POLLIN)
        try:
            while not reader.retired:
                timeout = 250 if not self._stop else 10
                if self._idle_again is not None:  # a kept-back packet's wait ends sooner
                    timeout = min(timeout, max(1, int(self._idle_again * 1000 + 0.999)))
                done = False  # the socket was read already (poll_read)
                if self._paused and not self._stop and self._steps == 0:
                    events = waiting.poll(250)
                elif reader.waiting:
                    events = []  # messages handed over by a retired reader: dispatch them first
                elif self._paused and not self._stop:
                    events = reading.poll(timeout)  # stepping: one packet at a time, below
                else:  # the wait and the read in C: nothing of Python's between a packet and its verdict
                    woken = self._poll_read(q, reader, timeout)
                    events = [(self._wake_r, select.POLLIN)] if woken else []
                    done = not woken
                if any(efd == self._wake_r for efd, _ in events):
                    try:
                        os.read(self._wake_r, 64)
                    except BlockingIOError:
                        pass  # another reading thread took the wake-up
                if self._paused and not self._stop:
                    if self._steps > 0 and events and any(efd == self._fd for efd, _ in events):
                        self._read(q, reader, limit=1)
                        with self._stepped:
                            self._steps -= 1
                            self._stepped.notify_all()
                    continue
                if not done:
                    self._read(q, reader)
                elif self._after_read is not None:
                    self._after_read()
                if self.on_idle is not None:
                    self._idle_again = self.on_idle(bool(self._stop))
                if self._stop and not reader.retired and self._drained():
                    break
        finally:
            if not reader.retired:
                if self._before_unbind is not None:
                    try:
                        self._before_unbind()
                    except Exception as exc:  # pktlab's own failure: the queue is unbound all the same
                        self.internal_errors += 1
                        self.last_internal_error = f"{type(exc).__name__}: {exc}"
                q.unbind()
                self._fd = -1
                self.holding_when_full = False
                switch_interval.reader_stopped()
                if self._stops_itself and threading.current_thread() is self._thread:  # stop() was called here
                    self._stops_itself = False
                    self._let_go()
            elif reader.successor is not None and reader.successor.waiting:
                self._wake()  # the successor may be asleep in poll with messages handed to it

    def replace_reader(self) -> None:
        """Hand the queue to a new reading thread; the current one is stuck in a handler.

        Called by the session's watchdog (holding the GIL).  The messages the
        old thread had taken from the socket but not dispatched go to the new
        reader; the old thread finishes the message it is in when its handler
        returns, then exits without touching the queue.
        """
        old = self._thread
        successor = self._new_reader()
        self._reader.retire(successor)  # hands its ENOBUFS count on too
        self._reader = successor
        if old is not None:
            self.retired_threads.append(old)
        t = threading.Thread(
            target=self._successor, args=(self._reader,), name=f"pktlab-queue-{self.queue}", daemon=True
        )
        self._thread = t
        t.start()

    @property
    def stuck_threads(self) -> list[threading.Thread]:
        """Reading threads replaced while stuck in a handler that has not returned yet."""
        self.retired_threads = [t for t in self.retired_threads if t.is_alive()]
        return list(self.retired_threads)

    @property
    def reads_here(self) -> bool:
        """Whether the calling thread is one of this source's reading threads: code in a handler."""
        me = threading.current_thread()
        return me is self._thread or me in self.retired_threads

    def _poll_read(self, q: Any, reader: QueueReader, timeout: int) -> bool:
        """Wait for packets or a wake-up; read the packets at once (True: woken, nothing read)."""
        try:
            return bool(reader.poll_read(q, self._fd, self._wake_r, timeout))
        except Exception as exc:  # pktlab's own failure, as in _read
            self.internal_errors += 1
            self.last_internal_error = f"{type(exc).__name__}: {exc}"
            return False

    def _read(self, q: Any, reader: QueueReader, limit: int = -1) -> None:
        try:
            reader.read(q, self._fd, limit)
            if self._after_read is not None:
                self._after_read()
        except Exception as exc:  # the callback guards user code; this is pktlab's own failure
            self.internal_errors += 1
            self.last_internal_error = f"{type(exc).__name__}: {exc}"

    def _drained(self) -> bool:
        """True when the kernel holds no more packets for us, or the drain deadline passed."""
        if time.monotonic() > self._drain_until:
            return True
        try:
            c = kernel.queue_counters(self.netns).get(self.queue)
        except LabError:  # its namespace was removed (lab.down() in a handler): what it queued went with it
            return True
        return c is None or c.queue_total == 0

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop reading; packets wait in the kernel queue (up to ``max_len``) until :meth:`resume`."""
        self._paused = True
        self._wake()

    def step(self, timeout: float = 5.0) -> bool:
        """While paused, read exactly one packet (waiting up to ``timeout`` s for one); True if one was read."""
        with self._stepped:
            self._steps += 1
            target = self._steps - 1
            self._wake()
            done = self._stepped.wait_for(lambda: self._steps <= target, timeout)
            if not done:
                self._steps -= 1  # nothing came: take the step back
            return done

    def resume(self) -> None:
        """Read again, starting with the packets that waited."""
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def hold_when_full(self, hold: bool) -> None:
        """While ``hold``, a full queue drops packets (the sender retransmits them) instead of passing them.

        For a fail-open queue whose handlers rewrote TCP lengths: a packet of
        such a connection that passed unseen would carry unadjusted sequence
        numbers and corrupt the stream.  Sent on the queue's own socket (the
        kernel accepts configuration of a queue only from the socket that bound
        it); does nothing for a fail-closed queue or one not bound.
        """
        fd = self._fd
        if not self.fail_open or fd < 0:
            return
        os.write(fd, fail_open_message(self.queue, not hold))
        self.holding_when_full = hold

    def stop(self, drain: float = 2.0, timeout: float = 10.0) -> None:
        """Stop reading: give every packet still queued its verdict (for up to ``drain`` s), then unbind."""
        t = self._thread
        if t is None:
            return
        self._drain_until = time.monotonic() + drain
        self._stop = True  # a paused reader drains too: detach gives every packet its verdict
        self._wake()
        if t is threading.current_thread():  # from a handler (it detached its session): this thread cannot wait
            self._stops_itself = True  # for itself; once the handler returns it drains, unbinds and lets go (_serve)
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self._thread
            assert t is not None
            t.join(0.05)
            if not t.is_alive() and t is self._thread:
                break
        else:
            raise PktlabError(
                f"the reader of queue {self.queue} did not stop within {timeout} s; a handler may be stuck"
            )
        self._let_go()

    def _let_go(self) -> None:
        """What a stop does once its reading thread has ended (by stop()'s wait, or by that thread itself)."""
        self._thread = None
        self._q = None  # closes the queue's socket once no stuck thread holds it
        self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    @property
    def enobufs(self) -> int:
        """How often the socket reported ENOBUFS: packets the kernel could not hand to the reader."""
        return self._enobufs_before + self._reader.enobufs

    def counters(self) -> kernel.QueueCounters | None:
        """The kernel's counters for this queue (None when not bound)."""
        return kernel.queue_counters(self.netns).get(self.queue)
