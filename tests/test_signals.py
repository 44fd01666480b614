"""``kvstate.signals.state_changed`` (SPEC §9): once per write call that changed user_state rows.

kvstate's writes are SQL statements, so Django sends no ``post_save`` for them; code that
follows learners' writes (grading, completion, events) listens to ``state_changed`` instead. It
is sent after the change commits, never for one that rolls back, and a failing receiver cannot
turn a saved write into an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError, connections, transaction
from django.db.models.signals import post_save
from django.test import TestCase, TransactionTestCase
from xblock.exceptions import KeyValueMultiSaveError

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, set_score
from kvstate.models import StudentModule
from kvstate.signals import state_changed
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import COURSE_KEY, block, info_key, key, summary_key, usage

DATABASES = {"default", "student_module_history"}


@contextmanager
def received() -> Iterator[list[dict[str, Any]]]:
    """Collect what ``state_changed`` receivers get while the block runs."""
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append({"sender": sender, **kwargs})

    state_changed.connect(receiver)
    try:
        yield calls
    finally:
        state_changed.disconnect(receiver)


def sent(calls: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Return each call as (sender, user_id, sorted usage keys as strings, using)."""
    return [
        (c["sender"], c["user_id"], sorted(map(str, c["usage_keys"])), c["using"]) for c in calls
    ]


class StateChangedTests(TestCase):
    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        self.client = DjangoXBlockUserStateClient(self.user)
        self.block = block(usage(), self.user.pk)
        self.kvs = DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, self.user))

    def committed(self) -> Any:
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def one(self, *keys: Any) -> list[tuple[Any, ...]]:
        return [(StudentModule, self.user.pk, sorted(map(str, keys)), "default")]

    def test_client_writes_send_it_once_per_call(self) -> None:
        keys = [usage(f"p{i}") for i in range(3)]
        with received() as calls, self.committed():
            self.client.set_many(self.user.username, {k: {"a": 1} for k in keys})
        assert sent(calls) == self.one(*keys)
        with received() as calls, self.committed():
            self.client.delete_many(self.user.username, keys[:2], fields=["a"])
        assert sent(calls) == self.one(*keys[:2])
        with received() as calls, self.committed():
            self.client.set(self.user.username, keys[0], {"b": 2})
            self.client.delete(self.user.username, keys[1])
        assert sent(calls) == self.one(keys[0]) + self.one(keys[1])

    def test_key_value_store_writes_send_it_for_user_state_only(self) -> None:
        with received() as calls, self.committed():
            self.kvs.set(key(self.block, "answer"), 1)
        assert sent(calls) == self.one(usage())
        with received() as calls, self.committed():
            # Four scopes in one call: one signal, for the user_state block.
            self.kvs.set_many({key(self.block, n): 2 for n in ("answer", "tally", "theme")})
        assert sent(calls) == self.one(usage())
        with received() as calls, self.committed():
            self.kvs.delete(key(self.block, "answer"))
        assert sent(calls) == self.one(usage())
        with received() as calls, self.committed():
            self.kvs.set_many({summary_key("tally"): 3, info_key("nickname", self.user.pk): 4})
            self.kvs.delete(key(self.block, "theme"))
        assert calls == []

    def test_set_score_sends_it(self) -> None:
        with received() as calls, self.committed():
            set_score(self.user.pk, usage(), 1.0, 2.0)
        assert sent(calls) == self.one(usage())

    def test_it_waits_for_the_commit(self) -> None:
        with received() as calls:
            with self.captureOnCommitCallbacks(using="default") as callbacks:
                self.client.set(self.user.username, usage(), {"a": 1})
                assert calls == []
            for callback in callbacks:
                callback()
        assert sent(calls) == self.one(usage())

    def test_writes_that_change_nothing_send_nothing(self) -> None:
        read_only = DjangoKeyValueStore(
            FieldDataCache([self.block], COURSE_KEY, self.user, read_only=True)
        )
        visitor = DjangoKeyValueStore(FieldDataCache([block()], COURSE_KEY, AnonymousUser()))
        with received() as calls, self.committed():
            self.client.delete_many(self.user.username, [usage("missing")])
            self.client.set_many(self.user.username, {usage("p1"): {}})
            read_only.set(key(self.block, "answer"), 1)
            visitor.set(key(block(), "answer"), 1)
        assert calls == []

    def test_orm_saves_send_post_save_instead(self) -> None:
        saved: list[Any] = []

        def on_save(sender: Any, instance: Any, **kwargs: Any) -> None:
            saved.append(instance.pk)

        post_save.connect(on_save, sender=StudentModule)
        self.addCleanup(post_save.disconnect, on_save, sender=StudentModule)
        with received() as calls, self.committed():
            module = StudentModule.objects.create(
                student=self.user, module_state_key=usage(), course_id=COURSE_KEY, state="{}"
            )
        assert calls == []
        assert saved == [module.pk]

    def test_a_failing_receiver_does_not_fail_the_saved_write(self) -> None:
        def broken(sender: Any, **kwargs: Any) -> None:
            raise DatabaseError("receiver failed")

        state_changed.connect(broken)
        self.addCleanup(state_changed.disconnect, broken)
        with self.assertLogs("django.dispatch", "ERROR") as logs, self.committed():
            self.kvs.set(key(self.block, "answer"), 1)  # no KeyValueMultiSaveError
        assert "broken" in logs.records[0].getMessage()
        assert DjangoXBlockUserStateClient(self.user).get(self.user.username, usage()).state == {
            "answer": 1
        }


class StateChangedCommitTests(TransactionTestCase):
    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        self.client = DjangoXBlockUserStateClient(self.user)

    def test_an_autocommitted_write_sends_it_before_returning(self) -> None:
        with received() as calls:
            self.client.set(self.user.username, usage(), {"a": 1})
            assert len(calls) == 1

    def test_a_rolled_back_write_sends_nothing(self) -> None:
        def failing_request() -> None:
            with transaction.atomic():
                self.client.set(self.user.username, usage(), {"a": 1})
                set_score(self.user.pk, usage("p2"), 1.0, 1.0)
                raise RuntimeError("the request failed")

        with received() as calls, pytest.raises(RuntimeError):
            failing_request()
        assert calls == []

    def test_a_failed_write_sends_nothing(self) -> None:
        cache = FieldDataCache([block(usage(), self.user.pk)], COURSE_KEY, self.user)
        kvs = DjangoKeyValueStore(cache)

        def refuse_info(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            if "courseware_xmodulestudentinfofield" in sql:
                raise DatabaseError("injected failure")
            return execute(sql, params, many, context)

        # user_state is written first, then the transaction fails on user_info: rolled back.
        with (
            received() as calls,
            connections["default"].execute_wrapper(refuse_info),
            pytest.raises(KeyValueMultiSaveError),
        ):
            kvs.set_many(
                {
                    key(block(usage(), self.user.pk), "answer"): 1,
                    info_key("nickname", self.user.pk): 2,
                }
            )
        assert calls == []
        assert not StudentModule.objects.exists()
