"""Database URLs, turned into the settings of an ``eventsourcing`` application.

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, in WAL mode;
  ``?timeout=SECONDS`` is how long to wait for another writer's lock.
- ``postgresql://user[:password]@host[:port]/dbname[?schema=NAME&host=SOCKET_DIR]``;
  the pool takes ``pool_size``, ``max_overflow``, ``pool_timeout`` and
  ``connect_timeout`` (``POSTGRES_POOL``).
- ``memory://``, in this process only and gone on close.

Anything else is a LedgerConfigError that names the problem and never shows a
password: a URL that is not a str, a NUL character (``%00`` too), a PostgreSQL URL
with no host (a socket folder is given as ``?host=``), a port outside 1-65535, or
a pool option or timeout outside its range.
"""

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from eventsourcing.utils import get_topic

from ledger._store.postgres_log import (
    CONNECT_TIMEOUT_SETTING,
    ParallelPostgresRecorder,
    PostgresLogFactory,
)
from ledger.errors import LedgerConfigError, shorten

DEFAULT_URL = "sqlite:///ctxledger.db"
URL_VARIABLE = "CTXLEDGER_URL"
SQLITE_LOCK_TIMEOUT_SECONDS = 30
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
# Upper bounds: larger values only hang (a pool opens pool_size connections at once)
# or overflow the platform's time_t.
MOST_SECONDS = 86_400
MOST_CONNECTIONS = 1_000
POSTGRES_POOL = {
    # URL option: (default, least value, most, what it is); the sizes are the library's
    "pool_size": (5, 1, MOST_CONNECTIONS, "connections the pool keeps open"),
    "max_overflow": (
        10,
        0,
        MOST_CONNECTIONS,
        "connections the pool may open beyond pool_size",
    ),
    "pool_timeout": (5, 1, MOST_SECONDS, "seconds a call waits for a free connection"),
    # libpq treats a connect_timeout of 1 as 2.
    "connect_timeout": (
        POSTGRES_CONNECT_TIMEOUT_SECONDS,
        2,
        MOST_SECONDS,
        "seconds a new connection waits for the server",
    ),
}
_SHOWN_CHARS = 200
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
    settings: dict[str, str] = field(repr=False)  # holds the password
    description: str = ""


def resolve_url(url: object) -> str:
    """The given URL, else the CTXLEDGER_URL environment variable, else the default."""
    if url is None:
        return os.environ.get(URL_VARIABLE) or DEFAULT_URL
    return _text(url)


def storage_for(url: str) -> Storage:
    """Parses a database URL; LedgerConfigError says what is wrong with it."""
    url = _text(url)
    if "\x00" in url:
        raise LedgerConfigError(
            f"database URL {_shown(url)} holds a NUL character; remove it"
        )
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return _sqlite(url)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    if url.lower().rstrip("/") == "memory:":
        return Storage("memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"}, "memory")
    raise LedgerConfigError(f"unsupported database URL {_shown(url)}; {_URL_FORMS}")


def _text(url: object) -> str:
    if not isinstance(url, str):
        raise LedgerConfigError(
            f"url={shorten(url)} is not a str; pass a database URL such as "
            f"{DEFAULT_URL}"
        )
    return url


def _sqlite(url: str) -> Storage:
    url, _, query = url.partition("?")
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    if set(options) - {"timeout"}:
        raise LedgerConfigError(
            f"unknown SQLite URL option(s) {sorted(set(options) - {'timeout'})}; "
            "only timeout (seconds to wait for a lock) is read"
        )
    timeout = options.get("timeout", str(SQLITE_LOCK_TIMEOUT_SECONDS))
    if not _in_range(timeout, 1, MOST_SECONDS):
        raise LedgerConfigError(
            f"SQLite timeout={shorten(timeout)} must be a whole number of seconds, "
            f"1 or more (at most {MOST_SECONDS})"
        )
    rest = url[len("sqlite:") :]
    if not rest.startswith("///") or rest == "///":
        raise LedgerConfigError(
            f"SQLite URL {_shown(url)} has no file path; use "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = Path(unquote(rest[len("///") :]))
    _check_sqlite_folder(path)
    settings = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": str(int(timeout)),
    }
    return Storage("sqlite", settings, f"sqlite file {path}")


