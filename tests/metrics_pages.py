"""What the metrics tests share: a free port, ``ctxledger project --follow
--metrics-port`` started and stopped as an operator would, /metrics pages fetched
and read."""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import CTXLEDGER


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_following(
    url: str,
    cwd: Path,
    port: int,
    *options: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``ctxledger project --follow --metrics-port PORT``, with ``env`` added to
    this process's environment."""
    command = [CTXLEDGER, "--db", url, "project", "--follow", "--metrics-port"]
    return subprocess.Popen(
        [*command, str(port), *options],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(worker: subprocess.Popen[str]) -> str:
    """Stops a following worker as an operator would; returns its stderr."""
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=20)
    return err


def scrape(host: str, port: int, until: str) -> str:
    """The /metrics page once it shows ``until`` (or the last one after 30 s)."""
    page = ""
    deadline = time.monotonic() + 30
    while until not in page and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://{host}:{port}/metrics", timeout=1
            ) as answer:
                page = answer.read().decode()
        except OSError:
            time.sleep(0.2)
    return page


def samples(page: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The values of the samples called ``name`` on a /metrics page, by labels."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name
    }


def value(page: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name{labels}`` on a page, None if absent."""
    return samples(page, name).get(frozenset(labels.items()))
