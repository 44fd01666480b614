"""Statement budgets of FieldDataCache/DjangoKeyValueStore (SPEC §7), pinned exactly per alias.

Inside ``TestCase`` every test runs in a transaction. kvstate's multi-statement writes use
``transaction.atomic(savepoint=False)``, so no SAVEPOINT/RELEASE appears in these counts: each
count is the number of data statements. History for ``problem`` blocks (the default
``KVSTATE_HISTORY_BLOCK_TYPES``) goes to the ``student_module_history`` alias after the state
commits (run here by ``captureOnCommitCallbacks``); :class:`TestBudgetsWithSharedHistory` pins
the same operations with history on ``default``, written in the state's transaction.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

from django.conf import settings
from django.test import TestCase, override_settings
from xblock.fields import Scope

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.models import StudentModule, StudentModuleHistory, XModuleStudentInfoField
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentModuleFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from tests.blocks import (
    COURSE_KEY,
    AuthoredBlock,
    HistoryTableOnDefault,
    block,
    block_class,
    info_key,
    key,
    no_queries,
    prefs_key,
    state_key,
    summary_key,
    usage,
)

DATABASES = {"default", "student_module_history"}
HISTORY = "student_module_history"


class BudgetTestCase(TestCase):
    """A learner with a row in every scope for block p1, and a cache over p1."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        uid = self.user.pk
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"answer": 1}')
        UserStateSummaryFactory(usage_id=usage(), field_name="tally")
        StudentPrefsFactory(student=self.user, module_type="problem", field_name="theme")
        StudentInfoFactory(student=self.user, field_name="nickname")
        self.block = block(usage(), uid)
        self.cache = FieldDataCache([self.block], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)

    @contextlib.contextmanager
    def statements(self, default: int, history: int) -> Iterator[None]:
        """Assert exactly ``default`` and ``history`` statements, history callbacks included."""
        with (
            self.assertNumQueries(history, using=HISTORY),
            self.assertNumQueries(default, using="default"),
            self.captureOnCommitCallbacks(using="default", execute=True),
        ):
            yield


class _InfoOnHistory:
    """A router that writes user_info rows to the history alias."""

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return HISTORY if model is XModuleStudentInfoField else None


class TestBuildBudgets(BudgetTestCase):
    def test_one_statement_for_every_scope_with_fields(self) -> None:
        # StateBlock has fields in all four scopes, whose tables share the state alias: 1
        # (a UNION ALL of the four scopes' SELECTs), whatever the number of blocks.
        blocks = [block(usage(f"b{n}"), self.user.pk) for n in range(50)]
        with self.assertNumQueries(0, using=HISTORY), self.assertNumQueries(1) as ctx:
            cache = FieldDataCache(blocks, COURSE_KEY, self.user)
        # None of these blocks has rows; the learner's "problem" preference and info row match.
        assert len(cache) == 2
        # No join to the user table: the learner's id is in hand.
        assert not any("auth_user" in q["sql"] for q in ctx.captured_queries)

    def test_scopes_on_another_alias_are_read_there(self) -> None:
        # The union joins only the tables of one database: a scope whose model a router writes
        # elsewhere is read there, in a statement of its own.
        with (
            override_settings(DATABASE_ROUTERS=[_InfoOnHistory(), *settings.DATABASE_ROUTERS]),
            mock.patch("kvstate.model_data._read") as read,
        ):
            FieldDataCache([block(usage(), self.user.pk)], COURSE_KEY, self.user)
        reads = [(call.args[0], len(call.args[1])) for call in read.call_args_list]
        assert reads == [("default", 3), (HISTORY, 1)]

    def test_scopes_without_fields_cost_nothing(self) -> None:
        for scope_name, expected in [
            ("user_state", 1),
            ("user_state_summary", 1),
            ("preferences", 1),
            ("user_info", 1),
        ]:
            cls = block_class(getattr(Scope, scope_name), "f")
            with self.subTest(scope=scope_name), self.assertNumQueries(expected) as ctx:
                FieldDataCache([block(usage(), self.user.pk, cls)], COURSE_KEY, self.user)
            assert not any("auth_user" in q["sql"] for q in ctx.captured_queries)
        with no_queries(self):
            FieldDataCache([block(usage(), self.user.pk, AuthoredBlock)], COURSE_KEY, self.user)

    def test_extending_a_cache(self) -> None:
        # add_blocks_to_cache costs what building over the new blocks would: 1, the union.
        with self.assertNumQueries(1), self.assertNumQueries(0, using=HISTORY):
            self.cache.add_blocks_to_cache([block(usage("p2"), self.user.pk)])

    def test_reads_of_cached_keys(self) -> None:
        keys = [key(self.block, name) for name in ("answer", "tally", "theme", "nickname")]
        missing = [k._replace(field_name="missing") for k in keys]
        with no_queries(self):
            for k in keys:
                assert self.kvs.has(k)
                self.kvs.get(k)
                self.cache.last_modified(k)
            for k in missing:
                assert not self.kvs.has(k)


