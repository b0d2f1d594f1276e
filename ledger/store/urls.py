"""Database URLs, turned into the settings of an ``eventsourcing`` application.

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, in WAL mode;
  ``?timeout=SECONDS`` is how long to wait for another writer's lock.
- ``postgresql://user[:password]@host[:port]/dbname[?schema=NAME&host=SOCKET_DIR]``;
  the pool takes ``pool_size``, ``max_overflow``, ``pool_timeout`` and
  ``connect_timeout`` (``POSTGRES_POOL``).
- ``memory://``, in this process only and gone on close.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.utils import get_topic

from ledger.errors import LedgerConfigError
from ledger.store.postgres_log import (
    CONNECT_TIMEOUT_SETTING,
    ParallelPostgresRecorder,
    PostgresLogFactory,
)

DEFAULT_URL = "sqlite:///ctxledger.db"
URL_VARIABLE = "CTXLEDGER_URL"
SQLITE_LOCK_TIMEOUT_SECONDS = 30
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
POSTGRES_POOL = {
    # URL option: (default, least value, what it is); the sizes are the library's
    "pool_size": (5, 1, "connections the pool keeps open"),
    "max_overflow": (10, 0, "connections the pool may open beyond pool_size"),
    "pool_timeout": (5, 1, "seconds a call waits for a free connection"),
    # libpq treats a connect_timeout of 1 as 2.
    "connect_timeout": (
        POSTGRES_CONNECT_TIMEOUT_SECONDS,
        2,
        "seconds a new connection waits for the server",
    ),
}
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_POSTGRES_OPTIONS = frozenset({"schema", "host", *POSTGRES_POOL})
_URL_FORMS = (
    "use sqlite:///path.db, postgresql://user[:password]@host[:port]/dbname"
    "[?schema=NAME], or memory://"
)


@dataclass(frozen=True)
class Storage:
    """Where a ledger keeps its events, as the library's settings."""

    kind: str
    settings: dict[str, str]
    description: str


def resolve_url(url: str | None) -> str:
    """The given URL, else the CTXLEDGER_URL environment variable, else the default."""
    if url is not None:
        return url
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


def storage_for(url: str) -> Storage:
    """Parses a database URL; LedgerConfigError says what is wrong with it."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return _sqlite(url)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    if url.lower().rstrip("/") == "memory:":
        return Storage("memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"}, "memory")
    raise LedgerConfigError(
        f"unsupported database URL {_hide_password(url)!r}; {_URL_FORMS}"
    )


def _sqlite(url: str) -> Storage:
    prefix = "sqlite:///"
    url, _, query = url.partition("?")
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    if set(options) - {"timeout"}:
        raise LedgerConfigError(
            f"unknown SQLite URL option(s) {sorted(set(options) - {'timeout'})}; "
            "only timeout (seconds to wait for a lock) is read"
        )
    timeout = options.get("timeout", str(SQLITE_LOCK_TIMEOUT_SECONDS))
    if not timeout.isdigit() or int(timeout) < 1:
        raise LedgerConfigError(
            f"SQLite timeout={timeout!r} must be a whole number of seconds, 1 or more"
        )
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise LedgerConfigError(
            f"SQLite URL {url!r} has no file path; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    path = Path(unquote(url[len(prefix) :]))
    if not path.parent.is_dir():
        raise LedgerConfigError(
            f"the folder {str(path.parent)!r} of SQLite file {str(path)!r} does not "
            "exist; create it first or choose another path"
        )
    settings = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": timeout,
    }
    return Storage("sqlite", settings, f"sqlite file {path}")


def _postgres(url: str) -> Storage:
    parts = urlsplit(url)
    options = {
        key: values[-1]
        for key, values in parse_qs(parts.query, keep_blank_values=True).items()
    }
    unknown = sorted(set(options) - _POSTGRES_OPTIONS)
    if unknown:
        raise LedgerConfigError(
            f"unknown PostgreSQL URL option(s) {unknown}; the options are "
            f"{', '.join(sorted(_POSTGRES_OPTIONS))}"
        )
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or not parts.username:
        raise LedgerConfigError(
            f"PostgreSQL URL {_hide_password(url)!r} needs a user and a database "
            "name: postgresql://user[:password]@host[:port]/dbname"
        )
    schema = options.get("schema", "public")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise LedgerConfigError(
            f"schema name {schema!r} is not a plain lower-case SQL identifier; use "
            "a-z, 0-9 and _, starting with a letter or _, at most 63 characters"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise LedgerConfigError(
            f"the port in {_hide_password(url)!r} is not a number"
        ) from None
    host = options.get("host") or unquote(parts.hostname or "")
    settings = {
        # The library's, with a recorder that appends without a table lock.
        "PERSISTENCE_MODULE": get_topic(PostgresLogFactory),
        "APPLICATION_RECORDER_TOPIC": get_topic(ParallelPostgresRecorder),
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": unquote(parts.username),
        # The library always passes a password, which stops libpq from reading
        # PGPASSWORD itself: so read it here when the URL has none.
        "POSTGRES_PASSWORD": (
            unquote(parts.password)
            if parts.password is not None
            else os.environ.get("PGPASSWORD", "")
        ),
        "POSTGRES_SCHEMA": schema,
        **_pool_settings(options),
    }
    where = f"postgresql {host or 'local socket'}:{port}/{dbname} schema {schema}"
    return Storage("postgres", settings, where)


def _pool_settings(options: dict[str, str]) -> dict[str, str]:
    """The connection pool's settings, from the URL's options or the defaults."""
    chosen = {name: _whole_number(name, options) for name in POSTGRES_POOL}
    return {
        "POSTGRES_POOL_SIZE": chosen["pool_size"],
        "POSTGRES_MAX_OVERFLOW": chosen["max_overflow"],
        # The library hands this one to the pool as the wait for a free connection.
        "POSTGRES_CONNECT_TIMEOUT": chosen["pool_timeout"],
        CONNECT_TIMEOUT_SETTING: chosen["connect_timeout"],
        # No pre-ping: the pool backs off a second, then two, ... after each
        # closed connection it finds, so once the server has closed them all (a
        # restart) the first calls would wait out pool_timeout. A closed connection
        # fails at once instead: reads retry, and an append's outcome is settled
        # from the store (LedgerApplication._put).
        "POSTGRES_PRE_PING": "n",
    }


def _whole_number(name: str, options: dict[str, str]) -> str:
    default, least, meaning = POSTGRES_POOL[name]
    value = options.get(name, str(default))
    if not (value.isascii() and value.isdigit()) or int(value) < least:
        raise LedgerConfigError(
            f"PostgreSQL URL option {name}={value!r} must be a whole number, "
            f"{least} or more: the {meaning}"
        )
    return str(int(value))


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
