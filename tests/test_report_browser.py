"""The HTML report, opened in Debian's headless chromium (through chromedriver).

Under CI=true a missing browser fails these tests; elsewhere they skip. Each run
saves a screenshot of the page in build/test-artifacts/ (or $CTXLEDGER_ARTIFACTS)
so that a person can look at it.
"""

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from ledger import ContextLedger
from tests.helpers import run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get(
        "CTXLEDGER_ARTIFACTS", Path(__file__).parent.parent / "build" / "test-artifacts"
    )
)
T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
ODD_THREAD = "<b>x</b>&amp;"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = (
            f"{' and '.join(missing)} not installed: apt-get install chromium "
            "chromium-driver (tools/dev test does it when it runs as root)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, sqlite_url: str, tmp_path: Path) -> WebDriver:
    """The report of a known history, written by the command and opened."""
    with ContextLedger.open(sqlite_url) as ledger, freeze_time(T0) as clock:
        support = ledger.open_context("alice", "support", run_id="r-1", ttl_seconds=600)
        clock.tick(30)
        ledger.open_context("alice", "billing", run_id="r-2", ttl_seconds=100)
        for _ in range(3):
            clock.tick(30)
            ledger.open_context("alice", "support")
        ledger.open_context("alice", "billing", metadata={"step": 2})
        clock.tick(30)
        ledger.update_context("alice", support.context_id, metadata={"topic": "refund"})
        clock.tick(150)
        ledger.clear_context("alice", support.context_id)
        clock.tick(60)
        assert ledger.expire_due() == 1
        ledger.open_context("alice", ODD_THREAD, ttl_seconds=60)
        ledger.open_context("bob", "support")
    out = tmp_path / "alice.html"

    written = run(
        "--db", sqlite_url, "report", "alice", "--out", str(out), cwd=tmp_path
    )

    assert written.returncode == 0, written.stderr
    assert "wrote the timeline of 10 event(s) of alice" in written.stdout
    browser.get(out.as_uri())
    return browser


def _box(element: WebElement) -> tuple[float, float]:
    """An SVG element's left edge and width as the browser laid it out."""
    box = element.rect
    return box["x"], box["width"]


def test_the_timeline_shows_one_bar_per_context_with_its_reuses(
    page: WebDriver,
) -> None:
    contexts = page.find_elements(By.CSS_SELECTOR, "#chart g.context")
    described = [
        (
            c.get_attribute("data-thread"),
            c.get_attribute("data-run"),
            c.get_attribute("data-ending"),
            len(c.find_elements(By.CSS_SELECTOR, "line.tick")),
            len(c.find_elements(By.CSS_SELECTOR, "circle.update")),
        )
        for c in contexts
    ]

    assert page.find_element(By.ID, "user").text == "alice"
    assert described == [
        ("support", "r-1", "cleared", 3, 1),
        ("billing", "r-2", "expired", 1, 0),
        (ODD_THREAD, "", "expired (not yet recorded)", 0, 0),
    ]
    bars = [c.find_element(By.CSS_SELECTOR, "rect.bar") for c in contexts]
    assert all(bar.is_displayed() for bar in bars)
    (s_left, s_width), (b_left, b_width), (o_left, _) = map(_box, bars)
    # support: 0 s to 300 s (cleared); billing: 30 s to 220 s (its ttl ran out
    # 100 s after its reuse at 120 s); the last starts at 360 s, and its time to
    # live ran out long before the report was made, though no expiry is recorded.
    assert s_left < b_left < b_left + b_width < s_left + s_width < o_left
    assert b_width / s_width == pytest.approx(190 / 300, abs=0.02)
    for context, (left, width) in zip(contexts, map(_box, bars), strict=True):
        for tick in context.find_elements(By.CSS_SELECTOR, "line.tick"):
            assert left <= tick.rect["x"] <= left + width


def test_thread_and_run_are_beside_each_bar_and_on_hover(page: WebDriver) -> None:
    labels = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#chart .label")]
    first = page.find_element(By.CSS_SELECTOR, "#chart g.context")
    tip = first.find_element(By.TAG_NAME, "title").get_attribute("textContent") or ""

    assert labels == ["support · r-1", "billing · r-2", ODD_THREAD]
    assert "thread support" in tip
    assert "run r-1" in tip
    assert "cleared 2026-07-01 09:05:00 UTC" in tip
    # The odd thread id is text, never markup.
    assert page.find_elements(By.CSS_SELECTOR, "#chart b, #events b") == []


def test_the_events_table_lists_the_history(page: WebDriver) -> None:
    rows = page.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]

    assert [c[0] for c in cells] == [str(v) for v in range(1, 11)]
    assert [c[2] for c in cells] == [
        "created",
        "created",
        "reused",
        "reused",
        "reused",
        "reused",
        "updated",
        "cleared",
        "expired",
        "created",
    ]
    assert cells[0][1] == "2026-07-01 09:00:00"
    assert cells[-1][3] == ODD_THREAD


def test_the_page_needs_no_network_and_is_saved_as_a_screenshot(
    page: WebDriver,
) -> None:
    loaded = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-timeline.png"

    assert loaded == []
    assert page.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
