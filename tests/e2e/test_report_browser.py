"""The HTML report, opened in Debian's headless chromium (through chromedriver).

Under CI=true a missing browser fails these tests; elsewhere they skip. Each run
saves screenshots of the pages in build/test-artifacts/ (or $CTXLEDGER_ARTIFACTS)
so that a person can look at them.
"""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from freezegun import freeze_time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from ctxledger._cli.report import render_report
from ledger import ContextLedger, LedgerEvent, UserChain
from projections._continuity import continuity_of
from tests.helpers import run
from tests.tampering import edit_event, execute_sql, stream_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get(
        "CTXLEDGER_ARTIFACTS", Path(__file__).parents[2] / "build" / "test-artifacts"
    )
)
T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
ODD_THREAD = "<b>x</b>&amp;"
ROUND_STEPS = {1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200}
ROUND_STEPS |= {10800, 21600, 43200, 86400, 172800, 604800, 1209600}

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
        ledger.open_context("alice", "support", run_id="r-3", ttl_seconds=45)
        ledger.open_context("bob", "support")
    out = tmp_path / "alice.html"

    written = run(
        "--db", sqlite_url, "report", "alice", "--out", str(out), cwd=tmp_path
    )

    assert written.returncode == 0, written.stderr
    assert "wrote the timeline of 11 event(s) of alice" in written.stdout
    browser.get(out.as_uri())
    return browser


@pytest.fixture
def busy_page(browser: WebDriver, tmp_path: Path) -> WebDriver:
    """Three hundred reuses of an open context in ten minutes (1 s and 3 s apart
    in turn), then half an hour idle, beside a context reused 120 times and
    cleared. The axis covers the ten minutes of events; the open bar runs on to
    its right edge."""
    with ContextLedger.open("memory://") as ledger, freeze_time(T0) as clock:
        ledger.open_context("carol", "chat", ttl_seconds=3600)
        side = ledger.open_context("carol", "side", ttl_seconds=3600)
        for n in range(300):
            clock.tick(1 if n % 2 else 3)
            ledger.open_context("carol", "chat", run_id=f"r-{n}")
            if n < 120:
                ledger.open_context("carol", "side")
        ledger.clear_context("carol", side.context_id)
        history = ledger.history("carol")
        chain = ledger.verify_chain("carol").users[0]
    out = tmp_path / "carol.html"
    now = T0 + timedelta(minutes=40)
    page = render_report("carol", history, now, continuity_of("carol", history), chain)
    out.write_text(page, encoding="utf-8")
    browser.get(out.as_uri())
    return browser


def _box(element: WebElement) -> tuple[float, float]:
    """An SVG element's left edge and width as the browser laid it out."""
    box = element.rect
    return box["x"], box["width"]


def _bars(page: WebDriver) -> list[WebElement]:
    return page.find_elements(By.CSS_SELECTOR, "#chart g.context rect.bar")


def _threads_and_contexts(url: str, user: str) -> dict[str, list[str]]:
    """Each thread of the user's history, with its context ids in creation order."""
    with ContextLedger.open(url) as ledger:
        history = ledger.history(user)
    threads: dict[str, list[str]] = {}
    for event in history:
        if event.kind == "created":
            threads.setdefault(event.thread_id, []).append(event.context_id)
    return threads


def test_each_thread_is_one_lane_with_its_contexts_in_order(
    page: WebDriver, sqlite_url: str
) -> None:
    lanes = page.find_elements(By.CSS_SELECTOR, "#chart g.lane")
    drawn = {
        lane.get_attribute("data-thread"): [
            c.get_attribute("data-context")
            for c in lane.find_elements(By.CSS_SELECTOR, "g.context")
        ]
        for lane in lanes
    }

    assert page.find_element(By.ID, "user").text == "alice"
    assert len(lanes) == 3
    assert drawn == _threads_and_contexts(sqlite_url, "alice")
    assert list(drawn) == ["support", "billing", ODD_THREAD]