def _check_sqlite_folder(path: Path) -> None:
    where = f"the folder {_shown(str(path.parent))} of SQLite file {_shown(str(path))}"
    if "\x00" in str(path):
        raise LedgerConfigError(
            f"SQLite file {_shown(str(path))} holds a NUL character (%00 in the URL); "
            "remove it"
        )
    try:
        mode = path.parent.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise LedgerConfigError(
            f"{where} does not exist; create it first or choose another path"
        ) from None
    except OSError as error:
        raise LedgerConfigError(
            f"{where} cannot be used: {error.strerror or error}; choose another path"
        ) from None
    if not stat.S_ISDIR(mode):
        raise LedgerConfigError(f"{where} is not a folder; choose another path")


def _postgres(url: str) -> Storage:
    parts = _split(url)
    options = _postgres_options(parts)
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or not parts.username:
        raise LedgerConfigError(
            f"PostgreSQL URL {_shown(url)} needs a user and a database "
            "name: postgresql://user[:password]@host[:port]/dbname"
        )
    schema = _schema(options)
    port = _port(parts, url)
    host = _host(options, parts, url)
    user = unquote(parts.username)
    password = (
        unquote(parts.password)
        if parts.password is not None
        else os.environ.get("PGPASSWORD", "")
    )
    _no_nul(url, database_name=dbname, host=host, user=user, password=password)
    settings = {
        # The library's, with a recorder that appends without a table lock.
        "PERSISTENCE_MODULE": get_topic(PostgresLogFactory),
        "APPLICATION_RECORDER_TOPIC": get_topic(ParallelPostgresRecorder),
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": user,
        # The library always passes a password, which stops libpq from reading
        # PGPASSWORD itself: so read it here when the URL has none.
        "POSTGRES_PASSWORD": password,
        "POSTGRES_SCHEMA": schema,
        **_pool_settings(options),
    }
    where = f"postgresql {host}:{port}/{dbname} schema {schema}"
    return Storage("postgres", settings, where)


def _postgres_options(parts: SplitResult) -> dict[str, str]:
    """The URL's query options (the last of a repeated one); LedgerConfigError
    for one the ledger does not know."""
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
    return options


def _schema(options: dict[str, str]) -> str:
    """The schema option (default ``public``), a plain lower-case SQL identifier."""
    schema = options.get("schema", "public")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise LedgerConfigError(
            f"schema name {shorten(schema)} is not a plain lower-case SQL "
            "identifier; use a-z, 0-9 and _, starting with a letter or _, at most 63 "
            "characters"
        )
    return schema


def _host(options: dict[str, str], parts: SplitResult, url: str) -> str:
    """The host option (a Unix socket folder), else the URL's host; one is needed."""
    host = options.get("host") or unquote(parts.hostname or "")
    if not host:
        raise LedgerConfigError(
            f"PostgreSQL URL {_shown(url)} has no host; name one "
            "(postgresql://user@HOST/dbname), or a Unix socket folder with "
            "?host=/var/run/postgresql"
        )
    return host