class WriteBudgets:
    """The writes, with the statement counts for history on its own alias.

    ``SHARED`` turns on the counts for history on ``default`` (one INSERT moves there).
    """

    SHARED = False
    cache: FieldDataCache
    kvs: DjangoKeyValueStore
    user: Any
    block: Any

    def counts(self, state: int, history: int) -> tuple[int, int]:
        """Return (default, history alias) counts for ``state`` + ``history`` statements."""
        return (state + history, 0) if self.SHARED else (state, history)

    def test_set_user_state_existing_row(self) -> None:
        # 1 compare-and-swap UPDATE; 1 history INSERT.
        with self.statements(*self.counts(1, 1)):  # type: ignore[attr-defined]
            self.kvs.set(key(self.block, "answer"), 2)
        assert json.loads(StudentModule.objects.get(module_state_key=usage()).state) == {
            "answer": 2
        }

    def test_set_user_state_new_row(self) -> None:
        # 1 INSERT ... ON CONFLICT DO NOTHING / INSERT IGNORE with RETURNING; 1 history INSERT.
        new = block(usage("new"), self.user.pk)
        with self.statements(*self.counts(1, 1)):  # type: ignore[attr-defined]
            self.kvs.set(key(new, "answer"), 1)
        assert StudentModule.objects.filter(module_state_key=usage("new")).exists()

    def test_set_many_user_state_fields_of_one_block(self) -> None:
        # Any number of fields of one block is one state: 1 UPDATE; 1 history INSERT.
        kv_dict = {state_key(f"f{n}", self.user.pk): n for n in range(20)}
        with self.statements(*self.counts(1, 1)):  # type: ignore[attr-defined]
            self.kvs.set_many(kv_dict)

    def test_set_user_state_of_several_blocks(self) -> None:
        # 3 existing rows and 2 new ones: 1 INSERT for the new, 1 UPDATE (one CASE) for the
        # existing, in one transaction; 1 history INSERT for all five rows.
        names = ["e1", "e2", "e3", "n1", "n2"]
        for name in names[:3]:
            StudentModuleFactory(student=self.user, module_state_key=usage(name), state="{}")
        blocks = [block(usage(name), self.user.pk) for name in names]
        self.cache.add_blocks_to_cache(blocks)
        before = self.history_rows()  # the factory's saves leave history too (ORM saves do)
        with self.statements(*self.counts(2, 1)):  # type: ignore[attr-defined]
            self.kvs.set_many({key(b, "answer"): 1 for b in blocks})
        assert self.history_rows() - before == 5

    def test_set_user_state_untracked_block_type(self) -> None:
        # No history for block types outside KVSTATE_HISTORY_BLOCK_TYPES: 1 INSERT only.
        other = block(usage("h1", "html"), self.user.pk)
        with self.statements(1, 0):  # type: ignore[attr-defined]
            self.kvs.set(key(other, "answer"), 1)

    def test_delete_user_state_field(self) -> None:
        # 1 compare-and-swap UPDATE; 1 history INSERT.
        with self.statements(*self.counts(1, 1)):  # type: ignore[attr-defined]
            self.kvs.delete(key(self.block, "answer"))
        assert StudentModule.objects.get(module_state_key=usage()).state == "{}"

    def test_set_per_field_values(self) -> None:
        # k values of one per-field scope: 1 upsert (INSERT ... ON CONFLICT / ON DUPLICATE KEY
        # UPDATE), new and existing rows alike. No history.
        uid = self.user.pk
        for make_key in (summary_key, lambda n: prefs_key(n, uid), lambda n: info_key(n, uid)):
            kv_dict = {make_key(f"f{n}"): n for n in range(10)}
            scope_name = next(iter(kv_dict)).scope.name
            with self.subTest(scope=scope_name), self.statements(1, 0):  # type: ignore[attr-defined]
                self.kvs.set_many(kv_dict)

    def test_delete_per_field_value(self) -> None:
        # 1 DELETE per key (the KeyValueStore API deletes one key at a time).
        for name in ("tally", "theme", "nickname"):
            with self.subTest(field=name), self.statements(1, 0):  # type: ignore[attr-defined]
                self.kvs.delete(key(self.block, name))

    def test_set_many_every_scope(self) -> None:
        # What XBlock.save() sends for a block with dirty fields in all four scopes: one
        # statement per scope (1 UPDATE + 3 upserts) in one transaction; 1 history INSERT.
        kv_dict = {
            key(self.block, name): 5
            for name in ("answer", "attempts", "tally", "theme", "nickname")
        }
        before = self.history_rows()
        with self.statements(*self.counts(4, 1)):  # type: ignore[attr-defined]
            self.kvs.set_many(kv_dict)
        assert self.history_rows() - before == 1

    def history_rows(self) -> int:
        return StudentModuleHistory.objects.count()


class TestWriteBudgets(WriteBudgets, BudgetTestCase):
    pass


@override_settings(DATABASE_ROUTERS=[])
class TestBudgetsWithSharedHistory(HistoryTableOnDefault, WriteBudgets, BudgetTestCase):
    """History on ``default``: written inside the state's transaction, 1 more statement there.

    Without the router ``StudentModuleHistory`` lives on ``default``. The test database has no
    history table there (the router migrates it onto its own alias), so the class creates one.
    """

    SHARED = True

    def test_history_is_on_default(self) -> None:
        before = StudentModuleHistory.objects.using("default").count()  # the setUp's save
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set(key(self.block, "answer"), 2)
        assert StudentModuleHistory.objects.using("default").count() - before == 1
        assert StudentModuleHistory.objects.using(HISTORY).count() == 0
