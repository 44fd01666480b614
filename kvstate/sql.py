"""Vendor-specific SQL, all of it: exact collations, limits, insert-or-ignore, compare-and-swap.

Everything else in kvstate is portable ORM code. Each function picks its SQL by
``connection.vendor`` here and nowhere else.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import StateApps
from django.db.models import Model, UniqueConstraint
from django.db.models.constants import OnConflict

#: Name, key and type columns that must compare exactly (no case/accent/trailing-space folding).
EXACT_COLUMNS: dict[str, tuple[tuple[str, int], ...]] = {
    "studentmodule": (("module_type", 32), ("module_id", 255), ("course_id", 255)),
    "xmoduleuserstatesummaryfield": (("usage_id", 255), ("field_name", 64)),
    "xmodulestudentprefsfield": (("module_type", 64), ("field_name", 64)),
    "xmodulestudentinfofield": (("field_name", 64),),
}


def exact_collation(connection: BaseDatabaseWrapper) -> str | None:
    """Return the MySQL/MariaDB collation that compares bytes without padding, else ``None``.

    SQLite's BINARY and PostgreSQL's deterministic collations already compare exactly.
    MariaDB's ``utf8mb4_bin`` is PAD SPACE (``'b' = 'b '``), hence the NO PAD variants.
    """
    if connection.vendor != "mysql":
        return None
    if connection.mysql_is_mariadb:  # type: ignore[attr-defined]
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin"


class UseExactCollation(Operation):
    """Give kvstate's name and key columns an exact collation on MySQL/MariaDB (no-op elsewhere).

    Part of the initial migration, so a database adopted with ``--fake-initial`` keeps its
    own collation.
    """

    reduces_to_sql = True
    reversible = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: Any,
        to_state: Any,
    ) -> None:
        collation = exact_collation(schema_editor.connection)
        if collation is None:
            return
        apps: StateApps = to_state.apps
        for model_name, columns in EXACT_COLUMNS.items():
            model = apps.get_model(app_label, model_name)
            if not self.allow_migrate_model(schema_editor.connection.alias, model):
                continue
            table = schema_editor.quote_name(model._meta.db_table)
            for column, length in columns:
                schema_editor.execute(
                    f"ALTER TABLE {table} MODIFY {schema_editor.quote_name(column)} "
                    f"varchar({length}) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
                )

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: Any,
        to_state: Any,
    ) -> None:
        pass  # The tables are dropped by the operations this one follows.

    def describe(self) -> str:
        return "Use an exact (binary, no-pad) collation for name and key columns on MySQL/MariaDB"


# Limits ------------------------------------------------------------------------------------

#: Bound for backends whose driver interpolates parameters client-side (psycopg's default
#: client-side binding, MySQLdb): PostgreSQL's wire protocol caps bound parameters at 65,535,
#: which is what server-side binding would hit.
_WIRE_PARAM_LIMIT = 65_535


def max_query_params(connection: BaseDatabaseWrapper) -> int:
    """Return how many parameters one statement may carry on this connection.

    SQLite's real limit is a property of the library build (32,766 since 3.32, 250,000 in
    Debian's), which Django 5.2 under-reports as 999; ask the library itself.
    """
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        return int(connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return connection.features.max_query_params or _WIRE_PARAM_LIMIT


# Reading (the request path) ----------------------------------------------------------------
#
# Plain statements, their text built once per shape: compiling an ORM query per call costs more
# than the database spends answering it on these paths. Key columns are read as the strings they
# hold (no opaque-key parsing), and datetimes are converted as Django converts them.


@dataclass(frozen=True)
class Select:
    """One read statement: its text, its parameters, and the columns its rows hold.

    A column ``None`` is read as NULL: it lines a select's columns up with another's in a union.
    """

    text: str
    params: list[Any]
    columns: tuple[str | None, ...]


def modules_select(
    connection: BaseDatabaseWrapper,
    table: str,
    student_id: int,
    module_ids: Sequence[str],
    columns: Sequence[str],
    *,
    lock: bool = False,
) -> Select:
    """Return the statement reading ``columns`` of one learner's rows for ``module_ids``.

    The condition is the unique key's leading columns (learner, block), never the course: with
    the course in it a planner may pick the course index and read the whole course, which it
    does for a course newer than its statistics. The caller matches the course. On PostgreSQL
    each block is a probe of its own (``LATERAL``), so no estimate can turn the probes into a
    range over all of the learner's rows, or over the block's rows of every learner.
    ``lock``: ``FOR UPDATE`` where the database has it.
    """
    lock = lock and connection.features.has_select_for_update
    shape = (connection.ops.quote_name, table, tuple(columns), lock)
    if connection.vendor == "postgresql":
        return Select(_probe_modules_sql(*shape), [list(module_ids), student_id], tuple(columns))
    statement = _select_modules_sql(*shape, len(module_ids))
    return Select(statement, [student_id, *module_ids], tuple(columns))


def fields_select(
    connection: BaseDatabaseWrapper,
    table: str,
    columns: Sequence[str | None],
    conditions: Sequence[tuple[str, Sequence[Any]]],
) -> Select:
    """Return the statement reading ``columns`` of the rows whose columns hold a value given.

    ``conditions`` pairs a column with its values: ``column IN (values)``, all of them ANDed.
    """
    shape = tuple((column, len(values)) for column, values in conditions)
    statement = _select_fields_sql(connection.ops.quote_name, table, tuple(columns), shape)
    params = [value for _column, values in conditions for value in values]
    return Select(statement, params, tuple(columns))


def run_select(connection: BaseDatabaseWrapper, select: Select) -> list[tuple[Any, ...]]:
    """Return the rows of ``select``, datetimes as Django reads them."""
    with connection.cursor() as cursor:
        cursor.execute(select.text, select.params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return _convert_datetimes(connection, select.columns, rows)


def select_all(
    connection: BaseDatabaseWrapper, selects: Sequence[Select]
) -> list[list[tuple[Any, ...]]]:
    """Return the rows of each of ``selects``, read in one ``UNION ALL`` statement.

    More statements only when the parameters overflow one (:func:`max_query_params`). Each
    select is tagged with its place and padded with NULLs to the widest: the columns at one
    place must have one type in every select (text with text, datetime with datetime), and the
    first select should be the one with the most typed columns (PostgreSQL types the others'
    NULLs from it).
    """
    found: list[list[tuple[Any, ...]]] = [[] for _select in selects]
    limit = max_query_params(connection)
    group: list[int] = []
    for n, select in enumerate(selects):
        if group and sum(len(selects[m].params) for m in group) + len(select.params) > limit:
            _select_union(connection, selects, group, found)
            group = []
        group.append(n)
    if group:
        _select_union(connection, selects, group, found)
    return found


def _select_union(
    connection: BaseDatabaseWrapper,
    selects: Sequence[Select],
    group: list[int],
    found: list[list[tuple[Any, ...]]],
) -> None:
    if len(group) == 1:
        [n] = group
        found[n] = run_select(connection, selects[n])
        return
    width = max(len(selects[n].columns) for n in group)
    statement = " UNION ALL ".join(
        f"SELECT {n}, u{n}.*{', NULL' * (width - len(selects[n].columns))} "
        f"FROM ({selects[n].text}) AS u{n}"
        for n in group
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [param for n in group for param in selects[n].params])
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    by_select: dict[int, list[tuple[Any, ...]]] = {n: [] for n in group}
    for tag, *values in rows:
        by_select[tag].append(tuple(values[: len(selects[tag].columns)]))
    for n, selected in by_select.items():
        found[n] = _convert_datetimes(connection, selects[n].columns, selected)


def _convert_datetimes(
    connection: BaseDatabaseWrapper, columns: Sequence[str | None], rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Return ``rows`` with their ``created``/``modified`` values as Django reads them."""
    convert = _datetime_converter(connection)
    at = [n for n, column in enumerate(columns) if column in {"created", "modified"}]
    if convert is None or not at:
        return rows
    converted = []
    for row in rows:
        values = list(row)
        for n in at:
            values[n] = convert(values[n])
        converted.append(tuple(values))
    return converted


