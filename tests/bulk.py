"""Give learners many rows fast: raw multi-row INSERTs with explicit ids (erase tests, benchmark).

Rows are spread over the tables as a long-time learner's are: a fifth ``StudentModule`` rows,
three history rows per module (on the history alias), a tenth preferences, a tenth user_info.
Ids are explicit and far apart per learner, so module ids are known without reading them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Any

from django.db import connections, router
from django.db.models import Model
from django.utils import timezone

from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)

#: Rows per INSERT statement.
CHUNK = 1000
COURSE_ID = "course-v1:kvstate+Bulk+2026"
HISTORY_PER_MODULE = 3
POLL_PREFIX = "block-v1:kvstate+Bulk+2026+type@poll+block@p"
MODULE_COLUMNS = (
    *("id", "module_type", "module_id", "student_id", "course_id"),
    *("state", "done", "created", "modified"),
)
#: Stands for "the insertion's timestamp" in a row given to :func:`insert`.
NOW = object()


@dataclass(frozen=True)
class LearnerRows:
    """How many rows a learner has in each table."""

    modules: int
    history: int
    prefs: int
    info: int

    @classmethod
    def totalling(cls, total: int) -> LearnerRows:
        """Return ``total`` rows spread as a long-time learner's (``total`` a multiple of 10)."""
        modules = total // 5
        return cls(modules, modules * HISTORY_PER_MODULE, total // 10, total // 10)

    @property
    def total(self) -> int:
        return sum(astuple(self))

    def by_table(self) -> dict[str, int]:
        """Return the counts keyed as ``erase_user`` reports them."""
        return {
            StudentModule._meta.db_table: self.modules,
            StudentModuleHistory._meta.db_table: self.history,
            XModuleUserStateSummaryField._meta.db_table: 0,
            XModuleStudentPrefsField._meta.db_table: self.prefs,
            XModuleStudentInfoField._meta.db_table: self.info,
        }


def insert(model: type[Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Insert ``rows`` (values of ``columns``) into ``model``'s table on its alias, by chunks."""
    connection = connections[router.db_for_write(model)]
    qn = connection.ops.quote_name
    head = f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(map(qn, columns))}) VALUES "
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    chunk: list[Sequence[Any]] = []

    def flush() -> None:
        params = [now if value is NOW else value for row in chunk for value in row]
        with connection.cursor() as cursor:
            cursor.execute(head + ", ".join([row_sql] * len(chunk)), params)
        chunk.clear()

    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            flush()
    if chunk:
        flush()


def fill_learner(user_id: int, rows: LearnerRows, first_id: int) -> range:
    """Give learner ``user_id`` ``rows``, with ids from ``first_id``; return the module ids."""
    module_ids = range(first_id, first_id + rows.modules)
    insert(
        StudentModule,
        MODULE_COLUMNS,
        (
            (
                module_id,
                "problem",
                f"block-v1:kvstate+Bulk+2026+type@problem+block@p{n}",
                user_id,
                COURSE_ID,
                f'{{"answer": {n}}}',
                "na",
                NOW,
                NOW,
            )
            for n, module_id in enumerate(module_ids)
        ),
    )
    insert(
        StudentModuleHistory,
        ("id", "student_module_id", "created", "state"),
        (
            (first_id + n, module_ids[n // HISTORY_PER_MODULE], NOW, f'{{"answer": {n}}}')
            for n in range(rows.history)
        ),
    )
    insert(
        XModuleStudentPrefsField,
        ("id", "module_type", "student_id", "field_name", "value", "created", "modified"),
        (
            (first_id + n, f"t{n // 100}", user_id, f"f{n}", str(n), NOW, NOW)
            for n in range(rows.prefs)
        ),
    )
    insert(
        XModuleStudentInfoField,
        ("id", "student_id", "field_name", "value", "created", "modified"),
        ((first_id + n, user_id, f"f{n}", str(n), NOW, NOW) for n in range(rows.info)),
    )
    return module_ids


def fill_summary(count: int, first_id: int) -> None:
    """Store ``count`` shared summary rows (no learner's)."""
    insert(
        XModuleUserStateSummaryField,
        ("id", "usage_id", "field_name", "value", "created", "modified"),
        ((first_id + n, f"{POLL_PREFIX}{n}", "tally", str(n), NOW, NOW) for n in range(count)),
    )