def test_a_lanes_bars_are_consecutive_and_coloured_by_how_they_ended(
    page: WebDriver,
) -> None:
    support = page.find_element(By.CSS_SELECTOR, "#chart g.lane")
    first, second = support.find_elements(By.CSS_SELECTOR, "rect.bar")
    endings = [
        c.get_attribute("data-ending")
        for c in page.find_elements(By.CSS_SELECTOR, "#chart g.context")
    ]

    assert endings == [
        "cleared",
        "expired (not yet recorded)",
        "expired",
        "expired (not yet recorded)",
    ]
    assert first.rect["y"] == second.rect["y"]
    assert first.rect["x"] + first.rect["width"] < second.rect["x"]
    assert [_fill(bar) for bar in (first, second)] == [
        _swatch(page, "cleared"),
        _swatch(page, "pending"),
    ]
    assert _swatch(page, "cleared") != _swatch(page, "pending")


def test_bars_run_from_creation_to_the_end_the_domain_gives(page: WebDriver) -> None:
    support, support_again, billing, odd = map(_box, _bars(page))

    # support: 0 s to 300 s (cleared); billing: 30 s to 220 s (its time to live
    # ran out 100 s after its reuse at 120 s, though recorded at 360 s); the next
    # support context and the odd thread start at 360 s and their time to live
    # (45 s, 60 s) ran out long before the report was made, unrecorded.
    assert support[0] < billing[0] < sum(billing) < sum(support) < support_again[0]
    assert support_again[0] == pytest.approx(odd[0], abs=0.5)
    assert billing[1] / support[1] == pytest.approx(190 / 300, abs=0.01)
    assert support_again[1] / odd[1] == pytest.approx(45 / 60, abs=0.02)
    assert (sum(odd) - support[0]) / support[1] == pytest.approx(420 / 300, abs=0.01)


def test_each_bar_shows_its_context_id_and_counts_its_reuses(
    page: WebDriver, sqlite_url: str
) -> None:
    contexts = page.find_elements(By.CSS_SELECTOR, "#chart g.context")
    ids = [c.get_attribute("data-context") or "" for c in contexts]
    labels = [c.find_element(By.CSS_SELECTOR, "text.cid") for c in contexts]
    marks = [
        [
            int(m.get_attribute("data-count") or 0)
            for m in c.find_elements(By.CSS_SELECTOR, "rect.reuse")
        ]
        for c in contexts
    ]
    updates = [len(c.find_elements(By.CSS_SELECTOR, "rect.update")) for c in contexts]

    assert ids == [
        i for ids in _threads_and_contexts(sqlite_url, "alice").values() for i in ids
    ]
    assert all(label.is_displayed() for label in labels)
    assert [label.text.split(" ")[0] for label in labels] == [i[:8] for i in ids]
    assert labels[0].text == f"{ids[0][:8]} · 3 reuses"
    assert [sum(m) for m in marks] == [3, 0, 1, 0]
    assert [c.get_attribute("data-reuses") for c in contexts] == ["3", "0", "1", "0"]
    assert updates == [1, 0, 0, 0]


def test_reuse_marks_lie_under_their_bar(page: WebDriver) -> None:
    for context in page.find_elements(By.CSS_SELECTOR, "#chart g.context"):
        bar = context.find_element(By.CSS_SELECTOR, "rect.bar").rect
        for mark in context.find_elements(By.CSS_SELECTOR, "rect.reuse"):
            assert bar["x"] <= mark.rect["x"] <= bar["x"] + bar["width"]
            assert mark.rect["y"] >= bar["y"] + bar["height"]


def test_the_full_id_thread_and_run_are_on_hover_and_escaped(page: WebDriver) -> None:
    threads = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#chart .thread")]
    counts = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#chart .counts")]
    first = page.find_element(By.CSS_SELECTOR, "#chart g.context")
    tip = first.find_element(By.TAG_NAME, "title").get_attribute("textContent") or ""

    assert threads == ["support", "billing", ODD_THREAD]
    assert counts == [
        "2 contexts, 3 reuses",
        "1 context, 1 reuse",
        "1 context, 0 reuses",
    ]
    assert f"context {first.get_attribute('data-context')}\n" in tip
    assert "thread support\nrun r-1\n" in tip
    assert "cleared 2026-07-01 09:05:00 UTC" in tip
    # The odd thread id is text, never markup.
    assert page.find_elements(By.CSS_SELECTOR, "#chart b, #events b") == []


