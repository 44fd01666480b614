"""Rows with deprecated keys, as old Open edX installations wrote them, through every API (§9).

Old Mongo courses have ``org/course/run`` course keys and ``i4x://org/course/category/name``
usage keys. The usage key's string has no run, so the same ``module_id`` appears in every run
of a course; ``course_id`` tells the runs apart. Keys are built with opaque-keys' deprecated
locators; the rows are inserted with plain SQL, as Open edX left them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connections
from django.test import TestCase
from django.utils import timezone
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator
from xblock.fields import Scope

from kvstate.conf import HISTORY_ALIAS
from kvstate.model_data import (
    DjangoKeyValueStore,
    FieldDataCache,
    Score,
    ScoresClient,
    get_score,
    set_score,
)
from kvstate.models import StudentModule, StudentModuleHistory, XModuleUserStateSummaryField
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import block, block_class, key, no_queries

FALL = CourseLocator("edX", "Old", "2012_Fall", deprecated=True)
SPRING = CourseLocator("edX", "Old", "2013_Spring", deprecated=True)
P1 = FALL.make_usage_key("problem", "p1")
P1_SPRING = SPRING.make_usage_key("problem", "p1")
#: What reading ``i4x://edX/Old/problem/p1`` back from a string gives: no run.
P1_NO_RUN = UsageKey.from_string("i4x://edX/Old/problem/p1")
DATABASES = {"default", HISTORY_ALIAS}


class OldKeysTestCase(TestCase):
    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        self.other = UserFactory()
        self.client = DjangoXBlockUserStateClient(self.user)
        self.insert_old_row(self.user, FALL, '{"attempts": 1}', grade=1.0)
        self.insert_old_row(self.user, SPRING, '{"attempts": 7}')
        self.insert_old_row(self.other, FALL, '{"attempts": 2}', grade=0.0)

    def insert_old_row(self, user: Any, course: CourseLocator, state: str, **grade: Any) -> None:
        """Insert a row of ``i4x://edX/Old/problem/p1`` as Open edX wrote it, with plain SQL."""
        connection = connections["default"]
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO courseware_studentmodule (module_type, module_id, course_id, state,"
                " grade, max_grade, done, created, modified, student_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    "problem",
                    "i4x://edX/Old/problem/p1",
                    str(course),
                    state,
                    grade.get("grade"),
                    1.0 if grade else None,
                    "na",
                    now,
                    now,
                    user.pk,
                ],
            )

    def committed(self) -> Any:
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def stored(self) -> list[tuple[Any, ...]]:
        rows = StudentModule.objects.order_by("id").values_list(
            "student_id", "course_id", "state", "grade"
        )
        return [(s, str(c), json.loads(t) if t else t, g) for s, c, t, g in rows]