def _datetime_converter(connection: BaseDatabaseWrapper) -> Callable[[Any], datetime] | None:
    """Return what turns a datetime column's raw value into Django's (``None``: nothing to do).

    psycopg already returns aware datetimes in the connection's zone; MySQLdb returns naive
    ones and SQLite strings or naive ones, which Django's converters make aware.
    """
    if connection.vendor == "postgresql":
        return None
    convert = connection.ops.convert_datetimefield_value  # type: ignore[attr-defined]
    return lambda value: convert(value, None, connection)


@functools.lru_cache(maxsize=16)
def _probe_modules_sql(
    quote: Callable[[str], str], table: str, columns: tuple[str, ...], lock: bool
) -> str:
    # OFFSET 0 keeps the planner from flattening the probe into one join over the learner's
    # rows; each probe is then one descent of the unique index on (student_id, module_id, ...).
    return (
        f"SELECT sm.* FROM unnest(%s::text[]) AS k(m) CROSS JOIN LATERAL ("
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} "
        f"WHERE {quote('student_id')} = %s AND {quote('module_id')} = k.m "
        f"OFFSET 0{' FOR UPDATE' if lock else ''}) AS sm"
    )


@functools.lru_cache(maxsize=256)
def _select_modules_sql(
    quote: Callable[[str], str], table: str, columns: tuple[str, ...], lock: bool, count: int
) -> str:
    return (
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} "
        f"WHERE {quote('student_id')} = %s "
        f"AND {quote('module_id')} IN ({', '.join(['%s'] * count)})"
        f"{' FOR UPDATE' if lock else ''}"
    )


