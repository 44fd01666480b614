"""set_score / get_score (SPEC §3, §5) and ScoresClient (SPEC §9): grades on StudentModule rows."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from unittest import mock

from django.db import connections
from django.test import TestCase, TransactionTestCase, override_settings
from django.utils import timezone
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator
from xblock.exceptions import InvalidScopeError

from kvstate import model_data
from kvstate.conf import HISTORY_ALIAS
from kvstate.model_data import Score, ScoresClient, get_score, set_score
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient

COURSE = CourseLocator("kvstate", "Scores", "2026")
PROBLEM = COURSE.make_usage_key("problem", "p1")
HTML = COURSE.make_usage_key("html", "h1")


def history_of(usage_key: UsageKey) -> list[tuple[str | None, float | None, float | None]]:
    module = StudentModule.objects.get(module_state_key=usage_key)
    rows = StudentModuleHistory.objects.using(HISTORY_ALIAS).filter(student_module_id=module.id)
    return list(rows.order_by("id").values_list("state", "grade", "max_grade"))


class SetScoreTests(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.client = DjangoXBlockUserStateClient(self.user)

    def committed(self):  # type: ignore[no-untyped-def]
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def test_a_score_on_a_missing_row_creates_it_with_no_state(self) -> None:
        before = timezone.now()
        with self.committed():
            when = set_score(self.user.id, PROBLEM, 2.0, 5.0)
        module = get_score(self.user.id, PROBLEM)
        assert module is not None
        assert (module.state, module.grade, module.max_grade) == (None, 2.0, 5.0)
        assert (module.module_type, module.course_id) == ("problem", COURSE)
        assert before <= when == module.modified
        assert when.tzinfo is not None
        # NULL state is "never stored": invisible to state reads.
        with self.assertRaises(self.client.DoesNotExist):
            self.client.get(self.user.username, PROBLEM)

    def test_a_score_on_an_existing_row_keeps_its_state(self) -> None:
        with self.committed():
            self.client.set(self.user.username, PROBLEM, {"answer": 42})
        with self.committed():
            set_score(self.user.id, PROBLEM, 1.0, 1.0)
        module = get_score(self.user.id, PROBLEM)
        assert module is not None
        assert (json.loads(module.state), module.grade) == ({"answer": 42}, 1.0)
        assert self.client.get(self.user.username, PROBLEM).state == {"answer": 42}

    def test_state_writes_keep_the_score(self) -> None:
        with self.committed():
            set_score(self.user.id, PROBLEM, 1.0, 3.0)
            self.client.set(self.user.username, PROBLEM, {"answer": 42})
        module = get_score(self.user.id, PROBLEM)
        assert module is not None
        assert (module.grade, module.max_grade) == (1.0, 3.0)

    def test_a_score_can_be_cleared(self) -> None:
        with self.committed():
            set_score(self.user.id, PROBLEM, 1.0, 3.0)
            set_score(self.user.id, PROBLEM, None, None)
        module = get_score(self.user.id, PROBLEM)
        assert module is not None
        assert (module.grade, module.max_grade) == (None, None)

    def test_get_score_without_a_row_is_none(self) -> None:
        with self.assertNumQueries(1):
            assert get_score(self.user.id, PROBLEM) is None

    def test_each_call_leaves_one_history_row_for_recorded_types(self) -> None:
        with self.committed():
            set_score(self.user.id, PROBLEM, 1.0, 2.0)
        with self.committed():
            self.client.set(self.user.username, PROBLEM, {"a": 1})
        with self.committed():
            set_score(self.user.id, PROBLEM, 2.0, 2.0)
        assert history_of(PROBLEM) == [
            (None, 1.0, 2.0),
            ('{"a": 1}', 1.0, 2.0),
            ('{"a": 1}', 2.0, 2.0),
        ]
        # get_history shows the never-stored state as None.
        states = [e.state for e in self.client.get_history(self.user.username, PROBLEM)]
        assert states == [{"a": 1}, {"a": 1}, None]

    def test_unrecorded_types_leave_no_history(self) -> None:
        with self.committed():
            set_score(self.user.id, HTML, 1.0, 1.0)
        assert history_of(HTML) == []

    def test_statement_budget_for_a_recorded_type(self) -> None:
        for exists in (False, True):
            # default: the upsert (INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE), then
            # one read of the row for its state and id, which history needs. No
            # SAVEPOINT: the atomic block is savepoint=False. history: one INSERT.
            with (
                self.subTest(row_exists=exists),
                self.assertNumQueries(2, using="default"),
                self.assertNumQueries(1, using=HISTORY_ALIAS),
                self.committed(),
            ):
                set_score(self.user.id, PROBLEM, 1.0, 2.0)

    def test_statement_budget_for_an_unrecorded_type(self) -> None:
        # default: the upsert alone, no history to feed; history: nothing.
        with (
            self.assertNumQueries(1, using="default"),
            self.assertNumQueries(0, using=HISTORY_ALIAS),
            self.committed(),
        ):
            set_score(self.user.id, HTML, 1.0, 2.0)

    def test_get_score_budget(self) -> None:
        with self.committed():
            set_score(self.user.id, PROBLEM, 1.0, 2.0)
        with self.assertNumQueries(1):  # one SELECT by (student, module_id, course_id)
            module = get_score(self.user.id, PROBLEM)
        assert module is not None
        assert module.grade == 1.0


def run_together(tasks: list[Callable[[], object]]) -> list[BaseException]:
    """Run ``tasks`` in threads released at once; return what they raised."""
    barrier = threading.Barrier(len(tasks))
    errors: list[BaseException] = []

    def worker(task: Callable[[], object]) -> None:
        try:
            barrier.wait()
            task()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


class ConcurrentScoreTests(TransactionTestCase):
    databases = {"default", HISTORY_ALIAS}

    def test_concurrent_scores_and_state_writes_neither_raise_nor_lose_state(self) -> None:
        user = UserFactory()
        rounds = 4
        for round_ in range(rounds):
            key = COURSE.make_usage_key("problem", f"race{round_}")

            def write_state(i: int, key: UsageKey = key) -> None:
                DjangoXBlockUserStateClient(user).set(user.username, key, {f"f{i}": i})

            def write_score(i: int, key: UsageKey = key) -> datetime:
                return set_score(user.id, key, float(i), 10.0)

            tasks: list[Callable[[], object]] = []
            for i in range(3):
                tasks += [lambda i=i: write_state(i), lambda i=i: write_score(i)]
            errors = run_together(tasks)
            assert errors == []
            module = StudentModule.objects.get(module_state_key=key)
            assert json.loads(module.state) == {"f0": 0, "f1": 1, "f2": 2}
            assert module.grade in {0.0, 1.0, 2.0}
            assert module.max_grade == 10.0
            # One history row per call, whoever won each race.
            assert len(history_of(key)) == 6


class ReadsElsewhereRouter:
    """A primary/replica router: every read of the state tables goes to another alias."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return HISTORY_ALIAS if model is StudentModule else None


