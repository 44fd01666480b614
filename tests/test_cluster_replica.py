"""Behind a primary/replica router, a lagging replica never makes a learner read stale state.

A real PostgreSQL primary and streaming hot standby (``scripts/cluster/pg-replica start``),
``KVSTATE_TEST_DB=pg-replica``: ``default`` and ``student_module_history`` on the primary,
``replica`` on the standby, and an ordinary split router (reads to the replica, writes to the
primary) listed after kvstate's. Replay is paused on the standby during each test, so the
replica lags deterministically: whatever a test writes is not there. Each "request" below is a
fresh cache (or runtime), as a new web request builds.

Run: ``KVSTATE_TEST_DB=pg-replica python -m pytest -m cluster``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.db import connections
from django.test import TransactionTestCase, override_settings
from xblock.fields import Scope

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, get_score, set_score
from kvstate.models import StudentModule, XModuleUserStateSummaryField
from kvstate.testing.factories import UserFactory
from kvstate.testing.runtime import AuthoredContent, new_request
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import COURSE_KEY, block, key, usage
from tests.cluster import figures, replay_paused

pytestmark = pytest.mark.cluster("pg-replica")

POLL = COURSE_KEY.make_usage_key("poll", "favourite_colour")
FIELDS = {
    Scope.user_state: "answer",
    Scope.user_state_summary: "tally",
    Scope.preferences: "theme",
    Scope.user_info: "nickname",
}


class ReplicaTestCase(TransactionTestCase):
    databases = "__all__"

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # A run killed mid-test leaves replay paused: start from a replica that keeps up.
        with connections["replica"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")

    def setUp(self) -> None:
        self.user = UserFactory()
        self.block = block(usage(), self.user.pk)
        paused = replay_paused()
        paused.__enter__()
        self.addCleanup(paused.__exit__, None, None, None)

    def request(self, user: Any = None) -> DjangoKeyValueStore:
        """Start a new request of ``user`` (the learner by default): a fresh cache."""
        user = user or self.user
        return DjangoKeyValueStore(FieldDataCache([block(usage(), user.pk)], COURSE_KEY, user))

    def read(self, name: str) -> Any:
        kvs = self.request()
        field_key = key(self.block, name)
        return kvs.get(field_key) if kvs.has(field_key) else None


class ReplicaLagTests(ReplicaTestCase):
    def test_the_replica_really_lags(self) -> None:
        # The control: through the router, the ORM reads the replica and misses the write.
        # Otherwise the tests below would prove nothing.
        self.request().set(key(self.block, "answer"), 1)
        assert StudentModule.objects.using("default").filter(student=self.user).exists()
        assert not StudentModule.objects.filter(student=self.user).exists()
        new = get_user_model().objects.create(username="new_during_the_lag")
        assert not get_user_model().objects.filter(pk=new.pk).exists()

    def test_every_scope_reads_its_newest_value_in_the_next_request(self) -> None:
        for value in (1, 2, 3):
            self.request().set_many({key(self.block, name): value for name in FIELDS.values()})
            assert {name: self.read(name) for name in FIELDS.values()} == dict.fromkeys(
                FIELDS.values(), value
            )

    def test_sequential_increments_count_every_one(self) -> None:
        # Each request reads the value, adds one and saves it, as a counter in a block does.
        for _ in range(5):
            kvs = self.request()
            for name in FIELDS.values():
                field_key = key(self.block, name)
                kvs.set(field_key, (kvs.get(field_key) if kvs.has(field_key) else 0) + 1)
        stored = {name: self.read(name) for name in FIELDS.values()}
        figures("5 increments per scope, replay paused", **stored)
        assert stored == dict.fromkeys(FIELDS.values(), 5)

    def test_deletes_stay_deleted(self) -> None:
        self.request().set_many({key(self.block, name): "x" for name in FIELDS.values()})
        for name in FIELDS.values():
            self.request().delete(key(self.block, name))
        assert {name: self.read(name) for name in FIELDS.values()} == dict.fromkeys(FIELDS.values())
        # A later write of another field does not bring a deleted one back.
        self.request().set(key(self.block, "attempts"), 1)
        assert {name: self.read(name) for name in FIELDS.values()} == dict.fromkeys(FIELDS.values())

    def test_get_score_sees_the_new_grade(self) -> None:
        set_score(self.user.pk, usage(), 1.0, 4.0)
        set_score(self.user.pk, usage(), 3.0, 4.0)
        module = get_score(self.user.pk, usage())
        assert module is not None
        assert (module.grade, module.max_grade) == (3.0, 4.0)

    def test_a_learner_created_during_the_lag_is_found_by_username(self) -> None:
        new = get_user_model().objects.create(username="created_during_the_lag")
        client = DjangoXBlockUserStateClient()
        client.set(new.username, usage(), {"answer": 42})
        assert DjangoXBlockUserStateClient().get(new.username, usage()).state == {"answer": 42}
        assert [s.state for s in DjangoXBlockUserStateClient().get_many(new.username, [usage()])]

    def test_client_reads_see_the_newest_state(self) -> None:
        for value in range(3):
            DjangoXBlockUserStateClient().set(self.user.username, usage(), {"answer": value})
            [state] = DjangoXBlockUserStateClient().get_many(self.user.username, [usage()])
            assert state.state == {"answer": value}
        history = DjangoXBlockUserStateClient().get_history(self.user.username, usage())
        assert [entry.state for entry in history] == [{"answer": 2}, {"answer": 1}, {"answer": 0}]


class PollOnReplicaTests(ReplicaTestCase):
    def test_two_learners_voting_both_count(self) -> None:
        content = AuthoredContent()
        content.add(POLL, question="Which colour?")
        bob = UserFactory()
        for user, choice in ((self.user, "R"), (bob, "R")):
            runtime = new_request(content, user)
            reply = runtime.call_json_handler(runtime.get_block(POLL), "vote", {"choice": choice})
            assert reply["success"], reply
        runtime = new_request(content, UserFactory())
        tally = runtime.call_get_handler(runtime.get_block(POLL), "student_view_user_state")
        figures("xblock-poll, two votes, replay paused", tally=tally["tally"])
        assert tally["tally"]["R"] == 2
        row = XModuleUserStateSummaryField.objects.using("default").get(usage_id=POLL)
        assert row.value.count('"R": 2') == 1


class RouterOrderTests(ReplicaTestCase):
    @override_settings(
        DATABASE_ROUTERS=[
            "tests.cluster.ReadReplicaRouter",
            "kvstate.routers.StudentModuleHistoryRouter",
        ]
    )
    def test_a_split_router_listed_first_is_reported(self) -> None:
        messages = [m for m in run_checks() if m.id and m.id.startswith("kvstate.")]
        assert [m.id for m in messages] == ["kvstate.E005"]
        assert "tests.cluster.ReadReplicaRouter" in messages[0].msg

    def test_the_shipped_order_is_clean(self) -> None:
        assert [m.id for m in run_checks() if m.id and m.id.startswith("kvstate.")] == []