@functools.lru_cache(maxsize=256)
def _select_fields_sql(
    quote: Callable[[str], str],
    table: str,
    columns: tuple[str | None, ...],
    shape: tuple[tuple[str, int], ...],
) -> str:
    where = " AND ".join(
        f"{quote(column)} IN ({', '.join(['%s'] * count)})" for column, count in shape
    )
    selected = ", ".join("NULL" if c is None else quote(c) for c in columns)
    return f"SELECT {selected} FROM {quote(table)} WHERE {where}"


def ranges_row_comparisons(connection: BaseDatabaseWrapper) -> bool:
    """Return whether the planner reads ``(a, b) > (x, y)`` as one range of an index on (a, b).

    PostgreSQL does; MySQL/MariaDB need the ``a > x OR (a = x AND b > y)`` form besides.
    """
    return connection.vendor == "postgresql"


# Writing StudentModule rows ----------------------------------------------------------------


def binary_equals(connection: BaseDatabaseWrapper, column: str, value: str = "%s") -> str:
    """Return SQL comparing ``column`` with ``value`` (one parameter by default) byte for byte.

    The ``state`` column keeps the database's default collation on MySQL/MariaDB (usually
    case- and accent-insensitive), so compare as bytes there.
    """
    if connection.vendor == "mysql":
        return f"CAST({column} AS BINARY) = CAST({value} AS BINARY)"
    return f"{column} = {value}"


def insert_modules(
    connection: BaseDatabaseWrapper,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key_columns: Sequence[str],
) -> dict[tuple[Any, ...], int] | None:
    """Insert ``rows``, silently skipping those that hit a unique constraint.

    One statement. Returns ``{key: id}`` for the rows this statement inserted, keyed by the
    values of ``key_columns``; ``None`` when the returned rows cannot be trusted (see
    :func:`trusts_returned_rows`), in which case the caller reads the rows back. A concurrent
    first write of the same row is therefore not an error: the loser merges into the winner's
    row.
    """
    qn = connection.ops.quote_name
    column_sql = ", ".join(qn(c) for c in columns)
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    values_sql = ", ".join([row_sql] * len(rows))
    params = [_adapt(connection, value) for row in rows for value in row]
    if connection.vendor == "mysql":
        # INSERT IGNORE also downgrades data errors to warnings; every value is validated (and
        # fits its column) before it gets here, so only duplicate keys are ever ignored.
        sql = f"INSERT IGNORE INTO {qn(table)} ({column_sql}) VALUES {values_sql}"
    else:
        sql = f"INSERT INTO {qn(table)} ({column_sql}) VALUES {values_sql} ON CONFLICT DO NOTHING"
    returning = trusts_returned_rows(connection)
    if returning:
        sql += " RETURNING " + ", ".join(qn(c) for c in ("id", *key_columns))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if not returning:
            return None
        return {tuple(found[1:]): found[0] for found in cursor.fetchall()}


def trusts_returned_rows(connection: BaseDatabaseWrapper) -> bool:
    """Return whether the rows an ``INSERT ... RETURNING`` sends back are the rows it inserted.

    Not on MySQL 8 (no ``RETURNING``), and not on MySQL/MariaDB in autocommit: a Galera node
    (``wsrep_retry_autocommit``, default 1) silently re-runs an autocommit statement that lost
    certification, and the client receives the aborted attempt's rows although they were never
    inserted. Inside a transaction nothing is retried behind the client's back.
    """
    if not connection.features.can_return_rows_from_bulk_insert:
        return False
    return connection.vendor != "mysql" or not connection.get_autocommit()


