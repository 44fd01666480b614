"""Vendor-specific SQL, all of it: exact collations, insert-or-ignore and compare-and-swap.

Everything else in kvstate is portable ORM code. Each function picks its SQL by
``connection.vendor`` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import StateApps

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


def binary_equals(connection: BaseDatabaseWrapper, column: str) -> str:
    """Return SQL comparing ``column`` with one parameter byte for byte."""
    if connection.vendor == "mysql":
        return f"CAST({column} AS BINARY) = CAST(%s AS BINARY)"
    return f"{column} = %s"


def insert_ignoring_conflicts(
    connection: BaseDatabaseWrapper,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> int:
    """Insert ``rows``, skipping any that hit a unique constraint; return how many went in.

    One statement. Used to create StudentModule rows without racing: a concurrent first write
    of the same row is not an error, the loser merges into the winner's row instead.
    """
    if not rows:
        return 0
    qn = connection.ops.quote_name
    column_sql = ", ".join(qn(c) for c in columns)
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    values_sql = ", ".join([row_sql] * len(rows))
    params = [_adapt(connection, value) for row in rows for value in row]
    if connection.vendor == "mysql":
        # INSERT IGNORE would also turn data errors into warnings; every value is validated
        # before we get here, and the columns are sized for what validation lets through.
        sql = f"INSERT IGNORE INTO {qn(table)} ({column_sql}) VALUES {values_sql}"
    else:
        sql = f"INSERT INTO {qn(table)} ({column_sql}) VALUES {values_sql} ON CONFLICT DO NOTHING"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def compare_and_swap_states(
    connection: BaseDatabaseWrapper,
    table: str,
    swaps: Sequence[tuple[int, str | None, str]],
    modified: datetime,
) -> int:
    """Set ``state`` of each row whose state still equals what we read, and ``modified``.

    ``swaps`` holds ``(id, old_state, new_state)``. One statement for any number of rows;
    returns how many rows matched. A row whose state changed since it was read is left alone,
    and the caller merges again: no lock is taken and no update is lost.
    """
    if not swaps:
        return 0
    qn = connection.ops.quote_name
    state_col, id_col = qn("state"), qn("id")
    cases: list[str] = []
    conditions: list[str] = []
    case_params: list[Any] = []
    where_params: list[Any] = []
    for row_id, old, new in swaps:
        cases.append("WHEN %s THEN %s")
        case_params += [row_id, new]
        if old is None:
            conditions.append(f"({id_col} = %s AND {state_col} IS NULL)")
            where_params.append(row_id)
        else:
            conditions.append(f"({id_col} = %s AND {binary_equals(connection, state_col)})")
            where_params += [row_id, old]
    sql = (
        f"UPDATE {qn(table)} SET {state_col} = CASE {id_col} {' '.join(cases)} END, "
        f"{qn('modified')} = %s WHERE {' OR '.join(conditions)}"
    )
    params = [*case_params, _adapt(connection, modified), *where_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _adapt(connection: BaseDatabaseWrapper, value: Any) -> Any:
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value
