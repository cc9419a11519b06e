"""The web console in a real browser: Debian's Chromium driven by Playwright against the stack.

Chromium comes from Debian's packages (installed here when ``/usr/bin/chromium`` is absent);
Playwright never downloads a browser. Screenshots of every page and tab, at 1280×800 and
390×844, are kept under the pytest base temp folder (``console-screenshots``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import ROOT, Stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ECHO = ROOT / "tests" / "models" / "echo"
TABS = (
    "Charts",
    "Logs",
    "Predictions",
    "Config",
    "Continual Learning",
    "Feedback loop",
    "Monitoring",
)
# What each tab shows once its API answers came in.
LOADED = {
    "Charts": re.compile("Requests per minute"),
    "Logs": re.compile("Received|No predictions logged yet"),
    "Config": re.compile("Traffic history"),
    "Predictions": re.compile("coming"),
    "Continual Learning": re.compile("coming"),
    "Feedback loop": re.compile("coming"),
    "Monitoring": re.compile("coming"),
}
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}


def ensure_chromium() -> Path:
    """Debian's Chromium, installed with apt-get when it is not there yet."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.fail("no /usr/bin/chromium and no apt-get to install it: apt install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian, launched by Playwright (no download of its own)."""
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def echo_endpoint(stack: Stack) -> tuple[str, str]:
    """An endpoint answering with its input, deployed with the CLI: its slug and token."""
    result = stack.cli("deploy", str(ECHO), "--name", "console-echo", "--server", "workers=1")
    assert result.returncode == 0, result.stdout + result.stderr
    slug = result.stdout.split("Endpoint ", 1)[1].split(" created", 1)[0]
    token = result.stdout.split("(shown once):", 1)[1].split()[0]
    return slug, token


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go (a test artifact under the base temp folder)."""
    return tmp_path_factory.mktemp("console-screenshots", numbered=False)


def watch_errors(page: Page) -> list[str]:
    """Every console error and uncaught exception of ``page``, as it happens."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text} at {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    return errors