def compare_and_swap_states(
    connection: BaseDatabaseWrapper,
    table: str,
    swaps: Sequence[tuple[int, str | None, str]],
    modified: datetime,
) -> int:
    """Set ``state`` (and ``modified``) of each row whose state still equals what was read.

    ``swaps`` holds ``(id, old_state, new_state)``. One statement for any number of rows;
    returns how many rows matched. A row whose state changed since it was read is left alone
    and the caller merges again: no lock is held between read and write, and no update is lost.
    """
    qn = connection.ops.quote_name
    state_col, id_col = qn("state"), qn("id")
    if len(swaps) == 1:
        # One row: the statement's text is the same for every row, so the driver parses it once.
        sql, params = _swap_one(connection, table, swaps[0], modified)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)
    # Several rows: each id selects its texts in a CASE. The ids are integers the database
    # gave us, written out: two placeholders a row instead of four, which the driver (psycopg
    # splits the statement on every call) and the server parse the faster.
    texts = [(int(row_id), old) for row_id, old, _new in swaps if old is not None]
    nulls = [int(row_id) for row_id, old, _new in swaps if old is None]
    conditions = []
    if texts:
        old_sql = _case_by_id(id_col, [row_id for row_id, _old in texts])
        conditions.append(
            f"({id_col} IN ({_id_list(row_id for row_id, _old in texts)}) "
            f"AND {binary_equals(connection, state_col, old_sql)})"
        )
    if nulls:
        conditions.append(f"({id_col} IN ({_id_list(nulls)}) AND {state_col} IS NULL)")
    new_sql = _case_by_id(id_col, [int(row_id) for row_id, _old, _new in swaps])
    sql = (
        f"UPDATE {qn(table)} SET {state_col} = {new_sql}, {qn('modified')} = %s "
        f"WHERE {' OR '.join(conditions)}"
    )
    params = [new for _id, _old, new in swaps]
    params += [_adapt(connection, modified), *(old for _id, old in texts)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def _swap_one(
    connection: BaseDatabaseWrapper,
    table: str,
    swap: tuple[int, str | None, str],
    modified: datetime,
) -> tuple[str, list[Any]]:
    """Return the UPDATE (and its parameters) that compare-and-swaps one row."""
    qn = connection.ops.quote_name
    state_col = qn("state")
    row_id, old, new = swap
    sql = (
        f"UPDATE {qn(table)} SET {state_col} = %s, {qn('modified')} = %s WHERE {qn('id')} = %s "
        f"AND " + (f"{state_col} IS NULL" if old is None else binary_equals(connection, state_col))
    )
    params = [new, _adapt(connection, modified), row_id]
    return sql, params if old is None else [*params, old]


def _case_by_id(id_col: str, ids: Sequence[int]) -> str:
    return f"CASE {id_col} " + " ".join(f"WHEN {row_id} THEN %s" for row_id in ids) + " END"


def _id_list(ids: Iterable[int]) -> str:
    return ", ".join(str(row_id) for row_id in ids)


def lock_module_states(
    connection: BaseDatabaseWrapper, table: str, ids: Sequence[int]
) -> dict[int, tuple[str | None, float | None, float | None]]:
    """Read ``(state, grade, max_grade)`` of the rows ``ids`` and lock them until the commit.

    One statement by primary key, ``SELECT ... FOR UPDATE``: it sees the newest committed
    rows under any isolation level, and a writer that reads the same row waits for our commit.
    SQLite has no row locks (the caller holds its database's write lock): a plain read.
    A row missing from the result was deleted.
    """
    qn = connection.ops.quote_name
    sql = (
        f"SELECT {qn('id')}, {qn('state')}, {qn('grade')}, {qn('max_grade')} "
        f"FROM {qn(table)} WHERE {qn('id')} IN ({_id_list(int(i) for i in ids)})"
    )
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}


def insert_rows(
    connection: BaseDatabaseWrapper,
    objs: Sequence[Model],
    *,
    update_on_conflict: Sequence[str] = (),
) -> None:
    """Insert ``objs`` (one model); on a unique-key conflict update ``update_on_conflict``.

    One statement unless the rows exceed the parameter limit (then one transaction).

    ``bulk_create`` would wrap the statement in a transaction of its own, which in autocommit
    mode costs two more round trips (BEGIN, COMMIT) for what one statement does atomically.
    """
    table, fields, rows, suffix = _insert_parts(connection, objs, update_on_conflict)
    insert_values(connection, table, [str(f.column) for f in fields], rows, suffix)


