"""Three shards where one is registered through a TCP proxy a test can cut: the
shard goes out of reach and comes back while the others stay up."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ledger._shard_admin import add_shard
from tests.helpers import CuttingProxy

DOWN = 2
"""The shard behind the proxy."""


@dataclass
class ProxiedShards:
    url: str
    """The ledger's URL: shard 0, which holds the directory."""
    proxied_url: str
    """Shard 2's URL through the proxy, as the directory holds it."""
    proxy: CuttingProxy

    def cut(self) -> None:
        """Closes every connection to shard 2 and turns new ones away."""
        self.proxy.refuse = True
        self.proxy.cut_all()

    def restore(self) -> None:
        self.proxy.refuse = False


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's on 127.0.0.1."""
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def proxied_shards_on(shard_urls: list[str]) -> Iterator[ProxiedShards]:
    """Adds shard 1 and, by the URL of a proxy in front of it, shard 2 to shard 0."""
    target = urlsplit(shard_urls[DOWN])
    proxy = CuttingProxy((target.hostname or "127.0.0.1", target.port or 5432))
    try:
        proxied_url = through(shard_urls[DOWN], proxy.port)
        add_shard(shard_urls[0], shard_urls[1])
        add_shard(shard_urls[0], proxied_url)
        yield ProxiedShards(shard_urls[0], proxied_url, proxy)
    finally:
        proxy.refuse = False
        proxy.close()
