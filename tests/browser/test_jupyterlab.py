"""The dashboard and controls in a real JupyterLab and Notebook 7 page, driven by headless Chromium (Playwright).

A notebook in JupyterLab, run by an ordinary user (user-namespace mode) when the test runs as
root, makes a lab, attaches to its server and shows the dashboard and the controls; the test
enters that lab (by path, as root), counts what the server's socket receives, and sends a bounded
stream of numbered datagrams.  In the page: the packet counter rises; Pause
stops it while the kernel queue grows; Step + Accept delivers exactly one datagram;
Resume delivers the rest, none lost.  Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import nbformat
import pytest

from pktlab.kernel import netns
from pktlab.lab.network import wait_until
from tests.browser.conftest import jupyter_server, kernel_ready, lab_path, queue_diagnostics, server_user
from tests.conftest import needs_live

pytestmark = [
    needs_live,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed"),
]
OUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"


class Receiver:
    """A UDP socket in the lab's server namespace, counting numbered datagrams."""

    def __init__(self, ns: str, port: int = 9000) -> None:
        self.sock: socket.socket = netns.call_in(ns, self._bind, port)
        self.seen: set[int] = set()
        self.total = 0
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _bind(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root): the burst after Resume must fit
        s.bind(("0.0.0.0", port))
        s.settimeout(0.2)
        return s

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            self.total += 1
            self.seen.add(int.from_bytes(data[:4], "big"))

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        self.sock.close()


class Sender:
    """Numbered datagrams from the lab's client, ``rate`` per second, at most ``limit``, until stopped.

    The default lasts 3 minutes: every step until the test stops it needs traffic (Pause is checked
    by packets waiting in the kernel).  With 3,000 (30 s) the datagrams ran out before Pause in loop
    run m23-5, where a CPU-bound process slowed the page's first steps to 48 s.
    """

    def __init__(self, ns: str, dst: str, rate: float = 100.0, limit: int = 18_000) -> None:
        self.sock: socket.socket = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.dst, self.rate, self.limit = dst, rate, limit
        self.sent = 0
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop and self.sent < self.limit:
            self.sock.sendto(self.sent.to_bytes(4, "big") + bytes(28), (self.dst, 9000))
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def stop(self) -> None:
        self._stop = True
        self._t.join(2)
        self.sock.close()


def write_notebook(root: Path) -> Path:
    """The notebook makes its own lab (its kernel may be an ordinary user's) and says where it is in where.json."""
    cells = [
        nbformat.v4.new_code_cell(
            "import json, pktlab\n"
            "from pktlab.kernel import netns\n"
            "if 's' not in globals():  # run again after a page reload (same kernel): the same session\n"
            "    lab = pktlab.Lab()\n"
            "    s = pktlab.attach(1, rule='-p udp --dport 9000', netns=lab.server)\n"
            "    where = {'helper': netns.helper_pid(lab.server.netns), 'server': lab.server.netns,\n"
            "             'client': lab.client.netns, 'addr': lab.server.addr}\n"
            "    with open('where.json', 'w') as f:\n"
            "        json.dump(where, f)\n"
            "d = s.dashboard()\nd"
        ),
        nbformat.v4.new_code_cell("c = s.controls()\nc"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                         "language": "python"}})  # fmt: skip
    path = root / "live.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(params=["lab", "notebook"])