def _insert_parts(
    connection: BaseDatabaseWrapper, objs: Sequence[Model], update_on_conflict: Sequence[str]
) -> tuple[str, list[Any], list[list[Any]], str]:
    """Return the table, fields, rows of values and ON CONFLICT clause that insert ``objs``."""
    meta = type(objs[0])._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    suffix = ""
    if update_on_conflict:
        unique = next(c for c in meta.constraints if isinstance(c, UniqueConstraint))
        suffix = " " + connection.ops.on_conflict_suffix_sql(
            fields,
            OnConflict.UPDATE,
            [meta.get_field(name).column for name in update_on_conflict],  # type: ignore[union-attr]
            [meta.get_field(name).column for name in unique.fields],  # type: ignore[union-attr]
        )
    rows = [
        [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields] for obj in objs
    ]
    return meta.db_table, fields, rows, suffix


def swaps_with_upserts(connection: BaseDatabaseWrapper) -> bool:
    """Return whether :func:`swap_state_and_upsert` works here (writable CTEs: PostgreSQL)."""
    return connection.vendor == "postgresql"


def swap_state_and_upsert(
    connection: BaseDatabaseWrapper,
    table: str,
    swap: tuple[int, str | None, str],
    modified: datetime,
    upserts: Sequence[Sequence[Model]],
    update_on_conflict: Sequence[str],
) -> bool:
    """Compare-and-swap one row's state and upsert rows of other tables, all or none.

    One statement, atomic by itself: the swap (as :func:`compare_and_swap_states`) and, when
    it matched, each group of ``upserts`` (one model a group, ``update_on_conflict`` updated
    on a unique-key conflict), in a writable CTE. Returns whether the swap matched; when it
    did not, nothing was written. Only where :func:`swaps_with_upserts` says so.
    """
    qn = connection.ops.quote_name
    swapped, params = _swap_one(connection, table, swap, modified)
    parts = [f"swapped AS ({swapped} RETURNING 1)"]
    for n, objs in enumerate(upserts):
        other, fields, rows, suffix = _insert_parts(connection, objs, update_on_conflict)
        # Typed values: VALUES in a SELECT does not take its types from the target columns.
        row_sql = "(" + ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in fields) + ")"
        columns = ", ".join(qn(str(f.column)) for f in fields)
        parts.append(
            f"upsert_{n} AS (INSERT INTO {qn(other)} ({columns}) SELECT * FROM "
            f"(VALUES {', '.join([row_sql] * len(rows))}) AS v "
            f"WHERE EXISTS (SELECT 1 FROM swapped){suffix})"
        )
        params += [_adapt(connection, value) for row in rows for value in row]
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} SELECT count(*) FROM swapped", params)
        return bool(cursor.fetchone()[0])


def insert_values(
    connection: BaseDatabaseWrapper,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    suffix: str = "",
) -> None:
    """Insert ``rows`` (values of ``columns``), each statement ending with ``suffix``.

    One statement unless the rows exceed the parameter limit (then one transaction).
    """
    qn = connection.ops.quote_name
    head = f"INSERT INTO {qn(table)} ({', '.join(qn(c) for c in columns)})"
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    per_statement = max_query_params(connection) // len(columns)
    chunks = [rows[i : i + per_statement] for i in range(0, len(rows), per_statement)]
    several = len(chunks) > 1
    with transaction.atomic(connection.alias, savepoint=False) if several else nullcontext():
        for chunk in chunks:
            params = [_adapt(connection, value) for row in chunk for value in row]
            with connection.cursor() as cursor:
                cursor.execute(f"{head} VALUES {', '.join([row_sql] * len(chunk))}{suffix}", params)