class OldKeysTests(OldKeysTestCase):
    def test_the_keys_are_stored_as_open_edx_stores_them(self) -> None:
        assert str(P1) == str(P1_SPRING) == "i4x://edX/Old/problem/p1"
        assert (str(FALL), str(SPRING)) == ("edX/Old/2012_Fall", "edX/Old/2013_Spring")

    def test_field_data_cache_reads_and_writes_the_old_row(self) -> None:
        problem = block(P1, self.user.pk)
        cache = FieldDataCache([problem], FALL, self.user)
        kvs = DjangoKeyValueStore(cache)
        attempts = key(problem, "attempts")
        with no_queries(self):
            assert kvs.get(attempts) == 1
        with self.committed():
            kvs.set(attempts, 2)
        assert FieldDataCache([problem], FALL, self.user).get(attempts) == 2
        assert self.stored() == [
            (self.user.pk, "edX/Old/2012_Fall", {"attempts": 2}, 1.0),
            (self.user.pk, "edX/Old/2013_Spring", {"attempts": 7}, None),
            (self.other.pk, "edX/Old/2012_Fall", {"attempts": 2}, 0.0),
        ]

    def test_client_reads_writes_and_history(self) -> None:
        name = self.user.username
        assert [(e.block_key, e.state) for e in self.client.get_many(name, [P1, P1_SPRING])] == [
            (P1, {"attempts": 1}),
            (P1_SPRING, {"attempts": 7}),
        ]
        with self.committed():
            self.client.set_many(name, {P1: {"attempts": 3}, P1_SPRING: {"done": True}})
        with self.committed():
            self.client.delete_many(name, [P1_SPRING], fields=["done"])
        assert self.client.get(name, P1).state == {"attempts": 3}
        assert [e.state for e in self.client.get_history(name, P1)] == [{"attempts": 3}]
        assert [e.state for e in self.client.get_history(name, P1_SPRING)] == [
            {"attempts": 7},
            {"attempts": 7, "done": True},
        ]
        assert len(self.stored()) == 3  # the old rows were written, none added

    def test_a_new_old_style_block_is_stored_as_open_edx_stores_it(self) -> None:
        p2 = FALL.make_usage_key("problem", "p2")
        with self.committed():
            self.client.set(self.user.username, p2, {"a": 1})
        stored = StudentModule.objects.filter(course_id=FALL).values_list("module_state_key")
        assert sorted(str(k) for (k,) in stored) == [
            "i4x://edX/Old/problem/p1",
            "i4x://edX/Old/problem/p1",
            "i4x://edX/Old/problem/p2",
        ]

    def test_iteration_over_a_block_and_a_course(self) -> None:
        fall = sorted(
            (e.username, e.block_key, e.state["attempts"])
            for e in self.client.iter_all_for_block(P1)
        )
        assert fall == sorted([(self.user.username, P1, 1), (self.other.username, P1, 2)])
        course = [e.block_key for e in self.client.iter_all_for_course(SPRING)]
        assert course == [P1_SPRING]

    def test_iteration_over_a_key_without_its_run_finds_every_run(self) -> None:
        # As Open edX, which filters on module_id alone; each key comes back in its own run.
        found = sorted(
            (e.username, str(e.block_key.course_key.run))
            for e in self.client.iter_all_for_block(P1_NO_RUN)
        )
        assert found == sorted(
            [
                (self.user.username, "2012_Fall"),
                (self.user.username, "2013_Spring"),
                (self.other.username, "2012_Fall"),
            ]
        )

    def test_a_key_without_its_run_names_no_row_elsewhere(self) -> None:
        # Which run's row would it be? Refused before any SQL, naming the fix.
        problem = block(P1_NO_RUN, self.user.pk)
        calls = [
            lambda: list(self.client.get_many(self.user.username, [P1_NO_RUN])),
            lambda: self.client.set(self.user.username, P1_NO_RUN, {"a": 1}),
            lambda: self.client.delete(self.user.username, P1_NO_RUN),
            lambda: next(self.client.get_history(self.user.username, P1_NO_RUN)),
            lambda: set_score(self.user.pk, P1_NO_RUN, 1.0, 1.0),
            lambda: FieldDataCache([problem], FALL, self.user),
        ]
        for call in calls:
            with no_queries(self), pytest.raises(ValueError, match="map_into_course"):
                call()

    def test_a_key_without_its_run_still_names_its_shared_fields(self) -> None:
        # user_state_summary rows are keyed by the usage key alone: no run needed, as in Open
        # edX. Only user_state asks for the run.
        XModuleUserStateSummaryField.objects.create(usage_id=P1_NO_RUN, field_name="t", value="3")
        summary_only = block(P1_NO_RUN, self.user.pk, block_class(Scope.user_state_summary, "t"))
        cache = FieldDataCache([summary_only], FALL, self.user)
        assert cache.get(key(summary_only, "t")) == 3

    def test_scores(self) -> None:
        with self.committed():
            set_score(self.user.pk, P1_SPRING, 1.0, 4.0)
        module = get_score(self.user.pk, P1_SPRING)
        assert module is not None
        assert (module.grade, module.max_grade, str(module.course_id)) == (
            1.0,
            4.0,
            "edX/Old/2013_Spring",
        )
        client = ScoresClient.create_for_locations(FALL, self.user.pk, [P1])
        created = StudentModule.objects.get(student=self.user, course_id=FALL).created
        assert client.get(P1) == client.get(P1_NO_RUN) == Score(1.0, 1.0, created)

    def test_model_helpers(self) -> None:
        rows = StudentModule.objects.chunked_filter(
            "module_state_key__in", [P1], course_id=FALL, chunk_size=1
        )
        assert sorted(r.student_id for r in rows) == sorted([self.user.pk, self.other.pk])
        by_params = StudentModule.get_state_by_params(FALL, [P1], student_id=self.user.pk)
        assert [json.loads(r.state) for r in by_params] == [{"attempts": 1}]
        submitted = StudentModule.all_submitted_problems_read_only(FALL)
        assert sorted(r.student_id for r in submitted) == sorted([self.user.pk, self.other.pk])
        with self.committed():
            StudentModule.save_state(self.user, SPRING, P1_SPRING, {"grade": 0.5})
        spring = StudentModule.objects.get(student=self.user, course_id=SPRING)
        assert (json.loads(spring.state), spring.grade) == ({"attempts": 7}, 0.5)
        assert [h.grade for h in StudentModuleHistory.get_history([spring])] == [0.5]
        assert spring.module_state_key.map_into_course(spring.course_id) == P1_SPRING

    def test_user_state_key_of_an_old_block(self) -> None:
        # What KvsFieldData builds for an old block: the usage key with its run.
        k = key(block(P1, self.user.pk), "attempts")
        assert (k.scope, k.block_scope_id) == (Scope.user_state, P1)
