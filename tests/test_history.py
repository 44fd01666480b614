"""StudentModule history (SPEC §5): what is written, where, when, and what survives a failure.

These settings put history on its own alias, where it is written once the state commits.
``TestCase`` never commits, so its tests play the commit with ``captureOnCommitCallbacks``;
tests about real commits, rollbacks and failures are ``TransactionTestCase``s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import DatabaseError, InterfaceError, connections, transaction
from django.test import TestCase, TransactionTestCase, override_settings
from django.test.utils import CaptureQueriesContext
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator
from xblock.fields import Scope

from kvstate import history
from kvstate.conf import HISTORY_ALIAS
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, set_score
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient

COURSE = CourseLocator("kvstate", "History", "2026")
HISTORY_TABLE = StudentModuleHistory._meta.db_table


def block(i: int, block_type: str = "problem") -> UsageKey:
    return COURSE.make_usage_key(block_type, f"b{i}")


def module_of(user: Any, usage_key: UsageKey) -> StudentModule:
    return StudentModule.objects.get(student=user, module_state_key=usage_key)


def history_states(module_id: int, using: str = HISTORY_ALIAS) -> list[Any]:
    """Return a module's history states, oldest first, decoded (NULL stays None)."""
    rows = StudentModuleHistory.objects.using(using).filter(student_module_id=module_id)
    return [None if r.state is None else json.loads(r.state) for r in rows.order_by("id")]


def refusing(statement: str, error: type[Exception] = DatabaseError) -> Callable[..., Any]:
    """Return an execute wrapper that fails every ``statement`` (INSERT/DELETE) on history."""

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if HISTORY_TABLE in sql and sql.lstrip().upper().startswith(statement):
            raise error(f"{statement} on history refused (injected fault)")
        return execute(sql, params, many, context)

    return wrapper


class _ClientMixin:
    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.user = UserFactory()
        self.username = self.user.username
        self.client = DjangoXBlockUserStateClient(self.user)