def read_then_write(connection: BaseDatabaseWrapper, table: str) -> AbstractContextManager[Any]:
    """Return the context for an ORM transaction that reads rows of ``table``, then writes.

    SQLite locks the whole database for writing. A transaction that has read and then wants to
    write fails at once with "database is locked" when another one took the write lock in
    between (waiting could deadlock); one whose first statement writes waits for the lock
    (the busy timeout) instead, as ``BEGIN IMMEDIATE`` would. So on SQLite, outside a caller's
    transaction, open one whose first statement is a write that changes nothing. The other
    databases lock rows, not the database: nothing to do there.
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return nullcontext()
    return _write_locked(connection, table)


@contextmanager
def _write_locked(connection: BaseDatabaseWrapper, table: str) -> Iterator[None]:
    with transaction.atomic(connection.alias, savepoint=False), connection.cursor() as cursor:
        qn = connection.ops.quote_name
        cursor.execute(f"UPDATE {qn(table)} SET {qn('id')} = {qn('id')} WHERE 0 = 1")
        yield


def delete_limited(
    connection: BaseDatabaseWrapper,
    table: str,
    column: str,
    values: Sequence[Any],
    limit: int,
) -> int:
    """Delete at most ``limit`` rows of ``table`` whose ``column`` is one of ``values``.

    One statement; returns how many rows it deleted (fewer than ``limit``: no match is left).
    Bounding each statement keeps its locks, undo log and (on Galera) write set small, and
    lets a long deletion stop and resume between statements. MySQL/MariaDB have ``DELETE ...
    LIMIT`` but refuse ``LIMIT`` in an ``IN`` subquery, which is how the rows are picked
    elsewhere (PostgreSQL has no ``DELETE ... LIMIT``; SQLite only when compiled with it).
    """
    qn = connection.ops.quote_name
    table_sql, id_sql = qn(table), qn("id")
    where = f"{qn(column)} IN ({', '.join(['%s'] * len(values))})"
    if connection.vendor == "mysql":
        # No ORDER BY: it would invite the optimizer to walk the primary key of a table of
        # millions instead of the column's index. Row-based (or MIXED) binary logging, the
        # default, replicates the rows actually deleted.
        sql = f"DELETE FROM {table_sql} WHERE {where} LIMIT %s"
    else:
        sql = (
            f"DELETE FROM {table_sql} WHERE {id_sql} IN "
            f"(SELECT {id_sql} FROM {table_sql} WHERE {where} LIMIT %s)"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, limit])
        return int(cursor.rowcount)


#: Parameters one swap puts in :func:`compare_and_swap_states`' statement, at most.
SWAP_PARAMS = 2


def is_retryable_conflict(connection: BaseDatabaseWrapper, exc: BaseException) -> bool:
    """Return whether ``exc`` is a deadlock/serialization failure worth retrying whole.

    A lock wait timeout is not: it surfaces to the caller (SPEC §4).
    """
    cause = exc.__cause__ or exc
    if connection.vendor == "postgresql":
        # deadlock_detected, serialization_failure
        return getattr(cause, "sqlstate", None) in {"40P01", "40001"}
    if connection.vendor == "mysql":
        args: tuple[Any, ...] = getattr(cause, "args", ())
        # ER_LOCK_DEADLOCK; ER_CHECKREAD, MariaDB's serialization failure under REPEATABLE READ
        # with innodb_snapshot_isolation (the default from MariaDB 11.6).
        return bool(args) and args[0] in {1213, 1020}
    return False


#: MySQL/MariaDB client errors for a connection that is gone: CR_SERVER_GONE_ERROR,
#: CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED; server errors that end the session:
#: ER_SERVER_SHUTDOWN, ER_CONNECTION_KILLED (MariaDB), ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8).
_MYSQL_CONNECTION_LOST = {2006, 2013, 2055, 1053, 1927, 4031}


def connection_lost(connection: BaseDatabaseWrapper, exc: BaseException) -> bool:
    """Return whether ``exc`` means the connection is gone, so a commit's outcome is unknown.

    An error the server reported on a live connection (a deadlock, a constraint) is not: the
    statement or transaction it ended did not commit.
    """
    cause = exc.__cause__ or exc
    raw = connection.connection
    if raw is None:
        return True  # Django closed it after a failed rollback
    if connection.vendor == "mysql":
        args: tuple[Any, ...] = getattr(cause, "args", ())
        return (bool(args) and args[0] in _MYSQL_CONNECTION_LOST) or not raw.open
    if connection.vendor == "postgresql":
        sqlstate = getattr(cause, "sqlstate", None)
        if sqlstate is not None:
            # connection_exception; admin_shutdown, crash_shutdown, cannot_connect_now
            return sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}
        return bool(raw.closed or raw.broken)
    # SQLite runs in-process: its connection is lost only when something closed it.
    try:
        raw.total_changes  # noqa: B018  # raises on a closed connection
    except sqlite3.ProgrammingError:
        return True
    return False


def _adapt(connection: BaseDatabaseWrapper, value: Any) -> Any:
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value
