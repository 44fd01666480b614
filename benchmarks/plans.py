"""EXPLAIN the statements an operation issues, and flag the plans that will not scale.

:func:`capture` records every statement (with its parameters) that reaches the given aliases.
:func:`explain` runs it again under ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` on PostgreSQL,
``ANALYZE FORMAT=JSON`` on MariaDB (``EXPLAIN FORMAT=JSON`` on MySQL), or ``EXPLAIN QUERY
PLAN`` on SQLite, inside a transaction it rolls back (ANALYZE executes writes), and hands the
plan to the flagger of its backend. The flaggers are pure functions of the plan, so tests can
feed them known plans. They flag:

- ``full scan``: a sequential scan (``Seq Scan``, ``type ALL``/``index``, ``SCAN``) of a big
  table;
- ``sort``: a sort (filesort, ``USE TEMP B-TREE``) of at least :data:`BIG_SORT` rows, or of an
  unknown number;
- ``limit``: a page (``LIMIT``) that reads far more rows than it returns (PostgreSQL);
- ``filter``: an index scan that throws away at least :data:`BIG_FILTER` rows after the index,
  and more rows than it keeps (``Rows Removed by Filter``, ``r_filtered``);
- ``index prefix``: an index condition that binds a later column of the index but not an
  earlier one (PostgreSQL then walks every entry under the bound prefix), or a MariaDB key
  used on fewer columns than the condition names, while rows were thrown away.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

#: A sort of fewer rows than this is reported, not flagged.
BIG_SORT = 1_000
#: Rows thrown away after the index before a scan is flagged.
BIG_FILTER = 100


@dataclass(frozen=True)
class Statement:
    """One statement as it reached the database."""

    alias: str
    sql: str
    params: Any
    many: bool = False

    @property
    def shape(self) -> str:
        return shape(self.sql)


@dataclass
class Verdict:
    """What a plan does, in one line, and what is wrong with it."""

    summary: str
    flags: list[str] = field(default_factory=list)
    raw: Any = None


@contextmanager
def capture(
    aliases: Sequence[str], before: Callable[[Statement], None] | None = None
) -> Iterator[list[Statement]]:
    """Record every statement run on ``aliases`` (in this thread) while the block runs.

    ``before(statement)`` runs just before each statement does, so an EXPLAIN there sees the
    tables as the statement will (statements it runs itself are neither recorded nor seen).
    """
    from django.db import connections

    found: list[Statement] = []
    busy = False

    def recorder(alias: str) -> Any:
        def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal busy
            if busy:
                return execute(sql, params, many, context)
            statement = Statement(alias, sql, params, many)
            found.append(statement)
            if before is not None:
                busy = True
                try:
                    before(statement)
                finally:
                    busy = False
            return execute(sql, params, many, context)

        return record

    with ExitStack() as stack:
        for alias in aliases:
            stack.enter_context(connections[alias].execute_wrapper(recorder(alias)))
        yield found


_VALUES_ROW = re.compile(r"(\(%s, …\))(?:, \1)+")
_OR_GROUP = re.compile(r"(\([^()]*(?:\([^()]*\)[^()]*)*\))(?: OR \1)+")
_WHEN = re.compile(r"(WHEN %s THEN %s)(?: \1)+")


def shape(sql: str) -> str:
    """Return ``sql`` with repeated placeholders, rows, ``OR`` groups and ``WHEN``s collapsed."""
    text = re.sub(r"\s+", " ", sql).strip()
    text = re.sub(r"%s(?:, %s)+", "%s, …", text)
    text = _VALUES_ROW.sub(r"\1, …", text)
    text = _OR_GROUP.sub(r"\1 OR …", text)
    return _WHEN.sub(r"\1 …", text)


def explainable(statement: Statement) -> bool:
    head = statement.sql.lstrip().split(None, 1)[0].upper() if statement.sql.strip() else ""
    return not statement.many and head in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}


def explain(
    statement: Statement, big_tables: Mapping[str, int], indexes: Mapping[str, Sequence[str]]
) -> Verdict:
    """Explain (and, where the backend can, execute and roll back) ``statement``; judge it.

    Runs in a transaction (a savepoint inside the caller's) that is always rolled back.
    """
    from django.db import DatabaseError, connections, transaction

    connection = connections[statement.alias]
    vendor = connection.vendor
    try:
        with transaction.atomic(statement.alias), connection.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.sql, statement.params
                )
                plan = cursor.fetchone()[0]
                verdict = flag_postgres(
                    plan if not isinstance(plan, str) else json.loads(plan), big_tables, indexes
                )
            elif vendor == "mysql":
                prefix = (
                    "ANALYZE FORMAT=JSON "
                    if connection.mysql_is_mariadb
                    else "EXPLAIN FORMAT=JSON "
                )
                cursor.execute(prefix + statement.sql, statement.params)
                verdict = flag_mysql(_mysql_json(cursor.fetchone()[0]), big_tables, indexes)
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + statement.sql, statement.params)
                verdict = flag_sqlite(
                    [tuple(row) for row in cursor.fetchall()], big_tables, indexes
                )
            transaction.set_rollback(True, statement.alias)
    except (DatabaseError, ValueError) as exc:
        return Verdict(f"not explained: {type(exc).__name__}: {exc}"[:160], ["not explained"])
    return verdict


def index_columns(aliases: Sequence[str], tables: Sequence[str]) -> dict[str, list[str]]:
    """Return ``{index name: its columns in order}`` for ``tables`` on every alias."""
    from django.db import connections

    found: dict[str, list[str]] = {}
    for alias in aliases:
        connection = connections[alias]
        with connection.cursor() as cursor:
            existing = set(connection.introspection.table_names(cursor))
            for table in tables:
                if table not in existing:
                    continue
                constraints = connection.introspection.get_constraints(cursor, table)
                for name, info in constraints.items():
                    if info.get("index") or info.get("unique") or info.get("primary_key"):
                        columns = [c for c in info.get("columns") or [] if c]
                        if columns:
                            found[name] = columns
                            if info.get("primary_key"):
                                found.setdefault(f"{table}_pkey", columns)
    return found


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _pg_nodes(child)


def _bound_columns(condition: str, columns: Sequence[str]) -> list[bool]:
    return [
        re.search(rf'(?<![\w."])"?{re.escape(c)}"?(?![\w"])', condition) is not None
        for c in columns
    ]


def flag_postgres(
    plan: Any, big_tables: Mapping[str, int], indexes: Mapping[str, Sequence[str]]
) -> Verdict:
    """Judge a plan from ``EXPLAIN (ANALYZE, FORMAT JSON)`` (or without ANALYZE)."""
    root = plan[0]["Plan"] if isinstance(plan, list) else plan["Plan"]
    parts: list[str] = []
    flags: list[str] = []
    for node in _pg_nodes(root):
        kind = node["Node Type"]
        loops = node.get("Actual Loops", 1) or 1
        rows = node.get("Actual Rows", node.get("Plan Rows", 0)) * loops
        relation = node.get("Relation Name")
        index = node.get("Index Name")
        if kind == "ModifyTable":
            parts.append(f"{node.get('Operation', 'Modify')} {relation}")
            continue
        if kind in {"Sort", "Incremental Sort"}:
            children = node.get("Plans") or [node]
            child = children[0]
            sorted_rows = child.get("Actual Rows", child.get("Plan Rows", 0)) * (
                child.get("Actual Loops", 1) or 1
            )
            parts.append(f"{kind} {sorted_rows:,.0f} rows")
            if "Actual Rows" not in node or sorted_rows >= BIG_SORT:
                method = node.get("Sort Method", "planned")
                flags.append(f"sort of {sorted_rows:,.0f} rows ({method})")
            continue
        if kind == "Limit" and "Actual Rows" in node:
            read = sum(
                n.get("Actual Rows", 0) * (n.get("Actual Loops", 1) or 1)
                for n in _pg_nodes(node)
                if n.get("Relation Name") and n.get("Node Type") != "ModifyTable"
            )
            if read >= 2 * rows + BIG_FILTER:
                flags.append(f"limit: reads {read:,.0f} rows to return {rows:,.0f}")
            continue
        if kind == "Seq Scan":
            parts.append(f"Seq Scan {relation} ({rows:,.0f} rows)")
            size = big_tables.get(relation or "", 0)
            if size:
                flags.append(f"full scan of {relation} ({size:,} rows)")
            continue
        if index is None and relation is None:
            if kind not in {"Result", "Limit", "Nested Loop", "Hash", "Materialize", "Memoize"}:
                parts.append(kind)
            continue
        removed = (
            node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        ) * loops
        blocks = node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
        where = index or relation
        detail = f"{rows:,.0f} rows"
        if removed:
            detail += f", {removed:,.0f} filtered"
        if blocks:
            detail += f", {blocks:,} buffers"
        parts.append(f"{kind} {where} ({detail})")
        if removed >= BIG_FILTER and removed > rows:
            flags.append(
                f"filter: {removed:,.0f} rows read by {where} and thrown away, {rows:,.0f} kept"
            )
        condition = node.get("Index Cond", "")
        columns = indexes.get(index or "", ())
        if condition and columns:
            bound = _bound_columns(condition, columns)
            if True in bound:
                last = max(i for i, b in enumerate(bound) if b)
                skipped = [c for c, b in zip(columns[:last], bound[:last], strict=True) if not b]
                if skipped:
                    prefix = list(columns[: bound.index(False)])
                    flags.append(
                        f"index prefix: {index} condition skips {', '.join(skipped)}: every entry "
                        f"under ({', '.join(prefix) or 'nothing'}) is read"
                    )
    return Verdict(" > ".join(parts) or root["Node Type"], flags, plan)


# --- MySQL / MariaDB --------------------------------------------------------------------------


_CONDITION_LINE = re.compile(r'^(\s*"\w*condition\w*": ")(.*)("[,]?)$')


def _mysql_json(text: str) -> Any:
    """Parse MariaDB's JSON plan, whose condition strings are not always escaped."""
    try:
        return json.loads(text)
    except ValueError:
        # A condition that compares with a JSON text keeps that text's quotes raw: the
        # conditions are only read, so blunt their quotes and backslashes.
        lines = []
        for line in text.splitlines():
            match = _CONDITION_LINE.match(line)
            if match:
                inner = match.group(2).replace("\\", "/").replace('"', "'")
                line = match.group(1) + inner + match.group(3)
            lines.append(line)
        return json.loads("\n".join(lines))


def _mysql_nodes(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _mysql_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _mysql_nodes(item)


def flag_mysql(
    plan: Any, big_tables: Mapping[str, int], indexes: Mapping[str, Sequence[str]]
) -> Verdict:
    """Judge a plan from MariaDB's ``ANALYZE FORMAT=JSON`` (or ``EXPLAIN FORMAT=JSON``)."""
    parts: list[str] = []
    flags: list[str] = []
    for key, value in _mysql_nodes(plan):
        if key == "filesort" or (key == "using_filesort" and value is True):
            sorted_rows = None
            if isinstance(value, dict):
                sorted_rows = value.get("table", {}).get("r_rows", value.get("r_output_rows"))
            counted = "unknown" if sorted_rows is None else f"{float(sorted_rows):,.0f}"
            parts.append(f"filesort {counted} rows")
            if sorted_rows is None or sorted_rows >= BIG_SORT:
                flags.append(f"sort: filesort of {counted} rows")
            continue
        if key != "table" or not isinstance(value, dict) or "access_type" not in value:
            continue
        table = value.get("table_name", "?")
        access = value["access_type"]
        key_name = value.get("key")
        used = value.get("used_key_parts") or []
        loops = value.get("r_loops", 1) or 1
        examined = (value.get("r_rows", value.get("rows")) or 0) * loops
        kept = examined * (value.get("r_filtered", value.get("filtered")) or 100) / 100
        icp = value.get("r_icp_filtered")
        entries = examined * 100 / max(icp, 0.01) if icp is not None and icp < 100 else examined
        removed = entries - kept
        detail = f"{access}"
        if key_name:
            detail += f" {key_name}({', '.join(used)})"
        detail += f", {examined:,.0f} rows examined"
        if removed >= 1:
            detail += f", {removed:,.0f} filtered"
        parts.append(f"{table}: {detail}")
        size = big_tables.get(table, 0)
        if access in {"ALL", "index"} and size:
            flags.append(f"full scan of {table} ({access}, {size:,} rows, {examined:,.0f} read)")
        # A derived table's filter (``<derived3>``) is the query's own logic, not an index's.
        if removed >= BIG_FILTER and removed > kept and not table.startswith("<"):
            by = key_name or table
            flags.append(
                f"filter: {removed:,.0f} rows read by {by} and thrown away, {kept:,.0f} kept"
            )
        columns = indexes.get(key_name or "", ())
        condition = " ".join(
            str(value.get(k, "")) for k in ("attached_condition", "index_condition")
        )
        if columns and used and len(used) < len(columns) and removed >= 1:
            named = [
                c for c in columns[len(used) :] if re.search(rf"\b{re.escape(c)}\b", condition)
            ]
            if named:
                flags.append(
                    f"index prefix: {key_name} used on ({', '.join(used)}) only; "
                    f"{', '.join(named)} checked row by row ({removed:,.0f} rows thrown away)"
                )
    return Verdict("; ".join(parts) or "no table access", flags, plan)


# --- SQLite -----------------------------------------------------------------------------------


def flag_sqlite(
    rows: Sequence[tuple[Any, ...]],
    big_tables: Mapping[str, int],
    indexes: Mapping[str, Sequence[str]],
) -> Verdict:
    """Judge ``EXPLAIN QUERY PLAN`` rows ``(id, parent, notused, detail)``."""
    parts: list[str] = []
    flags: list[str] = []
    for row in rows:
        detail = str(row[-1])
        parts.append(detail)
        words = detail.split()
        if words[:1] == ["SCAN"] and len(words) > 1:
            table = words[1]
            if big_tables.get(table, 0):
                flags.append(f"full scan of {table} ({big_tables[table]:,} rows)")
        if "TEMP B-TREE" in detail:
            flags.append(f"sort: {detail.lower()}")
    return Verdict("; ".join(parts), flags, list(rows))
