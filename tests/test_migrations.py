"""Migrations match the models, apply and unapply on both aliases, and place each table."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command
from django.db import connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.test import TestCase, TransactionTestCase

from kvstate.conf import HISTORY_ALIAS

HISTORY_TABLE = "coursewarehistoryextended_studentmodulehistoryextended"
DEFAULT_TABLES = {
    "courseware_studentmodule",
    "courseware_xmoduleuserstatesummaryfield",
    "courseware_xmodulestudentprefsfield",
    "courseware_xmodulestudentinfofield",
}
ALL_TABLES = {*DEFAULT_TABLES, HISTORY_TABLE}
ALIASES = ("default", HISTORY_ALIAS)


def kvstate_tables(alias: str) -> set[str]:
    """Return which of kvstate's tables exist on ``alias``."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        names = {t.name for t in connection.introspection.get_table_list(cursor)}
    return names & ALL_TABLES


def indexes(alias: str, table: str) -> dict[str, list[str]]:
    """Return the columns of each index of ``table`` on ``alias``, by index name."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    return {name: info["columns"] for name, info in found.items() if info["index"]}


def applied_kvstate_migrations(alias: str) -> set[str]:
    """Return the names of kvstate's migrations recorded as applied on ``alias``."""
    recorder = MigrationRecorder(connections[alias])
    return {name for app, name in recorder.applied_migrations() if app == "kvstate"}


class MigrationsMatchModelsTests(TestCase):
    databases = set(ALIASES)

    def test_makemigrations_has_nothing_to_write(self) -> None:
        out = StringIO()
        # --check exits non-zero when a migration is missing; the output names it.
        try:
            call_command("makemigrations", "kvstate", "--check", "--dry-run", stdout=out)
        except SystemExit as exc:
            raise AssertionError(f"missing migration:\n{out.getvalue()}") from exc
        assert "No changes detected" in out.getvalue()


class OpenEdxIndexTests(TestCase):
    databases = set(ALIASES)

    def test_courseware_stats_is_there_as_open_edx_has_it(self) -> None:
        found = indexes("default", "courseware_studentmodule")
        assert found["courseware_stats"] == ["module_id", "grade", "student_id"]

    def test_it_comes_in_its_own_migration(self) -> None:
        # Indexes arrive in new migrations; the initial one is never edited (adopted databases
        # faked it).
        loader = MigrationLoader(connections["default"])
        names = {
            name: [getattr(op, "index", None) for op in migration.operations]
            for (app, name), migration in loader.disk_migrations.items()
            if app == "kvstate"
        }
        added = [name for name, ops in names.items() if "courseware_stats" in map(_name, ops)]
        assert added == ["0002_courseware_stats_index_done_choices"]


def _name(index: object) -> str | None:
    return getattr(index, "name", None)


class TablePlacementTests(TestCase):
    databases = set(ALIASES)

    def test_history_table_lives_only_on_the_history_alias(self) -> None:
        assert kvstate_tables(HISTORY_ALIAS) == {HISTORY_TABLE}

    def test_other_tables_live_only_on_default(self) -> None:
        assert kvstate_tables("default") == DEFAULT_TABLES

    def test_the_history_alias_has_no_auth_tables(self) -> None:
        # The router keeps every other app off the history database.
        connection = connections[HISTORY_ALIAS]
        with connection.cursor() as cursor:
            names = {t.name for t in connection.introspection.get_table_list(cursor)}
        assert names == {HISTORY_TABLE, "django_migrations"}


class MigrateBackAndForthTests(TransactionTestCase):
    databases = set(ALIASES)

    def setUp(self) -> None:
        # Whatever a test leaves behind, the tests after it get a fully migrated database.
        for alias in ALIASES:
            self.addCleanup(self._migrate, alias)

    def _migrate(self, alias: str, *target: str) -> None:
        call_command("migrate", "kvstate", *target, database=alias, verbosity=0)

    def test_unapply_and_reapply_on_each_alias(self) -> None:
        expected = {"default": DEFAULT_TABLES, HISTORY_ALIAS: {HISTORY_TABLE}}
        for alias in ALIASES:
            with self.subTest(alias=alias):
                assert "0001_initial" in applied_kvstate_migrations(alias)

                self._migrate(alias, "zero")
                assert kvstate_tables(alias) == set()
                assert applied_kvstate_migrations(alias) == set()

                self._migrate(alias)
                assert kvstate_tables(alias) == expected[alias]
                assert "0001_initial" in applied_kvstate_migrations(alias)

    def test_0002_adds_and_removes_courseware_stats(self) -> None:
        self._migrate("default", "0001")
        assert "courseware_stats" not in indexes("default", "courseware_studentmodule")
        self._migrate("default")
        assert "courseware_stats" in indexes("default", "courseware_studentmodule")

    def test_unapplying_one_alias_leaves_the_other_alone(self) -> None:
        self._migrate(HISTORY_ALIAS, "zero")
        assert kvstate_tables("default") == DEFAULT_TABLES
        assert kvstate_tables(HISTORY_ALIAS) == set()
        assert "0001_initial" in applied_kvstate_migrations("default")

    def test_migrated_tables_take_rows(self) -> None:
        from kvstate.models import StudentModuleHistory
        from kvstate.testing.factories import StudentModuleFactory

        self._migrate("default", "zero")
        self._migrate("default")
        module = StudentModuleFactory(state='{"a": 1}')
        # The save of a problem's row is recorded, on the history alias.
        recorded = StudentModuleHistory.objects.using(HISTORY_ALIAS).get()
        assert (recorded.student_module_id, recorded.state) == (module.pk, '{"a": 1}')
