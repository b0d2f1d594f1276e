"""The active contexts view: one row per context that is open in the ledger.

A context stays here until its expiry or clearing is recorded, so one whose time
to live has run out shows up in ``expiring_before(now)`` until ``expire_due`` runs.
"""

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, cast

from ledger._domain.contexts import ContextFields, evolve_fields, forgets_user
from ledger._domain.models import Context
from ledger.errors import LedgerCorrupted, LedgerError
from ledger.log_source import Positioned
from projections._sealing import ERASED, is_sealed, open_json, prefetch, seal_json
from projections._store import Tx
from projections._view import (
    ModelColumns,
    Names,
    Table,
    View,
    compare_rows,
)

ROWS = ModelColumns(Context, key="context_id", computed=("erased",))
COLUMNS = ROWS.names
_SELECT = ", ".join(COLUMNS)
_ORDER = "ORDER BY created_at, context_id"
_CHUNK = 500  # ids per IN (...) list


class ActiveContextsView(View):
    name: ClassVar[str] = "active"
    tables: ClassVar[tuple[Table, ...]] = (
        Table(
            "active_contexts",
            ROWS.ddl(),
            indexes=("user_id, thread_id", "expires_at"),
        ),
    )

    def apply(self, tx: Tx, names: Names, events: Sequence[Positioned]) -> None:
        table = names["active_contexts"]
        contexts: dict[str, ContextFields | None] = dict(
            self._stored(tx, names, _needed(events))
        )
        sealing: dict[str, int | None] = {}  # context -> its key generation
        for _, event in events:
            if forgets_user(event):
                _forget(tx, table, event.user_id, contexts)
                continue
            # A ValueError (an event that does not follow the stored row) stops
            # the view with ViewCannotApply, naming the event (processing.py).
            contexts[event.context_id] = evolve_fields(
                contexts.get(event.context_id), event
            )
            sealing[event.context_id] = (
                event.key_generation if event.sealed_metadata else None
            )
        ended = [(cid,) for cid, context in contexts.items() if context is None]
        tx.run_many(f"DELETE FROM {table} WHERE context_id = ?", ended)
        kept = [
            (c, sealing.get(c["context_id"]))
            for c in contexts.values()
            if c is not None
        ]
        # The keys to seal with, in a statement per 500 users, not one per user.
        tx.keys.prefetch({(c["user_id"], g) for c, g in kept if g is not None})
        live = [_row(tx, context, generation) for context, generation in kept]
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != ROWS.key)
        tx.run_many(
            f"INSERT INTO {table} ({_SELECT}) VALUES ({', '.join('?' * len(COLUMNS))}) "
            f"ON CONFLICT (context_id) DO UPDATE SET {updates}",
            live,
        )

    def differences(
        self, tx: Tx, names: Names, events: Iterable[Positioned]
    ) -> list[str]:
        expected: dict[str, ContextFields | None] = {}
        of_user: dict[str, set[str]] = {}  # contexts each user has in expected
        for position, event in events:
            if forgets_user(event):
                for cid in of_user.pop(event.user_id, ()):
                    expected[cid] = None
                continue
            of_user.setdefault(event.user_id, set()).add(event.context_id)
            try:
                expected[event.context_id] = evolve_fields(
                    expected.get(event.context_id), event
                )
            except ValueError as error:  # the ledger's own events do not replay
                raise LedgerCorrupted(
                    event.user_id, f"the event at position {position}: {error}"
                ) from error
        actual = self.query(tx, names, "")
        return compare_rows(
            "context",
            COLUMNS,
            {cid: _values(c) for cid, c in expected.items() if c is not None},
            {c.context_id: _values(c.__dict__) for c in actual},
        )

    def query(
        self, tx: Tx, names: Names, where: str, params: Sequence[Any] = ()
    ) -> list[Context]:
        table = names["active_contexts"]
        rows = tx.rows(f"SELECT {_SELECT} FROM {table} {where}", params)
        prefetch(tx.keys, ((row[_USER], row[_METADATA]) for row in rows))
        return [_context(tx, row) for row in rows]

    def by_user(self, tx: Tx, names: Names, user_id: str, limit: int) -> list[Context]:
        where = f"WHERE user_id = ? {_ORDER} LIMIT ?"
        return self.query(tx, names, where, (user_id, limit))

    def by_context(self, tx: Tx, names: Names, context_id: str) -> Context | None:
        found = self.query(tx, names, "WHERE context_id = ?", (context_id,))
        return found[0] if found else None

    def everyone(self, tx: Tx, names: Names, limit: int) -> list[Context]:
        return self.query(tx, names, f"{_ORDER} LIMIT ?", (limit,))

    def expiring_before(self, tx: Tx, names: Names, at: datetime) -> list[Context]:
        return self.query(
            tx,
            names,
            "WHERE expires_at IS NOT NULL AND expires_at < ? "
            "ORDER BY expires_at, context_id",
            (tx.dialect.time_param(at),),
        )

    def count(self, tx: Tx, names: Names, user_id: str | None) -> int:
        table = names["active_contexts"]
        if user_id is None:
            return int(tx.rows(f"SELECT COUNT(*) FROM {table}")[0][0])
        where = f"SELECT COUNT(*) FROM {table} WHERE user_id = ?"
        return int(tx.rows(where, (user_id,))[0][0])

    def _stored(self, tx: Tx, names: Names, ids: list[str]) -> dict[str, ContextFields]:
        """The stored contexts of these ids, as fields (as ``query`` reads them,
        without building a model each)."""
        found: dict[str, ContextFields] = {}
        table = names["active_contexts"]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = tx.rows(
                f"SELECT {_SELECT} FROM {table} WHERE context_id IN ({marks})", chunk
            )
            prefetch(tx.keys, ((row[_USER], row[_METADATA]) for row in rows))
            for row in rows:
                fields = _fields(tx, row)
                found[fields["context_id"]] = fields
        return found