class ScoresClientTests(TestCase):
    """``ScoresClient``: one learner's scores in one course, fetched once, read from memory."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.p2 = COURSE.make_usage_key("problem", "p2")
        self.ungraded = COURSE.make_usage_key("problem", "p3")
        set_score(self.user.id, PROBLEM, 1.0, 2.0)
        set_score(self.user.id, self.p2, 0.0, 1.0)
        DjangoXBlockUserStateClient(self.user).set(self.user.username, self.ungraded, {"a": 1})
        set_score(UserFactory().id, PROBLEM, 2.0, 2.0)  # another learner
        elsewhere = CourseLocator("kvstate", "Elsewhere", "2026").make_usage_key("problem", "p1")
        set_score(self.user.id, elsewhere, 2.0, 2.0)  # another course
        self.created = {
            m.module_state_key: m.created for m in StudentModule.objects.filter(student=self.user)
        }

    def test_exports(self) -> None:
        assert model_data.InvalidScopeError is InvalidScopeError
        assert issubclass(model_data.InvalidWriteError, Exception)
        assert model_data.ScoresClient.Score is model_data.Score
        assert model_data.Score._fields == ("correct", "total", "created")

    def test_fetch_then_get(self) -> None:
        client = ScoresClient(COURSE, self.user.id)
        missing = COURSE.make_usage_key("problem", "none")
        # One SELECT for the four locations, on the alias writes go to (SPEC §10).
        with self.assertNumQueries(1, using="default"):
            client.fetch_scores([PROBLEM, self.p2, self.ungraded, missing])
        with self.assertNumQueries(0, using="default"):  # from memory
            assert client.get(PROBLEM) == Score(1.0, 2.0, self.created[PROBLEM])
            assert client.get(self.p2) == Score(0.0, 1.0, self.created[self.p2])
            assert client.get(self.ungraded) == Score(None, None, self.created[self.ungraded])
            assert client.get(missing) is None
            assert PROBLEM in client
            assert missing not in client

    def test_get_before_fetching_is_an_error(self) -> None:
        client = ScoresClient(COURSE, self.user.id)
        # Refused before anything is read.
        with self.assertNumQueries(0, using="default"), self.assertRaises(ValueError):
            client.get(PROBLEM)

    def test_branch_and_version_are_ignored(self) -> None:
        client = ScoresClient.create_for_locations(COURSE, self.user.id, [PROBLEM])
        branched = PROBLEM.replace(branch="draft-branch")
        versioned = PROBLEM.replace(version_guid="5e9b1f2d3c4a5b6c7d8e9f00")
        assert client.get(branched) == client.get(versioned) == client.get(PROBLEM) is not None
        by_branch = ScoresClient.create_for_locations(COURSE, self.user.id, [branched])
        assert by_branch.get(PROBLEM) == client.get(PROBLEM)

    def test_one_statement_per_parameter_chunk(self) -> None:
        keys = [COURSE.make_usage_key("problem", f"n{i}") for i in range(25)] + [PROBLEM]
        # 12 parameters a statement: the learner and the course take 2, leaving 10 locations
        # a statement: 26 locations -> 3 statements.
        with (
            mock.patch("kvstate.sql.max_query_params", return_value=12),
            self.assertNumQueries(3, using="default"),
        ):
            client = ScoresClient.create_for_locations(COURSE, self.user.id, keys)
        assert client.get(PROBLEM) == Score(1.0, 2.0, self.created[PROBLEM])
        with self.assertNumQueries(0, using="default"):  # no locations, nothing to read
            ScoresClient.create_for_locations(COURSE, self.user.id, [])

    @override_settings(
        DATABASE_ROUTERS=[ReadsElsewhereRouter(), "kvstate.routers.StudentModuleHistoryRouter"]
    )
    def test_it_reads_from_the_write_alias(self) -> None:
        # Scores feed grading, which writes: a lagging replica must never answer (SPEC §10).
        with (
            self.assertNumQueries(1, using="default"),
            self.assertNumQueries(0, using=HISTORY_ALIAS),
        ):
            client = ScoresClient.create_for_locations(COURSE, self.user.id, [PROBLEM])
        assert client.get(PROBLEM) is not None
