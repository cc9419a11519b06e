"""The web console in a real browser: Debian's Chromium driven by Playwright against the stack.

Chromium comes from Debian's packages (installed here when ``/usr/bin/chromium`` is absent);
Playwright never downloads a browser. Screenshots of every page and tab, at 1280×800 and
390×844, are kept under the pytest base temp folder (``console-screenshots``). Every page
is also checked for form controls without a label (a small DOM check, in the manner of axe).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    expect,
    sync_playwright,
)
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
    "Predictions": re.compile("No batch jobs yet|Job "),
    "Continual Learning": re.compile("No triggers yet|Last fired"),
    "Feedback loop": re.compile("No feedback loops yet|Last run"),
    "Monitoring": re.compile(r"\d MB|No ready replicas"),
}
# Every control a user can reach must have a name a screen reader reads out.
UNLABELLED = """() => [
  ...document.querySelectorAll('input, select, textarea, button, [role="tab"]')]
  .filter((el) => el.type !== 'hidden' && el.getClientRects().length)
  .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
    || el.getAttribute('aria-labelledby')
    || (/^(BUTTON|A)$/.test(el.tagName) && el.textContent.trim())))
  .map((el) => el.outerHTML.slice(0, 120))"""
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
    result = stack.cli("deploy", str(ECHO), "--name", "console-echo", "--server", "workers=2")
    assert result.returncode == 0, result.stdout + result.stderr
    slug = result.stdout.split("Endpoint ", 1)[1].split(" created", 1)[0]
    token = result.stdout.split("(shown once):", 1)[1].split()[0]
    return slug, token


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go (a test artifact under the base temp folder)."""
    return tmp_path_factory.mktemp("console-screenshots", numbered=False)


@dataclass(slots=True)
class PageProblems:
    """What ``page`` reported: console errors and uncaught exceptions, and apart from them
    each API call the API refused with a 400 (the last segment of its path, in order), so a
    test counts its deliberate bad submits exactly and any other refusal fails it."""

    errors: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