class HistoryWritingTests(_ClientMixin, TestCase):
    def committed(self) -> Any:
        """Run what the block registers on commit, as the end of a request's transaction does."""
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def test_each_write_call_leaves_one_row_holding_the_full_state_after_it(self) -> None:
        key = block(1)
        with self.committed():
            self.client.set(self.username, key, {"a": 1})
        with self.committed():
            self.client.set(self.username, key, {"b": 2})
        with self.committed():
            self.client.delete(self.username, key, fields=["a"])
        with self.committed():
            self.client.delete(self.username, key)
        module = module_of(self.user, key)
        assert history_states(module.id) == [{"a": 1}, {"a": 1, "b": 2}, {"b": 2}, {}]

    def test_created_is_the_modules_modified_and_grades_are_copied(self) -> None:
        key = block(1)
        with self.committed():
            set_score(self.user.id, key, 3.0, 4.0)
        with self.committed():
            self.client.set(self.username, key, {"a": 1})
        module = module_of(self.user, key)
        latest = StudentModuleHistory.objects.using(HISTORY_ALIAS).for_module(module.id)[0]
        assert (latest.created, latest.state, latest.grade, latest.max_grade) == (
            module.modified,
            module.state,
            3.0,
            4.0,
        )

    def test_set_many_over_many_blocks_writes_its_history_in_one_statement(self) -> None:
        keys = [block(i) for i in range(50)]
        # One bulk INSERT on the history alias for the 50 rows.
        with self.assertNumQueries(1, using=HISTORY_ALIAS), self.committed():
            self.client.set_many(self.username, {key: {"i": i} for i, key in enumerate(keys)})
        modules = {m.module_state_key: m.id for m in StudentModule.objects.all()}
        assert [history_states(modules[key]) for key in keys] == [[{"i": i}] for i in range(50)]

    def test_delete_many_leaves_one_row_per_existing_block(self) -> None:
        with self.committed():
            self.client.set_many(self.username, {block(1): {"a": 1}, block(2): {"a": 2}})
        # block(3) has no row: deleting from it writes nothing, history included.
        with self.assertNumQueries(1, using=HISTORY_ALIAS), self.committed():
            self.client.delete_many(self.username, [block(1), block(2), block(3)], fields=["a"])
        assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 4
        assert history_states(module_of(self.user, block(2)).id) == [{"a": 2}, {}]

    def test_key_value_store_calls_each_leave_one_row(self) -> None:
        key = block(1)
        kvs = DjangoKeyValueStore(FieldDataCache([], COURSE, self.user))

        def kvs_key(name: str) -> DjangoKeyValueStore.Key:
            return DjangoKeyValueStore.Key(Scope.user_state, self.user.id, key, name)

        with self.committed():
            kvs.set(kvs_key("a"), 1)
        with self.committed():
            kvs.set_many({kvs_key("b"): 2, kvs_key("c"): 3})
        with self.committed():
            kvs.delete(kvs_key("a"))
        assert history_states(module_of(self.user, key).id) == [
            {"a": 1},
            {"a": 1, "b": 2, "c": 3},
            {"b": 2, "c": 3},
        ]

    def test_history_waits_for_the_state_to_commit(self) -> None:
        with self.captureOnCommitCallbacks(using="default") as callbacks:
            self.client.set(self.username, block(1), {"a": 1})
            assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 0
        assert callbacks  # the history write (and kvstate.signals.state_changed's sending)
        for callback in callbacks:
            callback()
        assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 1

    def test_history_is_written_on_the_history_alias_and_nothing_on_default(self) -> None:
        with (
            CaptureQueriesContext(connections["default"]) as on_default,
            CaptureQueriesContext(connections[HISTORY_ALIAS]) as on_history,
            self.committed(),
        ):
            self.client.set(self.username, block(1), {"a": 1})
        assert [q["sql"] for q in on_default if HISTORY_TABLE in q["sql"]] == []
        assert len(on_history) == 1
        assert on_history[0]["sql"].startswith("INSERT INTO")
        assert HISTORY_TABLE in on_history[0]["sql"]

    def test_a_failure_inside_a_history_transaction_marks_it_for_rollback(self) -> None:
        # TestCase holds a transaction open on the history alias, as a caller's atomic block
        # (or ATOMIC_REQUESTS) there would: it must not go on to commit half done.
        assert not transaction.get_rollback(using=HISTORY_ALIAS)
        with (
            connections[HISTORY_ALIAS].execute_wrapper(refusing("INSERT")),
            self.assertLogs("kvstate.history", "ERROR"),
            self.committed(),
        ):
            self.client.set(self.username, block(1), {"a": 1})
        assert transaction.get_rollback(using=HISTORY_ALIAS)
        assert not transaction.get_rollback(using="default")
        assert json.loads(module_of(self.user, block(1)).state) == {"a": 1}

    def test_a_rolled_back_savepoint_leaves_no_history(self) -> None:
        def failing_request() -> None:
            with transaction.atomic():
                self.client.set(self.username, block(1), {"a": 1})
                raise RuntimeError("the request failed")

        with (
            self.captureOnCommitCallbacks(using="default") as callbacks,
            pytest.raises(RuntimeError),
        ):
            failing_request()
        assert callbacks == []
        assert not StudentModule.objects.exists()


