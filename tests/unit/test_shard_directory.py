"""The shard directory's pure rules: rendezvous choice of a new user's shard, and
the URL a shard is stored under (never with a password)."""

import os
import subprocess
import sys
from urllib.parse import quote, urlsplit
from uuid import UUID, uuid5

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import LedgerConfigError
from ledger._sharded import connect_url
from ledger._store.shard_directory import rendezvous, stored_url
from ledger._store.urls import storage_for

SHARD_SETS = st.lists(st.integers(0, 63), min_size=1, max_size=12, unique=True)
STREAMS = st.uuids()
PASSWORDS = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30
)
BASE = "postgresql://alice@db.example:5433/ledger?schema=ctxl"


def _with_password(url: str, password: str) -> str:
    return url.replace("alice@", f"alice:{quote(password, safe='')}@", 1)


@given(SHARD_SETS, STREAMS)
def test_a_new_user_goes_to_one_of_the_open_shards_whatever_their_order(
    shards: list[int], stream: UUID
) -> None:
    chosen = rendezvous(shards, stream)

    assert chosen in shards
    assert rendezvous(sorted(shards, reverse=True), stream) == chosen


@given(SHARD_SETS, STREAMS, st.integers(0, 63))
def test_closing_a_shard_changes_the_choice_only_of_users_it_would_take(
    shards: list[int], stream: UUID, closed: int
) -> None:
    chosen = rendezvous(shards, stream)
    left = [shard for shard in shards if shard != closed]

    if left and closed != chosen:
        assert rendezvous(left, stream) == chosen


@given(SHARD_SETS, STREAMS, st.integers(64, 127))
def test_a_new_shard_takes_a_users_choice_or_leaves_it_as_it_was(
    shards: list[int], stream: UUID, added: int
) -> None:
    before = rendezvous(shards, stream)

    assert rendezvous([*shards, added], stream) in (before, added)


def test_new_users_spread_evenly_over_the_open_shards() -> None:
    namespace = UUID(int=22)
    streams = [uuid5(namespace, f"user-{n}") for n in range(3000)]

    chosen = [rendezvous([0, 1, 2], stream) for stream in streams]

    assert [chosen.count(shard) for shard in range(3)] == pytest.approx(
        [1000, 1000, 1000], abs=120
    )


def test_the_choice_is_the_same_in_processes_with_other_hash_seeds() -> None:
    script = (
        "from uuid import UUID, uuid5\n"
        "from ledger._store.shard_directory import rendezvous\n"
        "print([rendezvous([0, 1, 2, 3], uuid5(UUID(int=22), f'u{n}'))"
        " for n in range(200)])\n"
    )
    chosen = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2", "3")
    }

    assert len(chosen) == 1


@given(PASSWORDS)
def test_a_stored_shard_url_never_holds_the_password(password: str) -> None:
    stored = stored_url(_with_password(BASE, password))

    assert urlsplit(stored).password is None
    assert stored == stored_url(BASE)


@given(PASSWORDS, PASSWORDS)
def test_two_urls_of_one_database_are_stored_alike_whatever_their_passwords(
    first: str, second: str
) -> None:
    assert stored_url(_with_password(BASE, first)) == stored_url(
        _with_password(BASE, second)
    )


@pytest.mark.parametrize(
    "other",
    [
        BASE.replace("schema=ctxl", "schema=other"),
        BASE.replace("/ledger?", "/ledger2?"),
        BASE.replace(":5433/", ":5432/"),
        BASE.replace("alice@", "bob@"),
    ],
)
def test_another_schema_database_port_or_user_is_stored_as_another_url(
    other: str,
) -> None:
    assert stored_url(other) != stored_url(BASE)


def test_a_stored_url_keeps_everything_needed_to_connect_but_the_password() -> None:
    settings = storage_for(stored_url(_with_password(BASE, "pw"))).settings
    given_settings = storage_for(_with_password(BASE, "pw")).settings
    kept = (
        "POSTGRES_USER",
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_DBNAME",
        "POSTGRES_SCHEMA",
    )

    assert {k: settings[k] for k in kept} == {k: given_settings[k] for k in kept}


def test_a_socket_folder_host_is_stored_and_connects_the_same() -> None:
    socket_url = "postgresql://alice@localhost/ledger?host=/var/run/postgresql"

    stored = storage_for(stored_url(socket_url)).settings

    assert stored["POSTGRES_HOST"] == "/var/run/postgresql"


@pytest.mark.parametrize(
    "url", ["sqlite:///ledger.db", "memory://", "sqlite:///:memory:"]
)
def test_only_postgresql_databases_can_be_shards(url: str) -> None:
    with pytest.raises(LedgerConfigError, match="is not a PostgreSQL URL"):
        stored_url(url)


def test_a_shard_on_the_callers_server_connects_with_the_callers_password() -> None:
    caller = storage_for(_with_password(BASE, "s3cret"))
    shard = stored_url(BASE.replace("/ledger?", "/ledger_2?"))

    connecting = storage_for(connect_url(shard, caller)).settings

    assert connecting["POSTGRES_PASSWORD"] == "s3cret"
    assert connecting["POSTGRES_DBNAME"] == "ledger_2"


@pytest.mark.parametrize(
    "elsewhere",
    [BASE.replace("db.example", "db2.example"), BASE.replace("alice@", "bob@")],
)
def test_the_callers_password_never_goes_to_another_server_or_user(
    elsewhere: str,
) -> None:
    caller = storage_for(_with_password(BASE, "s3cret"))

    connecting = connect_url(stored_url(elsewhere), caller)

    assert "s3cret" not in connecting
