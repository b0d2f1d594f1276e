"""The PostgreSQL URL sets the connection pool: its size, overflow and timeouts."""

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import OperationalError, StoredEvent

from ledger import ContextLedger, LedgerConfigError, StorageUnavailable
from ledger._store.application import open_application
from ledger._store.postgres_log import CONNECT_TIMEOUT_SETTING
from ledger._store.urls import storage_for

URL = "postgresql://app@db.internal/ctx"


def test_pool_options_in_the_url_become_the_library_settings() -> None:
    storage = storage_for(
        f"{URL}?pool_size=10&max_overflow=20&pool_timeout=7&connect_timeout=3"
    )

    assert storage.settings["POSTGRES_POOL_SIZE"] == "10"
    assert storage.settings["POSTGRES_MAX_OVERFLOW"] == "20"
    assert storage.settings["POSTGRES_CONNECT_TIMEOUT"] == "7"  # the pool's wait
    assert storage.settings[CONNECT_TIMEOUT_SETTING] == "3"


def test_without_pool_options_the_defaults_apply() -> None:
    settings = storage_for(URL).settings

    assert settings["POSTGRES_POOL_SIZE"] == "5"
    assert settings["POSTGRES_MAX_OVERFLOW"] == "10"
    assert settings["POSTGRES_CONNECT_TIMEOUT"] == "5"
    assert settings[CONNECT_TIMEOUT_SETTING] == "5"


@pytest.mark.parametrize(
    ("option", "least"),
    [
        ("pool_size=0", 1),
        ("pool_size=-3", 1),
        ("pool_size=ten", 1),
        ("pool_size=", 1),
        ("pool_size=\u0663", 1),  # a digit, but not 0-9
        ("max_overflow=-1", 0),
        ("pool_timeout=0", 1),
        ("pool_timeout=1.5", 1),
        ("connect_timeout=1", 2),
    ],
)
def test_a_bad_pool_option_is_a_configuration_error(option: str, least: int) -> None:
    name, _, value = option.partition("=")

    with pytest.raises(
        LedgerConfigError,
        match=rf"option {name}={value!r} must be a whole number, {least} or more",
    ):
        storage_for(f"{URL}?{option}")


def test_an_unknown_option_names_the_options_there_are() -> None:
    with pytest.raises(LedgerConfigError, match="pool_size, pool_timeout, schema"):
        storage_for(f"{URL}?poolsize=3")


@pytest.mark.postgres
def test_an_opened_ledger_pool_has_the_size_and_timeouts_of_its_url(
    postgres_url: str,
) -> None:
    url = f"{postgres_url}&pool_size=2&max_overflow=3&pool_timeout=4&connect_timeout=6"

    with ContextLedger.open(url) as ledger:
        pool = ledger._app.factory.datastore.pool  # type: ignore[attr-defined]

        assert (pool.min_size, pool.max_size, pool.timeout) == (2, 5, 4)
        assert isinstance(pool.kwargs, dict)
        assert pool.kwargs["connect_timeout"] == 6


@pytest.mark.postgres
def test_an_append_waits_pool_timeout_for_a_free_connection_then_fails(
    postgres_url: str,
) -> None:
    url = f"{postgres_url}&pool_size=1&max_overflow=0&pool_timeout=1"
    event = StoredEvent(uuid.uuid4(), 1, "ctxledger.test:Anything", b"\x80")
    with open_application(storage_for(url)) as app:
        datastore = app.factory.datastore  # type: ignore[attr-defined]
        with datastore.get_connection():  # the pool's only connection, taken
            started = time.monotonic()
            with pytest.raises(OperationalError, match="couldn't get a connection"):
                app.recorder.insert_events([event])
            waited = time.monotonic() - started

    assert 0.9 < waited < 3


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung server)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_connect_timeout_bounds_the_wait_for_a_server_that_never_answers(
    silent_server: int,
) -> None:
    url = f"postgresql://app@127.0.0.1:{silent_server}/ctx?connect_timeout=2"

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{silent_server}"):
        ContextLedger.open(url)
    waited = time.monotonic() - started

    assert 1.5 < waited < 5