class BlockTypeSettingTests(_ClientMixin, TestCase):
    # setting -> block types (of problem, html, video) whose writes leave history
    CASES: tuple[tuple[object, set[str]], ...] = (
        (None, {"problem"}),  # not set: Open edX's default
        ("__all__", {"problem", "html", "video"}),
        ([], set()),
        (["html", "video"], {"html", "video"}),
    )

    def test_only_the_configured_block_types_leave_history(self) -> None:
        for setting, recorded in self.CASES:
            with self.subTest(setting=setting):
                StudentModule.objects.all().delete()
                StudentModuleHistory.objects.using(HISTORY_ALIAS).all().delete()
                overrides = {} if setting is None else {"KVSTATE_HISTORY_BLOCK_TYPES": setting}
                with (
                    override_settings(**overrides),
                    self.captureOnCommitCallbacks(using="default", execute=True),
                ):
                    self.client.set_many(
                        self.username,
                        {block(i, t): {"t": t} for i, t in enumerate(["problem", "html", "video"])},
                    )
                written = {
                    json.loads(h.state)["t"]
                    for h in StudentModuleHistory.objects.using(HISTORY_ALIAS).all()
                }
                assert written == recorded


class CommitAndRollbackTests(_ClientMixin, TransactionTestCase):
    def test_an_autocommitted_write_has_its_history_when_it_returns(self) -> None:
        self.client.set(self.username, block(1), {"a": 1})
        assert history_states(module_of(self.user, block(1)).id) == [{"a": 1}]

    def test_inside_a_transaction_history_follows_the_commit(self) -> None:
        with transaction.atomic():
            self.client.set(self.username, block(1), {"a": 1})
            assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 0
        assert history_states(module_of(self.user, block(1)).id) == [{"a": 1}]

    def test_a_rolled_back_write_leaves_no_history(self) -> None:
        def failing_request() -> None:
            with transaction.atomic():
                self.client.set(self.username, block(1), {"a": 1})
                set_score(self.user.id, block(2), 1.0, 1.0)
                raise RuntimeError("the request failed")

        with pytest.raises(RuntimeError):
            failing_request()
        assert not StudentModule.objects.exists()
        assert not StudentModuleHistory.objects.using(HISTORY_ALIAS).exists()


class FailingHistoryDatabaseTests(_ClientMixin, TransactionTestCase):
    """The history database fails; the learner's write stands and the failure is logged."""

    @contextmanager
    def failing_history(self, error: type[Exception] = DatabaseError) -> Iterator[Any]:
        with (
            connections[HISTORY_ALIAS].execute_wrapper(refusing("INSERT", error)),
            self.assertLogs("kvstate.history", "ERROR") as logs,
        ):
            yield logs

    def test_set_keeps_the_state_and_logs_the_module_id(self) -> None:
        for error in (DatabaseError, InterfaceError):
            with self.subTest(error=error.__name__):
                key = block(1 if error is DatabaseError else 2)
                with self.failing_history(error) as logs:
                    self.client.set(self.username, key, {"a": 1})
                module = module_of(self.user, key)
                assert json.loads(module.state) == {"a": 1}
                assert len(logs.records) == 1
                assert f"StudentModule ids [{module.id}]" in logs.records[0].getMessage()
                assert not StudentModuleHistory.objects.using(HISTORY_ALIAS).exists()

    def test_set_many_set_score_and_delete_survive_too(self) -> None:
        keys = [block(1), block(2)]
        with self.failing_history() as logs:
            self.client.set_many(self.username, {keys[0]: {"a": 1}, keys[1]: {"b": 2}})
            set_score(self.user.id, keys[0], 1.0, 2.0)
            self.client.delete(self.username, keys[1])
        ids = [module_of(self.user, key).id for key in keys]
        messages = [r.getMessage() for r in logs.records]
        assert len(messages) == 3
        assert f"StudentModule ids {sorted(ids)}" in messages[0]
        assert f"StudentModule ids [{ids[0]}]" in messages[1]
        assert f"StudentModule ids [{ids[1]}]" in messages[2]
        assert [(m.state, m.grade) for m in StudentModule.objects.order_by("id")] == [
            ('{"a": 1}', 1.0),
            ("{}", None),
        ]

    def test_history_resumes_once_the_database_is_back(self) -> None:
        with self.failing_history():
            self.client.set(self.username, block(1), {"a": 1})
        self.client.set(self.username, block(1), {"a": 2})
        assert history_states(module_of(self.user, block(1)).id) == [{"a": 2}]