def watch_errors(page: Page) -> PageProblems:
    """The problems of ``page``, recorded as they happen."""
    problems = PageProblems()

    def on_console(message: ConsoleMessage) -> None:
        url = str(message.location.get("url", ""))
        if "status of 400" in message.text and "/api/v1/" in url:
            problems.refusals.append(urlsplit(url).path.rsplit("/", 1)[-1])
        elif message.type == "error":
            problems.errors.append(f"console: {message.text} at {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.errors.append(f"page error: {exc}"))
    return problems


def is_create(request: Request) -> bool:
    """Whether ``request`` is the console's create-endpoint call."""
    return request.method == "POST" and request.url.endswith("/api/v1/endpoints")


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
        time.sleep(0.1)  # a polling interval, not a wait for readiness


def unlabelled(page: Page) -> list[str]:
    """The visible form controls and buttons of ``page`` that have no accessible name."""
    found: list[str] = page.evaluate(UNLABELLED)
    return found


def forwarded(stack: Stack, service: str, status: int) -> float:
    """How many management calls the gateway's ``/metrics`` counts for ``service``/``status``."""
    text = stack.client()._http.get("/metrics").text
    labels = f'service="{service}",status="{status}"'
    pattern = r"^cormorant_gateway_forwarded_requests_total\{" + re.escape(labels) + r"\} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def fits_width(page: Page) -> bool:
    """No horizontal scrolling of the page itself (tables scroll inside their own box)."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def field_error(page: Page, label: str) -> Locator:
    """The error shown under the form field labelled ``label``."""
    control = page.get_by_label(label, exact=True)
    return page.locator(".field").filter(has=control).locator(".field-error")


def keyboard_pass(page: Page) -> None:
    """Only the keyboard: arrows walk the tablist, each tab shows its panel, Tab enters it."""
    page.get_by_role("tab", name=TABS[0]).focus()
    for name in TABS[1:]:
        page.keyboard.press("ArrowRight")
        tab = page.get_by_role("tab", name=name)
        expect(tab).to_be_focused()
        expect(tab).to_have_attribute("aria-selected", "true")
        heading = page.get_by_role("tabpanel").get_by_role("heading", name=name, exact=True)
        expect(heading).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name=TABS[0])).to_be_focused()
    # At once, before the tab's page is drawn: Tab enters the panel.
    page.keyboard.press("Tab")
    expect(page.get_by_role("tabpanel")).to_be_focused()
    # The focused element is drawn with a visible outline.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline


# The first test may install Chromium with apt-get (a few minutes on a fresh machine).
@pytest.mark.timeout(900)
def test_console_in_chromium(stack: Stack, browser: Browser, shots: Path, tmp_path: Path) -> None:
    """Create an endpoint from the form, query it, chart, logs, canary and rollback, Rerun as a
    batch endpoint, a dataset, a batch job to 100 %, a trigger, a feedback loop, a flow run."""
    width, height = VIEWPORTS["desktop"]
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    page = context.new_page()
    # The forms are sent wrong once on purpose: the API's 400s then show beside the fields.
    problems = watch_errors(page)
    client = stack.client()
    before = {
        service: forwarded(stack, service, status)
        for service, status in (("deployer", 201), ("batch", 202), ("alerts", 201))
    }

    log_in(page, stack)
    page.get_by_role("link", name="New endpoint").click()
    expect(page.get_by_role("heading", name="New endpoint")).to_be_visible()
    assert unlabelled(page) == []
    page.screenshot(path=shots / "desktop-new-endpoint.png", full_page=True)
    # The API's refusal lands next to the field it names, and the field is marked invalid.
    page.get_by_label("Name", exact=True).fill("console-form")
    page.get_by_label("Source", exact=True).fill("tests/models/echo")
    page.get_by_label("Server settings").fill("workers=1")
    page.get_by_role("button", name="Create endpoint").click()
    expect(field_error(page, "Source")).to_contain_text("neither an absolute directory path")
    expect(page.get_by_label("Source", exact=True)).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Source", exact=True).fill(str(ECHO))
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.get_by_role("heading", name=re.compile("^Endpoint .* created$"))).to_be_visible(
        timeout=60_000
    )
    expect(field_error(page, "Source")).to_be_hidden()
    token = page.locator("#new-token").inner_text()
    assert token
    slug = page.get_by_role("heading", name=re.compile("created$")).inner_text().split()[1]
    until(lambda: client.endpoints.get(slug)["status"] == "running", what="console-form running")
    page.get_by_role("link", name="Open console-form").click()

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
    # Filters narrow the list; Follow shows what another client sends meanwhile.
    logs = page.locator("#logs")
    page.get_by_label("Status", exact=True).select_option("error")
    page.get_by_role("button", name="Filter").click()
    expect(logs).to_have_text("No predictions match these filters.")
    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_label("Text in input, output or error").fill("followed")
    page.get_by_role("button", name="Filter").click()
    page.get_by_label("Follow (every 2 s)").check()
    answer = httpx.post(
        f"{stack.url}/api/v1/endpoints/{slug}/predict",
        json={"input_params": "followed"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    expect(logs.get_by_role("cell", name='"followed"').first).to_be_visible(timeout=30_000)
    expect(logs).not_to_contain_text("hello console")
    page.get_by_label("Follow (every 2 s)").uncheck()

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

    # A trigger from the New Alert dialog: an empty form is refused field by field.
    page.get_by_role("tab", name="Continual Learning").click()
    page.get_by_role("button", name="New alert").click()
    dialog = page.get_by_role("dialog", name="New alert")
    expect(dialog).to_be_visible()
    assert unlabelled(page) == []
    dialog.get_by_role("button", name="Create alert").click()
    expect(field_error(page, "Title")).to_contain_text("title")
    expect(field_error(page, "Metric")).to_contain_text("tag")
    dialog.get_by_label("Title", exact=True).fill("Accuracy dropped")
    dialog.get_by_label("Severity", exact=True).select_option("critical")
    dialog.get_by_label("Metric", exact=True).fill("acc")
    dialog.get_by_label("Comparison", exact=True).select_option("lt")
    dialog.get_by_label("Value", exact=True).fill("0.5")
    dialog.get_by_label("Check every", exact=True).fill("5m")
    dialog.get_by_label("Then", exact=True).select_option("email")
    dialog.get_by_label("Email addresses (separated by commas)", exact=True).fill(
        "team@example.org"
    )
    page.screenshot(path=shots / "desktop-new-alert.png", full_page=True)
    dialog.get_by_role("button", name="Create alert").click()
    expect(dialog).to_be_hidden()
    row = page.get_by_role("row").filter(has_text="Accuracy dropped")
    expect(row).to_contain_text("acc < 0.5")
    expect(row).to_contain_text("email team@example.org")
    # The console's calls are counted in the gateway's access metrics like any client's.
    assert forwarded(stack, "alerts", 201) == before["alerts"] + 1
    row.get_by_role("button", name="Firings of Accuracy dropped").click()
    expect(page.locator("#firings")).to_contain_text("It has not fired yet.")
    page.screenshot(path=shots / "desktop-continual-learning.png", full_page=True)

    # Rerun, prefilled from this endpoint: a batch endpoint with its code and settings.
    page.get_by_role("link", name="Rerun").click()
    expect(page.get_by_label("Source", exact=True)).to_have_value(str(ECHO))
    expect(page.get_by_label("Server settings")).to_have_value("workers=1")
    page.get_by_label("Name", exact=True).fill("console-batch")
    page.get_by_label("Kind").select_option("batch")
    page.get_by_role("button", name="Run").click()
    # A web endpoint's one warm replica does not suit a batch one: the API says so, there.
    expect(field_error(page, "Replicas min")).to_contain_text("batch endpoint rests at 0")
    page.get_by_label("Replicas min").fill("0")
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_role("heading", name=re.compile("created$"))).to_be_visible(timeout=60_000)
    batch_slug = page.get_by_role("heading", name=re.compile("created$")).inner_text().split()[1]
    created = client.endpoints.get(batch_slug)
    assert (created["kind"], created["server"]) == ("batch", {"workers": 1})
    assert created["source"] == str(ECHO)

    # A dataset with a CSV, from the Datasets page; its file downloads.
    rows = tmp_path / "rows.csv"
    rows.write_text("x,y\n" + "".join(f"{i},{i + 1}\n" for i in range(300)))
    page.get_by_role("link", name="Datasets").click()
    page.get_by_label("Dataset name").fill("console-rows")
    page.get_by_role("button", name="Create dataset").click()
    expect(page.get_by_role("heading", name="Dataset console-rows")).to_be_visible()
    page.get_by_label("File", exact=True).set_input_files(rows)
    page.get_by_label("Path in the dataset").fill("in/rows.csv")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#dataset-status")).to_have_text("Uploaded: version v1.")
    assert unlabelled(page) == []
    page.screenshot(path=shots / "desktop-dataset.png", full_page=True)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="in/rows.csv").click()
    download_info.value.save_as(tmp_path / "downloaded.csv")
    assert (tmp_path / "downloaded.csv").read_text() == rows.read_text()

    # Predictions: a batch job whose progress reaches 100 %, opened, then Compare all.
    page.goto(f"{stack.url}/console#/endpoints/{batch_slug}/predictions")
    page.get_by_label("Input CSV").fill("console-rows/in/rows.csv")
    page.get_by_label("Output file").fill("out/predictions.csv")
    page.get_by_label("Output dataset").fill("console-rows")
    page.get_by_role("button", name="Start job").click()
    progress = page.get_by_role("progressbar").first
    expect(progress).to_have_attribute("value", "100", timeout=90_000)
    expect(page.locator("#batch-jobs")).to_contain_text("succeeded")
    detail = page.locator("#batch-detail")
    expect(detail).to_contain_text("300 done of 300, 0 failed")
    expect(detail.get_by_role("link", name="Download the output CSV")).to_be_visible()
    page.get_by_role("button", name="Compare all").click()
    expect(page.locator("#batch-compare")).to_contain_text("rows_done")
    page.screenshot(path=shots / "desktop-predictions.png", full_page=True)

    # Feedback loop into the dataset: configured every 6 h, then stopped.
    page.goto(f"{stack.url}/console#/endpoints/{slug}/feedback")
    page.get_by_label("Into dataset").fill("console-rows")
    page.get_by_label("Every", exact=True).check()
    page.get_by_label("Interval").fill("soon")
    page.get_by_role("button", name="Configure").click()
    expect(field_error(page, "Interval")).to_contain_text("'soon' is not an interval")
    expect(page.get_by_label("Interval")).to_be_focused()
    page.get_by_label("Interval").fill("6h")
    page.get_by_role("button", name="Configure").click()
    expect(page.locator("#feedback-status")).to_have_text(
        "Feedback loop into console-rows configured (every 6h)."
    )
    loop = page.locator("#feedback-loops").get_by_role("row").filter(has_text="console-rows")
    expect(loop).to_contain_text("scheduled")
    page.screenshot(path=shots / "desktop-feedback-loop.png", full_page=True)
    loop.get_by_role("button", name="Stop the loop into console-rows").click()
    expect(loop).to_contain_text("stopped")

    page.get_by_role("tab", name="Monitoring").click()
    # Monitoring: the replica's CPU (from two readings of its /metrics) and memory, its events.
    usage = page.locator("#replicas")
    expect(usage.locator('td[data-label="Memory"]')).to_have_text(re.compile(r"^\d+(\.\d+)? MB$"))
    expect(usage.locator('td[data-label="CPU"]')).to_have_text(
        re.compile(r"^\d+(\.\d+)? %$"), timeout=15_000
    )
    expect(page.locator("#replica-events")).to_contain_text("ready")
    page.screenshot(path=shots / "desktop-monitoring.png", full_page=True)

    keyboard_pass(page)

    # A flow: a run started from the Flows page, its task's status and log.
    client.request(
        "POST",
        "/api/v1/flows",
        json={
            "spec": {
                "name": "console-hello",
                "tasks": [{"name": "greet", "type": "exec", "command": "echo hello from a flow"}],
            },
            "directory": str(tmp_path),
        },
    )
    page.get_by_role("link", name="Flows").click()
    page.get_by_role("link", name="console-hello").click()
    page.get_by_role("button", name="Start a run").click()
    run = page.locator("details.run").first
    expect(run).to_contain_text("succeeded", timeout=60_000)
    expect(run.get_by_role("row").filter(has_text="greet")).to_contain_text("hello from a flow")
    page.screenshot(path=shots / "desktop-flow.png", full_page=True)

    # Back on the list, the sparkline counts the two predictions.
    page.get_by_role("link", name="Serving").click()
    # Its own row: the other tests' endpoints share this stack (and their own requests).
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="console-form"))
    spark = row.get_by_role("img", name=re.compile("^2 requests in the last hour"))
    expect(spark).to_be_visible()
    page.screenshot(path=shots / "desktop-endpoints-after.png", full_page=True)

    # The endpoints from the form, the version and the rerun; the batch job.
    assert forwarded(stack, "deployer", 201) >= before["deployer"] + 3
    assert forwarded(stack, "batch", 202) == before["batch"] + 1

    # The list's per-endpoint calls end first: one still in flight would meet the ended session.
    page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin key")).to_be_visible()
    context.close()
    assert problems.errors == []
    # Exactly the deliberate bad submits: the new endpoint's source, the empty alert, the
    # batch rerun's minimum replicas, the feedback loop's interval.
    assert problems.refusals == ["endpoints", "triggers", "rerun", "feedback-loops"]


@pytest.mark.timeout(900)
def test_console_on_a_phone(
    stack: Stack, browser: Browser, echo_endpoint: tuple[str, str], shots: Path
) -> None:
    """At 390×844 every page and tab fits the screen's width, each control labelled; screenshots."""
    slug, _ = echo_endpoint
    width, height = VIEWPORTS["phone"]
    context = browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    problems = watch_errors(page)
    log_in(page, stack)
    expect(page.get_by_role("link", name="console-echo")).to_be_visible()
    # Nobody queries this endpoint: its sparkline says so, with no made-up maximum.
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="console-echo"))
    idle = "0 requests in the last hour, at most 0 a minute"
    expect(row.get_by_role("img", name=idle, exact=True)).to_be_visible()
    assert fits_width(page)
    page.screenshot(path=shots / "phone-endpoints.png", full_page=True)
    for name in TABS:
        tab_id = name.lower().replace(" ", "-").replace("-loop", "")
        page.goto(f"{stack.url}/console#/endpoints/{slug}/{tab_id}")
        expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")
        panel = page.get_by_role("tabpanel")
        expect(panel.get_by_role("heading", name=name, exact=True)).to_be_visible()
        expect(panel).to_contain_text(LOADED[name])
        assert fits_width(page), name
        assert unlabelled(page) == [], name
        page.screenshot(path=shots / f"phone-{tab_id}.png", full_page=True)
    for path, heading in (("new", "New endpoint"), ("flows", "Flows"), ("datasets", "Datasets")):
        page.goto(f"{stack.url}/console#/{path}")
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_role("main")).not_to_contain_text("Loading…")
        assert fits_width(page), path
        assert unlabelled(page) == [], path
        page.screenshot(path=shots / f"phone-{path}.png", full_page=True)
    # A stream endpoint's Kafka settings appear with their labels, still within the width.
    page.goto(f"{stack.url}/console#/new")
    expect(page.get_by_label("Input topics")).to_be_hidden()
    page.get_by_label("Kind").select_option("stream")
    expect(page.get_by_label("Input topics")).to_be_visible()
    assert fits_width(page)
    assert unlabelled(page) == []
    page.screenshot(path=shots / "phone-new-stream.png", full_page=True)
    # A blank security box sends no security (a rerun keeps the original's masked secrets);
    # a filled one sends its pairs. The output topic's name is refused before any broker is
    # asked, so nothing is created.
    page.get_by_label("Name", exact=True).fill("console-stream")
    page.get_by_label("Source", exact=True).fill(str(ECHO))
    page.get_by_label("Input topics").fill("orders")
    page.get_by_label("Output topic").fill("no spaces")
    for security, sent_security in (("", None), ("sasl.username=svc", {"sasl.username": "svc"})):
        page.get_by_label("Security options").fill(security)
        with page.expect_request(is_create) as sent:
            page.get_by_role("button", name="Create endpoint").click()
        expect(field_error(page, "Output topic")).to_contain_text("is not a Kafka topic name")
        body = sent.value.post_data_json
        assert body is not None
        kafka = body["kafka"]
        assert kafka["input_topics"] == ["orders"]
        assert kafka.get("security") == sent_security
    page.goto(f"{stack.url}/console#/rerun/{slug}")
    expect(page.get_by_label("Source", exact=True)).to_have_value(str(ECHO))
    assert fits_width(page)
    page.screenshot(path=shots / "phone-rerun.png", full_page=True)
    context.close()
    assert problems.errors == []
    # The stream form's two submits with a bad output topic, and nothing else.
    assert problems.refusals == ["endpoints", "endpoints"]


