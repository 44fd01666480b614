"""``kvstate.operations`` (SPEC §11): reset, delete, export and erase one learner's data.

What each function does, its exact statements per alias, and the bad input it refuses before
any SQL. Races are in ``test_operations_concurrency.py``, the 100,000-row erase in
``test_operations_erase.py``, the management commands in ``test_operations_commands.py``.

History lives on its own alias here, so it is written once the state commits: ``TestCase``
never commits, and ``committed()`` plays the commit, as the end of a request does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from django.db import DatabaseError, connections
from django.dispatch import Signal
from django.test import TestCase, TransactionTestCase
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.keys import CourseKey, UsageKey
from opaque_keys.edx.locator import CourseLocator, LibraryLocatorV2, LibraryUsageLocatorV2
from xblock.fields import Scope

from kvstate import operations
from kvstate.conf import HISTORY_ALIAS
from kvstate.model_data import set_score
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.storage import StateChange
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.underfire import (
    EXACT_VALUES,
    HOSTILE_NAMES,
    PROBE_TYPE,
    PROBLEM,
    assert_exact,
    key,
    new_store,
    snapshot,
)

COURSE = CourseLocator("kvstate", "Operations", "2026")
OTHER_COURSE = CourseLocator("kvstate", "Elsewhere", "2026")
#: Rows written by old Open edX installations: ``org/course/run`` and ``i4x://`` keys.
OLD_COURSE = CourseKey.from_string("kvstate/Old/2012")

MODULES = StudentModule._meta.db_table
HISTORY = StudentModuleHistory._meta.db_table
SUMMARY = XModuleUserStateSummaryField._meta.db_table
PREFS = XModuleStudentPrefsField._meta.db_table
INFO = XModuleStudentInfoField._meta.db_table


def usage(name: str, block_type: str = "problem", course: Any = COURSE) -> UsageKey:
    return course.make_usage_key(block_type, name)


def row(user: Any, usage_key: UsageKey) -> StudentModule:
    return StudentModule.objects.get(student=user, module_state_key=usage_key)


def history_states(module_id: int) -> list[Any]:
    """Return a module's history states, oldest first, decoded (NULL stays None)."""
    rows = StudentModuleHistory.objects.using(HISTORY_ALIAS).filter(student_module_id=module_id)
    return [None if r.state is None else json.loads(r.state) for r in rows.order_by("id")]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