class DeletingModulesTests(_ClientMixin, TestCase):
    def setUp(self) -> None:
        super().setUp()
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.client.set(self.username, block(1), {"a": 1})
            self.client.set(self.username, block(1), {"a": 2})
            self.client.set(self.username, block(2), {"b": 1})
        self.first, self.second = (module_of(self.user, block(i)) for i in (1, 2))

    def remaining(self) -> set[int]:
        rows = StudentModuleHistory.objects.using(HISTORY_ALIAS)
        return set(rows.values_list("student_module_id", flat=True))

    def test_deleting_a_module_deletes_its_history_after_the_commit(self) -> None:
        first_id, second_id = self.first.id, self.second.id
        with self.captureOnCommitCallbacks(using="default") as callbacks:
            self.first.delete()
        assert self.remaining() == {first_id, second_id}
        for callback in callbacks:
            callback()
        assert self.remaining() == {second_id}

    def test_deleting_the_learner_deletes_all_their_history(self) -> None:
        other = UserFactory()
        with self.captureOnCommitCallbacks(using="default", execute=True):
            DjangoXBlockUserStateClient(other).set(other.username, block(1), {"a": 1})
            self.user.delete()
        assert self.remaining() == {module_of(other, block(1)).id}

    def test_a_failed_history_delete_is_logged_with_the_module_id(self) -> None:
        module_id = self.first.id
        with (
            connections[HISTORY_ALIAS].execute_wrapper(refusing("DELETE")),
            self.assertLogs("kvstate.history", "ERROR") as logs,
            self.captureOnCommitCallbacks(using="default", execute=True),
        ):
            self.first.delete()
        assert f"StudentModule ids [{module_id}]" in logs.records[0].getMessage()
        assert not StudentModule.objects.filter(id=module_id).exists()


class SharedDatabaseTests(_ClientMixin, TransactionTestCase):
    """History on the state's own database (no router): written in the state's transaction."""

    def setUp(self) -> None:
        super().setUp()
        # Per test, not on the class: the flush after each test must see the real routers.
        self.enterContext(override_settings(DATABASE_ROUTERS=[]))
        with connections["default"].schema_editor() as editor:
            editor.create_model(StudentModuleHistory)
        self.addCleanup(self._drop_history_table)

    def _drop_history_table(self) -> None:
        with connections["default"].schema_editor() as editor:
            editor.delete_model(StudentModuleHistory)

    def test_history_lives_on_default(self) -> None:
        assert history.alias() == "default"

    def test_history_is_written_inside_the_state_transaction(self) -> None:
        with transaction.atomic():
            self.client.set(self.username, block(1), {"a": 1})
            module = module_of(self.user, block(1))
            assert history_states(module.id, using="default") == [{"a": 1}]
        assert not StudentModuleHistory.objects.using(HISTORY_ALIAS).exists()

    def test_a_rolled_back_write_takes_its_history_with_it(self) -> None:
        def failing_request() -> None:
            with transaction.atomic():
                self.client.set_many(self.username, {block(1): {"a": 1}, block(2): {"a": 2}})
                set_score(self.user.id, block(3), 1.0, 1.0)
                assert StudentModuleHistory.objects.using("default").count() == 3
                raise RuntimeError("the request failed")

        with pytest.raises(RuntimeError):
            failing_request()
        assert not StudentModuleHistory.objects.using("default").exists()

    def test_deleting_a_module_deletes_its_history_at_once(self) -> None:
        self.client.set(self.username, block(1), {"a": 1})
        self.client.set(self.username, block(2), {"a": 1})
        with transaction.atomic():
            module_of(self.user, block(1)).delete()
            remaining = StudentModuleHistory.objects.using("default").values_list(
                "student_module_id", flat=True
            )
            assert list(remaining) == [module_of(self.user, block(2)).id]
