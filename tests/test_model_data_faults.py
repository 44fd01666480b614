"""Database failures during writes: the error tells the truth and the cache equals the database.

Real transactions (TransactionTestCase), faults injected with ``connection.execute_wrapper`` on
the statement chosen. Open edX's seed patched ``Model.save`` and expected a field whose save
failed to be reported as saved; kvstate's ``saved_field_names`` lists exactly the fields whose
new values are stored (SPEC §4, §8.3). Writes are all-or-nothing, so after a database error
that list is ``[]`` and the database holds the old values.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DatabaseError, OperationalError, connections
from django.test import TransactionTestCase, override_settings
from django.test.utils import CaptureQueriesContext
from xblock.exceptions import KeyValueMultiSaveError

from kvstate import sql, storage
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentModuleFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from tests.blocks import COURSE_KEY, HistoryTableOnDefault, Key, block, key, rebuilt, usage

DATABASES = {"default", "student_module_history"}
#: The statement that writes one block's user_state and per-field values at once, where there
#: is one (PostgreSQL's writable CTE), else None.
ONE_STATEMENT = r"^WITH swapped AS" if sql.swaps_with_upserts(connections["default"]) else None
FIELDS = ("answer", "attempts", "tally", "theme", "nickname")


@contextlib.contextmanager
def failing(
    pattern: str,
    *,
    alias: str = "default",
    times: int | None = None,
    error: DatabaseError | None = None,
) -> Iterator[list[str]]:
    """Fail the statements on ``alias`` matching ``pattern`` (the first ``times`` of them).

    Yields the list of statements that were failed.
    """
    failed: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if re.search(pattern, sql) and (times is None or len(failed) < times):
            failed.append(sql)
            raise error or DatabaseError(f"injected failure of: {sql[:60]}")
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(wrapper):
        yield failed


class FaultTestCase(TransactionTestCase):
    """A learner with a value in every scope of block p1, and a store over p1."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(
            student=self.user, module_state_key=usage(), state='{"answer": "old", "attempts": 0}'
        )
        UserStateSummaryFactory(usage_id=usage(), field_name="tally")
        StudentPrefsFactory(student=self.user, module_type="problem", field_name="theme")
        StudentInfoFactory(student=self.user, field_name="nickname")
        # The factory's save left a history row (ORM saves are recorded); the tests count the
        # history the writes under test leave.
        StudentModuleHistory.objects.all().delete()
        self.block = block(usage(), self.user.pk)
        self.cache = FieldDataCache([self.block], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)
        self.keys = {name: key(self.block, name) for name in FIELDS}
        self.before = self.values(self.cache)

    def values(self, cache: FieldDataCache) -> dict[str, Any]:
        return {
            name: cache.get(k) if cache.has(k) else "<missing>" for name, k in self.keys.items()
        }

    def assert_truthful(self, saved: list[str], kv_dict: dict[Key, Any]) -> None:
        """The database holds the new value of exactly the saved fields; the cache agrees."""
        in_database = self.values(rebuilt(self.cache, [self.block]))
        new = {k.field_name: value for k, value in kv_dict.items()}
        expected = {name: new[name] if name in saved else self.before[name] for name in FIELDS}
        assert in_database == expected
        assert self.values(self.cache) == in_database

    def set_many_failing(self, kv_dict: dict[Key, Any], pattern: str, **kwargs: Any) -> list[str]:
        """Run ``set_many`` with ``pattern`` failing; return the saved_field_names it raised."""
        with failing(pattern, **kwargs) as failed, pytest.raises(KeyValueMultiSaveError) as info:
            self.kvs.set_many(kv_dict)
        assert failed, f"no statement matched {pattern!r}"
        assert isinstance(info.value.__cause__, DatabaseError)
        return list(info.value.saved_field_names)


class TestUserStateFailures(FaultTestCase):
    def test_update_fails(self) -> None:
        kv_dict = {self.keys["answer"]: "new", self.keys["attempts"]: 1}
        saved = self.set_many_failing(kv_dict, r"^UPDATE .courseware_studentmodule")
        assert saved == []
        self.assert_truthful(saved, kv_dict)
        assert not StudentModuleHistory.objects.exists()

    def test_insert_of_a_new_row_fails(self) -> None:
        new_block = block(usage("new"), self.user.pk)
        new_key = key(new_block, "answer")
        saved = self.set_many_failing({new_key: 1}, r"^INSERT .*courseware_studentmodule.")
        assert saved == []
        assert not StudentModule.objects.filter(module_state_key=usage("new")).exists()
        assert not self.kvs.has(new_key)
        assert not rebuilt(self.cache, [new_block]).has(new_key)

    def test_delete_fails(self) -> None:
        # delete has no saved_field_names to report: the database error itself is raised.
        with failing(r"^UPDATE .courseware_studentmodule"), pytest.raises(DatabaseError):
            self.kvs.delete(self.keys["answer"])
        self.assert_truthful([], {})
        assert self.kvs.get(self.keys["answer"]) == "old"

    def test_the_store_works_after_a_failure(self) -> None:
        kv_dict = {self.keys["answer"]: "new"}
        self.set_many_failing(kv_dict, r"^UPDATE .courseware_studentmodule")
        self.kvs.set_many(kv_dict)
        assert rebuilt(self.cache, [self.block]).get(self.keys["answer"]) == "new"


