"""What the ctxledger command prints: every value as plain text, whole when piped."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time

from ledger import ContextLedger
from tests.helpers import run

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
MARKUP_IDS = ("[/oops]", "[link=https://x]safe[/link]", "[bold]loud")
LONG_USER = "user-" + "x" * 195 + "-end"


@pytest.fixture
def url(durable_url: str, tmp_path: Path) -> str:
    """Users whose ids are rich markup, and one with a 204-character id; projected."""
    with ContextLedger.open(durable_url) as ledger, freeze_time(T0):
        for markup in MARKUP_IDS:
            ledger.open_context(markup, markup, run_id=markup, metadata={"m": markup})
        ledger.open_context(LONG_USER, "thread-with-a-long-name-" + "y" * 60)
    run("--db", durable_url, "project", cwd=tmp_path)
    return durable_url


@pytest.mark.parametrize(
    "command",
    [
        ("history", "{id}"),
        ("active", "--user", "{id}"),
        ("audit", "{id}"),
        ("audit", "{id}", "--as-of", "2026-06-01T09:00:00Z"),
        ("continuity", "--user", "{id}"),
    ],
)
def test_ids_that_look_like_markup_are_printed_as_they_are(
    url: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    results = {
        markup: run("--db", url, *(a.format(id=markup) for a in command), cwd=tmp_path)
        for markup in MARKUP_IDS
    }

    for markup, result in results.items():
        assert (result.returncode, result.stderr) == (0, ""), markup
        assert markup in result.stdout


@pytest.mark.parametrize(
    "command",
    [("active",), ("history", LONG_USER), ("audit", LONG_USER)],
)
def test_a_piped_table_keeps_long_ids_whole_on_the_row_line(
    url: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    with ContextLedger.open(url) as ledger:
        context = ledger.active_contexts(LONG_USER)[0]

    result = run("--db", url, *command, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if context.context_id in line]
    assert len(rows) == 1
    assert context.thread_id in rows[0]
    if command[0] == "active":  # the others print one user's events: no user column
        assert LONG_USER in rows[0]
    assert "…" not in result.stdout


def test_unprintable_characters_are_escaped_and_keep_a_row_on_one_line(
    sqlite_url: str, tmp_path: Path
) -> None:
    thread = "line\u2028break\u202eflip"
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("alice", thread, metadata={"note": "\x1b[31mred\x9b"})

    table = run("--db", sqlite_url, "history", "alice", cwd=tmp_path)
    as_json = run("--db", sqlite_url, "history", "alice", "--json", cwd=tmp_path)

    rows = [line for line in table.stdout.splitlines() if "created" in line]
    assert len(rows) == 1
    assert "line\\u2028break\\u202eflip" in rows[0]
    assert '"\\u001b[31mred\\u009b"' in rows[0]
    assert not {"\x1b", "\x9b", "\u2028", "\u202e"} & set(table.stdout + as_json.stdout)
    event = json.loads(as_json.stdout)[0]
    assert (event["thread_id"], event["details"]["metadata"]["note"]) == (
        thread,
        "\x1b[31mred\x9b",
    )
