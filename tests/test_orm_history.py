"""ORM saves of StudentModule leave history exactly as kvstate's own writes do (SPEC §9).

Open edX instructor tools (reset attempts, rescoring, ``save_state``) load a row, edit it and
``save()`` it; Open edX records history from a ``post_save`` receiver. kvstate does too, under
its own rules: on the history alias, after the state commits when history lives there, in the
state's transaction when it shares the state's database, never for a rolled-back save.
``QuerySet.update()`` sends no signal and records nothing, as in Open edX.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import DatabaseError, connections, transaction
from django.test import TestCase, TransactionTestCase, override_settings
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator

from kvstate.conf import HISTORY_ALIAS
from kvstate.model_data import set_score
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import HistoryTableOnDefault
from tests.test_history import refusing

COURSE = CourseLocator("kvstate", "OrmHistory", "2026")
PROBLEM = COURSE.make_usage_key("problem", "p1")
HTML = COURSE.make_usage_key("html", "h1")


def history_rows(using: str = HISTORY_ALIAS) -> list[tuple[Any, ...]]:
    """Return every history row as (module id, created, state, grade, max_grade), oldest first."""
    rows = StudentModuleHistory.objects.using(using).order_by("id")
    return list(rows.values_list("student_module_id", "created", "state", "grade", "max_grade"))


def snapshot(module: StudentModule) -> tuple[Any, ...]:
    """Return what a history row of ``module`` as it is now holds."""
    return (module.id, module.modified, module.state, module.grade, module.max_grade)


def new_module(user: Any, key: UsageKey = PROBLEM, **fields: Any) -> StudentModule:
    return StudentModule(
        student=user,
        module_state_key=key,
        course_id=key.context_key,
        module_type=key.block_type,
        **fields,
    )


class OrmSaveTests(TestCase):
    """History on its own alias (these settings): each save is recorded once the state commits."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()

    def committed(self) -> Any:
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def test_each_save_leaves_one_row_holding_the_module_as_saved(self) -> None:
        module = new_module(self.user, state='{"attempts": 1}')
        with self.committed():
            module.save()
        first = snapshot(module)
        module.state = json.dumps({"attempts": 0})
        module.grade, module.max_grade = 0.0, 2.0
        with self.committed():
            module.save()
        assert history_rows() == [first, snapshot(module)]
        # created is the module's modified, to the microsecond, as the database holds it.
        assert history_rows()[1][1] == StudentModule.objects.get().modified

    def test_history_waits_for_the_state_to_commit(self) -> None:
        with self.captureOnCommitCallbacks(using="default") as callbacks:
            new_module(self.user, state="{}").save()
            assert history_rows() == []
        assert len(callbacks) == 1
        callbacks[0]()
        assert len(history_rows()) == 1

    def test_create_update_or_create_and_get_or_create_when_they_write(self) -> None:
        with self.committed():
            module = StudentModule.objects.create(
                student=self.user,
                module_state_key=PROBLEM,
                course_id=COURSE,
                module_type="problem",
                state='{"a": 1}',
            )
        assert len(history_rows()) == 1
        with self.committed():
            updated, created = StudentModule.objects.update_or_create(
                student=self.user,
                module_state_key=PROBLEM,
                course_id=COURSE,
                defaults={"grade": 1.0, "max_grade": 1.0},
            )
        assert not created
        assert updated.id == module.id
        with self.committed():
            _, created = StudentModule.objects.get_or_create(
                student=self.user, module_state_key=PROBLEM, course_id=COURSE
            )
        assert not created  # a read: nothing written, nothing recorded
        other = COURSE.make_usage_key("problem", "p2")
        with self.committed():
            made, created = StudentModule.objects.get_or_create(
                student=self.user,
                module_state_key=other,
                course_id=COURSE,
                defaults={"module_type": "problem", "state": '{"b": 2}'},
            )
        assert created
        assert [row[0] for row in history_rows()] == [module.id, module.id, made.id]
        assert history_rows()[1][2:] == ('{"a": 1}', 1.0, 1.0)

    def test_statements_per_save(self) -> None:
        module = new_module(self.user, state="{}")
        with self.committed():
            module.save()
        module.state = '{"a": 1}'
        # default: the UPDATE (no SAVEPOINT: the history is not on this alias); history: one
        # INSERT once the state commits.
        with (
            self.assertNumQueries(1, using="default"),
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.committed(),
        ):
            module.save()

    def test_only_recorded_block_types(self) -> None:
        with self.committed():
            new_module(self.user, HTML, state="{}").save()
        assert history_rows() == []
        with override_settings(KVSTATE_HISTORY_BLOCK_TYPES="__all__"), self.committed():
            new_module(self.user, COURSE.make_usage_key("html", "h2"), state="{}").save()
        assert len(history_rows()) == 1
        with override_settings(KVSTATE_HISTORY_BLOCK_TYPES=[]), self.committed():
            new_module(self.user, COURSE.make_usage_key("problem", "p9"), state="{}").save()
        assert len(history_rows()) == 1

    def test_queryset_update_records_nothing(self) -> None:
        with self.committed():
            new_module(self.user, state='{"attempts": 3}').save()
        with self.committed():
            changed = StudentModule.objects.filter(student=self.user).update(state="{}")
        assert changed == 1
        assert len(history_rows()) == 1

    def test_kvstate_writes_are_not_recorded_twice(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        with self.committed():
            client.set(self.user.username, PROBLEM, {"a": 1})
        with self.committed():
            set_score(self.user.id, PROBLEM, 1.0, 2.0)
        with self.committed():
            client.delete(self.user.username, PROBLEM)
        assert [row[2:] for row in history_rows()] == [
            ('{"a": 1}', None, None),
            ('{"a": 1}', 1.0, 2.0),
            ("{}", 1.0, 2.0),
        ]

    def test_a_failing_history_database_is_logged_and_the_save_stands(self) -> None:
        module = new_module(self.user, state='{"a": 1}')
        with (
            connections[HISTORY_ALIAS].execute_wrapper(refusing("INSERT")),
            self.assertLogs("kvstate.history", "ERROR") as logs,
            self.committed(),
        ):
            module.save()
        assert f"StudentModule ids [{module.id}]" in logs.records[0].getMessage()
        assert StudentModule.objects.get().state == '{"a": 1}'


class OrmCommitTests(TransactionTestCase):
    """Real commits and rollbacks, history on its own alias."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()

    def test_an_autocommitted_save_has_its_history_when_it_returns(self) -> None:
        module = new_module(self.user, state='{"a": 1}')
        module.save()
        assert history_rows() == [snapshot(module)]

    def test_a_rolled_back_save_leaves_no_history(self) -> None:
        module = new_module(self.user, state='{"a": 1}')
        module.save()

        def failing_request() -> None:
            with transaction.atomic():
                module.state = '{"a": 2}'
                module.save()
                StudentModule.objects.create(
                    student=self.user,
                    module_state_key=COURSE.make_usage_key("problem", "p2"),
                    course_id=COURSE,
                    module_type="problem",
                )
                raise RuntimeError("the request failed")

        with pytest.raises(RuntimeError):
            failing_request()
        assert StudentModule.objects.get().state == '{"a": 1}'
        assert [row[2] for row in history_rows()] == ['{"a": 1}']


class SharedDatabaseOrmTests(HistoryTableOnDefault, TestCase):
    """History on the state's database: the save and its history are one transaction."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.enterContext(override_settings(DATABASE_ROUTERS=[]))
        self.user = UserFactory()

    def test_history_is_written_with_the_save(self) -> None:
        module = new_module(self.user, state='{"a": 1}')
        # The INSERT of the row and of its history; no SAVEPOINT (atomic(savepoint=False)
        # inside the test's transaction), nothing on the history alias.
        with (
            self.assertNumQueries(2, using="default"),
            self.assertNumQueries(0, using=HISTORY_ALIAS),
        ):
            module.save()
        assert history_rows("default") == [snapshot(module)]


class SharedDatabaseOrmCommitTests(TransactionTestCase):
    """History on the state's database, real commits: no orphan and no lone state row."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.enterContext(override_settings(DATABASE_ROUTERS=[]))
        with connections["default"].schema_editor() as editor:
            editor.create_model(StudentModuleHistory)
        self.addCleanup(self._drop_history_table)
        self.user = UserFactory()

    def _drop_history_table(self) -> None:
        with connections["default"].schema_editor() as editor:
            editor.delete_model(StudentModuleHistory)

    def test_an_autocommitted_save_whose_history_fails_saves_nothing(self) -> None:
        # As a kvstate write on a shared database: all or nothing, even without a caller's
        # transaction.
        module = new_module(self.user, state='{"a": 1}')
        with (
            connections["default"].execute_wrapper(refusing("INSERT")),
            pytest.raises(DatabaseError),
        ):
            module.save()
        assert not StudentModule.objects.exists()
        assert history_rows("default") == []

    def test_a_rolled_back_save_takes_its_history_with_it(self) -> None:
        def failing_request() -> None:
            with transaction.atomic():
                new_module(self.user, state='{"a": 1}').save()
                assert len(history_rows("default")) == 1
                raise RuntimeError("the request failed")

        with pytest.raises(RuntimeError):
            failing_request()
        assert history_rows("default") == []
        assert not StudentModule.objects.exists()
