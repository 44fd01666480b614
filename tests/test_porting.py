"""Open edX code runs unchanged on kvstate once the import prefix changes (SPEC §9).

The functions at the top are written the way Open edX's instructor dashboard, rescoring tasks
and reports use this layer: they load ``StudentModule`` rows, edit them and ``save()`` them, and
read them back with ``chunked_filter``, ``get_state_by_params``, the client and a
``ScoresClient``. Only their imports name kvstate. The tests run them against learners who
answered through ``FieldDataCache`` as the LMS does, in autocommit as a web request or a
celery task does, and check the rows and the history Open edX would leave.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from django.test import TransactionTestCase
from opaque_keys.edx.keys import CourseKey, UsageKey
from opaque_keys.edx.locator import CourseLocator

# Open edX: from lms.djangoapps.courseware.models import StudentModule, StudentModuleHistory
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, ScoresClient
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import ScoredBlock, block, key

# ---- Open edX-style code: instructor tools, a rescoring task, a report -------------------------


def reset_student_attempts(
    course_id: CourseKey, student: Any, module_state_key: UsageKey, delete_module: bool = False
) -> None:
    """Reset a learner's attempts on a problem, or delete their state (instructor dashboard)."""
    module_to_reset = StudentModule.objects.get(
        student_id=student.id, course_id=course_id, module_state_key=module_state_key
    )
    if delete_module:
        module_to_reset.delete()
        return
    problem_state = json.loads(module_to_reset.state) if module_to_reset.state else {}
    if problem_state.get("attempts", 0) > 0:
        problem_state["attempts"] = 0
        module_to_reset.state = json.dumps(problem_state)
        module_to_reset.save()


def rescore_problem(
    course_id: CourseKey, usage_key: UsageKey, grade_of: Callable[[dict[str, Any]], float]
) -> int:
    """Grade every learner's answer to a problem again (an instructor task); return how many."""
    rescored = 0
    for module in StudentModule.objects.filter(course_id=course_id, module_state_key=usage_key):
        module.grade = grade_of(json.loads(module.state))
        module.save()
        rescored += 1
    return rescored


def problem_responses_report(
    course_id: CourseKey, usage_keys: Iterable[UsageKey]
) -> list[tuple[str, str, Any, float | None]]:
    """Return (learner id, block id, answer, grade) for every response (a CSV report)."""
    rows = StudentModule.objects.chunked_filter(
        "module_state_key__in", usage_keys, chunk_size=2, course_id=course_id
    )
    return sorted(
        (
            str(module.student_id),
            module.module_state_key.block_id,
            json.loads(module.state or "{}").get("answer"),
            module.grade,
        )
        for module in rows
    )


def learner_submission_history(student: Any, course_id: CourseKey, usage_key: UsageKey) -> list:
    """Return a learner's states of a problem, newest first (the staff history page)."""
    modules = StudentModule.get_state_by_params(course_id, [usage_key], student_id=student.id)
    return [
        (json.loads(entry.state) if entry.state else None, entry.grade)
        for entry in StudentModuleHistory.get_history(modules)
    ]


# ---- The tests -----------------------------------------------------------------------------------

COURSE = CourseLocator("edX", "Porting", "2026")
P1 = COURSE.make_usage_key("problem", "p1")
P2 = COURSE.make_usage_key("problem", "p2")


class InstructorToolsTests(TransactionTestCase):
    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.alice, self.bob = UserFactory(username="alice"), UserFactory(username="bob")
        for user, answers in ((self.alice, ("a", "b")), (self.bob, ("b", "b"))):
            self.answer(user, P1, answers[0], attempts=2)
            self.answer(user, P2, answers[1], attempts=1)

    def answer(self, user: Any, usage_key: UsageKey, answer: str, attempts: int) -> None:
        """Submit an answer as the LMS does: a block's fields saved through the key-value store."""
        problem = block(usage_key, user.pk, ScoredBlock)
        kvs = DjangoKeyValueStore(FieldDataCache([problem], COURSE, user))
        kvs.set_many({key(problem, "answer"): answer, key(problem, "attempts"): attempts})

    def history(self, user: Any, usage_key: UsageKey) -> list[Any]:
        return learner_submission_history(user, COURSE, usage_key)

    def test_resetting_attempts_keeps_the_answer_and_leaves_history(self) -> None:
        reset_student_attempts(COURSE, self.alice, P1)
        module = StudentModule.objects.get(student=self.alice, module_state_key=P1)
        assert json.loads(module.state) == {"answer": "a", "attempts": 0}
        assert self.history(self.alice, P1) == [
            ({"answer": "a", "attempts": 0}, None),
            ({"answer": "a", "attempts": 2}, None),
        ]
        # The client sees the same history (the staff "submission history" view uses it).
        client = DjangoXBlockUserStateClient()
        assert [e.state for e in client.get_history("alice", P1)] == [
            {"answer": "a", "attempts": 0},
            {"answer": "a", "attempts": 2},
        ]
        assert self.history(self.bob, P1) == [({"answer": "b", "attempts": 2}, None)]

    def test_rescoring_saves_each_grade_with_its_history(self) -> None:
        assert rescore_problem(COURSE, P1, lambda state: float(state["answer"] == "b")) == 2
        assert self.history(self.alice, P1)[0] == ({"answer": "a", "attempts": 2}, 0.0)
        assert self.history(self.bob, P1)[0] == ({"answer": "b", "attempts": 2}, 1.0)
        # Grading reads the new scores from the scorable blocks of a learner's course.
        cache = FieldDataCache([block(P1, self.bob.pk, ScoredBlock)], COURSE, self.bob)
        scores = ScoresClient.create_for_locations(COURSE, self.bob.pk, cache.scorable_locations)
        score = scores.get(P1)
        assert score is not None
        assert score.correct == 1.0

    def test_a_report_over_every_response(self) -> None:
        rescore_problem(COURSE, P2, lambda state: 1.0)
        assert problem_responses_report(
            COURSE, [P1, P2, COURSE.make_usage_key("problem", "x")]
        ) == [
            (str(self.alice.pk), "p1", "a", None),
            (str(self.alice.pk), "p2", "b", 1.0),
            (str(self.bob.pk), "p1", "b", None),
            (str(self.bob.pk), "p2", "b", 1.0),
        ]

    def test_the_learner_keeps_working_after_the_instructor(self) -> None:
        reset_student_attempts(COURSE, self.alice, P1)
        self.answer(self.alice, P1, "c", attempts=1)
        assert self.history(self.alice, P1) == [
            ({"answer": "c", "attempts": 1}, None),
            ({"answer": "a", "attempts": 0}, None),
            ({"answer": "a", "attempts": 2}, None),
        ]

    def test_deleting_a_learners_state_deletes_its_history(self) -> None:
        module_id = StudentModule.objects.get(student=self.alice, module_state_key=P1).pk
        reset_student_attempts(COURSE, self.alice, P1, delete_module=True)
        assert not StudentModule.objects.filter(pk=module_id).exists()
        assert not StudentModuleHistory.objects.filter(student_module_id=module_id).exists()
        assert len(self.history(self.bob, P1)) == 1

    def test_save_state_as_open_edx_tools_call_it(self) -> None:
        StudentModule.save_state(
            self.bob, COURSE, P2, {"state": json.dumps({"answer": "a"}), "grade": 0.0}
        )
        assert self.history(self.bob, P2) == [
            ({"answer": "a"}, 0.0),
            ({"answer": "b", "attempts": 1}, None),
        ]
