"""Resets and deletes racing a learner's submissions (SPEC §11): neither loses.

Real threads and commits (``TransactionTestCase``) with the harness of ``test_concurrency.py``.
Eight writers submit distinct fields of one learner's problem while a ninth thread resets or
deletes: every submitted field survives a reset, and a delete removes every submission
acknowledged before it started. A naive read-modify-write reset, under the same harness, is
the negative control: it must lose fields, or the harness proves nothing.

Figures are logged at INFO under ``tests.concurrency``:
``pytest -o log_cli=true --log-cli-level=INFO tests/test_operations_concurrency.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from django.test import TransactionTestCase

from kvstate import operations, storage
from kvstate.conf import HISTORY_ALIAS
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.test_concurrency import THREADS, describe, log_figures, run_threads
from tests.underfire import COURSE, PROBLEM, PROBLEM_2

WRITES = 50


class OperationRaceTestCase(TransactionTestCase):
    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        storage.stats.reset()

    def race(
        self,
        submit: Callable[[DjangoXBlockUserStateClient, int, int], str],
        operate: Callable[[set[str]], None],
    ) -> tuple[list[BaseException], int]:
        """Run THREADS submitters and one operator at once; return errors and operations run.

        ``submit(client, thread, i)`` writes and returns the field it stored; the operator
        calls ``operate(acknowledged)`` over and over until every submitter is done, with the
        fields whose submission had returned (committed) before that call began.
        """
        acknowledged: list[str] = []
        submitters_left = [THREADS]
        lock = threading.Lock()
        operations_run = 0

        def target(index: int, barrier: threading.Barrier) -> None:
            nonlocal operations_run
            barrier.wait()
            if index == THREADS:
                while True:
                    with lock:
                        if not submitters_left[0]:
                            return
                    operate(set(acknowledged))
                    operations_run += 1
            try:
                client = DjangoXBlockUserStateClient(self.user)
                for i in range(WRITES):
                    acknowledged.append(submit(client, index, i))
            finally:
                with lock:
                    submitters_left[0] -= 1

        errors = run_threads(THREADS + 1, target)
        return errors, operations_run

    def stored(self, *blocks: Any) -> dict[str, Any]:
        """Return the fields of the learner's rows for ``blocks``, merged."""
        merged: dict[str, Any] = {}
        rows = StudentModule.objects.filter(student=self.user, module_state_key__in=blocks)
        for text in rows.values_list("state", flat=True):
            merged.update(json.loads(text) if text else {})
        return merged


class ResetRaceTests(OperationRaceTestCase):
    def setUp(self) -> None:
        super().setUp()
        DjangoXBlockUserStateClient(self.user).set(self.user.username, PROBLEM, {"attempts": 1})
        self.module_id = StudentModule.objects.get(student=self.user).pk

    @staticmethod
    def submit(client: DjangoXBlockUserStateClient, thread: int, i: int) -> str:
        # A submission: the learner's answer and the attempt it used.
        name = f"t{thread}_{i}"
        client.set(client.user.username, PROBLEM, {name: i, "attempts": i + 1})
        return name

    def expected(self) -> dict[str, int]:
        return {f"t{t}_{i}": i for t in range(THREADS) for i in range(WRITES)}

    def test_a_reset_racing_eight_writers_loses_no_field(self) -> None:
        resets = [0]

        def reset(_acknowledged: set[str]) -> None:
            if operations.reset_attempts(self.user.pk, PROBLEM):
                resets[0] += 1

        errors, calls = self.race(self.submit, reset)
        assert errors == [], describe(errors)
        state = self.stored(PROBLEM)
        expected = self.expected()
        lost = sorted(set(expected) - set(state))
        log_figures(
            "reset racing 8 writers",
            submitted=len(expected),
            lost=len(lost),
            resets_called=calls,
            resets_that_changed=resets[0],
            swaps_lost=storage.stats.swaps_lost,
            transactions_retried=storage.stats.transactions_retried,
        )
        assert lost == []
        assert {name: state[name] for name in expected} == expected
        assert resets[0] > 0, "no reset changed anything: the race did not happen"
        # One history row per write call that changed the row: the first write, every
        # submission, every reset that found attempts to reset.
        history = StudentModuleHistory.objects.using(HISTORY_ALIAS).filter(
            student_module_id=self.module_id
        )
        assert history.count() == 1 + THREADS * WRITES + resets[0]

    def test_the_harness_catches_a_naive_read_modify_write_reset(self) -> None:
        # Negative control: Open edX's reset (load the state, set attempts to 0, save the
        # whole text) under the same harness. If it stopped losing fields, the test above
        # would prove nothing.
        rows = StudentModule.objects.filter(pk=self.module_id)

        def naive_reset(_acknowledged: set[str]) -> None:
            state = json.loads(rows.values_list("state", flat=True)[0])
            state["attempts"] = 0
            rows.update(state=json.dumps(state))

        errors, calls = self.race(self.submit, naive_reset)
        assert errors == [], describe(errors)
        lost = set(self.expected()) - set(self.stored(PROBLEM))
        log_figures("naive reset (negative control)", lost=len(lost), resets_called=calls)
        assert lost, "the naive reset lost nothing: the harness applies no pressure"


class DeleteRaceTests(OperationRaceTestCase):
    @staticmethod
    def submit(client: DjangoXBlockUserStateClient, thread: int, i: int) -> str:
        name = f"t{thread}_{i}"
        client.set(client.user.username, (PROBLEM, PROBLEM_2)[i % 2], {name: i})
        return name

    def check_deletes(self, name: str, delete: Callable[[], int]) -> None:
        survivors: list[set[str]] = []

        def operate(acknowledged: set[str]) -> None:
            delete()
            left = acknowledged & set(self.stored(PROBLEM, PROBLEM_2))
            if left:
                survivors.append(left)

        errors, calls = self.race(self.submit, operate)
        assert errors == [], describe(errors)
        log_figures(
            name,
            submitted=THREADS * WRITES,
            deletes=calls,
            survived_a_later_delete=sum(map(len, survivors)),
            swaps_lost=storage.stats.swaps_lost,
        )
        assert survivors == []
        assert calls > 0
        delete()
        assert self.stored(PROBLEM, PROBLEM_2) == {}

    def test_a_delete_removes_every_submission_made_before_it(self) -> None:
        self.check_deletes(
            "delete_state racing 8 writers",
            lambda: operations.delete_state(self.user.pk, [PROBLEM, PROBLEM_2]),
        )

    def test_a_course_delete_removes_every_submission_made_before_it(self) -> None:
        self.check_deletes(
            "delete_course_state racing 8 writers",
            lambda: operations.delete_course_state(self.user.pk, COURSE, batch_size=1),
        )
