"""The scale benchmark's own logic: the dataset it generates and the EXPLAIN flagger.

Timings are never asserted; these tests pin what the figures rest on. The dataset's shape is
exact (row counts, units of 20, keys kvstate reads back), loading it works on every backend,
with and without dropping the indexes first, and the flagger tells known-bad plans from
known-good ones, on canned plans of each backend and on the real database in use.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connections
from django.test import SimpleTestCase, TransactionTestCase
from opaque_keys.edx.keys import CourseKey, UsageKey
from xblock.fields import Scope

from benchmarks import plans
from benchmarks.dataset import (
    BLOCKS_PER_UNIT,
    INFO_FIELDS,
    RICH_HISTORY,
    Layout,
    Shape,
    generate,
    username,
)
from benchmarks.plans import Statement, explain, flag_mysql, flag_postgres, flag_sqlite, shape
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import StateBlock, block, key

HISTORY = "student_module_history"
SMALL = Shape(rows=3_000, history_rows=3_500, iterate_rows=400)


class LayoutTests(SimpleTestCase):
    def test_row_counts_are_exact(self) -> None:
        for shape_ in (SMALL, Shape(rows=20_000, history_rows=20_000, iterate_rows=2_000)):
            layout = Layout(shape_)
            rows = list(layout.rows_in_order())
            assert len(rows) == shape_.rows
            assert sum(e.blocks for e in layout.enrollments) == shape_.rows
            assert layout.rows_per_course()[layout.iteration_course.key] == shape_.iterate_rows
            # No row twice: one learner, one block.
            identities = {(e.learner, e.course.index, unit, pos) for e, unit, pos in rows}
            assert len(identities) == shape_.rows

    def test_units_have_20_blocks_of_three_types(self) -> None:
        course = Layout(SMALL).courses[0]
        for unit in range(course.units):
            types = Counter(t for t, _usage in course.unit_usages(unit))
            assert types == {"problem": 10, "video": 5, "html": 5}
        assert BLOCKS_PER_UNIT == 20

    def test_keys_are_spelled_as_opaque_keys_spells_them(self) -> None:
        course = Layout(SMALL).courses[1]
        block_type, text = course.unit_usages(3)[7]
        expected = CourseKey.from_string(course.key).make_usage_key(block_type, "u003b07")
        assert text == str(expected)

    def test_some_learners_have_thousands_of_rows_in_one_course(self) -> None:
        layout = Layout(Shape(rows=1_000_000, history_rows=0, iterate_rows=20_000))
        blocks = sorted((e.blocks for e in layout.enrollments), reverse=True)
        assert blocks[0] == 5_000  # course 0 whole
        assert sum(1 for b in blocks if b >= 2_000) >= 50
        assert sum(1 for b in blocks if b < 1_000) > len(blocks) / 2  # most learn a little
        assert len(layout.courses) == 20

    def test_the_same_shape_gives_the_same_layout(self) -> None:
        first, second = Layout(SMALL), Layout(SMALL)
        assert [(e.learner, e.course.key, e.blocks) for e in first.enrollments] == [
            (e.learner, e.course.key, e.blocks) for e in second.enrollments
        ]

    def test_unit_samples_stay_within_full_units_and_off_unit_zero(self) -> None:
        import random

        layout = Layout(SMALL)
        for heavy in (False, True):
            for enrollment, unit in layout.units(random.Random(1), 50, heavy=heavy):
                assert 1 <= unit < enrollment.full_units
                assert enrollment.rows_in_unit(unit) == BLOCKS_PER_UNIT

    def test_bad_shapes_are_refused(self) -> None:
        with pytest.raises(ValueError, match="at least 1,000 rows"):
            Shape(rows=10, history_rows=0, iterate_rows=5)
        with pytest.raises(ValueError, match="half of rows"):
            Shape(rows=2_000, history_rows=0, iterate_rows=1_500)
        with pytest.raises(ValueError, match="negative"):
            Shape(rows=2_000, history_rows=-1, iterate_rows=100)


class GenerateTests(TransactionTestCase):
    databases = {"default", HISTORY}

    def generate(self, rebuild_indexes: bool) -> Layout:
        layout = Layout(SMALL)
        generated = generate(layout, rebuild_indexes=rebuild_indexes)
        problems = sum(
            1
            for course in layout.all_courses
            for unit in range(course.units)
            for pos in range(BLOCKS_PER_UNIT)
            if course.block_type(unit, pos) == "problem"
        )
        expected = {
            "auth_user": layout.learners,
            "courseware_studentmodule": SMALL.rows,
            "courseware_xmoduleuserstatesummaryfield": problems,
            "courseware_xmodulestudentprefsfield": 3 * layout.learners,
            "courseware_xmodulestudentinfofield": len(INFO_FIELDS) * layout.learners,
            "coursewarehistoryextended_studentmodulehistoryextended": SMALL.history_rows,
        }
        assert generated.counts == expected
        # What the loader says matches what the tables hold.
        assert StudentModule.objects.count() == SMALL.rows
        assert StudentModuleHistory.objects.using(HISTORY).count() == SMALL.history_rows
        assert XModuleUserStateSummaryField.objects.count() == problems
        assert XModuleStudentPrefsField.objects.count() == 3 * layout.learners
        assert XModuleStudentInfoField.objects.count() == 2 * layout.learners
        return layout

    def indexes(self) -> dict[str, set[tuple[str, ...]]]:
        found = {}
        for alias, model in (("default", StudentModule), (HISTORY, StudentModuleHistory)):
            connection = connections[alias]
            with connection.cursor() as cursor:
                constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
            found[alias] = {
                (tuple(c["columns"]), bool(c["unique"]))
                for c in constraints.values()
                if c["index"] or c["unique"]
            }
        return found

    def test_loads_the_exact_shape_that_kvstate_reads_back(self) -> None:
        layout = self.generate(rebuild_indexes=False)
        enrollment = layout.enrollments[len(layout.enrollments) // 2]
        user = StudentModule.objects.filter(student_id=enrollment.learner).first().student
        assert user.username == username(enrollment.learner)
        course = CourseKey.from_string(enrollment.course.key)
        usages = [UsageKey.from_string(u) for _type, u in enrollment.course.unit_usages(0)]
        blocks = [block(u, user.pk, StateBlock) for u in usages]
        cache = FieldDataCache(blocks, course, user)
        kvs = DjangoKeyValueStore(cache)
        problem = blocks[enrollment.course.first_problem(0)]
        assert len(cache.cache[Scope.user_state]) == BLOCKS_PER_UNIT
        assert kvs.get(key(problem, "tally")) == {
            f"choice_{enrollment.course.first_problem(0) % 4}": enrollment.course.first_problem(0)
        }
        assert kvs.get(key(problem, "theme")) == "dark"
        assert kvs.get(key(problem, "nickname")) == f"nickname of {enrollment.learner}"
        # A new row gets an id past the generated ones (sequences were reset).
        kvs.set(key(block(course.make_usage_key("problem", "new"), user.pk), "answer"), 1)
        assert StudentModule.objects.count() == SMALL.rows + 1

    def test_rich_modules_have_100_entries_and_the_iterated_course_its_rows(self) -> None:
        layout = self.generate(rebuild_indexes=False)
        assert layout.rich
        for enrollment in layout.rich:
            client = DjangoXBlockUserStateClient()
            course = enrollment.course
            usage = CourseKey.from_string(course.key).make_usage_key(
                "problem", f"u000b{course.first_problem(0):02d}"
            )
            entries = list(client.get_history(username(enrollment.learner), usage))
            assert len(entries) == RICH_HISTORY
        iterated = CourseKey.from_string(layout.iteration_course.key)
        rows = sum(1 for _ in DjangoXBlockUserStateClient().iter_all_for_course(iterated))
        assert rows == SMALL.iterate_rows

    def test_rows_the_statistics_must_not_know_are_loaded_last(self) -> None:
        layout = self.generate(rebuild_indexes=False)
        late = StudentModule.objects.filter(course_id=layout.fresh_course.key) | (
            StudentModule.objects.filter(student_id__in=[e.learner for e in layout.newcomers])
        )
        assert late.count() == sum(e.blocks for e in layout.late) > 0
        settled = StudentModule.objects.exclude(pk__in=late.values("pk"))
        assert min(late.values_list("id", flat=True)) > max(settled.values_list("id", flat=True))

    def test_indexes_dropped_for_the_load_come_back_as_they_were(self) -> None:
        before = self.indexes()
        self.generate(rebuild_indexes=True)
        assert self.indexes() == before


PG_GOOD = [
    {
        "Plan": {
            "Node Type": "Index Scan",
            "Relation Name": "courseware_studentmodule",
            "Index Name": "uniq",
            "Index Cond": "((student_id = 7) AND ((module_id)::text = ANY ('{a,b}'::text[])) "
            "AND ((course_id)::text = 'c'::text))",
            "Actual Rows": 20,
            "Actual Loops": 1,
            "Shared Hit Blocks": 60,
        }
    }
]
INDEXES = {
    "uniq": ["student_id", "module_id", "course_id"],
    "course_type": ["course_id", "module_type", "id"],
}
BIG = {"courseware_studentmodule": 1_000_000}


def pg(node: dict) -> list[dict]:
    return [{"Plan": node}]


class FlaggerTests(SimpleTestCase):
    def test_a_good_postgresql_plan_is_not_flagged(self) -> None:
        verdict = flag_postgres(PG_GOOD, BIG, INDEXES)
        assert verdict.flags == []
        assert "Index Scan uniq (20 rows, 60 buffers)" in verdict.summary

    def test_postgresql_full_scan_sort_filter_prefix_and_limit(self) -> None:
        scan = {
            "Node Type": "Seq Scan",
            "Relation Name": "courseware_studentmodule",
            "Actual Rows": 3,
        }
        assert flag_postgres(pg(scan), BIG, INDEXES).flags == [
            "full scan of courseware_studentmodule (1,000,000 rows)"
        ]
        assert flag_postgres(pg(scan), {}, INDEXES).flags == []  # a small table may be scanned
        filtered = {
            **PG_GOOD[0]["Plan"],
            "Index Cond": "((student_id = 7) AND ((course_id)::text = 'c'::text))",
            "Filter": "((module_id)::text = ANY ('{a,b}'::text[]))",
            "Rows Removed by Filter": 4_980,
        }
        flags = flag_postgres(pg(filtered), BIG, INDEXES).flags
        assert flags[0] == "filter: 4,980 rows read by uniq and thrown away, 20 kept"
        assert flags[1].startswith("index prefix: uniq condition skips module_id")
        sort = {
            "Node Type": "Limit",
            "Actual Rows": 1_000,
            "Plans": [
                {
                    "Node Type": "Sort",
                    "Actual Rows": 1_000,
                    "Sort Method": "top-N heapsort",
                    "Plans": [
                        {
                            "Node Type": "Bitmap Heap Scan",
                            "Relation Name": "courseware_studentmodule",
                            "Actual Rows": 20_000,
                        }
                    ],
                }
            ],
        }
        assert flag_postgres(pg(sort), BIG, INDEXES).flags == [
            "limit: reads 20,000 rows to return 1,000",
            "sort of 20,000 rows (top-N heapsort)",
        ]

    def test_mariadb_plans(self) -> None:
        good = {
            "query_block": {
                "table": {
                    "table_name": "courseware_studentmodule",
                    "access_type": "range",
                    "key": "uniq",
                    "used_key_parts": ["student_id", "module_id", "course_id"],
                    "r_loops": 1,
                    "r_rows": 20,
                    "r_filtered": 100,
                    "attached_condition": "student_id = 7 and module_id in ('a','b')",
                }
            }
        }
        assert flag_mysql(good, BIG, INDEXES).flags == []
        prefix = {
            "query_block": {
                "table": {
                    **good["query_block"]["table"],
                    "access_type": "ref",
                    "used_key_parts": ["student_id"],
                    "r_rows": 5_000,
                    "r_filtered": 0.4,
                }
            }
        }
        flags = flag_mysql(prefix, BIG, INDEXES).flags
        assert flags[0] == "filter: 4,980 rows read by uniq and thrown away, 20 kept"
        assert flags[1].startswith("index prefix: uniq used on (student_id) only; module_id")
        scan = {
            "query_block": {
                "filesort": {
                    "r_output_rows": 1_000,
                    "table": {
                        "table_name": "courseware_studentmodule",
                        "access_type": "ALL",
                        "r_rows": 1_000_000,
                        "r_filtered": 100,
                    },
                }
            }
        }
        assert flag_mysql(scan, BIG, INDEXES).flags == [
            "sort: filesort of 1,000,000 rows",
            "full scan of courseware_studentmodule (ALL, 1,000,000 rows, 1,000,000 read)",
        ]

    def test_mariadb_json_with_raw_quotes_in_a_condition_is_read(self) -> None:
        text = (
            '{\n  "table": {\n    "table_name": "t",\n    "access_type": "range",\n'
            '    "attached_condition": "t.state = \'{"a": 1}\'"\n  }\n}'
        )
        assert plans._mysql_json(text)["table"]["access_type"] == "range"

    def test_sqlite_plans(self) -> None:
        assert (
            flag_sqlite(
                [(2, 0, 0, "SEARCH courseware_studentmodule USING INDEX uniq (student_id=?)")],
                BIG,
                INDEXES,
            ).flags
            == []
        )
        assert flag_sqlite([(2, 0, 0, "SCAN courseware_studentmodule")], BIG, INDEXES).flags == [
            "full scan of courseware_studentmodule (1,000,000 rows)"
        ]
        assert flag_sqlite([(9, 0, 0, "USE TEMP B-TREE FOR ORDER BY")], BIG, INDEXES).flags == [
            "sort: use temp b-tree for order by"
        ]

    def test_statement_shapes_collapse_what_repeats(self) -> None:
        sql = (
            'UPDATE "t" SET "state" = CASE "id" WHEN %s THEN %s WHEN %s THEN %s END '
            'WHERE ("id" = %s AND "state" = %s) OR ("id" = %s AND "state" = %s) OR '
            '("id" = %s AND "state" = %s)'
        )
        assert shape(sql) == (
            'UPDATE "t" SET "state" = CASE "id" WHEN %s THEN %s … END '
            'WHERE ("id" = %s AND "state" = %s) OR …'
        )
        assert shape("INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s), (%s, %s)") == (
            "INSERT INTO t (a, b) VALUES (%s, …), …"
        )
        assert (
            shape("SELECT 1 FROM t WHERE a IN (%s, %s, %s)") == "SELECT 1 FROM t WHERE a IN (%s, …)"
        )


class ExplainOnThisDatabaseTests(TransactionTestCase):
    databases = {"default", HISTORY}

    def setUp(self) -> None:
        generate(Layout(SMALL), rebuild_indexes=False)

    def test_an_unindexed_search_of_a_big_table_is_flagged(self) -> None:
        qn = connections["default"].ops.quote_name
        table = StudentModule._meta.db_table
        sql = f"SELECT {qn('id')} FROM {qn(table)} WHERE {qn('state')} LIKE %s"
        verdict = explain(Statement("default", sql, ["%seed%"]), {table: SMALL.rows}, {})
        assert any(flag.startswith(f"full scan of {table}") for flag in verdict.flags), verdict

    def test_explaining_a_delete_deletes_nothing(self) -> None:
        # ANALYZE runs the statement: explain must roll it back.
        qn = connections["default"].ops.quote_name
        table = qn(StudentModule._meta.db_table)
        statement = Statement("default", f"DELETE FROM {table} WHERE {qn('student_id')} = %s", [1])
        verdict = explain(statement, {}, {})
        # The plan itself is the planner's choice (MariaDB sometimes scans this small table and
        # is flagged for the rows it throws away); what matters here is that it was explained.
        assert verdict.summary, verdict
        assert verdict.raw is not None, verdict
        assert StudentModule.objects.count() == SMALL.rows

    def test_statements_are_explained_before_they_run(self) -> None:
        seen: list[str] = []

        def before(statement: Statement) -> None:
            seen.append(explain(statement, {}, {}).summary)

        with plans.capture(["default"], before) as statements:
            StudentModule.objects.filter(student_id=1)._raw_delete("default")
        assert len(statements) == 1  # the EXPLAIN itself is neither recorded nor seen again
        if connections["default"].vendor != "sqlite":  # SQLite's plans carry no row counts
            assert " 0 rows" not in seen[0], seen