def log_in(page: Page, stack: Stack) -> None:
    """Open the gateway's home page, which leads to the login form, and log in."""
    page.goto(stack.url + "/")
    assert page.url == stack.url + "/console"
    page.get_by_label("Admin key").fill(stack.admin_key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Endpoints")).to_be_visible()


def until(check: Callable[[], bool], *, within: float = 60.0, what: str) -> None:
    """Wait until ``check()`` holds (it may act, e.g. press Refresh), or fail."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen within {within} s")


def fits_width(page: Page) -> bool:
    """No horizontal scrolling of the page itself (tables scroll inside their own box)."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


# The first test may install Chromium with apt-get (a few minutes on a fresh machine).
@pytest.mark.timeout(900)
def test_console_in_chromium(
    stack: Stack, browser: Browser, echo_endpoint: tuple[str, str], shots: Path
) -> None:
    """Log in, see the endpoint, query it from "try it", open every tab, export logs, log out."""
    slug, token = echo_endpoint
    width, height = VIEWPORTS["desktop"]
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    page = context.new_page()
    errors = watch_errors(page)

    log_in(page, stack)
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="console-echo"))
    expect(row).to_contain_text("web")
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("1 ready")
    expect(row.locator('td[data-label="Traffic"]')).to_have_text("v1 100 %")
    page.screenshot(path=shots / "desktop-endpoints.png", full_page=True)

    row.get_by_role("link", name="console-echo").click()
    expect(page.get_by_role("heading", name="Try it")).to_be_visible()
    expect(page.get_by_role("definition").filter(has_text="/predict")).to_have_text(
        f"/api/v1/endpoints/{slug}/predict"
    )
    expect(page.get_by_role("main")).not_to_contain_text("[object")
    page.get_by_label("Endpoint token").fill(token)
    page.get_by_label("Input (JSON; a list is spread as arguments)").fill('"hello console"')
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#try-output")).to_contain_text('"prediction": "hello console"')

    # Charts: the requests chart counts the prediction once predictlog has stored it.
    page.get_by_role("tab", name="Charts").click()
    # A tab redraws its panel only: the answer stays on screen.
    expect(page.locator("#try-output")).to_contain_text('"prediction": "hello console"')
    requests_chart = page.get_by_role("img", name="Requests per minute")
    expect(requests_chart).to_have_attribute(
        "aria-label", re.compile(r"requests total 1,"), timeout=60_000
    )
    expect(page.get_by_role("img", name="Latency (ms)")).to_be_visible()
    # A custom metric logged through the API gets a chart of its own on request.
    client = stack.client()
    client.request("POST", f"/api/v1/endpoints/{slug}/metrics", json={"key": "acc", "value": 0.93})
    page.get_by_label("Custom metric").fill("acc")
    page.get_by_role("button", name="Add chart").click()
    expect(page.get_by_role("img", name="Metric acc")).to_have_attribute(
        "aria-label", re.compile("avg latest 0.93,")
    )
    page.screenshot(path=shots / "desktop-charts.png", full_page=True)

    # Logs: the prediction is listed; the CSV export downloads it.
    page.get_by_role("tab", name="Logs").click()
    expect(page.get_by_role("tabpanel")).to_contain_text("Logs")
    cell = page.get_by_role("cell", name='"hello console"').first

    def listed() -> bool:
        page.get_by_role("button", name="Refresh").click()
        try:
            cell.wait_for(timeout=2000)
        except PlaywrightTimeoutError:
            return False
        return True

    until(listed, what="the prediction in the Logs tab")
    page.screenshot(path=shots / "desktop-logs.png", full_page=True)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    csv_path = shots / "logs.csv"
    download_info.value.save_as(csv_path)
    assert "hello console" in csv_path.read_text()

    # Config: the traffic split, and Roll back offered only when there is a canary.
    page.get_by_role("tab", name="Config").click()
    expect(page.locator("#traffic-split")).to_have_text("v1 100 %")
    expect(page.get_by_role("button", name="Roll back")).to_be_disabled()
    expect(page.get_by_role("button", name="Promote")).to_be_disabled()
    page.screenshot(path=shots / "desktop-config.png", full_page=True)

    # Update model: a new version from a folder, rolled out to 25 % with the slider (moved
    # with the keyboard), then rolled back; each change carries the session's CSRF token.
    page.get_by_label("Source (absolute folder path or git URL)").fill(str(ECHO))
    page.get_by_role("button", name="Create version").click()
    expect(page.locator("#config-status")).to_contain_text("Version v2 created", timeout=60_000)
    page.get_by_label("Version", exact=True).select_option("2")
    slider = page.get_by_label("Canary share of traffic")
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(24):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#canary-percent-value")).to_have_text("25 %")
    page.get_by_role("button", name="Roll out").click()
    expect(page.locator("#traffic-split")).to_have_text("v1 75 % · v2 25 %", timeout=120_000)
    expect(page.locator("#config-status")).to_have_text("v2 has 25 % of the traffic.")
    page.screenshot(path=shots / "desktop-config-canary.png", full_page=True)
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#config-status")).to_have_text(
        "Rolled back: all traffic on the stable version.", timeout=60_000
    )
    expect(page.locator("#traffic-split")).to_have_text("v1 100 %")
    weights = client.rollouts.traffic(slug)["weights"]
    assert {v: w for v, w in weights.items() if w} == {"1": 100}

    # The tabs still to come say so; arrow keys move between tabs.
    for name in ("Predictions", "Continual Learning", "Feedback loop", "Monitoring"):
        page.get_by_role("tab", name=name).click()
        expect(page.get_by_role("tabpanel")).to_contain_text("coming")
        page.screenshot(path=shots / f"desktop-{name.lower().replace(' ', '-')}.png")
    page.get_by_role("tab", name="Charts").focus()
    page.keyboard.press("ArrowRight")
    logs_tab = page.get_by_role("tab", name="Logs")
    expect(logs_tab).to_have_attribute("aria-selected", "true")
    expect(logs_tab).to_be_focused()

    # Back on the list, the sparkline counts the one prediction.
    page.get_by_role("link", name="Serving").click()
    # Its own row: the other tests' endpoints share this stack (and their own requests).
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="console-echo"))
    spark = row.get_by_role("img", name=re.compile("^1 request in the last hour"))
    expect(spark).to_be_visible()
    page.screenshot(path=shots / "desktop-endpoints-after.png", full_page=True)

    # The list's per-endpoint calls end first: one still in flight would meet the ended session.
    page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin key")).to_be_visible()
    context.close()
    assert errors == []


@pytest.mark.timeout(900)
def test_console_on_a_phone(
    stack: Stack, browser: Browser, echo_endpoint: tuple[str, str], shots: Path
) -> None:
    """At 390×844 every page and tab fits the screen's width; screenshots of each."""
    slug, _ = echo_endpoint
    width, height = VIEWPORTS["phone"]
    context = browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    errors = watch_errors(page)
    log_in(page, stack)
    expect(page.get_by_role("link", name="console-echo")).to_be_visible()
    assert fits_width(page)
    page.screenshot(path=shots / "phone-endpoints.png", full_page=True)
    for name in TABS:
        tab_id = name.lower().replace(" ", "-").replace("-loop", "")
        page.goto(f"{stack.url}/console#/endpoints/{slug}/{tab_id}")
        expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")
        panel = page.get_by_role("tabpanel")
        expect(panel.get_by_role("heading", name=name)).to_be_visible()
        expect(panel).to_contain_text(LOADED[name])
        assert fits_width(page), name
        page.screenshot(path=shots / f"phone-{tab_id}.png", full_page=True)
    context.close()
    assert errors == []