def _needed(events: Sequence[Positioned]) -> list[str]:
    """Contexts the batch changes that it does not create itself."""
    created: set[str] = set()
    needed: set[str] = set()
    for _, event in events:
        if event.KIND == "created":
            created.add(event.context_id)
        elif not forgets_user(event) and event.context_id not in created:
            needed.add(event.context_id)
    return sorted(needed)


def _forget(
    tx: Tx, table: str, user_id: str, contexts: dict[str, ContextFields | None]
) -> None:
    """The user's erasure ended all of the user's contexts."""
    for cid, context in contexts.items():
        if context is not None and context["user_id"] == user_id:
            contexts[cid] = None
    for (cid,) in tx.rows(
        f"SELECT context_id FROM {table} WHERE user_id = ?", (user_id,)
    ):
        contexts[cid] = None


_METADATA = COLUMNS.index("metadata")
_USER = COLUMNS.index("user_id")


def _row(tx: Tx, context: ContextFields, generation: int | None) -> tuple[Any, ...]:
    """The row of a context; its metadata sealed when its events are (format 2)."""
    if generation is None:
        return ROWS.params_of(tx.dialect, context)
    sealed = seal_json(tx.keys, context["user_id"], generation, context["metadata"])
    row = ROWS.params_of(tx.dialect, {**context, "metadata": None})
    cell = sealed if sealed is not None else ERASED
    return (*row[:_METADATA], cell, *row[_METADATA + 1 :])


def _context(tx: Tx, row: tuple[Any, ...]) -> Context:
    context = ROWS.value(tx.dialect, row)
    if not is_sealed(context.metadata):
        return context
    return context.model_copy(
        update=_opened(tx, context.user_id, cast(str, context.metadata))
    )


def _fields(tx: Tx, row: tuple[Any, ...]) -> ContextFields:
    """``_context``'s fields, without the model."""
    fields = ROWS.fields(tx.dialect, row)
    fields["erased"] = False
    if is_sealed(fields["metadata"]):
        fields.update(_opened(tx, fields["user_id"], fields["metadata"]))
    return fields


def _opened(tx: Tx, user_id: str, cell: str) -> dict[str, Any]:
    """The fields a sealed metadata cell stands for: its metadata; ``erased``
    once its key is destroyed."""
    try:
        opened, metadata = open_json(tx.keys, user_id, cell)
    except LedgerError:
        raise  # a master key that does not open the keys: a setting to fix
    except ValueError:
        # Altered in the view (or moved to another user's row): it stays sealed,
        # so ``verify`` reports it and ``rebuild`` repairs it.
        return {"metadata": {"sealed": cell}}
    if not opened:
        return {"metadata": {}, "erased": True}
    return {"metadata": metadata}


def _values(context: Mapping[str, Any]) -> tuple[object, ...]:
    return tuple(context[column] for column in COLUMNS)