def _split(url: str) -> SplitResult:
    """The URL's parts; LedgerConfigError (its password hidden) if they are unclear."""
    try:
        parts = urlsplit(url)
    except ValueError as error:
        # urlsplit's own message would show the password: say what is wrong here.
        problem = (
            "its IPv6 host needs both brackets, as in [::1]"
            if "IPv6" in str(error)
            else "its host part holds characters that Unicode normalization "
            "changes (full-width letters, for one); use plain ASCII or percent-encode"
        )
        raise LedgerConfigError(
            f"PostgreSQL URL {_shown(url)} cannot be parsed: {problem}"
        ) from None
    # A '/', '?' or '#' in a password ends the host part early: the rest of the
    # password would be read as the path, the options or a fragment.
    if "@" in parts.path or "@" in parts.query or parts.fragment:
        raise LedgerConfigError(
            f"PostgreSQL URL {_shown(url)} has a '@' after its host, or "
            "a '#': percent-encode '/', '?', '#' and '@' in the user and password "
            "(%2F, %3F, %23, %40)"
        )
    return parts


def _port(parts: SplitResult, url: str) -> int:
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None and not parts.netloc.endswith(":"):
        return 5432
    if not port:
        raise LedgerConfigError(
            f"the port in {_shown(url)} is not a number from 1 to 65535; "
            "give one (5432 is PostgreSQL's), or leave the port out"
        )
    return port


def _no_nul(url: str, **parts: str) -> None:
    """libpq takes C strings: a NUL would cut a part short without a word."""
    for name, value in parts.items():
        if "\x00" in value:
            raise LedgerConfigError(
                f"the {name.replace('_', ' ')} of PostgreSQL URL {_shown(url)} holds "
                "a NUL character (%00); remove it"
            )


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
    default, least, most, meaning = POSTGRES_POOL[name]
    value = options.get(name, str(default))
    if not _in_range(value, least, most):
        raise LedgerConfigError(
            f"PostgreSQL URL option {name}={shorten(value)} must be a whole number, "
            f"{least} or more (at most {most}): the {meaning}"
        )
    return str(int(value))


def _in_range(text: str, least: int, most: int) -> bool:
    """Whether ``text`` is a whole number in digits 0-9, from least to most."""
    return (
        text.isascii()
        and text.isdigit()
        and len(text) <= len(str(most)) + 1
        and least <= int(text) <= most
    )


def _shown(text: str) -> str:
    """``text`` as a message shows it: quoted, any password hidden, cut if long."""
    shown = repr(_hide_password(text))
    if len(shown) <= _SHOWN_CHARS:
        return shown
    return f"{shown[: _SHOWN_CHARS - 4]}...{shown[0]} ({len(shown)} chars)"


_LAST_PORT = 65535
_PASSWORD_OPTION = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def shown_url(url: str) -> str:
    """The URL as messages and the CLI show it: any password hidden."""
    return _hide_password(url)


def _hide_password(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``.

    Parsed by hand, not by ``urlsplit``: this must work on URLs that it refuses.
    With an '@', everything from the first ':' after the scheme (and its slashes,
    however many) to the last '@' is hidden, so a password holding '/', '?', '#'
    or '@' does not show either. With none (a forgotten '@host'), what follows a
    ':' in the authority is hidden unless it is a port (1 to 65535). A
    ``password=`` in the query is hidden too. A ``sqlite:///`` URL is shown as it
    is (a file path may hold ':' and '@').
    """
    scheme, colon_found, _ = text.partition(":")
    path_only = (scheme == "sqlite" and not text.startswith("sqlite://")) or (
        text.startswith("sqlite:///")
    )
    if not colon_found or path_only:
        return text
    start = len(scheme) + 1
    while start < len(text) and text[start] == "/":
        start += 1
    at = text.rfind("@")
    if at >= start:
        colon = text.find(":", start, at)
        shown = text if colon < 0 else f"{text[: colon + 1]}***{text[at:]}"
    else:
        ends = [i for i in (text.find(c, start) for c in "/?#") if i >= 0]
        end = min(ends, default=len(text))
        colon = text.find(":", start, end)
        port = text[colon + 1 : end]
        is_port = port.isascii() and port.isdigit() and 1 <= int(port) <= _LAST_PORT
        shown = text if colon < 0 or is_port else f"{text[: colon + 1]}***{text[end:]}"
    return _PASSWORD_OPTION.sub(r"\1***", shown)
