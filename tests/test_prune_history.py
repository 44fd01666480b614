"""``manage.py kvstate_prune_history``: old history goes, in bounded batches that resume."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connections
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from kvstate import history
from kvstate.conf import HISTORY_ALIAS
from kvstate.models import StudentModuleHistory

HISTORY_TABLE = StudentModuleHistory._meta.db_table


def add_history(module_id: int, *ages_in_days: float) -> list[int]:
    """Store one history row per age (days before now) for ``module_id``; return their ids."""
    now = timezone.now()
    rows = StudentModuleHistory.objects.using(HISTORY_ALIAS).bulk_create(
        StudentModuleHistory(
            student_module_id=module_id,
            created=now - timedelta(days=age, hours=1),  # an hour clear of whole-day cutoffs
            state=f'{{"age": {age}}}',
        )
        for age in ages_in_days
    )
    ids = [row.id for row in rows]
    if None in ids:  # backends that do not return ids from bulk inserts
        ids = list(
            StudentModuleHistory.objects.using(HISTORY_ALIAS)
            .filter(student_module_id=module_id)
            .order_by("id")
            .values_list("id", flat=True)
        )[-len(ages_in_days) :]
    return ids


def remaining() -> dict[int, list[float]]:
    """Return {module id: ages of its history rows, newest first}."""
    found: dict[int, list[float]] = {}
    rows = StudentModuleHistory.objects.using(HISTORY_ALIAS).order_by("-created", "-id")
    for module_id, state in rows.values_list("student_module_id", "state"):
        found.setdefault(module_id, []).append(float(state.split(": ")[1].rstrip("}")))
    return found


def prune(*args: str) -> str:
    out = StringIO()
    call_command("kvstate_prune_history", *args, stdout=out)
    return out.getvalue()


class PruneTests(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def test_deletes_rows_older_than_the_days_given(self) -> None:
        for module_id in range(1, 11):
            add_history(module_id, module_id)  # module n has one row n days old
        output = prune("--days", "5")
        assert remaining() == {1: [1.0], 2: [2.0], 3: [3.0], 4: [4.0]}
        assert "Done: deleted 6 rows in 1 batches" in output

    def test_keeps_the_newest_rows_of_each_module(self) -> None:
        add_history(1, 15, 14, 13, 12, 11, 10)  # all old: its newest 2 stay
        add_history(2, 12, 11, 10, 3, 2, 1)  # its newest 2 are recent: every old row goes
        add_history(3, 30)  # a single old row: it is its module's newest, it stays
        prune("--days", "5", "--keep", "2", "--batch-size", "4")
        assert remaining() == {1: [10.0, 11.0], 2: [1.0, 2.0, 3.0], 3: [30.0]}

    def test_a_dry_run_deletes_nothing_and_reports_what_it_would(self) -> None:
        add_history(1, 15, 14, 13, 1)
        add_history(2, 20)
        before = remaining()
        output = prune("--days", "5", "--keep", "1", "--batch-size", "2", "--dry-run")
        assert remaining() == before
        assert output.startswith("Dry run: history on database 'student_module_history': 4 rows")
        # Oldest first: module 2's only row (kept), module 1's 15-day row; then its 14- and
        # 13-day rows. Module 1's newest is its recent row: 3 of the 4 old rows would go.
        assert "batch 1: would delete 1 of 2 rows (2/4 examined, 1 would delete)" in output
        assert "batch 2: would delete 2 of 2 rows (4/4 examined, 3 would delete)" in output
        assert "Done: would delete 3 rows in 2 batches" in output

    def test_each_batch_is_bounded(self) -> None:
        for module_id in range(1, 26):
            add_history(module_id, 10)
        add_history(99, 1)
        batches = list(history.prune(timezone.now() - timedelta(days=5), batch_size=10))
        assert [(b.examined, b.deleted) for b in batches] == [(10, 10), (10, 10), (5, 5)]
        assert remaining() == {99: [1.0]}

    def test_statements_per_batch(self) -> None:
        # 25 modules with a 10- and a 9-day-old row each: 50 old rows, in (created, id) order
        # all 10-day rows first. Batches of 10: five full ones, and a sixth that finds nothing.
        # Statements: 1 COUNT (progress display); per batch 1 SELECT of its rows, with --keep
        # 1 SELECT of the newest rows of their modules, and 1 DELETE when something goes.
        cases = {
            # keep: (statements, rows per DELETE)
            0: (1 + 5 * 2 + 1, [10, 10, 10, 10, 10]),
            # 10-day rows go (each module's 9-day row is newer); 9-day rows are kept, so
            # batch 3 (5 of each) deletes 5 and batches 4 and 5 delete nothing.
            1: (1 + 5 * 2 + 3 + 1, [10, 10, 5]),
        }
        for keep, (statements, delete_sizes) in cases.items():
            with self.subTest(keep=keep):
                StudentModuleHistory.objects.using(HISTORY_ALIAS).all().delete()
                for module_id in range(1, 26):
                    add_history(module_id, 10, 9)
                with (
                    CaptureQueriesContext(connections[HISTORY_ALIAS]) as queries,
                    self.assertNumQueries(0, using="default"),
                ):
                    prune("--days", "5", "--batch-size", "10", "--keep", str(keep))
                deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE")]
                assert len(queries) == statements
                assert [sql.count(",") + 1 for sql in deletes] == delete_sizes
                assert sum(len(ages) for ages in remaining().values()) == (25 if keep else 0)

    def test_pauses_between_full_batches(self) -> None:
        for module_id in range(1, 4):
            add_history(module_id, 10)
        started = time.monotonic()
        prune("--days", "5", "--batch-size", "1", "--pause", "0.1")
        # Three full batches, each followed by a pause (the fourth finds nothing).
        assert time.monotonic() - started >= 0.3
        assert remaining() == {}

    def test_rejects_unusable_arguments(self) -> None:
        cases = {
            ("--days", "-1"): "'-1' is not a whole number of days, 0 or more",
            ("--days", "5", "--keep", "x"): "'x' is not a whole number of rows, 0 or more",
            ("--days", "5", "--batch-size", "0"): "'0' is not a whole number of rows, 1 or more",
            ("--days", "5", "--pause", "nan"): "'nan' is not a number of seconds, 0 or more",
        }
        for args, message in cases.items():
            with self.subTest(args=args), pytest.raises(CommandError, match=message):
                prune(*args)
        with pytest.raises(CommandError, match="--days"):
            prune()

    def test_prune_refuses_bad_numbers_in_python_too(self) -> None:
        with pytest.raises(ValueError, match="keep=-1"):
            next(history.prune(timezone.now(), keep=-1))
        with pytest.raises(ValueError, match="batch_size=0"):
            next(history.prune(timezone.now(), batch_size=0))


def fail_on(statement: str, occurrence: int, error: BaseException) -> Any:
    """Return an execute wrapper raising ``error`` at the ``occurrence``-th ``statement``."""
    seen = 0

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal seen
        if HISTORY_TABLE in sql and sql.startswith(statement):
            seen += 1
            if seen == occurrence:
                raise error
        return execute(sql, params, many, context)

    return wrapper


class InterruptedPruneTests(TransactionTestCase):
    """Real commits: what a batch deleted stays deleted, and a second run finishes the job."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        for module_id in range(1, 26):
            add_history(module_id, 10 + module_id, 1)  # one old and one recent row each

    def test_a_failed_run_loses_only_time_and_a_rerun_finishes(self) -> None:
        failing = fail_on("DELETE", 2, DatabaseError("connection lost (injected)"))
        with (
            connections[HISTORY_ALIAS].execute_wrapper(failing),
            pytest.raises(DatabaseError),
        ):
            prune("--days", "5", "--batch-size", "10")
        # The first batch (the 10 oldest rows) is committed and gone; nothing else moved.
        after_failure = remaining()
        assert sum(len(ages) for ages in after_failure.values()) == 50 - 10
        assert sorted(m for m, ages in after_failure.items() if len(ages) == 2) == list(
            range(1, 16)
        )
        output = prune("--days", "5", "--batch-size", "10")
        assert "Done: deleted 15 rows in 2 batches" in output
        assert remaining() == {module_id: [1.0] for module_id in range(1, 26)}

    def test_an_interrupted_run_says_how_to_carry_on(self) -> None:
        interrupted = fail_on("SELECT", 3, KeyboardInterrupt())  # COUNT, batch 1, batch 2
        with (
            connections[HISTORY_ALIAS].execute_wrapper(interrupted),
            pytest.raises(CommandError, match=r"after 1 batches \(10 rows deleted\).*again"),
        ):
            prune("--days", "5", "--batch-size", "10")
        prune("--days", "5", "--batch-size", "10")
        assert remaining() == {module_id: [1.0] for module_id in range(1, 26)}
