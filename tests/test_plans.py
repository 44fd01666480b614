"""The plans of the read path: every statement uses its index, whatever the statistics say.

A planner's choice depends on its statistics, so each test first makes them known: it loads a
table, analyses it, and then loads what real sites load between two analyses (a new course
run, a new learner). The old prefetch (with the course in its condition) read the whole new
course through the course index for 20 rows; these tests EXPLAIN the statements kvstate
issues and fail on a full scan, a sort, or rows read by an index and thrown away (the scale
benchmark's flagger, :mod:`benchmarks.plans`). SQLite's planner ignores such statistics.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import TransactionTestCase
from opaque_keys.edx.keys import CourseKey

from benchmarks import plans
from kvstate.model_data import FieldDataCache, ScoresClient
from kvstate.models import StudentModule
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import ScoredBlock, block

KNOWN = CourseKey.from_string("course-v1:kvstate+Plans+known")
FRESH = CourseKey.from_string("course-v1:kvstate+Plans+fresh")
LEARNERS = 30
ROWS_EACH = 100
UNIQUE_INDEX = "courseware_studentmodule_student_module_course_uniq"
TABLE = StudentModule._meta.db_table


def _rows(course: CourseKey, learner_ids: range, count: int) -> list[StudentModule]:
    return [
        StudentModule(
            student_id=learner,
            course_id=course,
            module_state_key=course.make_usage_key("problem", f"p{n}"),
            module_type="problem",
            state=f'{{"answer": {n}}}',
            grade=1.0,
            max_grade=1.0,
        )
        for learner in learner_ids
        for n in range(count)
    ]


@pytest.mark.skipif(
    connections["default"].vendor == "sqlite", reason="SQLite plans without statistics"
)
class TestReadPlans(TransactionTestCase):
    """Each read statement of the request path and of iteration, explained on a real plan."""

    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        users = get_user_model()._default_manager
        self.learners = [users.create(username=f"learner{n}") for n in range(LEARNERS + 1)]
        ids = [user.pk for user in self.learners]
        StudentModule.objects.bulk_create(_rows(KNOWN, range(ids[0], ids[-1]), ROWS_EACH))
        self.analyse()
        # Loaded after the analysis, as on a site between two: a course run the statistics do
        # not know (1,000 rows of one learner, the first 20 blocks of nine others) and a
        # learner they do not know.
        self.newcomer = self.learners[-1]
        StudentModule.objects.bulk_create(_rows(FRESH, range(ids[0], ids[0] + 1), 1000))
        StudentModule.objects.bulk_create(_rows(FRESH, range(ids[1], ids[10]), 20))
        StudentModule.objects.bulk_create(_rows(KNOWN, range(ids[-1], ids[-1] + 1), 1000))

    def analyse(self) -> None:
        connection = connections["default"]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {connection.ops.quote_name(TABLE)}")
            else:
                cursor.execute(f"ANALYZE TABLE {connection.ops.quote_name(TABLE)}")
                cursor.fetchall()

    def assert_plans_clean(self, run: Any) -> list[plans.Verdict]:
        with plans.capture(["default"]) as statements:
            run()
        selects = [s for s in statements if s.sql.lstrip().upper().startswith("SELECT")]
        assert selects
        indexes = plans.index_columns(["default"], [TABLE])
        verdicts = [plans.explain(s, {TABLE: 1}, indexes) for s in selects]
        for statement, verdict in zip(selects, verdicts, strict=True):
            assert not verdict.flags, (statement.sql, verdict.summary, verdict.flags)
        return verdicts

    def unit(self, course: CourseKey, learner: Any) -> list[Any]:
        return [
            block(course.make_usage_key("problem", f"p{n}"), learner.pk, ScoredBlock)
            for n in range(20)
        ]

    def test_prefetch_of_a_course_newer_than_the_statistics_reads_only_the_unit(self) -> None:
        learner = self.learners[0]
        verdicts = self.assert_plans_clean(
            lambda: FieldDataCache(self.unit(FRESH, learner), FRESH, learner)
        )
        assert UNIQUE_INDEX in verdicts[0].summary

    def test_prefetch_of_a_learner_newer_than_the_statistics_reads_only_the_unit(self) -> None:
        verdicts = self.assert_plans_clean(
            lambda: FieldDataCache(self.unit(KNOWN, self.newcomer), KNOWN, self.newcomer)
        )
        assert UNIQUE_INDEX in verdicts[0].summary

    def test_get_many_and_scores_read_only_the_blocks_asked(self) -> None:
        learner = self.learners[0]
        usages = [FRESH.make_usage_key("problem", f"p{n}") for n in range(20)]
        client = DjangoXBlockUserStateClient(learner)
        for verdict in self.assert_plans_clean(
            lambda: list(client.get_many(learner.username, usages))
        ):
            assert UNIQUE_INDEX in verdict.summary
        for verdict in self.assert_plans_clean(
            lambda: ScoresClient.create_for_locations(FRESH, learner.pk, usages)
        ):
            assert UNIQUE_INDEX in verdict.summary

    def test_iteration_pages_read_their_own_rows_in_index_order(self) -> None:
        client = DjangoXBlockUserStateClient()
        client.iteration_page_size = 100
        verdicts = self.assert_plans_clean(
            lambda: sum(1 for _ in client.iter_all_for_course(KNOWN))
        )
        assert len(verdicts) == (LEARNERS * ROWS_EACH + 1000) // 100 + 1
