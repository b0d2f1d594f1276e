"""PostgreSQL servers for the shard benchmark, and the CPU their processes use.

Where Debian's ``pg_createcluster`` runs (as root or postgres), each shard gets a
cluster of its own on a free port, made for the run and dropped after it (with
the shared server's ``autovacuum``, off here); elsewhere every shard is a database
on the shared server. A server's CPU is read from ``/proc``: its postmaster's own
time, the time of the children it has reaped, and that of its live children, so a
backend that exits within a measurement is still counted.
"""

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

CLUSTER_PREFIX = "ctxlbench"
FIRST_PORT = 5433
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """One PostgreSQL server: its maintenance URL and its postmaster's pid."""

    name: str
    dsn: str
    postmaster: int | None
    """None where this process cannot see the server's processes (another host)."""
    pool: str = ""
    """The pool options of the ledgers' URLs on this server: small ones on a
    server shared with other jobs, so that the run fits its connections."""

    def url(self, database: str) -> str:
        return urlsplit(self.dsn)._replace(path=f"/{database}").geturl()


def ledger_url(url: str, server: Server) -> str:
    """``url`` (of a database on ``server``) as the ledgers open it."""
    return f"{url}?{server.pool}" if server.pool else url


def cpu_seconds(postmaster: int) -> float:
    """CPU time of the server's processes so far: the postmaster's, its reaped
    children's (backends that ended) and its live children's."""
    total = sum(_stat(postmaster)[11:15])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text()
    for child in children.split():
        try:
            total += sum(_stat(int(child))[11:13])
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between the listing and the read: counted when reaped
    return total / TICKS


def _stat(pid: int) -> list[int]:
    """The fields of /proc/PID/stat after the command name, from the state on
    (utime is [11], stime [12], cutime [13], cstime [14])."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return [0, *(int(field) for field in fields[1:])]


def postmaster_of(dsn: str) -> int | None:
    """The pid of the server's postmaster, when it runs on this machine."""
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
        try:  # the backend's parent, read while the backend lives
            postmaster = _stat(int(row[0]))[1] if row else 0
            cpu_seconds(postmaster)
        except OSError:
            return None
    return postmaster or None


def cluster_problem() -> str | None:
    """Why this machine cannot make clusters for the run (None: it can)."""
    if shutil.which("pg_createcluster") is None:
        return "pg_createcluster is not installed (Debian's postgresql-common)"
    if os.geteuid() != 0:
        return "pg_createcluster needs root here"
    return None


def server_version(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        row = connection.execute("SHOW server_version_num").fetchone()
    return int(row[0]) // 10000 if row else 15


@contextmanager
def local_clusters(count: int, version: int) -> Iterator[list[Server]]:
    """``count`` fresh clusters on free ports, each dropped afterwards."""
    with ExitStack() as stack:
        servers = []
        for _ in range(count):
            servers.append(stack.enter_context(_cluster(version)))
        yield servers


@contextmanager
def _cluster(version: int) -> Iterator[Server]:
    name = f"{CLUSTER_PREFIX}_{uuid.uuid4().hex[:8]}"
    port = _free_port()
    try:
        _run(
            "pg_createcluster", str(version), name, "--port", str(port), "--start",
            "-o", "autovacuum=off", "--", "--auth=trust",
        )  # fmt: skip
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        yield Server(name, dsn, postmaster_of(dsn))
    finally:
        _run("pg_dropcluster", "--stop", str(version), name, check=False)


def _run(*command: str, check: bool = True) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def _free_port() -> int:
    """A port no cluster of this machine is configured for, and nothing listens on."""
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"],  # noqa: S607 - Debian's own tool
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    taken = {int(line.split()[2]) for line in listed.splitlines() if line.strip()}
    for port in range(FIRST_PORT, FIRST_PORT + 200):
        if port not in taken and _unused(port):
            return port
    raise RuntimeError("no free port for a PostgreSQL cluster")


def _unused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@contextmanager
def databases(servers: list[Server], label: str, count: int) -> Iterator[list[str]]:
    """``count`` fresh databases, database i on server i modulo the servers
    (each shard on its own cluster where there are enough); dropped afterwards."""
    token = uuid.uuid4().hex[:8]
    placed = [
        (servers[i % len(servers)], f"ctxlbench_{token}_{label}_{i}")
        for i in range(count)
    ]
    made: list[tuple[Server, str]] = []
    try:
        for server, name in placed:
            _execute(server, sql.SQL("CREATE DATABASE {}"), name)
            made.append((server, name))
        yield [server.url(name) for server, name in placed]
    finally:
        for server, name in made:
            # FORCE ends only the connections to this run's own database.
            _execute(server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), name)


def _execute(server: Server, statement: sql.SQL, name: str) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as connection:
        connection.execute(statement.format(sql.Identifier(name)))