def test_the_header_shows_the_continuity_figures_and_the_chain(
    page: WebDriver, sqlite_url: str
) -> None:
    figures = {
        item.get_attribute("data-figure"): item.find_element(By.TAG_NAME, "dd").text
        for item in page.find_elements(By.CSS_SELECTOR, "#figures [data-figure]")
    }
    chain = page.find_element(By.ID, "chain")
    with ContextLedger.open(sqlite_url) as ledger:
        head = ledger.verify_chain("alice").users[0]

    assert figures == {
        "created": "4",
        "reused": "4",
        "updated": "1",
        "cleared": "1",
        "evicted": "0",
        "expired": "1",
        "never_reused": "2",
        "reuses_per_created": "1.00",
        "threads_with_overlap": "0",
    }
    assert chain.get_attribute("class") == "holds"
    assert "Hash chain holds. Head version 11" in chain.text
    assert page.find_element(By.ID, "head-hash").text == head.head_hash
    assert len(head.head_hash) == 64


def test_a_tampered_chain_is_reported_broken(
    browser: WebDriver, sqlite_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        context = ledger.open_context("dave", "t", ttl_seconds=600)
        ledger.update_context("dave", context.context_id, metadata={"n": 1})
        ledger.open_context("dave", "t")
    edit_event(sqlite_url, "dave", 2, metadata={"n": 99})
    out = tmp_path / "dave.html"

    written = run("--db", sqlite_url, "report", "dave", "--out", str(out), cwd=tmp_path)
    browser.get(out.as_uri())
    chain = browser.find_element(By.ID, "chain")

    assert written.returncode == 0, written.stderr
    assert "hash chain of dave is broken at version 2 (altered)" in written.stderr
    assert chain.get_attribute("class") == "broken"
    assert chain.text.startswith("Hash chain broken at version 2 (altered: ")


@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_history_with_a_deleted_event_still_gets_its_page(
    browser: WebDriver, store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url: str = request.getfixturevalue(f"{store}_url")
    with ContextLedger.open(url) as ledger:
        for _ in range(3):
            ledger.open_context("erin", "t")
    execute_sql(
        url,
        "DELETE FROM {events} WHERE originator_id = {p} AND originator_version = 1",
        (stream_key(url, "erin"),),
    )
    out = tmp_path / "erin.html"

    written = run("--db", url, "report", "erin", "--out", str(out), cwd=tmp_path)
    browser.get(out.as_uri())
    stops = browser.find_element(By.ID, "replay-stops")
    rows = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")

    assert written.returncode == 0, written.stderr
    assert "hash chain of erin is broken at version 1 (missing)" in written.stderr
    assert "no longer replays" in stops.text
    assert [row.get_attribute("data-version") for row in rows] == ["2", "3"]


def test_axis_labels_fall_on_round_instants(page: WebDriver) -> None:
    chart = page.find_element(By.ID, "chart")
    labels = page.find_elements(By.CSS_SELECTOR, "#chart text.axis")
    dates = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#chart text.date")]
    support = _bars(page)[0].rect

    assert chart.get_attribute("data-step") == "60"
    assert [e.text for e in labels] == [f"09:0{minute}" for minute in range(8)]
    assert dates == ["2026-07-01"] + [""] * 7
    _assert_round_and_evenly_spaced(labels, 60)
    # The first tick is the instant the first context was created.
    centre = labels[0].rect["x"] + labels[0].rect["width"] / 2
    assert centre == pytest.approx(support["x"], abs=1.0)


def test_hundreds_of_reuses_leave_each_bar_its_colour(busy_page: WebDriver) -> None:
    contexts = busy_page.find_elements(By.CSS_SELECTOR, "#chart g.context")
    bars = [c.find_element(By.CSS_SELECTOR, "rect.bar") for c in contexts]
    marks = [c.find_elements(By.CSS_SELECTOR, "rect.reuse") for c in contexts]
    labels = [c.find_element(By.CSS_SELECTOR, "text.cid") for c in contexts]

    assert [c.get_attribute("data-ending") for c in contexts] == ["open", "cleared"]
    assert [_fill(bar) for bar in bars] == [
        _swatch(busy_page, "open"),
        _swatch(busy_page, "cleared"),
    ]
    assert [
        sum(int(m.get_attribute("data-count") or 0) for m in ms) for ms in marks
    ] == [
        300,
        120,
    ]
    assert [label.text.split(" · ")[1] for label in labels] == [
        "300 reuses",
        "120 reuses",
    ]
    for bar, label in zip(bars, labels, strict=True):
        # Whatever the browser paints along the bar is the bar, or its id.
        assert set(_painted_along(busy_page, bar)) <= {bar, label}
    # Shading, not a solid block: a bin with fewer reuses is lighter.
    opacities = {float(m.get_attribute("fill-opacity") or 0) for m in marks[0]}
    assert len(opacities) > 1
    assert min(opacities) < 1.0


def test_a_busy_timeline_keeps_round_ticks(busy_page: WebDriver) -> None:
    step = int(busy_page.find_element(By.ID, "chart").get_attribute("data-step") or 0)
    labels = busy_page.find_elements(By.CSS_SELECTOR, "#chart text.axis")

    assert step == 120
    assert labels[0].text == "09:00"
    assert labels[-1].text == "09:10"
    _assert_round_and_evenly_spaced(labels, step)
    _save(busy_page, "report-timeline-busy.png")


def test_a_thread_with_two_contexts_at_once_shows_both(
    browser: WebDriver, tmp_path: Path
) -> None:
    events = [
        _created("c-1", T0, version=1),
        _created("c-2", T0 + timedelta(seconds=60), version=2),
    ]
    chain = UserChain(user_id="u", events=2, head_version=2, head_hash="ab" * 32)
    figures = continuity_of("u", events)
    out = tmp_path / "u.html"
    now = T0 + timedelta(seconds=120)
    out.write_text(render_report("u", events, now, figures, chain), encoding="utf-8")

    browser.get(out.as_uri())
    lanes = browser.find_elements(By.CSS_SELECTOR, "#chart g.lane")
    first, second = (bar.rect for bar in _bars(browser))
    overlap = browser.find_element(
        By.CSS_SELECTOR, '[data-figure="threads_with_overlap"]'
    )

    assert len(lanes) == 1
    assert second["y"] > first["y"] + first["height"]
    assert overlap.find_element(By.TAG_NAME, "dd").text == "1"


def test_the_events_table_lists_the_history(page: WebDriver) -> None:
    rows = page.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]

    assert [c[0] for c in cells] == [str(v) for v in range(1, 12)]
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
        "created",
    ]
    assert cells[0][1] == "2026-07-01 09:00:00"
    assert cells[-2][3] == ODD_THREAD


