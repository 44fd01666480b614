"""The migrated schema is Open edX's (SPEC §2), read back from the database itself.

Introspection, not model metadata: what matters for ``migrate --fake-initial`` and for code that
shares the tables with Open edX is what the database holds. Each test collects every mismatch so
a failure lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.test import TestCase

from kvstate.conf import HISTORY_ALIAS
from kvstate.sql import exact_collation

# Django's introspected field class -> storage family. SQLite stores every INTEGER in up to
# 8 bytes (an INTEGER PRIMARY KEY is the 64-bit rowid), so there both names mean bigint.
_FAMILY = {
    "AutoField": "int",
    "IntegerField": "int",
    "SmallIntegerField": "smallint",
    "PositiveIntegerField": "int",
    "BigAutoField": "bigint",
    "BigIntegerField": "bigint",
    "PositiveBigIntegerField": "bigint",
    "CharField": "varchar",
    "TextField": "text",
    "FloatField": "float",
    "DateTimeField": "datetime",
}

_INT = frozenset({"int", "bigint"})


@dataclass(frozen=True)
class Col:
    """A column as SPEC §2 describes it."""

    families: frozenset[str]
    null: bool = False
    length: int | None = None


def _varchar(length: int, *, null: bool = False) -> Col:
    return Col(frozenset({"varchar"}), null, length)


_BIGINT = Col(frozenset({"bigint"}))
_TEXT = Col(frozenset({"text"}))
_TEXT_NULL = Col(frozenset({"text"}), null=True)
_FLOAT_NULL = Col(frozenset({"float"}), null=True)
_DATETIME = Col(frozenset({"datetime"}))
# The user's primary key type is the user model's business (auth_user.id is a 32-bit int).
_USER_ID = Col(_INT)


@dataclass(frozen=True)
class Table:
    """A table as SPEC §2 describes it."""

    alias: str
    columns: dict[str, Col]
    unique: tuple[frozenset[str], ...] = ()
    indexed: tuple[str, ...] = ()
    no_db_constraint: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()
    #: Indexes kvstate's own queries rely on, by exact column list (keyset pagination).
    composite: tuple[tuple[str, ...], ...] = ()


_PER_FIELD = {
    "field_name": _varchar(64),
    "value": _TEXT,
    "created": _DATETIME,
    "modified": _DATETIME,
}

SPEC_TABLES: dict[str, Table] = {
    "courseware_studentmodule": Table(
        alias="default",
        columns={
            "id": _BIGINT,
            "module_type": _varchar(32),
            "module_id": _varchar(255),
            "student_id": _USER_ID,
            "course_id": _varchar(255),
            "state": _TEXT_NULL,
            "grade": _FLOAT_NULL,
            "max_grade": _FLOAT_NULL,
            "done": _varchar(8),
            "created": _DATETIME,
            "modified": _DATETIME,
        },
        unique=(frozenset({"student_id", "module_id", "course_id"}),),
        indexed=("module_type", "course_id", "grade", "created", "modified"),
        no_db_constraint=("student_id",),
        exact=("module_type", "module_id", "course_id"),
        # iter_all_for_block pages by id within a block; iter_all_for_course by
        # (module_type, id) within a course, or by id within a course and block type.
        composite=(("module_id", "id"), ("course_id", "module_type", "id")),
    ),
    "courseware_xmoduleuserstatesummaryfield": Table(
        alias="default",
        columns={"id": _BIGINT, "usage_id": _varchar(255), **_PER_FIELD},
        unique=(frozenset({"usage_id", "field_name"}),),
        indexed=("usage_id", "field_name", "created", "modified"),
        exact=("usage_id", "field_name"),
    ),
    "courseware_xmodulestudentprefsfield": Table(
        alias="default",
        columns={
            "id": _BIGINT,
            "module_type": _varchar(64),
            "student_id": _USER_ID,
            **_PER_FIELD,
        },
        unique=(frozenset({"student_id", "module_type", "field_name"}),),
        indexed=("module_type", "student_id", "field_name", "created", "modified"),
        exact=("module_type", "field_name"),
    ),
    "courseware_xmodulestudentinfofield": Table(
        alias="default",
        columns={"id": _BIGINT, "student_id": _USER_ID, **_PER_FIELD},
        unique=(frozenset({"student_id", "field_name"}),),
        indexed=("student_id", "field_name", "created", "modified"),
        exact=("field_name",),
    ),
    "coursewarehistoryextended_studentmodulehistoryextended": Table(
        alias=HISTORY_ALIAS,
        columns={
            "id": _BIGINT,
            "student_module_id": _BIGINT,
            "version": _varchar(255, null=True),
            "created": _DATETIME,
            "state": _TEXT_NULL,
            "grade": _FLOAT_NULL,
            "max_grade": _FLOAT_NULL,
        },
        indexed=("student_module_id", "created"),
        no_db_constraint=("student_module_id",),
        # get_history and prune's "newest K per module"; prune's (created, id) keyset.
        composite=(("student_module_id", "created"), ("created", "id")),
    ),
}


def _family(alias: str, description: Any) -> str:
    connection = connections[alias]
    django_type = connection.introspection.get_field_type(
        description.type_code,
        description,
    )
    family = _FAMILY.get(django_type, django_type)
    if connection.vendor == "sqlite" and family == "int":
        return "bigint"
    return family


class SchemaTests(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def _describe(self, alias: str, table: str) -> dict[str, Any]:
        connection = connections[alias]
        with connection.cursor() as cursor:
            return {
                d.name: d for d in connection.introspection.get_table_description(cursor, table)
            }

    def _constraints(self, alias: str, table: str) -> dict[str, dict[str, Any]]:
        connection = connections[alias]
        with connection.cursor() as cursor:
            return connection.introspection.get_constraints(cursor, table)

    def test_every_table_exists_on_its_alias(self) -> None:
        missing = []
        for table, spec in SPEC_TABLES.items():
            connection = connections[spec.alias]
            with connection.cursor() as cursor:
                names = {t.name for t in connection.introspection.get_table_list(cursor)}
            if table not in names:
                missing.append((spec.alias, table))
        assert missing == []

    def test_columns_have_the_spec_names_exactly(self) -> None:
        mismatches = {}
        for table, spec in SPEC_TABLES.items():
            actual = set(self._describe(spec.alias, table))
            if actual != set(spec.columns):
                mismatches[table] = {
                    "missing": sorted(set(spec.columns) - actual),
                    "unexpected": sorted(actual - set(spec.columns)),
                }
        assert mismatches == {}

    def test_column_types_lengths_and_nullability(self) -> None:
        mismatches = []
        for table, spec in SPEC_TABLES.items():
            described = self._describe(spec.alias, table)
            for name, col in spec.columns.items():
                if name not in described:
                    continue  # Reported by test_columns_have_the_spec_names_exactly.
                d = described[name]
                family = _family(spec.alias, d)
                if family not in col.families:
                    mismatches.append((table, name, "type", family, sorted(col.families)))
                if bool(d.null_ok) != col.null:
                    mismatches.append((table, name, "null", bool(d.null_ok), col.null))
                if col.length is not None and d.display_size != col.length:
                    mismatches.append((table, name, "length", d.display_size, col.length))
        assert mismatches == []

    def test_every_primary_key_is_id_and_64_bit(self) -> None:
        mismatches = []
        for table, spec in SPEC_TABLES.items():
            constraints = self._constraints(spec.alias, table).values()
            pk_columns = [c["columns"] for c in constraints if c["primary_key"]]
            if pk_columns != [["id"]]:
                mismatches.append((table, "primary key", pk_columns))
            family = _family(spec.alias, self._describe(spec.alias, table)["id"])
            if family != "bigint":
                mismatches.append((table, "id", family))
        assert mismatches == []

    def test_unique_constraints_by_column_set(self) -> None:
        mismatches = []
        for table, spec in SPEC_TABLES.items():
            actual = {
                frozenset(c["columns"])
                for c in self._constraints(spec.alias, table).values()
                if c["unique"] and not c["primary_key"]
            }
            if actual != set(spec.unique):
                mismatches.append((table, sorted(map(sorted, actual)), spec.unique))
        assert mismatches == []

    def test_indexed_columns_lead_an_index(self) -> None:
        # "Indexed" means a lookup on the column alone can use an index: the column leads some
        # index or unique constraint (a composite whose first column it is serves too).
        mismatches = []
        for table, spec in SPEC_TABLES.items():
            leading = {
                c["columns"][0]
                for c in self._constraints(spec.alias, table).values()
                if (c["index"] or c["unique"]) and c["columns"]
            }
            for column in spec.indexed:
                if column not in leading:
                    mismatches.append((table, column))
        assert mismatches == []

    def test_keyset_pages_have_indexes_in_their_order(self) -> None:
        mismatches = []
        for table, spec in SPEC_TABLES.items():
            indexes = {
                tuple(c["columns"])
                for c in self._constraints(spec.alias, table).values()
                if c["index"] or c["unique"]
            }
            mismatches += [(table, cols) for cols in spec.composite if cols not in indexes]
        assert mismatches == []

    def test_no_foreign_key_constraints_where_open_edx_has_none(self) -> None:
        # StudentModule rows outlive users being retired in batches, and history may sit on
        # another database: Open edX declares these relations without database constraints.
        mismatches = []
        for table, spec in SPEC_TABLES.items():
            for c in self._constraints(spec.alias, table).values():
                if c["foreign_key"] and set(c["columns"]) & set(spec.no_db_constraint):
                    mismatches.append((table, c["columns"], c["foreign_key"]))
        assert mismatches == []

    def test_names_and_keys_use_an_exact_collation(self) -> None:
        # MySQL/MariaDB need an explicit no-pad binary collation; elsewhere the column must keep
        # the exact default (opaque-keys' case-insensitive mode would add NOCASE on SQLite).
        connection = connections["default"]
        # SQLite's BINARY, spelled out or by default, compares exactly too.
        exact = {exact_collation(connection)} | (
            {"BINARY"} if connection.vendor == "sqlite" else set()
        )
        columns = [(table, column) for table, spec in SPEC_TABLES.items() for column in spec.exact]
        folding = []
        for table, column in columns:
            with connection.cursor() as cursor:
                description = connection.introspection.get_table_description(cursor, table)
            collation = next(c.collation for c in description if c.name == column)
            if collation not in exact:
                folding.append((table, column, collation))
        assert columns
        assert folding == []