def test_a_slow_api_never_piles_polls_up(
    stack: Stack, browser: Browser, echo_endpoint: tuple[str, str]
) -> None:
    """With every answer slower than the Predictions tab's 1 s poll, one call is in flight at
    a time: the next is sent only once the previous one settled; another tab stops it."""
    slug, _ = echo_endpoint
    width, height = VIEWPORTS["desktop"]
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    problems = watch_errors(page)
    log_in(page, stack)

    def polled(request: Request) -> bool:
        return request.method == "GET" and request.url.endswith(f"/endpoints/{slug}/batch-jobs")

    # How many polls were in flight after each send and each answer; and the sends.
    in_flight: list[int] = []
    sends: list[Request] = []

    def sent(request: Request) -> None:
        if polled(request):
            sends.append(request)
            in_flight.append(in_flight[-1] + 1 if in_flight else 1)

    def settled(request: Request) -> None:
        if polled(request):
            in_flight.append(in_flight[-1] - 1)

    page.on("request", sent)
    page.on("requestfinished", settled)
    page.on("requestfailed", settled)
    # Chromium delays every answer by 2.5 s, more than twice the poll's interval.
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {
        "offline": False,
        "latency": 2500,
        "downloadThroughput": -1,
        "uploadThroughput": -1,
    }
    cdp.send("Network.emulateNetworkConditions", conditions)
    page.goto(f"{stack.url}/console#/endpoints/{slug}/predictions")
    for _ in range(3):
        page.wait_for_event("requestfinished", predicate=polled, timeout=30_000)
    assert max(in_flight) == 1, in_flight

    # Another tab stops the poll: from Monitoring's first read of its usage to its next one
    # (a 5 s poll), the Predictions tab's 1 s poll sends nothing more.
    conditions["latency"] = 0
    cdp.send("Network.emulateNetworkConditions", conditions)

    def usage(request: Request) -> bool:
        return request.url.endswith(f"/endpoints/{slug}/replicas/usage")

    with page.expect_event("requestfinished", predicate=usage, timeout=30_000):
        page.get_by_role("tab", name="Monitoring").click()
    sent_before = len(sends)
    page.wait_for_event("requestfinished", predicate=usage, timeout=30_000)
    assert len(sends) == sent_before
    context.close()
    assert problems.errors == []
    assert problems.refusals == []