def test_the_page_needs_no_network_and_is_saved_as_a_screenshot(
    page: WebDriver,
) -> None:
    loaded = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )

    assert loaded == []
    _save(page, "report-timeline.png")


def _fill(element: WebElement) -> str:
    fill: str = element.value_of_css_property("fill")
    return fill


def _swatch(page: WebDriver, ending: str) -> str:
    """The colour the legend gives for an ending."""
    swatch = page.find_element(By.CSS_SELECTOR, f".legend i.{ending}")
    colour: str = swatch.value_of_css_property("background-color")
    return colour.replace("rgba(", "rgb(").replace(", 1)", ")")


def _painted_along(page: WebDriver, bar: WebElement) -> list[WebElement]:
    """The topmost element at points along a bar, near its top and bottom edges."""
    found: list[WebElement] = page.execute_script(
        """
        const box = arguments[0].getBoundingClientRect();
        const hits = [];
        for (let i = 1; i < 40; i++) {
          const x = box.left + box.width * i / 40;
          for (const y of [box.top + 2, box.bottom - 2]) {
            hits.push(document.elementFromPoint(x, y));
          }
        }
        return hits;
        """,
        bar,
    )
    return found


def _assert_round_and_evenly_spaced(labels: list[WebElement], step: int) -> None:
    instants = [
        datetime.fromisoformat(e.get_attribute("data-at") or "") for e in labels
    ]
    centres = [e.rect["x"] + e.rect["width"] / 2 for e in labels]
    midnight = instants[0].replace(hour=0, minute=0, second=0, microsecond=0)

    assert step in ROUND_STEPS
    assert all((at - midnight).total_seconds() % step == 0 for at in instants)
    assert all(b - a == timedelta(seconds=step) for a, b in pairwise(instants))
    gaps = [b - a for a, b in pairwise(centres)]
    assert max(gaps) - min(gaps) < 1.5


def _save(page: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    assert page.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _created(context_id: str, at: datetime, version: int) -> LedgerEvent:
    return LedgerEvent(
        user_id="u",
        kind="created",
        context_id=context_id,
        thread_id="t",
        run_id=None,
        occurred_at=at,
        version=version,
        details={"metadata": {}, "ttl_seconds": None},
        prev_hash="0" * 64,
    )
