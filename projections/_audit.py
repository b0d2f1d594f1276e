"""The compliance audit view: one row per event, in ledger order."""

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, cast

import orjson

from ledger._domain.models import EventKind
from ledger.errors import LedgerError
from ledger.log_source import EventRecord, Positioned
from projections._models import AuditRow
from projections._sealing import (
    ERASED,
    event_cell,
    is_sealed,
    open_json,
    prefetch,
    seal_json,
)
from projections._store import Tx
from projections._view import MAX_SHOWN, ModelColumns, Names, Table, View

ROWS = ModelColumns(AuditRow, key="position")
COLUMNS = ROWS.names
_SELECT = ", ".join(COLUMNS)
_PAGE = 2000
SEALED = "sealed"
"""The key of a row's details that holds its sealed personal data."""


class AuditView(View):
    name: ClassVar[str] = "audit"
    replay_by_position: ClassVar[bool] = True  # differences merge by position
    tables: ClassVar[tuple[Table, ...]] = (
        Table(
            "audit",
            ROWS.ddl(),
            indexes=("user_id, position", "occurred_at", "kind, position"),
            index_after_load=True,
        ),
    )

    order = "position"
    """How ``query`` orders rows: by position (the ledger's order) on one
    database; by time, then position, across shards (``by_time``)."""

    def by_time(self) -> None:
        """Rows are read in order of time: a sharded ledger has no order across
        its logs, and a moved user's events stand in two of them."""
        self.order = "occurred_at, position"

    def apply(self, tx: Tx, names: Names, events: Sequence[Positioned]) -> None:
        time_param = tx.dialect.time_param
        rows = [
            (
                position,
                event.user_id,
                event.KIND,
                event.context_id,
                event.thread_id,
                event.run_id,
                time_param(event.timestamp),
                _json_text(_sealed(tx, event), plain=event.plain_json),
            )
            for position, event in events
        ]
        tx.insert(names["audit"], COLUMNS, rows)

    def differences(
        self, tx: Tx, names: Names, events: Iterable[Positioned]
    ) -> list[str]:
        found: list[str] = []
        replay, stored = map(audit_row, events), self._pages(tx, names)
        want, have = next(replay, None), next(stored, None)
        while (want is not None or have is not None) and len(found) < MAX_SHOWN:
            if want is not None and (have is None or want.position < have.position):
                found.append(f"audit position {want.position}: missing from the view")
                want = next(replay, None)
            elif have is not None and (want is None or have.position < want.position):
                found.append(f"audit position {have.position}: not in the ledger")
                have = next(stored, None)
            elif want is not None and have is not None:
                if want != have:
                    found.append(_changed(want, have))
                want, have = next(replay, None), next(stored, None)
        return found

    def query(
        self,
        tx: Tx,
        names: Names,
        *,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: EventKind | None = None,
    ) -> list[AuditRow]:
        """Rows in ``order``; ``since`` inclusive, ``until`` exclusive."""
        conditions: list[str] = []
        params: list[Any] = []
        for column, operator, value in (
            ("user_id", "=", user_id),
            ("occurred_at", ">=", tx.dialect.time_param(since)),
            ("occurred_at", "<", tx.dialect.time_param(until)),
            ("kind", "=", kind),
        ):
            if value is not None:
                conditions.append(f"{column} {operator} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        text = f"SELECT {_SELECT} FROM {names['audit']} {where} ORDER BY {self.order}"
        return _audit_rows(tx, tx.rows(text, params))

    def count(self, tx: Tx, names: Names) -> int:
        return int(tx.rows(f"SELECT COUNT(*) FROM {names['audit']}")[0][0])

    def _pages(self, tx: Tx, names: Names) -> Iterator[AuditRow]:
        after = 0
        while True:
            rows = tx.rows(
                f"SELECT {_SELECT} FROM {names['audit']} WHERE position > ? "
                "ORDER BY position LIMIT ?",
                (after, _PAGE),
            )
            yield from _audit_rows(tx, rows)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]


def audit_row(positioned: Positioned) -> AuditRow:
    position, event = positioned
    return AuditRow.model_construct(
        position=position,
        user_id=event.user_id,
        kind=event.KIND,
        context_id=event.context_id,
        thread_id=event.thread_id,
        run_id=event.run_id,
        occurred_at=event.timestamp,
        details=event.details,
    )


def _json_text(details: dict[str, Any], *, plain: bool) -> str:
    """The details as the JSON text the view stores: what ``json.dumps`` writes,
    by orjson where the values are plain JSON it writes alike (strings, finite
    floats, integers of 64 bits), which the fast decoder checked."""
    if plain:
        try:
            return orjson.dumps(details).decode("utf-8")
        except orjson.JSONEncodeError:
            pass  # an integer beyond 64 bits, say
    return json.dumps(details, ensure_ascii=False)


def _sealed(tx: Tx, event: EventRecord) -> dict[str, Any]:
    """The row's details with its personal data (metadata and the salt that opens
    its commitment) sealed under the user's key, as the ledger stores them: the
    event's own sealed value when the record holds it, else sealed anew."""
    details = event.details
    if not event.sealed_metadata or details.get("metadata") is None:
        return details  # format 1, no metadata, or erased: nothing to seal
    kept = dict(details)
    del kept["metadata"]
    kept.pop("metadata_salt", None)
    if event.sealed is not None:
        kept[SEALED] = event_cell(event.key_generation, event.sealed)
        return kept
    sealed = seal_json(
        tx.keys,
        event.user_id,
        event.key_generation,
        [details["metadata"], details.get("metadata_salt")],
    )
    kept[SEALED] = sealed if sealed is not None else ERASED
    return kept


def _audit_rows(tx: Tx, rows: list[tuple[Any, ...]]) -> list[AuditRow]:
    stored = [ROWS.value(tx.dialect, row) for row in rows]
    prefetch(tx.keys, ((r.user_id, r.details.get(SEALED)) for r in stored))
    return [_opened(tx, row) for row in stored]


def _opened(tx: Tx, stored: AuditRow) -> AuditRow:
    cell = stored.details.get(SEALED)
    if not is_sealed(cell):
        return stored
    details = {k: v for k, v in stored.details.items() if k != SEALED}
    try:
        opened, value = open_json(tx.keys, stored.user_id, cast(str, cell))
    except LedgerError:
        raise  # a master key that does not open the keys: a setting to fix
    except ValueError:
        # Altered in the view (or moved to another user's row): it stays sealed,
        # so ``verify`` reports it and ``rebuild`` repairs it.
        return stored
    if opened:
        details["metadata"], details["metadata_salt"] = value
    else:
        details["metadata"], details["erased"] = None, True
    return stored.model_copy(update={"details": details})


def _changed(want: AuditRow, have: AuditRow) -> str:
    columns = [c for c in COLUMNS if getattr(want, c) != getattr(have, c)]
    shown = ", ".join(
        f"{c}: view {getattr(have, c)!r}, replay {getattr(want, c)!r}" for c in columns
    )
    return f"audit position {want.position}: {shown}"