class OperationsTestCase(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.other = UserFactory()
        self.state_client = DjangoXBlockUserStateClient()

    def committed(self) -> Any:
        """Run what a write registered on commit, as the end of a request's transaction does."""
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def write(self, user: Any, usage_key: UsageKey, state: dict[str, Any]) -> None:
        with self.committed():
            self.state_client.set(user.username, usage_key, state)

    def state(self, user: Any, usage_key: UsageKey) -> Any:
        text = row(user, usage_key).state
        return None if text is None else json.loads(text)

    @contextmanager
    def statements(self, default: int, history: int) -> Iterator[None]:
        """Assert exact statement counts per alias, with history's on-commit writes played."""
        with (
            self.assertNumQueries(history, using=HISTORY_ALIAS),
            self.assertNumQueries(default, using="default"),
            self.committed(),
        ):
            yield


class ResetAttemptsTests(OperationsTestCase):
    def test_sets_attempts_to_zero_and_keeps_every_other_field(self) -> None:
        block = usage("p1")
        self.write(self.user, block, {"attempts": 3, "answer": "x", "zero": -0.0})
        with self.committed():
            assert operations.reset_attempts(self.user.pk, block) is True
        state = self.state(self.user, block)
        assert_exact(state, {"attempts": 0, "answer": "x", "zero": -0.0})
        # One more history row, holding the state after the reset.
        assert history_states(row(self.user, block).pk)[-2:] == [
            {"attempts": 3, "answer": "x", "zero": -0.0},
            state,
        ]

    def test_a_missing_row_or_field_is_a_no_op(self) -> None:
        no_field, null_state, zero = usage("no_field"), usage("null_state"), usage("zero")
        self.write(self.user, no_field, {"answer": 1})
        set_score(self.user.pk, null_state, 1.0, 2.0)  # a row whose state is NULL
        self.write(self.user, zero, {"attempts": 0})  # already exactly 0
        before = snapshot()
        for block in (usage("missing"), no_field, null_state, zero):
            with self.subTest(block=block), self.statements(1, 0):
                # Only the read: nothing to write, so no history either.
                assert operations.reset_attempts(self.user.pk, block) is False
        assert snapshot() == before

    def test_attempts_that_are_zero_in_another_type_become_the_integer_zero(self) -> None:
        for name, attempts in {"float": 0.0, "false": False, "text": "0", "null": None}.items():
            with self.subTest(attempts=attempts):
                self.write(self.user, usage(name), {"attempts": attempts})
                with self.committed():
                    assert operations.reset_attempts(self.user.pk, usage(name)) is True
                assert_exact(self.state(self.user, usage(name)), {"attempts": 0})

    def test_touches_no_other_block_or_learner(self) -> None:
        self.write(self.user, usage("p1"), {"attempts": 3})
        self.write(self.user, usage("p2"), {"attempts": 4})
        self.write(self.other, usage("p1"), {"attempts": 5})
        with self.committed():
            operations.reset_attempts(self.user.pk, usage("p1"))
        assert self.state(self.user, usage("p2")) == {"attempts": 4}
        assert self.state(self.other, usage("p1")) == {"attempts": 5}

    def test_statements(self) -> None:
        self.write(self.user, usage("p1"), {"attempts": 3, "answer": 1})
        self.write(self.user, usage("h1", "html"), {"attempts": 3})
        # The read, the compare-and-swap UPDATE; history's INSERT on its alias.
        with self.statements(2, 1):
            operations.reset_attempts(self.user.pk, usage("p1"))
        # html keeps no history (KVSTATE_HISTORY_BLOCK_TYPES).
        with self.statements(2, 0):
            operations.reset_attempts(self.user.pk, usage("h1", "html"))

    def test_a_dry_run_says_what_would_change_and_changes_nothing(self) -> None:
        self.write(self.user, usage("p1"), {"attempts": 3})
        before = snapshot()
        with self.statements(1, 0):
            assert operations.reset_attempts(self.user.pk, usage("p1"), dry_run=True) is True
        assert operations.reset_attempts(self.user.pk, usage("p2"), dry_run=True) is False
        assert snapshot() == before

    def test_old_style_keys(self) -> None:
        block = OLD_COURSE.make_usage_key("problem", "old")
        self.write(self.user, block, {"attempts": 2, "answer": "a"})
        with self.committed():
            assert operations.reset_attempts(self.user.pk, block) is True
        assert self.state(self.user, block) == {"attempts": 0, "answer": "a"}


class ConditionalChangeTests(TestCase):
    """``StateChange.set_if_present``: the engine's conditional change that reset builds on."""

    def test_sets_only_fields_already_present(self) -> None:
        change = StateChange(set_if_present={"attempts": 0, "other": 1})
        assert change.apply({"attempts": 7, "a": 1}) == {"attempts": 0, "a": 1}
        assert change.apply({"a": 1}) == {"a": 1}
        assert not change.creates

    def test_combines_with_the_other_parts_of_a_change(self) -> None:
        change = StateChange(
            set_fields={"b": 2}, delete_fields=frozenset({"a"}), set_if_present={"b": 0, "a": 0}
        )
        # Present after the rest of the change is applied: b is, a is not.
        assert change.apply({"a": 1}) == {"b": 0}


class DeleteStateTests(OperationsTestCase):
    def test_the_state_becomes_empty_and_history_records_it(self) -> None:
        gone, kept = usage("p1"), usage("p2")
        self.write(self.user, gone, {"answer": "x"})
        self.write(self.user, kept, {"answer": "y"})
        set_score(self.user.pk, gone, 1.0, 2.0)
        with self.committed():
            assert operations.delete_state(self.user.pk, [gone]) == 1
        module = row(self.user, gone)
        assert module.state == "{}"
        assert (module.grade, module.max_grade) == (1.0, 2.0)  # the state goes, not the score
        assert history_states(module.pk)[-1] == {}
        assert list(self.state_client.get_many(self.user.username, [gone])) == []
        history = list(self.state_client.get_history(self.user.username, gone))
        assert history[0].state is None
        assert self.state(self.user, kept) == {"answer": "y"}

    def test_rows_without_state_are_left_alone(self) -> None:
        set_score(self.user.pk, usage("null_state"), 1.0, 2.0)
        self.write(self.user, usage("deleted"), {"answer": 1})
        with self.committed():
            operations.delete_state(self.user.pk, [usage("deleted")])
        before = snapshot()
        blocks = [usage("null_state"), usage("deleted"), usage("missing")]
        with self.statements(1, 0):
            assert operations.delete_state(self.user.pk, blocks) == 0
        assert snapshot() == before

    def test_other_learners_keep_their_state(self) -> None:
        self.write(self.user, usage("p1"), {"answer": 1})
        self.write(self.other, usage("p1"), {"answer": 2})
        with self.committed():
            operations.delete_state(self.user.pk, [usage("p1")])
        assert self.state(self.other, usage("p1")) == {"answer": 2}

    def test_statements_are_independent_of_the_number_of_blocks(self) -> None:
        blocks = [usage(f"p{n}") for n in range(50)]
        with self.committed():
            self.state_client.set_many(self.user.username, {b: {"n": 1} for b in blocks})
        # One read, one compare-and-swap UPDATE for all 50 rows; history: one INSERT.
        with self.statements(2, 1):
            assert operations.delete_state(self.user.pk, blocks) == 50
        assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 100

    def test_a_dry_run_counts_and_changes_nothing(self) -> None:
        self.write(self.user, usage("p1"), {"answer": 1})
        self.write(self.user, usage("p2"), {"answer": 1})
        before = snapshot()
        with self.statements(1, 0):
            count = operations.delete_state(self.user.pk, [usage("p1"), usage("p2")], dry_run=True)
        assert count == 2
        assert snapshot() == before


class DeleteCourseStateTests(OperationsTestCase):
    def fill(self) -> None:
        """Give the learner 20 problems and 5 html blocks in COURSE, 3 blocks elsewhere."""
        blocks = {usage(f"p{n:02}"): {"n": n} for n in range(20)}
        blocks.update({usage(f"h{n}", "html"): {"n": n} for n in range(5)})
        with self.committed():
            self.state_client.set_many(self.user.username, blocks)
            self.state_client.set_many(
                self.user.username,
                {usage(f"x{n}", course=OTHER_COURSE): {"n": n} for n in range(3)},
            )
            self.state_client.set_many(self.other.username, {usage("p00"): {"n": "other"}})

    def course_states(self, user: Any, course: Any) -> list[str | None]:
        rows = StudentModule.objects.filter(student=user, course_id=course).order_by("id")
        return list(rows.values_list("state", flat=True))

    def test_every_block_of_the_course_and_nothing_else(self) -> None:
        self.fill()
        with self.committed():
            assert operations.delete_course_state(self.user.pk, COURSE, batch_size=10) == 25
        assert self.course_states(self.user, COURSE) == ["{}"] * 25
        assert self.course_states(self.user, OTHER_COURSE) == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
        assert self.course_states(self.other, COURSE) == ['{"n": "other"}']
        # One history row per problem for the deletion: 20 from the writes, 20 for it.
        deletions = StudentModuleHistory.objects.using(HISTORY_ALIAS).filter(state="{}")
        assert deletions.count() == 20
        # The writes left 20 + 3 elsewhere + 1 of the other learner.
        assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 20 + 3 + 1 + 20

    def test_statements_per_batch(self) -> None:
        self.fill()
        # Keyset pages of 10 over the 25 rows with state: 10, 10, 5. Each page: 1 SELECT of
        # its keys, 1 SELECT of its rows as the write engine reads them, 1 compare-and-swap
        # UPDATE (all-or-nothing per page); history: 1 INSERT per page.
        with self.statements(3 * 3, 3):
            operations.delete_course_state(self.user.pk, COURSE, batch_size=10)
        # Nothing left to delete: one SELECT finds no row.
        with self.statements(1, 0):
            assert operations.delete_course_state(self.user.pk, COURSE, batch_size=10) == 0

    def test_a_full_last_page_costs_one_more_select(self) -> None:
        with self.committed():
            self.state_client.set_many(
                self.user.username, {usage(f"p{n}"): {"n": n} for n in range(20)}
            )
        # Pages of 10 and 10 (3 statements each), then an empty one (its keys' SELECT only);
        # two history INSERTs.
        with self.statements(2 * 3 + 1, 2):
            assert operations.delete_course_state(self.user.pk, COURSE, batch_size=10) == 20

    def test_a_dry_run_counts_and_changes_nothing(self) -> None:
        self.fill()
        before = snapshot()
        with self.statements(1, 0):  # one COUNT
            assert operations.delete_course_state(self.user.pk, COURSE, dry_run=True) == 25
        assert snapshot() == before

    def test_old_style_and_library_keys(self) -> None:
        old = OLD_COURSE.make_usage_key("problem", "old")
        library = LibraryLocatorV2("kvstate", "lib")
        in_library = LibraryUsageLocatorV2(library, "problem", "lp")  # type: ignore[abstract]
        self.write(self.user, old, {"answer": 1})
        self.write(self.user, in_library, {"answer": 2})
        with self.committed():
            assert operations.delete_course_state(self.user.pk, OLD_COURSE) == 1
            assert operations.delete_course_state(self.user.pk, library) == 1
        assert self.state(self.user, old) == {}
        assert self.state(self.user, in_library) == {}


class DeleteCourseStateCommitTests(TransactionTestCase):
    """Real commits: each page is its own transaction, and a rerun finishes the job."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        DjangoXBlockUserStateClient().set_many(
            self.user.username, {usage(f"p{n:02}"): {"n": n} for n in range(25)}
        )

    def course_states(self) -> list[str | None]:
        rows = StudentModule.objects.filter(student=self.user).order_by("id")
        return list(rows.values_list("state", flat=True))

    def test_each_batch_commits_on_its_own(self) -> None:
        second_update = failing_on("UPDATE", MODULES, occurrence=2)
        with connections["default"].execute_wrapper(second_update), pytest.raises(DatabaseError):
            operations.delete_course_state(self.user.pk, COURSE, batch_size=10)
        # The first page is deleted; the rest is untouched, and a second run finishes the job.
        assert self.course_states().count("{}") == 10
        assert operations.delete_course_state(self.user.pk, COURSE, batch_size=10) == 15
        assert self.course_states() == ["{}"] * 25


class ExportUserTests(OperationsTestCase):
    def fill(self) -> None:
        self.values = {**EXACT_VALUES, **{name: name for name in HOSTILE_NAMES}}
        self.write(self.user, usage("p1"), {"answer": 1})
        self.write(self.user, usage("p1"), self.values)
        with self.committed():
            set_score(self.user.pk, usage("p1"), 0.5, 2.0)
        self.write(self.user, usage("h1", "html"), {"seen": True})
        self.prefs = StudentPrefsFactory(
            student=self.user, module_type=BlockTypeKeyV1("xblock.v1", "video"), value="1.5"
        )
        self.info = StudentInfoFactory(
            student=self.user, field_name="tz", value=json.dumps(EXACT_VALUES["odd_keys_object"])
        )
        UserStateSummaryFactory(usage_id=usage("p1"), field_name="tally", value="7")
        self.write(self.other, usage("p1"), {"answer": "other"})
        StudentInfoFactory(student=self.other, field_name="tz", value='"other"')

    def test_everything_the_learner_left_exactly_as_stored(self) -> None:
        self.fill()
        exported = operations.export_user(self.user.pk)
        assert set(exported) == {"user_id", "user_state", "preferences", "user_info"}
        assert exported["user_id"] == self.user.pk
        problem, html = exported["user_state"]
        module = row(self.user, usage("p1"))
        assert {k: v for k, v in problem.items() if k not in ("state", "history")} == {
            "id": module.pk,
            "usage_key": str(usage("p1")),
            "course_id": str(COURSE),
            "module_type": "problem",
            "grade": 0.5,
            "max_grade": 2.0,
            "done": "na",
            "created": iso(module.created),
            "modified": iso(module.modified),
        }
        assert_exact(problem["state"], {"answer": 1, **self.values})
        # Newest first: the score, the second write, the first.
        assert [entry["grade"] for entry in problem["history"]] == [0.5, None, None]
        assert_exact(problem["history"][0]["state"], {"answer": 1, **self.values})
        assert_exact(problem["history"][2]["state"], {"answer": 1})
        entries = StudentModuleHistory.objects.using(HISTORY_ALIAS).for_module(module.pk)
        assert [e["created"] for e in problem["history"]] == [iso(e.created) for e in entries]
        assert html["usage_key"] == str(usage("h1", "html"))
        assert html["state"] == {"seen": True}
        assert html["history"] == []  # html keeps no history
        assert exported["preferences"] == [
            {
                "block_type": "video",
                "field_name": "existing_field",
                "value": 1.5,
                "created": iso(self.prefs.created),
                "modified": iso(self.prefs.modified),
            }
        ]
        [info] = exported["user_info"]
        assert_exact(info["value"], EXACT_VALUES["odd_keys_object"])
        assert info["field_name"] == "tz"

    def test_every_exact_value_in_every_learner_scope(self) -> None:
        # Written through the key-value store, as XBlocks write them; read back through JSON.
        _cache, kvs = new_store(self.user, [PROBLEM], EXACT_VALUES)
        with self.committed():
            kvs.set_many(
                {
                    key(scope, self.user.pk, PROBLEM, name): value
                    for scope in (Scope.user_state, Scope.preferences, Scope.user_info)
                    for name, value in EXACT_VALUES.items()
                }
            )
        exported = json.loads(json.dumps(operations.export_user(self.user.pk)))
        [module] = exported["user_state"]
        assert_exact(module["state"], EXACT_VALUES)
        assert_exact(module["history"][0]["state"], EXACT_VALUES)
        for scope in ("preferences", "user_info"):
            with self.subTest(scope):
                values = {row["field_name"]: row["value"] for row in exported[scope]}
                assert_exact(values, EXACT_VALUES)
        assert {row["block_type"] for row in exported["preferences"]} == {PROBE_TYPE}

    def test_the_export_is_json_and_survives_a_round_trip_through_it(self) -> None:
        self.fill()
        exported = operations.export_user(self.user.pk)
        again = json.loads(json.dumps(exported))
        assert_exact(again["user_state"][0]["state"], exported["user_state"][0]["state"])
        assert again == json.loads(json.dumps(again))

    def test_timestamps_carry_microseconds_and_the_offset(self) -> None:
        self.fill()
        problem = operations.export_user(self.user.pk)["user_state"][0]
        created = problem["created"]
        assert datetime.fromisoformat(created) == row(self.user, usage("p1")).created
        assert created.endswith("+00:00")
        assert len(created.split(".")[1]) == len("000000+00:00")

    def test_null_empty_and_unparsable_texts(self) -> None:
        set_score(self.user.pk, usage("null_state"), 1.0, 1.0)
        self.write(self.user, usage("deleted"), {"a": 1})
        with self.committed():
            operations.delete_state(self.user.pk, [usage("deleted")])
        StudentModule.objects.create(
            student=self.user, module_state_key=usage("bad"), course_id=COURSE, state="{oops"
        )
        by_key = {r["usage_key"]: r for r in operations.export_user(self.user.pk)["user_state"]}
        assert by_key[str(usage("null_state"))]["state"] is None
        assert by_key[str(usage("deleted"))]["state"] == {}
        assert [e["state"] for e in by_key[str(usage("deleted"))]["history"]] == [{}, {"a": 1}]
        # Text that is not JSON (neither kvstate nor Open edX writes any) comes as it is.
        bad = by_key[str(usage("bad"))]
        assert "state" not in bad
        assert bad["state_text"] == "{oops"

    def test_summary_fields_are_shared_and_not_exported(self) -> None:
        self.fill()
        exported = json.dumps(operations.export_user(self.user.pk))
        assert "tally" not in exported
        assert "other" not in exported

    def test_statements(self) -> None:
        self.fill()
        # One SELECT per table on default; the modules' history in one SELECT on its alias.
        with self.statements(3, 1):
            operations.export_user(self.user.pk)

    def test_a_learner_without_data(self) -> None:
        # No module: history is not asked.
        with self.statements(3, 0):
            exported = operations.export_user(self.user.pk)
        assert exported == {
            "user_id": self.user.pk,
            "user_state": [],
            "preferences": [],
            "user_info": [],
        }


class EraseUserTests(OperationsTestCase):
    def fill(self, user: Any, modules: int = 25, history: int = 2) -> None:
        """Give ``user`` ``modules`` problems with ``history`` writes each, 12 prefs, 5 info."""
        for n in range(history):
            with self.committed():
                self.state_client.set_many(
                    user.username, {usage(f"p{m:02}"): {"n": n} for m in range(modules)}
                )
        for n in range(12):
            StudentPrefsFactory(student=user, field_name=f"pref{n}")
        for n in range(5):
            StudentInfoFactory(student=user, field_name=f"info{n}")
        UserStateSummaryFactory(usage_id=usage("p00"), field_name=f"tally{user.pk}")

    def learner_rows(self, user: Any) -> dict[str, int]:
        modules = StudentModule.objects.filter(student=user)
        ids = list(modules.values_list("id", flat=True))
        return {
            MODULES: modules.count(),
            HISTORY: StudentModuleHistory.objects.using(HISTORY_ALIAS)
            .filter(student_module_id__in=ids)
            .count(),
            SUMMARY: 0,
            PREFS: XModuleStudentPrefsField.objects.filter(student=user).count(),
            INFO: XModuleStudentInfoField.objects.filter(student=user).count(),
        }

    def others(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row that is not the learner's (the others' and the shared summary rows)."""
        own = set(StudentModule.objects.filter(student=self.user).values_list("id", flat=True))
        rows = snapshot()
        rows["StudentModule"] = [r for r in rows["StudentModule"] if r[0] not in own]
        rows["StudentModuleHistory"] = [r for r in rows["StudentModuleHistory"] if r[1] not in own]
        for model in (XModuleStudentPrefsField, XModuleStudentInfoField):
            column = [f.attname for f in model._meta.concrete_fields].index("student_id")
            name = model.__name__
            rows[name] = [r for r in rows[name] if r[column] != self.user.pk]
        return rows

    def test_deletes_every_row_of_the_learner_and_nothing_else(self) -> None:
        self.fill(self.user)
        self.fill(self.other, modules=3)
        others = self.others()
        expected = {MODULES: 25, HISTORY: 50, SUMMARY: 0, PREFS: 12, INFO: 5}
        assert self.learner_rows(self.user) == expected
        assert operations.erase_user(self.user.pk, batch_size=10) == expected
        assert self.learner_rows(self.user) == dict.fromkeys(expected, 0)
        assert self.others() == others
        assert StudentModule.objects.filter(student=self.other).count() == 3

    def test_statements_per_batch(self) -> None:
        self.fill(self.user)
        # Batches of 10 over 25 modules with 2 history rows each, 12 prefs, 5 info.
        # default: per module batch 1 SELECT of ids and 1 DELETE (10, 10, 5 modules: the short
        # third batch ends the walk): 6. Prefs: DELETE 10, then 2: 2. Info: DELETE 5: 1.
        # history: per module batch, DELETEs of at most 10 rows until one deletes fewer:
        # 20 rows -> 10, 10, 0 (3); again 3; the last batch's 10 rows -> 10, 0 (2).
        with self.statements(6 + 2 + 1, 3 + 3 + 2):
            operations.erase_user(self.user.pk, batch_size=10)
        # A learner without rows: one SELECT finds no module, one DELETE per per-field table.
        with self.statements(3, 0):
            operations.erase_user(self.user.pk, batch_size=10)

    def test_yields_each_batch(self) -> None:
        self.fill(self.user)
        batches = [
            dict(b.deleted) for b in operations.erase_user_batches(self.user.pk, batch_size=10)
        ]
        assert batches == [
            {MODULES: 10, HISTORY: 20},
            {MODULES: 10, HISTORY: 20},
            {MODULES: 5, HISTORY: 10},
            {PREFS: 10},
            {PREFS: 2},
            {INFO: 5},
        ]

    def test_history_goes_before_its_modules_and_a_rerun_finishes(self) -> None:
        self.fill(self.user)
        second_delete = failing_on("DELETE", MODULES, occurrence=2)
        with connections["default"].execute_wrapper(second_delete), pytest.raises(DatabaseError):
            operations.erase_user(self.user.pk, batch_size=10)
        # Batch 1 is gone; batch 2 lost its history but kept its modules: no history is left
        # without its module, and the rerun deletes the rest.
        assert self.learner_rows(self.user) == {
            MODULES: 15,
            HISTORY: 10,
            SUMMARY: 0,
            PREFS: 12,
            INFO: 5,
        }
        ids = set(StudentModule.objects.values_list("id", flat=True))
        history = StudentModuleHistory.objects.using(HISTORY_ALIAS)
        assert set(history.values_list("student_module_id", flat=True)) <= ids
        assert operations.erase_user(self.user.pk, batch_size=10) == {
            MODULES: 15,
            HISTORY: 10,
            SUMMARY: 0,
            PREFS: 12,
            INFO: 5,
        }

    def test_a_dry_run_counts_what_would_go_and_changes_nothing(self) -> None:
        self.fill(self.user)
        before = snapshot()
        # Keyset pages of module ids (10, 10, 5), the history COUNT of each page; one COUNT
        # per per-field table.
        with self.statements(3 + 2, 3):
            counts = operations.erase_user(self.user.pk, batch_size=10, dry_run=True)
        assert counts == {MODULES: 25, HISTORY: 50, SUMMARY: 0, PREFS: 12, INFO: 5}
        assert snapshot() == before


class LoggingTests(OperationsTestCase):
    def test_each_destructive_operation_says_who_what_and_how_many(self) -> None:
        self.write(self.user, usage("p1"), {"attempts": 2})
        uid = self.user.pk
        with self.assertLogs("kvstate", "INFO") as logs:
            with self.committed():
                operations.reset_attempts(uid, usage("p1"))
            with self.committed():
                operations.delete_state(uid, [usage("p1"), usage("p2")])
            operations.delete_course_state(uid, COURSE)
            operations.erase_user(uid)
        assert [record.getMessage() for record in logs.records] == [
            f"kvstate: reset attempts of user {uid} in {usage('p1')}: done",
            f"kvstate: deleted the state of user {uid} in 1 of the 2 blocks asked",
            f"kvstate: deleted the state of user {uid} in 0 blocks of {COURSE}",
            f"kvstate: erasing the data of user {uid}, in batches of 1000 rows",
            f"kvstate: erased the data of user {uid}: {{'{MODULES}': 1, '{HISTORY}': 3, "
            f"'{SUMMARY}': 0, '{PREFS}': 0, '{INFO}': 0}}",
        ]

    def test_an_erasure_stopped_early_is_a_warning(self) -> None:
        self.write(self.user, usage("p1"), {"attempts": 2})
        with self.assertLogs("kvstate", "WARNING") as logs:
            batches = operations.erase_user_batches(self.user.pk)
            next(batches)
            batches.close()  # as when the caller stops iterating
        [record] = logs.records
        assert "stopped after deleting" in record.getMessage()
        assert "erase the user again to finish" in record.getMessage()


class RetirementTests(OperationsTestCase):
    def test_the_receiver_erases_the_retired_learner(self) -> None:
        retire = Signal()  # stands in for Open edX's USER_RETIRE_LMS_MISC
        retire.connect(operations.retire_user_receiver)
        self.write(self.user, usage("p1"), {"answer": 1})
        self.write(self.other, usage("p1"), {"answer": 2})
        StudentInfoFactory(student=self.user)
        retire.send(sender=object, user=self.user)
        assert not StudentModule.objects.filter(student=self.user).exists()
        assert not XModuleStudentInfoField.objects.filter(student=self.user).exists()
        assert StudentModule.objects.filter(student=self.other).exists()

    def test_the_receiver_needs_the_user(self) -> None:
        with pytest.raises(TypeError, match="user"):
            operations.retire_user_receiver(sender=object)


class BadInputTests(OperationsTestCase):
    """Refused before any SQL, with the culprit named; nothing changes."""

    def test_refused_before_any_statement(self) -> None:
        self.write(self.user, usage("p1"), {"attempts": 1})
        uid = self.user.pk
        long_key = usage("x" * 300)
        cases: dict[str, tuple[Any, type[Exception], str]] = {
            "user id as text": (
                lambda: operations.reset_attempts(str(uid), usage("p1")),
                TypeError,
                "user_id",
            ),
            "user id as bool": (lambda: operations.erase_user(True), TypeError, "user_id"),
            "user id None": (lambda: operations.export_user(None), TypeError, "user_id"),
            "usage key as text": (
                lambda: operations.reset_attempts(uid, str(usage("p1"))),
                TypeError,
                "usage key",
            ),
            "usage key too long": (
                lambda: operations.reset_attempts(uid, long_key),
                ValueError,
                "longer than",
            ),
            "one key instead of a list": (
                lambda: operations.delete_state(uid, usage("p1")),
                TypeError,
                "list of usage keys",
            ),
            "a text instead of a list": (
                lambda: operations.delete_state(uid, str(usage("p1"))),
                TypeError,
                "list of usage keys",
            ),
            "one bad key among good ones": (
                lambda: operations.delete_state(uid, [usage("p1"), "p2"]),
                TypeError,
                "'p2'",
            ),
            "a too long key among good ones": (
                lambda: operations.delete_state(uid, [usage("p1"), long_key]),
                ValueError,
                "longer than",
            ),
            "course key as text": (
                lambda: operations.delete_course_state(uid, str(COURSE)),
                TypeError,
                "course key",
            ),
            "usage key for a course": (
                lambda: operations.delete_course_state(uid, usage("p1")),
                TypeError,
                "course key",
            ),
            "batch size 0": (
                lambda: operations.delete_course_state(uid, COURSE, batch_size=0),
                ValueError,
                "batch_size=0",
            ),
            "erase batch size 0": (
                lambda: operations.erase_user(uid, batch_size=0),
                ValueError,
                "batch_size=0",
            ),
            "erase batch size too large": (
                lambda: operations.erase_user(uid, batch_size=10_001),
                ValueError,
                "10000",
            ),
            "erase batch size as text": (
                lambda: operations.erase_user(uid, batch_size="10"),
                TypeError,
                "batch_size",
            ),
            "batches of 0": (
                lambda: operations.erase_user_batches(uid, batch_size=0),
                ValueError,
                "batch_size=0",
            ),
        }
        before = snapshot()
        for name, (call, error, message) in cases.items():
            with (
                self.subTest(name),
                self.assertNumQueries(0, using="default"),
                self.assertNumQueries(0, using=HISTORY_ALIAS),
                pytest.raises(error, match=message),
            ):
                call()
        assert snapshot() == before


def failing_on(
    statement: str, table: str, occurrence: int, error: BaseException | None = None
) -> Any:
    """Return an execute wrapper raising at the ``occurrence``-th ``statement`` on ``table``.

    ``error`` defaults to a ``DatabaseError``; it is raised before the statement runs.
    """
    seen = 0

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal seen
        if sql.lstrip().upper().startswith(statement) and table in sql:
            seen += 1
            if seen == occurrence:
                raise error or DatabaseError(f"{statement} on {table} refused (injected fault)")
        return execute(sql, params, many, context)

    return wrapper


class AutocommitRoundTrips(TransactionTestCase):
    """Round trips as a web request or a command sends them (BEGIN/COMMIT counted)."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.blocks = [usage(f"p{n:02}") for n in range(50)]
        DjangoXBlockUserStateClient().set_many(
            self.user.username, {b: {"attempts": 1} for b in self.blocks}
        )

    @contextmanager
    def round_trips(self, default: int, history: int) -> Iterator[None]:
        with (
            self.assertNumQueries(history, using=HISTORY_ALIAS),
            self.assertNumQueries(default, using="default"),
        ):
            yield

    def test_reset_and_delete_of_one_block_need_no_transaction(self) -> None:
        # The read; the compare-and-swap UPDATE, one statement: no BEGIN/COMMIT. History: one
        # INSERT once the UPDATE has committed.
        with self.round_trips(2, 1):
            operations.reset_attempts(self.user.pk, self.blocks[0])
        with self.round_trips(2, 1):
            operations.delete_state(self.user.pk, [self.blocks[0]])

    def test_delete_of_many_blocks_is_one_transaction(self) -> None:
        # The read; BEGIN, one UPDATE for the 50 rows, COMMIT (all or nothing); history.
        with self.round_trips(4, 1):
            assert operations.delete_state(self.user.pk, self.blocks) == 50

    def test_erase_commits_statement_by_statement(self) -> None:
        # Batches of 20 over 50 modules (1 history row each): 3 SELECTs of ids and 3 DELETEs;
        # the per-field tables are empty: 1 DELETE each. History: DELETEs of up to 20 rows
        # until one deletes fewer: 20 then 0, twice, then 10. No BEGIN/COMMIT anywhere.
        with self.round_trips(3 + 3 + 2, 2 + 2 + 1):
            operations.erase_user(self.user.pk, batch_size=20)
