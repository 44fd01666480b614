"""Reads that feed a write or a learner's request use the write alias; read-only work may not.

A deployment's read/write-split router sends ``db_for_read`` to a replica. If kvstate read a
learner's state there, the next request would read a stale value and write it back (SPEC §10).
Here the "replica" is the history database, which holds none of the state or user tables: a
read sent there fails outright, so every passing read below provably went to the write alias.
The real thing, a lagging PostgreSQL hot standby, is in ``tests/test_cluster_replica.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.test import SimpleTestCase, TestCase, override_settings

from kvstate.conf import HISTORY_ALIAS
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, get_score, set_score
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.routers import read_alias
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentModuleFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import COURSE_KEY, block, key, usage

ROUTERS = ["kvstate.routers.StudentModuleHistoryRouter", "tests.test_read_routing.ReadsElsewhere"]


class ReadsElsewhere:
    """A split router whose "replica" is the history database (it has none of these tables)."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return HISTORY_ALIAS

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"


@override_settings(DATABASE_ROUTERS=ROUTERS)
class SplitRouterTestCase(TestCase):
    """A learner with a value in every scope of block p1, behind :class:`ReadsElsewhere`."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"answer": 1}')
        UserStateSummaryFactory(usage_id=usage(), field_name="tally", value="7")
        StudentPrefsFactory(student=self.user, module_type="problem", field_name="theme")
        StudentInfoFactory(student=self.user, field_name="nickname", value='"ada"')
        self.block = block(usage(), self.user.pk)
        self.client = DjangoXBlockUserStateClient()

    @contextlib.contextmanager
    def nothing_read_from_the_replica(self) -> Iterator[None]:
        with self.assertNumQueries(0, using=HISTORY_ALIAS):
            yield


class ReadsFeedingWritesTests(SplitRouterTestCase):
    def test_the_router_does_send_reads_to_the_replica(self) -> None:
        # Otherwise the tests below would prove nothing.
        from django.db import router

        assert router.db_for_read(StudentModule) == HISTORY_ALIAS
        assert router.db_for_read(get_user_model()) == HISTORY_ALIAS
        assert router.db_for_write(StudentModule) == "default"

    def test_field_data_cache_prefetches_every_scope_from_the_write_alias(self) -> None:
        with self.nothing_read_from_the_replica(), self.assertNumQueries(1, using="default"):
            # One statement (a UNION ALL) for the four scopes with fields, on the write alias.
            kvs = DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, self.user))
        assert kvs.get(key(self.block, "answer")) == 1
        assert kvs.get(key(self.block, "tally")) == 7
        assert kvs.has(key(self.block, "theme"))
        assert kvs.get(key(self.block, "nickname")) == "ada"

    def test_get_score_reads_the_write_alias(self) -> None:
        with self.captureOnCommitCallbacks(using="default", execute=True):
            set_score(self.user.pk, usage(), 3.0, 4.0)
        with self.nothing_read_from_the_replica(), self.assertNumQueries(1, using="default"):
            module = get_score(self.user.pk, usage())
        assert module is not None
        assert (module.grade, module.max_grade) == (3.0, 4.0)

    def test_client_reads_and_username_lookups_use_the_write_alias(self) -> None:
        client = DjangoXBlockUserStateClient()
        with self.nothing_read_from_the_replica(), self.assertNumQueries(2, using="default"):
            # The username, then the rows.
            [found] = client.get_many(self.user.username, [usage()])
        assert found.state == {"answer": 1}
        with (
            self.assertNumQueries(1, using=HISTORY_ALIAS),  # history's INSERT; nothing read
            self.captureOnCommitCallbacks(using="default", execute=True),
        ):
            DjangoXBlockUserStateClient().set(self.user.username, usage("p2"), {"a": 2})
        assert DjangoXBlockUserStateClient().get(self.user.username, usage("p2")).state == {"a": 2}

    def test_history_reads_follow_the_history_router(self) -> None:
        with self.captureOnCommitCallbacks(using="default", execute=True):
            DjangoXBlockUserStateClient().set(self.user.username, usage(), {"answer": 2})
        [entry] = DjangoXBlockUserStateClient().get_history(self.user.username, usage())
        assert entry.state == {"answer": 2}


class ReadOnlyWorkTests(SplitRouterTestCase):
    """Iteration is read-only: ``using=``, else ``KVSTATE_READ_ALIAS``, else the router."""

    def test_using_picks_the_alias(self) -> None:
        with self.nothing_read_from_the_replica():
            assert [e.state for e in self.client.iter_all_for_block(usage(), using="default")] == [
                {"answer": 1}
            ]
            assert [
                e.state for e in self.client.iter_all_for_course(COURSE_KEY, using="default")
            ] == [{"answer": 1}]

    @override_settings(KVSTATE_READ_ALIAS="default")
    def test_the_read_alias_setting_picks_the_alias(self) -> None:
        with self.nothing_read_from_the_replica():
            assert [e.state for e in self.client.iter_all_for_block(usage())] == [{"answer": 1}]
            assert [e.state for e in self.client.iter_all_for_course(COURSE_KEY, "problem")] == [
                {"answer": 1}
            ]

    def test_without_either_the_router_decides(self) -> None:
        # Read-only work goes where the router sends reads: here a database without the table.
        with self.assertNumQueries(1, using=HISTORY_ALIAS), pytest.raises(DatabaseError):
            list(self.client.iter_all_for_block(usage()))


class ReadAliasTests(SimpleTestCase):
    def test_using_wins_over_the_setting_and_the_router(self) -> None:
        with override_settings(KVSTATE_READ_ALIAS="default", DATABASE_ROUTERS=ROUTERS):
            assert read_alias(StudentModule, "elsewhere") == "elsewhere"

    def test_the_setting_wins_over_the_router(self) -> None:
        with override_settings(KVSTATE_READ_ALIAS="default", DATABASE_ROUTERS=ROUTERS):
            assert read_alias(StudentModule) == "default"

    def test_by_default_the_router_decides(self) -> None:
        with override_settings(DATABASE_ROUTERS=ROUTERS):
            assert read_alias(StudentModule) == HISTORY_ALIAS
        assert read_alias(StudentModule) == "default"
        assert read_alias(StudentModuleHistory) == HISTORY_ALIAS
