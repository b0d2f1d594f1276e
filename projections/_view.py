"""What every view is: tables, how a batch of events changes them, and a check.

A view's live tables are ``ctxl_<table>``. A rebuild fills ``ctxl_<table>__rebuild``
beside them and renames those into place in one transaction.
"""

import functools
import json
import secrets
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel

from ledger.log_source import Dialect, Positioned
from projections._sealing import is_sealed
from projections._store import Tx

MAX_SHOWN = 20  # differences reported per view
M = TypeVar("M", bound=BaseModel)


def _sql_kind(annotation: Any) -> tuple[str, bool]:
    """The column kind (a key of ``Dialect.types``) of a field, and if it is
    nullable."""
    nullable = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable, annotation = (
            len(members) < len(typing.get_args(annotation)),
            members[0],
        )
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation) or annotation
    if origin is typing.Literal:
        return "text", nullable
    if origin is AwareDatetime:
        return "time", nullable
    kinds = ((dict, "json"), (str, "text"), (int, "int"), (float, "real"))
    for base, kind in (*kinds, (datetime, "time")):
        if isinstance(origin, type) and issubclass(origin, base):
            return kind, nullable
    msg = f"no column kind for a field of type {annotation!r}"
    raise TypeError(msg)


@dataclass(frozen=True)
class ModelColumns(Generic[M]):
    """A table whose columns mirror a model's fields, in the model's order."""

    model: type[M]
    key: str
    computed: tuple[str, ...] = ()
    """Fields not stored: the view works them out when it reads a row."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f for f in self.model.model_fields if f not in self.computed)

    @functools.cached_property
    def _kinds(self) -> list[tuple[str, bool]]:
        fields = self.model.model_fields
        return [_sql_kind(fields[name].annotation) for name in self.names]

    def ddl(self) -> str:
        """The column definitions, types in braces for the dialect (JSON values
        are kept as text: see ``_param``)."""
        return ", ".join(
            f"{name} {{{'text' if kind == 'json' else kind}}}"
            + (" PRIMARY KEY" if name == self.key else "" if nullable else " NOT NULL")
            for name, (kind, nullable) in zip(self.names, self._kinds, strict=True)
        )

    def params(self, dialect: Dialect, value: M) -> tuple[Any, ...]:
        """The row of ``value`` as parameters of an INSERT."""
        return self.params_of(dialect, value.__dict__)

    def params_of(self, dialect: Dialect, fields: Mapping[str, Any]) -> tuple[Any, ...]:
        """The row of a value given as its fields, as parameters of an INSERT."""
        return tuple(
            _param(dialect, kind, fields[name])
            for name, (kind, _) in zip(self.names, self._kinds, strict=True)
        )

    def value(self, dialect: Dialect, row: Sequence[Any]) -> M:
        """The model a stored row holds (built without validating it again)."""
        return self.model.model_construct(**self.fields(dialect, row))

    def fields(self, dialect: Dialect, row: Sequence[Any]) -> dict[str, Any]:
        """The stored fields of a row, by name (computed ones left out)."""
        return {
            name: _stored(dialect, kind, cell)
            for name, (kind, _), cell in zip(self.names, self._kinds, row, strict=True)
        }


def _param(dialect: Dialect, kind: str, value: Any) -> Any:
    if kind == "json" and is_sealed(value):
        return value  # sealed already (projections/_sealing.py)
    return _plain_param(dialect, kind, value)


def _plain_param(dialect: Dialect, kind: str, value: Any) -> Any:
    """A value as a view stores it.

    A JSON value (metadata, an event's details) is stored as the JSON text Python
    writes, in a text column on every backend: that text escapes NUL as \\u0000
    and keeps each number and key order as written, so it reads back equal to
    what the ledger holds. PostgreSQL's jsonb would not: it refuses \\u0000 and
    turns 1e308 into a 309-digit integer.
    """
    if kind == "time":
        return dialect.time_param(value)
    return json.dumps(value, ensure_ascii=False) if kind == "json" else value


def _stored(dialect: Dialect, kind: str, value: Any) -> Any:
    if kind == "time":
        return dialect.time_value(value)
    if kind == "json":
        # Text; a jsonb column of a view built by an older release reads as a
        # dict already (its ``ctxledger rebuild`` makes it text). A sealed value
        # stays text: the view opens it (projections/_sealing.py).
        if isinstance(value, str) and not is_sealed(value):
            return json.loads(value)
        return value
    return value


@dataclass(frozen=True)
class Table:
    """A table of a view: its columns (types in braces) and indexed column lists."""

    name: str
    columns: str
    indexes: tuple[str, ...] = ()
    index_after_load: bool = False
    """A rebuild fills it first and creates its indexes once, before the swap
    (a big table that is only appended to: cheaper than index upkeep per row).
    Other tables keep their indexes throughout: a rebuild's batches query them."""
    added: tuple[tuple[str, str], ...] = ()
    """Columns a later release added, each (name, definition with a default; types
    in braces): a live table an earlier release built gets them when the views
    are opened to write (``upgrade_tables``). ``columns`` has them too."""


@dataclass(frozen=True)
class Generation:
    """The physical tables of a view: the live ones or a rebuild's; with
    ``shard``, as fed by that shard's log (a sharded ledger)."""

    view: str
    rebuild: bool
    shard: int = 0

    @property
    def key(self) -> str:
        """Its tracking key, which is also the name of its write lock. Shard 0
        keeps the key of a ledger without shards, so a database that becomes
        shard 0 keeps its views' positions."""
        return (
            f"view:{self.view}"
            + (":rebuild" if self.rebuild else "")
            + (f"@shard{self.shard}" if self.shard else "")
        )

    def of_shard(self, shard: int) -> "Generation":
        """The same tables, as fed by ``shard``'s log."""
        return Generation(self.view, self.rebuild, shard)

    def physical(self, table: str) -> str:
        return f"ctxl_{table}" + ("__rebuild" if self.rebuild else "")


Names = dict[str, str]
"""Logical table name to the quoted physical name of one generation."""


class View(ABC):
    """A read model of the ledger, kept in tables beside its events."""

    name: ClassVar[str]
    tables: ClassVar[tuple[Table, ...]]
    replay_by_position: ClassVar[bool] = False
    """Whether ``differences`` wants the replay in order of position (else in
    log order: on a sharded ledger the two differ, see ``_shard_replay``)."""

    def names(self, dialect: Dialect, generation: Generation) -> Names:
        return {t.name: dialect.table(generation.physical(t.name)) for t in self.tables}

    @abstractmethod
    def apply(self, tx: Tx, names: Names, events: Sequence[Positioned]) -> None:
        """Changes the tables as the events say (the caller records the position)."""

    @abstractmethod
    def differences(
        self, tx: Tx, names: Names, events: Iterable[Positioned]
    ) -> list[str]:
        """How the tables differ from a replay of ``events`` (all up to the view's
        position); empty when they are equal."""


def create_tables(
    tx: Tx, view: View, generation: Generation, *, loading: bool = False
) -> None:
    """Creates the generation's tables, dropping any left by an earlier attempt.
    ``loading`` (a rebuild): the tables marked ``index_after_load`` get their
    indexes later, from ``index_loaded_tables``."""
    dialect = tx.dialect
    for table in view.tables:
        name = dialect.table(generation.physical(table.name))
        tx.run(f"DROP TABLE IF EXISTS {name}")
        tx.run(f"CREATE TABLE {name} ({table.columns.format(**dialect.types)})")
    _index(
        tx,
        generation,
        [t for t in view.tables if not (loading and t.index_after_load)],
    )


def index_loaded_tables(tx: Tx, view: View, generation: Generation) -> None:
    """The indexes a rebuild left out until it had filled its tables."""
    _index(tx, generation, [t for t in view.tables if t.index_after_load])


def _index(tx: Tx, generation: Generation, tables: list[Table]) -> None:
    for table in tables:
        name = tx.dialect.table(generation.physical(table.name))
        for columns in table.indexes:
            # Index names are unique per schema and survive renames: so each build
            # gets fresh ones.
            index = f'"ix_{secrets.token_hex(6)}"'
            tx.run(f"CREATE INDEX {index} ON {name} ({columns})")


def missing_columns(tx: Tx, view: View, generation: Generation) -> list[str]:
    """The ``added`` columns that the generation's tables (built by an earlier
    release) lack, as ``table.column``."""
    missing = []
    for table in view.tables:
        if not table.added:
            continue
        present = tx.dialect.columns(tx.cursor, generation.physical(table.name))
        missing += [f"{table.name}.{c}" for c, _ in table.added if c not in present]
    return missing


def upgrade_tables(tx: Tx, view: View, generation: Generation) -> None:
    """Adds the columns that tables built by an earlier release lack, each with
    its default: the value it had before the release that added it."""
    missing = missing_columns(tx, view, generation)
    for table in view.tables:
        name = tx.dialect.table(generation.physical(table.name))
        for column, definition in table.added:
            if f"{table.name}.{column}" in missing:
                tx.run(
                    f"ALTER TABLE {name} ADD COLUMN {column} "
                    + definition.format(**tx.dialect.types)
                )


def live_tables_exist(tx: Tx, view: View) -> bool:
    live = Generation(view.name, rebuild=False)
    found = [tx.dialect.exists(tx.cursor, live.physical(t.name)) for t in view.tables]
    return all(found)


def swap_in_rebuild(tx: Tx, view: View) -> None:
    """Replaces the live tables with the rebuilt ones (inside the caller's
    transaction, so readers see either the old view or the new one)."""
    live = Generation(view.name, rebuild=False)
    rebuilt = Generation(view.name, rebuild=True)
    for table in view.tables:
        tx.run(f"DROP TABLE IF EXISTS {tx.dialect.table(live.physical(table.name))}")
        tx.run(
            f"ALTER TABLE {tx.dialect.table(rebuilt.physical(table.name))} "
            f'RENAME TO "{live.physical(table.name)}"'
        )


def compare_rows(
    what: str,
    columns: Sequence[str],
    expected: dict[Any, tuple[Any, ...]],
    actual: dict[Any, tuple[Any, ...]],
) -> list[str]:
    """Differences between two keyed row sets, worded for an operator."""
    found: list[str] = []
    for key in sorted(expected.keys() | actual.keys(), key=repr):
        want, have = expected.get(key), actual.get(key)
        if want == have:
            continue
        if have is None:
            found.append(f"{what} {key!r}: missing from the view")
        elif want is None:
            found.append(f"{what} {key!r}: in the view, not in the replay")
        else:
            changed = [
                f"{column}: view {h!r}, replay {w!r}"
                for column, w, h in zip(columns, want, have, strict=True)
                if w != h
            ]
            found.append(f"{what} {key!r}: {'; '.join(changed)}")
        if len(found) >= MAX_SHOWN:
            break
    return found
