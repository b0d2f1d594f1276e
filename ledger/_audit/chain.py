"""What a check of the hash chain reports, and the finder of the first break.

The hash itself is ``ledger._domain.hashing``; this module says where a chain of
stored or exported events fails and how (altered, missing, reordered).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

Fault = Literal[
    "altered", "missing", "reordered", "erasure-pending", "key-rows", "unproven"
]
"""How a user's chain or its keys fail: ``erasure-pending`` when a ``forgotten``
event is stored but a key it retired still lives; ``key-rows`` when the key table
disagrees with the events (a key destroyed with no ``forgotten`` event, or a row
the master key does not vouch for); ``unproven`` when an export's event is not
proved in a signed checkpoint."""


class ChainBreak(BaseModel):
    """Where a user's chain first fails, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    fault: Fault
    detail: str


class UserChain(BaseModel):
    """The result of checking one user's chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    events: int
    head_version: int
    head_hash: str
    """The hash of the newest event read (``GENESIS_HASH`` for none): record it, and
    a later check can prove that no event up to it changed."""
    fault: ChainBreak | None = None

    @property
    def holds(self) -> bool:
        return self.fault is None


class ChainReport(BaseModel):
    """The result of checking the chains of one user or of all users."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    users: tuple[UserChain, ...]

    @property
    def holds(self) -> bool:
        return all(user.holds for user in self.users)

    @property
    def broken(self) -> list[UserChain]:
        return [user for user in self.users if not user.holds]

    @property
    def events(self) -> int:
        return sum(user.events for user in self.users)


@dataclass(frozen=True, slots=True)
class Link:
    """One stored event as the chain sees it, in the order it is stored."""

    version: int
    hash: str | None
    """The hash of its record; None when it cannot be read (see ``problem``)."""
    prev_hash: str | None
    problem: str | None = None


def find_break(
    links: Sequence[Link], *, first_version: int = 1, first_prev: str | None
) -> ChainBreak | None:
    """The first fault in ``links``, stored order; None when the chain holds.

    ``first_prev`` is the hash the first event must point to (``GENESIS_HASH`` for
    a whole stream; None when it is not known, as for an export that starts later).
    A link that fails because the event it needs is stored at another place is
    reordered; a version that is absent is missing; anything else is altered.
    """
    versions = {link.version for link in links}
    by_prev: dict[str, int] = {}
    for index, link in enumerate(links):
        if link.prev_hash is not None:
            by_prev.setdefault(link.prev_hash, index)
    version, prev = first_version, first_prev
    for index, link in enumerate(links):
        if link.version != version:
            return _out_of_place(links, index, version, versions)
        if link.hash is None:
            return ChainBreak(
                version=version, fault="altered", detail=link.problem or "unreadable"
            )
        if prev is not None and link.prev_hash != prev:
            return _unlinked(links, index, version, by_prev.get(prev))
        prev = link.hash
        version += 1
    return None


def _out_of_place(
    links: Sequence[Link], index: int, version: int, versions: set[int]
) -> ChainBreak:
    """The fault where the link at ``index`` is not the ``version`` expected:
    that version stored elsewhere, absent, or this one stored again."""
    link = links[index]
    if version in versions:
        return ChainBreak(
            version=version,
            fault="reordered",
            detail=f"version {version} is stored out of place, "
            f"after version {links[index - 1].version}"
            if index
            else f"version {version} is not stored first",
        )
    if link.version > version:
        gap = (
            f"version {version}"
            if link.version == version + 1
            else f"versions {version} to {link.version - 1}"
        )
        return ChainBreak(
            version=version,
            fault="missing",
            detail=f"{gap} absent: version {link.version} follows "
            + (f"version {version - 1}" if index else "nothing"),
        )
    return ChainBreak(
        version=link.version,
        fault="reordered",
        detail=f"version {link.version} is stored again after version {version - 1}",
    )


def _unlinked(
    links: Sequence[Link], index: int, version: int, moved: int | None
) -> ChainBreak:
    """The fault where the link at ``index`` does not point to the event before
    it: reordered if the event that does (at ``moved``) is stored elsewhere."""
    if moved is not None and moved != index:
        return ChainBreak(
            version=version,
            fault="reordered",
            detail=f"the event that follows version {version - 1} is "
            f"stored as version {links[moved].version}",
        )
    return _altered(links, index, version)


def _altered(links: Sequence[Link], index: int, version: int) -> ChainBreak:
    if index == 0:
        return ChainBreak(
            version=version,
            fault="altered",
            detail="its prev_hash is not the one the chain starts from",
        )
    link = links[index]
    last = index + 1 == len(links)
    if last or links[index + 1].prev_hash == link.hash:
        # This event is confirmed by the next one (or nothing can tell): the
        # previous event no longer hashes to what this one recorded.
        return ChainBreak(
            version=version - 1,
            fault="altered",
            detail=f"its hash differs from the prev_hash recorded by version {version}"
            + (f" (or the prev_hash of version {version} was altered)" if last else ""),
        )
    return ChainBreak(
        version=version,
        fault="altered",
        detail=f"its prev_hash differs from the hash of version {version - 1}, and "
        f"version {version + 1} does not confirm it",
    )
