"""Open edX's model helpers, with Open edX's signatures and meaning (SPEC §9).

``StudentModule.objects.chunked_filter``, ``StudentModule.get_state_by_params``,
``save_state``, ``all_submitted_problems_read_only`` and ``DONE_TYPES``;
``StudentModuleHistory.HISTORY_SAVING_TYPES``, ``get_history`` and ``csm``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from unittest import mock

from django.contrib.auth.models import AnonymousUser
from django.test import TestCase, TransactionTestCase, override_settings
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator

from kvstate import history
from kvstate.conf import HISTORY_ALIAS
from kvstate.models import (
    EVERY_BLOCK_TYPE,
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.test_scores import run_together
from tests.test_user_state_client import store

COURSE = CourseLocator("kvstate", "Helpers", "2026")
OTHER_COURSE = CourseLocator("kvstate", "Elsewhere", "2026")
DATABASES = {"default", HISTORY_ALIAS}


def problem(i: int, course: CourseLocator = COURSE) -> UsageKey:
    return course.make_usage_key("problem", f"p{i}")


class ChunkedFilterTests(TestCase):
    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        self.keys = [problem(i) for i in range(1200)]
        store([self.user], self.keys[:1100])
        store([UserFactory()], self.keys[:10])

    def test_one_statement_per_chunk(self) -> None:
        found = StudentModule.objects.chunked_filter(
            "module_state_key__in", self.keys, chunk_size=500, student=self.user
        )
        # 1,200 keys in chunks of 500: three SELECTs, run as the result is read.
        with self.assertNumQueries(3, using="default"):
            rows = list(found)
        assert sorted(r.module_state_key.block_id for r in rows) == sorted(
            k.block_id for k in self.keys[:1100]
        )
        assert {r.student_id for r in rows} == {self.user.pk}

    def test_chunks_of_500_by_default_and_lazily(self) -> None:
        with self.assertNumQueries(0, using="default"):  # nothing runs until it is read
            found = StudentModule.objects.chunked_filter(
                "module_state_key__in", self.keys[:1001], course_id=COURSE
            )
        # 1,001 keys: 500 + 500 + 1; both learners' rows.
        with self.assertNumQueries(3, using="default"):
            assert len(list(found)) == 1001 + 10

    def test_every_model_has_it(self) -> None:
        for model in (
            StudentModuleHistory,
            XModuleUserStateSummaryField,
            XModuleStudentPrefsField,
            XModuleStudentInfoField,
        ):
            with self.subTest(model=model.__name__):
                assert list(model.objects.chunked_filter("id__in", [1, 2], chunk_size=1)) == []


class GetStateByParamsTests(TestCase):
    databases = DATABASES

    def test_rows_of_a_course_and_keys_for_all_learners_or_one(self) -> None:
        users = [UserFactory(), UserFactory()]
        for user in users:
            store([user], [problem(1), problem(2), problem(3), problem(1, OTHER_COURSE)])
        found = StudentModule.get_state_by_params(COURSE, [problem(1), problem(2)])
        assert sorted((r.student_id, r.module_state_key.block_id) for r in found) == sorted(
            (u.pk, name) for u in users for name in ("p1", "p2")
        )
        one = StudentModule.get_state_by_params(
            COURSE, [problem(1), problem(2)], student_id=users[1].pk
        )
        assert {r.student_id for r in one} == {users[1].pk}
        # A queryset: Open edX callers filter and count it further.
        assert one.filter(module_state_key=problem(2)).count() == 1


class SaveStateTests(TestCase):
    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()

    def committed(self) -> Any:
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def test_creates_the_row_with_the_defaults(self) -> None:
        key = COURSE.make_usage_key("drag-and-drop-v2", "d1")
        with self.committed():
            StudentModule.save_state(
                self.user, COURSE, key, {"state": '{"a": 1}', "grade": 1.0, "max_grade": 2.0}
            )
        module = StudentModule.objects.get()
        assert (module.student_id, module.module_state_key, module.course_id) == (
            self.user.pk,
            key,
            COURSE,
        )
        # A new row's type is the usage key's block type (SPEC §2), not a model default.
        assert (module.module_type, module.state, module.grade, module.max_grade) == (
            "drag-and-drop-v2",
            '{"a": 1}',
            1.0,
            2.0,
        )

    def test_updates_an_existing_row_and_leaves_history(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        with self.committed():
            client.set(self.user.username, problem(1), {"attempts": 3})
        with self.committed():
            StudentModule.save_state(self.user, COURSE, problem(1), {"grade": 0.5})
        module = StudentModule.objects.get()
        assert (json.loads(module.state), module.grade) == ({"attempts": 3}, 0.5)
        assert [e.state for e in client.get_history(self.user.username, problem(1))] == [
            {"attempts": 3},
            {"attempts": 3},
        ]
        assert StudentModuleHistory.objects.for_module(module.pk)[0].grade == 0.5

    def test_does_nothing_for_anonymous_users(self) -> None:
        with self.assertNumQueries(0, using="default"):  # returns before any query
            assert StudentModule.save_state(AnonymousUser(), COURSE, problem(1), {}) is None
        assert not StudentModule.objects.exists()


class SaveStateRaceTests(TransactionTestCase):
    """Callers creating the same row at once: no IntegrityError, one row, every save recorded."""

    databases = DATABASES
    THREADS = 8
    ROUNDS = 5

    def test_concurrent_first_saves_never_raise(self) -> None:
        user = UserFactory()
        for round_ in range(self.ROUNDS):
            key = problem(100 + round_)
            tasks: list[Callable[[], object]] = [
                lambda i=i, key=key: StudentModule.save_state(
                    user, COURSE, key, {"grade": float(i), "max_grade": 10.0}
                )
                for i in range(self.THREADS)
            ]
            assert run_together(tasks) == []
            module = StudentModule.objects.get(module_state_key=key)
            assert module.grade in {float(i) for i in range(self.THREADS)}
            assert module.max_grade == 10.0
            # One history row per call, whoever created the row.
            assert StudentModuleHistory.objects.filter(student_module_id=module.pk).count() == (
                self.THREADS
            )


class AllSubmittedProblemsTests(TestCase):
    databases = DATABASES

    def test_problems_with_a_grade_in_the_course(self) -> None:
        user = UserFactory()
        store([user], [problem(1), problem(2)], grade=1.0)
        store([user], [problem(3)])  # no grade: not submitted
        store([user], [COURSE.make_usage_key("html", "h1")], grade=1.0)
        store([user], [problem(1, OTHER_COURSE)], grade=1.0)
        found = StudentModule.all_submitted_problems_read_only(COURSE)
        assert sorted(r.module_state_key.block_id for r in found) == ["p1", "p2"]

    def test_it_reads_from_the_read_alias(self) -> None:
        # The router decides by default; KVSTATE_READ_ALIAS (a replica) wins; using= beats both.
        assert StudentModule.all_submitted_problems_read_only(COURSE).db == "default"
        with override_settings(KVSTATE_READ_ALIAS="replica"):
            assert StudentModule.all_submitted_problems_read_only(COURSE).db == "replica"
            found = StudentModule.all_submitted_problems_read_only(COURSE, using="default")
            assert found.db == "default"


class ConstantsTests(TestCase):
    databases = DATABASES

    def test_done_types_as_open_edx_has_them(self) -> None:
        assert StudentModule.DONE_TYPES == (
            ("na", "NOT_APPLICABLE"),
            ("f", "FINISHED"),
            ("i", "INCOMPLETE"),
        )
        assert StudentModule._meta.get_field("done").choices == list(StudentModule.DONE_TYPES)

    def test_history_saving_types_is_the_setting(self) -> None:
        assert {"problem"} == StudentModuleHistory.HISTORY_SAVING_TYPES
        with override_settings(KVSTATE_HISTORY_BLOCK_TYPES=["html", "video"]):
            assert {"html", "video"} == StudentModuleHistory.HISTORY_SAVING_TYPES
        with override_settings(KVSTATE_HISTORY_BLOCK_TYPES=[]):
            assert "problem" not in StudentModuleHistory.HISTORY_SAVING_TYPES
        with override_settings(KVSTATE_HISTORY_BLOCK_TYPES="__all__"):
            saving = StudentModuleHistory.HISTORY_SAVING_TYPES
            assert saving is EVERY_BLOCK_TYPE
            assert "problem" in saving
            assert "any-type-at-all" in saving

    def test_replacing_the_attribute_changes_what_is_recorded(self) -> None:
        # Open edX tests patch it; kvstate reads it for every write.
        with mock.patch.object(StudentModuleHistory, "HISTORY_SAVING_TYPES", {"html"}):
            assert history.records("html")
            assert not history.records("problem")
        assert history.records("problem")


class HistoryHelpersTests(TestCase):
    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        client = DjangoXBlockUserStateClient(self.user)
        for i, key in enumerate([problem(1), problem(2), problem(1)]):
            with self.captureOnCommitCallbacks(using="default", execute=True):
                client.set(self.user.username, key, {"i": i})
        self.modules = list(StudentModule.objects.order_by("id"))

    def test_get_history_is_newest_first_in_one_statement(self) -> None:
        # One SELECT on the history alias, none on default.
        with (
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.assertNumQueries(0, using="default"),
        ):
            entries = StudentModuleHistory.get_history(self.modules)
        assert [json.loads(e.state) for e in entries] == [{"i": 2}, {"i": 1}, {"i": 0}]
        assert [e.student_module_id for e in entries] == [
            self.modules[0].pk,
            self.modules[1].pk,
            self.modules[0].pk,
        ]
        assert StudentModuleHistory.get_history([]) == []

    def test_csm_is_the_module_read_from_its_own_database(self) -> None:
        entry = StudentModuleHistory.get_history(self.modules[1:])[0]
        with self.assertNumQueries(1, using="default"):  # one SELECT by primary key
            assert entry.csm == self.modules[1]
