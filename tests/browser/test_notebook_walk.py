"""Every notebook in notebooks/, run top to bottom in JupyterLab in headless Chromium with no way out to the network.

What a student sees and the notebook tests (nbclient, no browser) cannot: for each notebook, no error
output, no JavaScript error in the console, no request that left the machine (the browser's requests
to anything but loopback fail, as on a machine with no internet), every
Bokeh figure drawn (a canvas in each plot view), and in 03-live-firewall the dashboard's packet table
showing the drops of the handler swapped in under traffic; and what each notebook printed, checked as
the notebook tests check a live run (tests/notebooks/expected.py: with chromium here, this walk is the
live run of the notebooks).  A screenshot per notebook, and one per figure, go to
test-output/browser/walk/.  Live mode, with the notebook tests' reduced sizes; as a student on a hub: when
the suite runs as root, JupyterLab runs as the ordinary user the set-up made (user-namespace mode).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from pktlab.lab.network import wait_until
from tests.browser.conftest import jupyter_server, kernel_ready, server_user
from tests.conftest import needs_live
from tests.notebooks.expected import SMALL_COSTS, check_live_output

pytestmark = [
    needs_live,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed"),
]
REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").rglob("*.ipynb"))
OUT = REPO / "test-output" / "browser" / "walk"
SMALL = {"PKTLAB_NETPIPE_MAX": "65536", "PKTLAB_NETPIPE_QUICK": "1", "PKTLAB_CACHE_MAX": "4096",
         "PKTLAB_FILTER_COUNT": "10000", "PKTLAB_FILTER_ROUNDS": "1", **SMALL_COSTS}

# Counts each notebook's figures by what it shows: the checks below assert every one was drawn
PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
                      .map(e => e.textContent.trim())"""
OUTPUTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
                      .map(e => e.textContent)"""
FIGURES_JS = """() => {
  // BokehJS draws into nested shadow roots (bk-Figure > bk-Canvas > canvas): walk them all
  const deep = (root, test, out) => {
    for (const el of root.querySelectorAll('*')) {
      if (test(el)) out.push(el);
      if (el.shadowRoot) deep(el.shadowRoot, test, out);
    }
    return out;
  };
  const figures = deep(document, el => el.classList && el.classList.contains('bk-Figure'), []);
  const painted = (c) => {  // a canvas with a size and at least one pixel drawn
    if (!c.width || !c.height) return false;
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
    return false;
  };
  const drawn = figures.filter(f => deep(f.shadowRoot || f, el => el.tagName === 'CANVAS', []).some(painted));
  return [figures.length, drawn.length];
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("walk")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    with jupyter_server("lab", root, env_extra={**SMALL, "PKTLAB_REPLAY": ""}, user=server_user()) as s:
        yield s


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # no way out: every request but loopback goes to a proxy that is not there (port 9, discard: nothing
        # listens); a route handler instead (Playwright's context.route) kept JupyterLab's kernel from starting
        offline = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"]
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", *offline], headless=True)
        # one context for the walk: JupyterLab's scripts are fetched and compiled once, then come from its cache
        context = b.new_context(viewport={"width": 1400, "height": 1600})
        try:
            yield context
        finally:
            context.close()
            b.close()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(REPO / "notebooks")) for p in NOTEBOOKS])
def test_notebook_in_the_browser(path: Path, server, browser) -> None:  # type: ignore[no-untyped-def]
    base, token, root, _ = server
    rel = path.relative_to(REPO).as_posix()
    shot = OUT / (path.relative_to(REPO / "notebooks").with_suffix("").as_posix().replace("/", "-") + ".png")
    OUT.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: refused.append(r.url) if urlparse(r.url).hostname != "127.0.0.1" else None)
    try:
        page.goto(f"{base}/lab/tree/{rel}?token={token}&reset")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        assert wait_until(lambda: kernel_ready(base, token, rel), 60, 0.2), f"{rel}: the kernel did not connect"
        if page.locator(".jp-Dialog").count():
            raise AssertionError(f"a dialog is open over the page: {page.locator('.jp-Dialog').first.inner_text()!r}")
        page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")

        def finished() -> bool:
            prompts = page.evaluate(PROMPTS_JS)
            return bool(prompts) and "[*]:" not in prompts and kernel_ready(base, token, rel)

        # a queued cell shows [*] until it ran; JupyterLab clears the queue after an error, so this ends either way
        assert wait_until(lambda: page.evaluate(PROMPTS_JS).count("[*]:") > 0 or finished(), 30, 0.2)
        assert wait_until(finished, 300, 0.5), f"{rel}: still running after 5 minutes"
        page.wait_for_timeout(1500)  # the last outputs' views render (BokehJS draws after the output arrives)
        prompts = page.evaluate(PROMPTS_JS)
        assert all(p.startswith("[") and p[1:-2].isdigit() for p in prompts), f"{rel}: cells not run: {prompts}"
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t]  # pktlab's own notices are not errors
        assert not tracebacks, f"{rel}: error output:\n{tracebacks[0][-2000:]}"
        # what the notebook printed: the same checks as the notebook tests' live run (nbclient)
        check_live_output(path.stem, "\n".join(page.evaluate(OUTPUTS_JS)))
        views, drawn = page.evaluate(FIGURES_JS)
        assert drawn == views, f"{rel}: {views - drawn} of {views} Bokeh figures not drawn"
        if path.stem in ("04-netpipe-nat", "05-kernel-view", "06-packet-cache", "07-filter-costs", "08-copy-costs"):
            assert views > 0, f"{rel}: no Bokeh figure in the page"
        if path.stem == "03-live-firewall":
            # Run All leaves the page at the last cell: BokehJS draws the table's rows when the dashboard is in
            # view (loop run m20-1: no row at all while it was scrolled away), so bring it there first
            page.locator(".pktlab-packets").first.scroll_into_view_if_needed()
            table = lambda: page.locator(".slick-cell").all_inner_texts()  # noqa: E731
            assert wait_until(lambda: "drop" in table(), 10, 0.2), (
                f"{rel}: the dashboard's table shows no drop after the swap: {table()[:12]}"
            )
        assert not refused, f"{rel}: the page tried to reach the network: {refused[:5]}"
        assert not console, f"{rel}: JavaScript errors: {console[:5]}"
        page.screenshot(path=str(shot))
        # JupyterLab scrolls inside its panel: each figure gets a picture of its own, to be looked at
        for i, fig in enumerate(page.locator(".bk-Figure").all()):
            fig.scroll_into_view_if_needed()
            fig.screenshot(path=str(shot.with_name(f"{shot.stem}-figure{i + 1}.png")))
    except BaseException:
        page.screenshot(path=str(shot.with_name(shot.stem + "-failure.png")))
        raise
    finally:
        page.close()