class TestPerFieldFailures(FaultTestCase):
    def test_upsert_fails(self) -> None:
        # The seed's per-field failure test: two fields of one scope, the save fails.
        tables = {
            "tally": "courseware_xmoduleuserstatesummaryfield",
            "theme": "courseware_xmodulestudentprefsfield",
            "nickname": "courseware_xmodulestudentinfofield",
        }
        for name, table in tables.items():
            with self.subTest(field=name):
                kv_dict = {
                    self.keys[name]: "new",
                    self.keys[name]._replace(field_name="other_existing_field"): "newer",
                }
                saved = self.set_many_failing(kv_dict, rf"^INSERT INTO .{table}")
                assert saved == []
                self.assert_truthful(saved, {self.keys[name]: "new"})

    def test_delete_fails(self) -> None:
        with (
            failing(r"^DELETE FROM .courseware_xmodulestudentinfofield"),
            pytest.raises(DatabaseError),
        ):
            self.kvs.delete(self.keys["nickname"])
        self.assert_truthful([], {})


class TestMultiScopeFailures(FaultTestCase):
    def test_a_later_scope_fails_after_user_state_was_written(self) -> None:
        # user_state is written first; the preferences upsert then fails. The user_state UPDATE
        # is rolled back with it, so nothing is saved and [] is the exact answer. Where one
        # statement writes one block's scopes (PostgreSQL), that statement fails whole.
        kv_dict = {self.keys[name]: f"new {name}" for name in FIELDS}
        with CaptureQueriesContext(connections["default"]) as ran:
            saved = self.set_many_failing(
                kv_dict, ONE_STATEMENT or r"^INSERT INTO .courseware_xmodulestudentprefsfield"
            )
        if not ONE_STATEMENT:
            assert any(q["sql"].startswith("UPDATE") for q in ran.captured_queries)
        assert saved == []
        self.assert_truthful(saved, kv_dict)
        assert not StudentModuleHistory.objects.exists()

    def test_a_deadlock_is_retried_whole(self) -> None:
        # A deadlock victim's transaction is rolled back by the database; kvstate owns the
        # transaction of a multi-scope write, so it runs it again. SQLite has no deadlock
        # errors (it reports a busy database, which waiting resolves), so nothing is retried
        # there and the write fails as any other database error.
        kv_dict = {self.keys[name]: f"new {name}" for name in FIELDS}
        cause = Exception(1213, "Deadlock found when trying to get lock")
        cause.sqlstate = "40P01"  # type: ignore[attr-defined]
        deadlock = OperationalError("injected deadlock")
        deadlock.__cause__ = cause
        storage.stats.reset()
        # user_info is written last: the first attempt's other three statements roll back too.
        # (Where one statement writes them all, that statement is the deadlock's victim.)
        pattern = ONE_STATEMENT or r"^INSERT INTO .courseware_xmodulestudentinfofield"
        if connections["default"].vendor == "sqlite":
            saved = self.set_many_failing(kv_dict, pattern, times=1, error=deadlock)
            self.assert_truthful(saved, kv_dict)
            assert storage.stats.transactions_retried == 0
            return
        with failing(pattern, times=1, error=deadlock) as failed:
            self.kvs.set_many(kv_dict)
        assert len(failed) == 1
        assert storage.stats.transactions_retried == 1
        self.assert_truthful(list(FIELDS), kv_dict)
        assert StudentModuleHistory.objects.count() == 1


class TestHistoryFailures(FaultTestCase):
    def test_history_on_its_own_alias_never_fails_the_write(self) -> None:
        # History follows the state's commit; its failure is logged (SPEC §5).
        kv_dict = {self.keys["answer"]: "new"}
        with (
            failing(r"^INSERT INTO .coursewarehistory", alias="student_module_history"),
            self.assertLogs("kvstate.history", "ERROR"),
        ):
            self.kvs.set_many(kv_dict)
        self.assert_truthful(["answer"], kv_dict)


class TestSharedHistoryFailures(HistoryTableOnDefault, FaultTestCase):
    """History on ``default`` is written in the state's transaction: its failure undoes both.

    The routers are dropped inside the test only: TransactionTestCase's flush after it must
    still keep auth and contenttypes off the history alias.
    """

    @override_settings(DATABASE_ROUTERS=[])
    def test_history_failure_rolls_back_the_state(self) -> None:
        for kv_dict in (
            {self.keys["answer"]: "new"},
            {self.keys[name]: f"new {name}" for name in FIELDS},
        ):
            with self.subTest(fields=len(kv_dict)):
                saved = self.set_many_failing(kv_dict, r"^INSERT INTO .coursewarehistory")
                assert saved == []
                self.assert_truthful(saved, kv_dict)
                assert not StudentModuleHistory.objects.using("default").exists()
        assert json.loads(StudentModule.objects.get().state) == {"answer": "old", "attempts": 0}
