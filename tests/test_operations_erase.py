"""``erase_user`` at scale (SPEC §11): 100,000 rows, bounded memory, interrupted and resumed.

A learner with 100,000 rows over the four learner tables (history on its own alias) is erased
in three runs: one that a fault stops at its 8th module batch, one that its caller stops after
5 batches, and one that finishes. Memory is traced with ``tracemalloc`` and compared with the
erasure of a 10,000-row learner: the peak depends on the batch size, not on the rows. Another
learner's rows and the shared summary rows are compared exactly before and after.

Figures (rows/s under tracemalloc, peaks) are logged at INFO under ``tests.operations``:
``pytest -o log_cli=true --log-cli-level=INFO tests/test_operations_erase.py``.
"""

from __future__ import annotations

import logging
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import pytest
from django.db import DatabaseError, connection, connections
from django.test import TransactionTestCase

from kvstate import operations
from kvstate.conf import HISTORY_ALIAS
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
)
from tests.bulk import LearnerRows, fill_learner, fill_summary
from tests.test_operations import failing_on
from tests.underfire import snapshot

log = logging.getLogger("tests.operations")

T = TypeVar("T")

SMALL, LARGE = LearnerRows.totalling(10_000), LearnerRows.totalling(100_000)
BATCH = 1000
#: Learners (plain ids: kvstate's tables have no database constraint on the user).
SMALL_ID, LARGE_ID, BYSTANDER_ID = 101, 102, 103
MODULES = StudentModule._meta.db_table
HISTORY = StudentModuleHistory._meta.db_table
#: The peak may grow this much beyond the 10,000-row erasure's: allocator noise, a traceback.
PEAK_SLACK = 256 * 1024


def traced(fn: Callable[[], T]) -> tuple[T, int, float]:
    """Run ``fn`` under tracemalloc; return its result, the peak bytes and the seconds taken."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak, seconds


def rows_left(user_id: int, module_ids: range) -> LearnerRows:
    """Return how many rows the learner still has in each table."""
    history = StudentModuleHistory.objects.using(HISTORY_ALIAS).filter(
        student_module_id__gte=module_ids.start, student_module_id__lt=module_ids.stop
    )
    return LearnerRows(
        StudentModule.objects.filter(student_id=user_id).count(),
        history.count(),
        XModuleStudentPrefsField.objects.filter(student_id=user_id).count(),
        XModuleStudentInfoField.objects.filter(student_id=user_id).count(),
    )


class EraseAtScaleTests(TransactionTestCase):
    databases = {"default", HISTORY_ALIAS}

    def test_erase_100000_rows_in_bounded_memory_interrupted_and_resumed(self) -> None:
        fill_learner(SMALL_ID, SMALL, first_id=10_000_000)
        fill_learner(BYSTANDER_ID, LearnerRows.totalling(5_000), first_id=30_000_000)
        fill_summary(1_000, first_id=40_000_000)
        counts, small_peak, _seconds = traced(
            lambda: operations.erase_user(SMALL_ID, batch_size=BATCH)
        )
        assert counts == SMALL.by_table()
        bystanders = snapshot()  # every row that must stay as it is
        large_modules = fill_learner(LARGE_ID, LARGE, first_id=20_000_000)
        assert LARGE.total == 100_000
        assert rows_left(LARGE_ID, large_modules) == LARGE

        # Run 1: the 8th module batch fails after its history went, before its modules did.
        def failing_run() -> None:
            with (
                connections["default"].execute_wrapper(failing_on("DELETE", MODULES, 8)),
                pytest.raises(DatabaseError),
            ):
                operations.erase_user(LARGE_ID, batch_size=BATCH)

        _none, peak_1, seconds_1 = traced(failing_run)
        modules_done = 7 * BATCH
        expected = LearnerRows(
            LARGE.modules - modules_done,
            LARGE.history - 8 * BATCH * 3,  # the 8th batch's history went first
            LARGE.prefs,
            LARGE.info,
        )
        assert rows_left(LARGE_ID, large_modules) == expected
        # No history row outlived its module.
        module_ids = set(StudentModule.objects.filter(student_id=LARGE_ID).values_list("id"))
        history_owners = set(
            StudentModuleHistory.objects.using(HISTORY_ALIAS)
            .filter(
                student_module_id__gte=large_modules.start,
                student_module_id__lt=large_modules.stop,
            )
            .values_list("student_module_id")
            .distinct()
        )
        assert history_owners <= module_ids

        # Run 2: the caller stops after 5 batches (as Ctrl-C in the command does).
        def stopped_run() -> int:
            deleted = 0
            for number, batch in enumerate(
                operations.erase_user_batches(LARGE_ID, batch_size=BATCH), 1
            ):
                deleted += batch.rows
                if number == 5:
                    break
            return deleted

        deleted_2, peak_2, seconds_2 = traced(stopped_run)
        # 5 module batches of 1,000 modules and 3,000 history rows, but for the first: run 1's
        # 8th batch, whose history had gone already.
        assert deleted_2 == 5 * 4 * BATCH - 3 * BATCH

        # Run 3 finishes the job.
        counts, peak_3, seconds_3 = traced(
            lambda: operations.erase_user(LARGE_ID, batch_size=BATCH)
        )
        already = LARGE.total - expected.total + deleted_2
        assert sum(counts.values()) == LARGE.total - already
        assert rows_left(LARGE_ID, large_modules) == LearnerRows(0, 0, 0, 0)
        # Everyone else's rows are exactly as they were.
        assert snapshot() == bystanders
        assert sum(map(len, bystanders.values())) == LearnerRows.totalling(5_000).total + 1_000

        seconds = seconds_1 + seconds_2 + seconds_3
        large_peak = max(peak_1, peak_2, peak_3)
        log.info(
            "erase %d rows [%s]: %.0f rows/s under tracemalloc (%.1f s in 3 runs); peak %d KiB "
            "(runs %d/%d/%d KiB) against %d KiB for %d rows",
            LARGE.total,
            connection.vendor,
            LARGE.total / seconds,
            seconds,
            large_peak // 1024,
            peak_1 // 1024,
            peak_2 // 1024,
            peak_3 // 1024,
            small_peak // 1024,
            SMALL.total,
        )
        # Ten times the rows, about the same peak: memory depends on the batch, not the rows.
        assert large_peak <= small_peak + PEAK_SLACK