def jupyterlab(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A Jupyter server on loopback: JupyterLab 4, or Notebook 7 (the classic Notebook's successor), run by an
    ordinary user when this test runs as root (see server_user)."""
    write_notebook(tmp_path)
    with jupyter_server(request.param, tmp_path, user=server_user()) as server:
        yield server


def test_dashboard_and_controls_in_jupyterlab(jupyterlab) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    base, token, root, app = jupyterlab
    out = OUT / app
    out.mkdir(parents=True, exist_ok=True)
    receiver: Receiver | None = None
    sender: Sender | None = None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            path = "lab/tree" if app == "lab" else "notebooks"
            page.goto(f"{base}/{path}/live.ipynb?token={token}{'&reset' if app == 'lab' else ''}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            # the page's kernel connection is up (the server says so), so Run All is not lost on the way
            ready = lambda: kernel_ready(base, token, "live.ipynb")  # noqa: E731
            assert wait_until(ready, 60, 0.2), "the notebook's kernel did not connect"

            def click(selector: str) -> None:
                """Click, failing at once with the dialog's text if a dialog covers the page."""
                dialog = page.locator(".jp-Dialog")
                if dialog.count():
                    raise AssertionError(f"a JupyterLab dialog is open over the page: {dialog.first.inner_text()!r}")
                page.click(selector, timeout=30_000)

            click("div.lm-MenuBar-itemLabel:text-is('Run')")
            click("li.lm-Menu-item:has-text('Run All Cells')")
            page.wait_for_selector(".pktlab-packets", timeout=60_000)
            page.wait_for_selector("button:has-text('Pause')", timeout=60_000)
            # the kernel's lab, entered from here (root) by path when an ordinary user's helper owns it
            where = json.loads((root / "where.json").read_text())
            server_ns, client_ns = lab_path(where, "server"), lab_path(where, "client")
            assert (where["helper"] is not None) == (server_user() is not None), where
            receiver = Receiver(server_ns)

            def packets() -> int:
                return int(page.locator(".pktlab-packets").first.inner_text())

            def waiting() -> int:
                return int(page.locator(".pktlab-waiting").first.inner_text())

            def table() -> list[str]:
                """The texts of the packet table's visible cells (SlickGrid, inside BokehJS's shadow roots)."""
                return page.locator(".slick-cell").all_inner_texts()

            sender = Sender(client_ns, where["addr"])
            # the message tells apart: nothing sent (sender), sent but not queued (received directly), queued but
            # not shown (the page's counter), with the kernel's side (rule counters, bound queues). Loop run m17-3
            # and a full run on 2026-12-02 failed here with the counter at 0 and every datagram delivered: the view
            # had been drawn between two fragments of a patch and read every later one a fragment off
            # (pktlab/notebook/bokeh_widget.py, which the dashboard now uses, lets a view join at any fragment)
            assert wait_until(lambda: packets() >= 50, 20, 0.1), (
                f"the dashboard's counter did not rise: page shows {packets()} read and {waiting()} waiting; "
                f"{sender.sent} sent, {receiver.total} received by the server's socket; "
                + queue_diagnostics(server_ns)
            )
            first = packets()
            assert wait_until(lambda: len(table()) > 0, 20, 0.1), "the packet table shows no rows"
            rows = table()
            assert wait_until(lambda: packets() > first + 50, 20, 0.1)
            # issue 19, item 2: a full table must redraw with the newest packets, not keep its first fill
            assert wait_until(lambda: table() != rows, 10, 0.1), f"the packet table froze: {rows[:8]}"
            page.screenshot(path=str(out / "1-running.png"), full_page=True)

            click("button:has-text('Pause')")
            # synchronise on the pause itself: the kernel has stopped reading once packets wait in its queue
            page.wait_for_selector("text=PAUSED", timeout=20_000)
            assert wait_until(lambda: waiting() >= 10, 20, 0.1), "packets did not start waiting after Pause"
            got = receiver.total
            assert wait_until(lambda: waiting() >= 100, 20, 0.1), "the kernel queue did not grow while paused"
            assert receiver.total == got, "the receiver still got datagrams while paused"
            sender.stop()  # what waits now is all Step and Resume need: the queue stays far below its 4,096
            sent = sender.sent
            # every packet the chain passed was delivered: the page's counter settles on exactly that number
            assert wait_until(lambda: packets() == got, 10, 0.1), f"page shows {packets()}, delivered {got}"
            page.screenshot(path=str(out / "2-paused.png"), full_page=True)

            click("button:has-text('Step')")
            page.wait_for_selector("button:has-text('Accept'):not([disabled])", timeout=10_000)
            page.screenshot(path=str(out / "3-inspector.png"), full_page=True)
            click("button:has-text('Accept')")
            assert wait_until(lambda: receiver.total == got + 1, 5)
            time.sleep(1.0)
            assert receiver.total == got + 1, "Step + Accept must deliver exactly one datagram"

            click("button:has-text('Resume')")
            assert wait_until(lambda: receiver.total >= sent, 20), f"{receiver.total} of {sent} after Resume"
            time.sleep(0.5)
            assert receiver.total == sent and receiver.seen == set(range(sent)), "lost or duplicated datagrams"
            assert wait_until(lambda: packets() >= sent - 1, 20, 0.1)
            page.screenshot(path=str(out / "4-resumed.png"), full_page=True)

            # issue 19, item 3: the page reloaded (nothing saved, same kernel) and the cells run again: the new
            # page has no BokehJS until the dashboard's own output loads it, so the view must be made and drawn.
            # JupyterLab only. The new view must then get the live updates too: in 1 of 5 loop runs (and once in
            # Notebook 7) it did not, when it was drawn between two fragments of a patch (see bokeh_widget.py)
            if app != "lab":
                return
            page.reload()
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            assert wait_until(ready, 60, 0.2), "the reloaded page's kernel did not connect"
            click("div.lm-MenuBar-itemLabel:text-is('Run')")
            click("li.lm-Menu-item:has-text('Run All Cells')")
            page.wait_for_selector(".pktlab-packets", timeout=60_000)
            page.wait_for_selector("button:has-text('Pause')", timeout=60_000)
            assert page.locator("canvas").count() > 0, "the reloaded dashboard drew no plot"
            broken = [c for c in console if "Could not create a view" in c or "Failed to create view" in c]
            assert not broken, broken
            # and it is live: new traffic shows in the reloaded page
            shown = packets()
            sender = Sender(client_ns, where["addr"], limit=300)
            assert wait_until(lambda: packets() >= shown + 100, 20, 0.1), (
                f"the reloaded dashboard does not update: shows {packets()}, had {shown}, {sender.sent} more sent"
            )
            page.screenshot(path=str(out / "5-reloaded.png"), full_page=True)
            (out / "result.json").write_text(json.dumps({"sent": sent, "received": receiver.total, **where}))
        except BaseException:
            page.screenshot(path=str(out / "failure.png"), full_page=True)
            (out / "console.txt").write_text("\n".join(console))
            raise
        finally:
            if sender is not None:
                sender.stop()
            if receiver is not None:
                receiver.close()
            browser.close()
