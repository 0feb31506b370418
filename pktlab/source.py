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
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import kernel, netns
from .errors import MissingToolError, PktlabError, PrivilegeError, QueueBusyError


def _import_nfq() -> Any:
    try:
        import netfilterqueue
    except ImportError as exc:
        raise MissingToolError(
            f"NetfilterQueue cannot be imported ({exc}); run `make setup`, or "
            "`apt-get install libnetfilter-queue-dev && pip install --no-binary netfilterqueue netfilterqueue`"
        ) from None
    return netfilterqueue


class QueueSource:
    """Packets from NFQUEUE ``queue`` in namespace ``netns`` (None: this process's)."""

    def __init__(
        self,
        queue: int,
        *,
        netns: str | None = None,
        max_len: int = 4096,
        copy_range: int = 65535,
        sock_bytes: int = 8 << 20,
    ) -> None:
        self.queue = queue
        self.netns = netns
        self.max_len = max_len
        self.copy_range = copy_range
        self.sock_bytes = sock_bytes
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stop = False
        self._drain_until = 0.0
        self.internal_errors = 0
        self.last_internal_error: str | None = None
        self.drained_at_stop = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, callback: Callable[[Any], None], timeout: float = 10.0) -> None:
        """Bind the queue and start reading; raises if the bind fails."""
        nfq_mod = _import_nfq()
        kernel.require_net_admin(f"bind NFQUEUE {self.queue}")
        self._wake_r, self._wake_w = os.pipe()
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

    def _bind(self, nfq_mod: Any, callback: Callable[[Any], None]) -> Any:
        netns.enter(self.netns)
        try:
            q = nfq_mod.NetfilterQueue()
        except OSError as exc:
            raise PrivilegeError(f"cannot open the netfilter queue socket ({exc}); run as root") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "rcvbuf limit": we read the real size below
            try:
                q.bind(self.queue, callback, max_len=self.max_len, range=self.copy_range, sock_len=self.sock_bytes)
            except OSError:
                other = kernel.parse_queue_proc(kernel._read_queue_proc()).get(self.queue)
                where = f"namespace {self.netns}" if self.netns else "the host namespace"
                who = f" (netlink port {other.portid})" if other else ""
                raise QueueBusyError(
                    f"queue {self.queue} is already bound by another reader{who} in {where}; "
                    "detach that session (%pktlab detach / s.detach()) or pick another queue number"
                ) from None
        return q

    def _run(self, nfq_mod: Any, callback: Callable[[Any], None], ready: threading.Event, box: dict) -> None:
        try:
            q = self._bind(nfq_mod, callback)
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        ready.set()
        fd = q.get_fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                poller.poll(250 if not self._stop else 10)
                self._read(q)
                if self._stop and self._drained():
                    break
        finally:
            q.unbind()
            del q

    def _read(self, q: Any) -> None:
        try:
            q.run(block=False)
        except Exception as exc:  # the callback guards user code; this is pktlab's own failure
            self.internal_errors += 1
            self.last_internal_error = f"{type(exc).__name__}: {exc}"

    def _drained(self) -> bool:
        """True when the kernel holds no more packets for us, or the drain deadline passed."""
        if time.monotonic() > self._drain_until:
            return True
        c = kernel.parse_queue_proc(kernel._read_queue_proc()).get(self.queue)
        return c is None or c.queue_total == 0

    def stop(self, drain: float = 2.0, timeout: float = 10.0) -> None:
        """Stop reading: give every packet still queued its verdict (for up to ``drain`` s), then unbind."""
        t = self._thread
        if t is None:
            return
        self._drain_until = time.monotonic() + drain
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        t.join(timeout)
        if t.is_alive():
            raise PktlabError(
                f"the reader of queue {self.queue} did not stop within {timeout} s; a handler may be stuck"
            )
        self._thread = None
        self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def counters(self) -> kernel.QueueCounters | None:
        """The kernel's counters for this queue (None when not bound)."""
        return kernel.queue_counters(self.netns).get(self.queue)
