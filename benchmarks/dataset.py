"""A production-shaped courseware state dataset, generated in bulk for ``benchmarks.scale``.

The shape is a pure function of :class:`Shape` (row counts and a seed), so a benchmark that
reuses a kept database recomputes the same :class:`Layout` without reading it back:

- Courses of 50 to 250 units of 20 blocks (10 problems, 5 videos, 5 html per unit, in one of
  eight orders); about one course per 50,000 rows, course 0 always the biggest.
- Learners enrolled in one to a few courses. Each enrollment holds state for the first *k*
  blocks of its course, in course order (a learner works through a course): 60% of enrollments
  a few percent of the course (one to a few hundred rows), 30% up to half, 10% most or all of
  it, so some learners have thousands of rows in one course. The first enrollment is course 0
  whole.
- An iteration course of exactly ``iterate_rows`` rows: 200-block learners.
- Rows the planner's statistics do not know, loaded after the tables were analysed (as
  happens between two auto-analyzes of a big table): a "fresh" course (up to 20 learners with
  all of its up to 1,000 blocks), and up to 20 "newcomers", learners who joined since, with up
  to 2,000 rows each in course 0.
- Rows are written in the order learners would create them: round *u* writes unit *u* of every
  enrollment that reached it. A learner's rows of one unit are neighbours on disk; their units
  are far apart, as in a table filled over months.
- States of realistic size: problems 0.4 to 1.3 kB (``correct_map``, ``student_answers``,
  ``input_state``...), with a grade once attempted; videos about 130 bytes; html 20.
- History: ``history_rows`` rows for problem modules. Up to 20 "rich" modules (the first
  problem of a learner's first unit) get exactly 100 entries each, for ``get_history``; the
  rest is spread evenly over the other problem modules.
- Per-field rows: a ``tally`` summary for every problem block, three ``theme`` preferences and
  two ``user_info`` values per learner.

Loading: PostgreSQL through ``COPY`` (psycopg 3), MySQL/MariaDB and SQLite through multi-row
``INSERT``; for big loads the secondary indexes and unique constraints are dropped first and
built once at the end, then the tables are analysed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

HISTORY_ALIAS = "student_module_history"
ORG = "ScaleOrg"
RUN = "2025"
BLOCKS_PER_UNIT = 20
#: Entries of each module that ``get_history`` reads.
RICH_HISTORY = 100
#: Build indexes after loading (rather than maintain them row by row) from this many rows on.
INDEX_AFTER_LOAD = 50_000
#: Rows per multi-row INSERT (MySQL/MariaDB, SQLite) and per COPY buffer flush.
BATCH = 2_000
#: Where generated timestamps fall: the last year. Prune fodder is far older.
NOW = datetime(2025, 6, 1, tzinfo=UTC)
WINDOW = timedelta(days=360)

#: Field names of the per-field rows (the benchmark's block class has fields of these names).
SUMMARY_FIELD = "tally"
PREFERENCE_FIELD = "theme"
INFO_FIELDS = ("nickname", "timezone")
BLOCK_TYPES = ("problem", "video", "html")


def _unit_patterns(seed: int) -> tuple[tuple[str, ...], ...]:
    """Return eight block-type orders of one unit: 10 problems, 5 videos, 5 html."""
    rng = random.Random(seed)
    base = ["problem"] * 10 + ["video"] * 5 + ["html"] * 5
    patterns = []
    for _ in range(8):
        rng.shuffle(base)
        patterns.append(tuple(base))
    return tuple(patterns)


@dataclass(frozen=True)
class Shape:
    """How much to generate; everything else follows from it."""

    rows: int
    history_rows: int
    iterate_rows: int
    seed: int = 11

    def __post_init__(self) -> None:
        if self.rows < 1_000:
            raise ValueError(f"rows={self.rows}: the dataset needs at least 1,000 rows")
        if not 0 < self.iterate_rows <= self.rows // 2:
            raise ValueError(
                f"iterate_rows={self.iterate_rows}: between 1 and half of rows ({self.rows // 2})"
            )
        if self.history_rows < 0:
            raise ValueError(f"history_rows={self.history_rows} cannot be negative")

    @property
    def marker(self) -> str:
        """Identify the dataset (and the generator's version) in a kept database."""
        return (
            f"v3 rows={self.rows} history={self.history_rows} iterate={self.iterate_rows} "
            f"seed={self.seed}"
        )


@dataclass(frozen=True)
class Course:
    index: int
    units: int
    patterns: tuple[tuple[str, ...], ...] = field(repr=False)

    @property
    def key(self) -> str:
        return f"course-v1:{ORG}+C{self.index:04d}+{RUN}"

    @property
    def blocks(self) -> int:
        return self.units * BLOCKS_PER_UNIT

    def block_type(self, unit: int, position: int) -> str:
        return self.patterns[(self.index * 31 + unit) % len(self.patterns)][position]

    def usage(self, unit: int, position: int) -> str:
        """Return the usage key string of a block, as opaque-keys prints (and stores) it."""
        block_type = self.block_type(unit, position)
        return (
            f"block-v1:{ORG}+C{self.index:04d}+{RUN}+type@{block_type}"
            f"+block@u{unit:03d}b{position:02d}"
        )

    def unit_usages(self, unit: int) -> list[tuple[str, str]]:
        """Return ``(block type, usage key string)`` of the unit's 20 blocks."""
        return [
            (self.block_type(unit, position), self.usage(unit, position))
            for position in range(BLOCKS_PER_UNIT)
        ]

    def first_problem(self, unit: int) -> int:
        return next(p for p in range(BLOCKS_PER_UNIT) if self.block_type(unit, p) == "problem")


@dataclass(frozen=True)
class Enrollment:
    """One learner's state in one course: the first ``blocks`` blocks of the course."""

    learner: int
    course: Course
    blocks: int

    @property
    def full_units(self) -> int:
        return self.blocks // BLOCKS_PER_UNIT

    def rows_in_unit(self, unit: int) -> int:
        return max(0, min(BLOCKS_PER_UNIT, self.blocks - unit * BLOCKS_PER_UNIT))


def username(learner: int) -> str:
    return f"learner{learner:07d}"


class Layout:
    """The dataset a :class:`Shape` describes: courses, learners, enrollments, rich modules."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        rng = random.Random(shape.seed)
        patterns = _unit_patterns(shape.seed)
        count = max(2, round(shape.rows / 50_000))
        # Course 0: the biggest; at most a quarter of a small table.
        first = min(250, max(10, shape.rows // 80))
        self.courses = [Course(0, first, patterns)] + [
            Course(i, min(first, rng.choice((50, 100, 150, 250))), patterns)
            for i in range(1, count)
        ]
        iterate_units = 10
        self.iteration_course = Course(count, iterate_units, patterns)
        per_learner = iterate_units * BLOCKS_PER_UNIT
        enrollments: list[Enrollment] = []
        remaining = shape.iterate_rows
        learner = 0
        while remaining:
            learner += 1
            blocks = min(per_learner, remaining)
            enrollments.append(Enrollment(learner, self.iteration_course, blocks))
            remaining -= blocks
        self.iteration_learners = learner
        late = max(1, min(20, shape.rows // 50_000))
        self.fresh_course = Course(count + 1, max(2, min(50, shape.rows // 200)), patterns)
        for n in range(late):
            enrollments.append(Enrollment(n + 1, self.fresh_course, self.fresh_course.blocks))
        newcomer_blocks = min(self.courses[0].blocks // 2, 2_000)
        remaining = shape.rows - sum(e.blocks for e in enrollments) - late * newcomer_blocks
        taken: dict[int, set[int]] = {}
        weights = [c.units for c in self.courses]
        while remaining:
            if not taken:
                course, band = self.courses[0], 1.0  # one learner with all of the biggest course
            else:
                course = rng.choices(self.courses, weights)[0]
                roll = rng.random()
                if roll < 0.6:
                    band = rng.uniform(0.02, 0.10)
                elif roll < 0.9:
                    band = rng.uniform(0.10, 0.50)
                else:
                    band = rng.uniform(0.50, 1.00)
            candidates = [n for n, courses in taken.items() if course.index not in courses]
            if candidates and rng.random() < 0.5:
                chosen = rng.choice(candidates)
            else:
                learner += 1
                chosen = learner
            taken.setdefault(chosen, set()).add(course.index)
            blocks = min(remaining, max(BLOCKS_PER_UNIT, round(band * course.blocks)))
            enrollments.append(Enrollment(chosen, course, blocks))
            remaining -= blocks
        self.newcomers = [
            Enrollment(learner + n, self.courses[0], newcomer_blocks) for n in range(1, late + 1)
        ]
        self.learners = learner + late
        self.enrollments = enrollments + self.newcomers
        # Rich modules: the first problem of unit 0 of enrollments with two units or more.
        rich_count = min(20, shape.history_rows // (2 * RICH_HISTORY))
        self.rich = [e for e in self.settled if e.course in self.courses and e.full_units >= 2][
            :rich_count
        ]

    @property
    def all_courses(self) -> list[Course]:
        return [*self.courses, self.iteration_course, self.fresh_course]

    @property
    def fresh(self) -> list[Enrollment]:
        """Enrollments in the fresh course."""
        return [e for e in self.enrollments if e.course is self.fresh_course]

    @property
    def late(self) -> list[Enrollment]:
        """Enrollments loaded after the tables were analysed: the fresh course, newcomers."""
        return self.fresh + self.newcomers

    @property
    def settled(self) -> list[Enrollment]:
        """Enrollments loaded before the tables are analysed."""
        late = self.late
        return [e for e in self.enrollments if e not in late]

    def rows_per_course(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for e in self.enrollments:
            found[e.course.key] = found.get(e.course.key, 0) + e.blocks
        return found

    @cached_property
    def biggest_course(self) -> Course:
        rows = self.rows_per_course()
        return max(self.courses, key=lambda c: rows.get(c.key, 0))

    def units(
        self,
        rng: random.Random,
        count: int,
        *,
        heavy: bool = False,
        among: Sequence[Enrollment] | None = None,
    ) -> list[tuple[Enrollment, int]]:
        """Return ``count`` (enrollment, unit) pairs with state in all 20 blocks, at random.

        From ``among`` (default: the enrollments the statistics know). ``heavy``: only learners
        with the most rows in the course (2,000 or more, or the top tenth when no one has that
        many). Unit 0 is left out: rich modules live there, and the benchmark's writes must not
        add to their history.
        """
        usable = [
            e
            for e in (self.settled if among is None else among)
            if e.full_units >= 2 and e.course is not self.iteration_course
        ]
        if heavy:
            big = [e for e in usable if e.blocks >= 2_000]
            usable = big or sorted(usable, key=lambda e: -e.blocks)[: max(1, len(usable) // 10)]
        picked = []
        for _ in range(count):
            enrollment = rng.choice(usable)
            picked.append((enrollment, rng.randrange(1, enrollment.full_units)))
        return picked

    def rows_in_order(
        self, enrollments: Sequence[Enrollment] | None = None
    ) -> Iterator[tuple[Enrollment, int, int]]:
        """Yield ``(enrollment, unit, position)`` of every row, in creation order (by rounds)."""
        active = list(self.enrollments if enrollments is None else enrollments)
        unit = 0
        while active:
            for enrollment in active:
                for position in range(enrollment.rows_in_unit(unit)):
                    yield enrollment, unit, position
            unit += 1
            active = [e for e in active if e.blocks > unit * BLOCKS_PER_UNIT]


# --- states -----------------------------------------------------------------------------------


def _problem_states(rng: random.Random, count: int) -> list[tuple[str, float | None, float]]:
    """Return problem states of realistic size, with their (grade, max_grade)."""
    states = []
    for _ in range(count):
        inputs = rng.choice((1, 1, 2, 3))
        attempts = rng.choice((0, 1, 1, 1, 2, 3, 5))
        ids = [f"{rng.getrandbits(128):032x}_{n + 2}_1" for n in range(inputs)]
        earned = sum(rng.random() < 0.7 for _ in ids) if attempts else 0
        state: dict[str, Any] = {
            "seed": rng.randint(1, 1000),
            "input_state": {i: {} for i in ids},
        }
        if attempts:
            state.update(
                attempts=attempts,
                correct_map={
                    i: {
                        "correctness": "correct" if n < earned else "incorrect",
                        "npoints": None,
                        "msg": "",
                        "hint": "",
                        "hintmode": None,
                        "queuestate": None,
                        "answervariable": None,
                    }
                    for n, i in enumerate(ids)
                },
                student_answers={i: f"choice_{rng.randint(0, 3)}" for i in ids},
                has_saved_answers=False,
                done=True,
                last_submission_time=f"2025-0{rng.randint(1, 5)}-1{rng.randint(0, 9)}T"
                f"{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}Z",
                score={"raw_earned": earned, "raw_possible": inputs},
            )
        grade = float(earned) if attempts else None
        states.append((json.dumps(state), grade, float(inputs)))
    return states


def _video_states(rng: random.Random, count: int) -> list[tuple[str, None, None]]:
    return [
        (
            json.dumps(
                {
                    "saved_video_position": f"00:{rng.randint(0, 14):02d}:{rng.randint(0, 59):02d}",
                    "speed": rng.choice((1.0, 1.25, 1.5, 2.0)),
                    "youtube_is_available": rng.random() < 0.9,
                    "transcript_language": "en",
                }
            ),
            None,
            None,
        )
        for _ in range(count)
    ]


def _html_states(count: int) -> list[tuple[str, None, None]]:
    return [('{"viewed": true}', None, None)] * count


# --- loading ----------------------------------------------------------------------------------


class Loader:
    """Insert rows into one table in bulk: ``COPY`` on PostgreSQL, multi-row INSERT elsewhere.

    Values are Python ``str``/``int``/``float``/``None`` or timestamps already in the backend's
    form (:func:`stamps`). Use it as a context manager; rows are sent in batches.
    """

    def __init__(self, connection: Any, table: str, columns: Sequence[str]) -> None:
        self.connection = connection
        self.vendor = connection.vendor
        qn = connection.ops.quote_name
        self.column_sql = ", ".join(qn(c) for c in columns)
        self.table = qn(table)
        self.width = len(columns)
        self.buffer: list[Any] = []
        self.count = 0

    def __enter__(self) -> Loader:
        self.connection.ensure_connection()
        raw = self.connection.connection
        if self.vendor == "postgresql":
            self._cursor = raw.cursor()
            self._copy_cm = self._cursor.copy(f"COPY {self.table} ({self.column_sql}) FROM STDIN")
            self._copy = self._copy_cm.__enter__()
        else:
            self._cursor = raw.cursor()
            mark = "?" if self.vendor == "sqlite" else "%s"
            self._insert = (
                f"INSERT INTO {self.table} ({self.column_sql}) VALUES "
                f"({', '.join([mark] * self.width)})"
            )
        return self

    def add(self, row: Sequence[Any]) -> None:
        if self.vendor == "postgresql":
            self.buffer.append("\t".join(map(_copy_text, row)))
        else:
            self.buffer.append(row)
        if len(self.buffer) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.vendor == "postgresql":
            self._copy.write("\n".join(self.buffer) + "\n")
        else:
            # MySQLdb turns executemany of one INSERT into multi-row INSERT statements.
            self._cursor.executemany(self._insert, self.buffer)
        self.count += len(self.buffer)
        self.buffer.clear()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._flush()
        if self.vendor == "postgresql":
            self._copy_cm.__exit__(*exc)
        self._cursor.close()


def _copy_text(value: Any) -> str:
    """Return ``value`` in COPY's text format (backslash escapes, ``\\N`` for NULL)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            value = (
                value.replace("\\", "\\\\")
                .replace("\t", "\\t")
                .replace("\n", "\\n")
                .replace("\r", "\\r")
            )
        return value
    return str(value)


def stamps(connection: Any, start: datetime, end: datetime, count: int) -> list[Any]:
    """Return ``count`` ascending timestamps from start to end, as the backend stores them."""
    step = (end - start) / max(count - 1, 1)
    values = [start + step * i for i in range(count)]
    if connection.vendor == "postgresql":
        return [v.isoformat(sep=" ") for v in values]
    return [connection.ops.adapt_datetimefield_value(v) for v in values]


# --- generating -------------------------------------------------------------------------------


@dataclass
class Generated:
    """Row counts per table, and what the benchmark needs to find again."""

    counts: dict[str, int] = field(default_factory=dict)
    rich_module_ids: list[int] = field(default_factory=list)


def generate(layout: Layout, *, rebuild_indexes: bool | None = None) -> Generated:
    """Write ``layout``'s rows into empty tables; return the counts.

    ``rebuild_indexes`` (default: from :data:`INDEX_AFTER_LOAD` rows on) drops the secondary
    indexes and unique constraints before loading and builds them once afterwards, which is
    several times faster than maintaining them row by row. On MySQL/MariaDB that is DDL,
    which commits: do not ask for it inside a transaction you mean to roll back.
    """
    from django.contrib.auth import get_user_model
    from django.db import connections, router

    from kvstate.models import (
        StudentModule,
        StudentModuleHistory,
        XModuleStudentInfoField,
        XModuleStudentPrefsField,
        XModuleUserStateSummaryField,
    )

    shape = layout.shape
    if rebuild_indexes is None:
        rebuild_indexes = shape.rows >= INDEX_AFTER_LOAD
    result = Generated()
    using = router.db_for_write(StudentModule)
    history_using = router.db_for_write(StudentModuleHistory)
    connection = connections[using]
    rng = random.Random(shape.seed + 1)
    times = stamps(connection, NOW - WINDOW, NOW - timedelta(days=1), 4096)

    user_model = get_user_model()
    joined = NOW - WINDOW - timedelta(days=30)
    users = [
        user_model(
            id=n,
            username=username(n),
            email=f"{username(n)}@example.com",
            password="!",  # unusable, as set_unusable_password() leaves it
            date_joined=joined,
        )
        for n in range(1, layout.learners + 1)
    ]
    user_model._default_manager.using(using).bulk_create(users, batch_size=BATCH)
    result.counts["auth_user"] = len(users)

    per_field = [XModuleUserStateSummaryField, XModuleStudentPrefsField, XModuleStudentInfoField]
    with _indexes_built_after(using, [StudentModule, *per_field], rebuild_indexes):
        problem_ids = _load_modules(connection, layout, layout.settled, 1, rng, times, result)
        _load_per_field(connection, layout, times, result)
    with _indexes_built_after(history_using, [StudentModuleHistory], rebuild_indexes):
        _load_history(connections[history_using], layout, rng, problem_ids, result)
    _analyse(connection, [user_model, StudentModule, *per_field])
    _analyse(connections[history_using], [StudentModuleHistory])
    # After the statistics: a course launched and learners who joined since the last analyze.
    loaded = result.counts["courseware_studentmodule"]
    _load_modules(connection, layout, layout.late, loaded + 1, rng, times, result)
    _reset_sequences(connection, [user_model, StudentModule])
    return result


def _load_modules(
    connection: Any,
    layout: Layout,
    enrollments: Sequence[Enrollment],
    first_id: int,
    rng: random.Random,
    times: list[Any],
    result: Generated,
) -> list[int]:
    """Write the enrollments' StudentModule rows; return the ids of problem rows, rich first."""
    from django.db import transaction

    from kvstate.models import StudentModule

    problems = _problem_states(rng, 512)
    videos = _video_states(rng, 64)
    html = _html_states(1)
    columns = (
        "id",
        "module_type",
        "module_id",
        "student_id",
        "course_id",
        "state",
        "grade",
        "max_grade",
        "done",
        "created",
        "modified",
    )
    rich = {(e.learner, e.course.index) for e in layout.rich}
    rich_ids: list[int] = []
    problem_ids: list[int] = []
    last_time = len(times) - 1
    rounds = max(c.units for c in layout.all_courses)
    with (
        transaction.atomic(connection.alias),
        Loader(connection, StudentModule._meta.db_table, columns) as loader,
    ):
        rows = layout.rows_in_order(enrollments)
        for row_id, (enrollment, unit, position) in enumerate(rows, start=first_id):
            course = enrollment.course
            block_type = course.block_type(unit, position)
            if block_type == "problem":
                state, grade, max_grade = problems[rng.randrange(512)]
                if (
                    unit == 0
                    and (enrollment.learner, course.index) in rich
                    and (position == course.first_problem(0))
                ):
                    rich_ids.append(row_id)
                else:
                    problem_ids.append(row_id)
            elif block_type == "video":
                state, grade, max_grade = videos[rng.randrange(64)]
            else:
                state, grade, max_grade = html[0]
            created = min(last_time, unit * last_time // rounds + rng.randrange(40))
            modified = min(last_time, created + rng.randrange(200))
            loader.add(
                (
                    row_id,
                    block_type,
                    course.usage(unit, position),
                    enrollment.learner,
                    course.key,
                    state,
                    grade,
                    max_grade if grade is not None else None,
                    "na",
                    times[created],
                    times[modified],
                )
            )
    table = StudentModule._meta.db_table
    result.counts[table] = result.counts.get(table, 0) + loader.count
    result.rich_module_ids += rich_ids
    return rich_ids + problem_ids


def _load_per_field(connection: Any, layout: Layout, times: list[Any], result: Generated) -> None:
    from django.db import transaction

    from kvstate.models import (
        XModuleStudentInfoField,
        XModuleStudentPrefsField,
        XModuleUserStateSummaryField,
    )

    stamp = times[len(times) // 2]
    tables: list[tuple[Any, tuple[str, ...], Iterable[tuple[Any, ...]]]] = [
        (
            XModuleUserStateSummaryField,
            ("usage_id", "field_name", "value", "created", "modified"),
            (
                (
                    course.usage(unit, p),
                    SUMMARY_FIELD,
                    f'{{"choice_{p % 4}": {unit + p}}}',
                    stamp,
                    stamp,
                )
                for course in layout.all_courses
                for unit in range(course.units)
                for p in range(BLOCKS_PER_UNIT)
                if course.block_type(unit, p) == "problem"
            ),
        ),
        (
            XModuleStudentPrefsField,
            ("module_type", "student_id", "field_name", "value", "created", "modified"),
            (
                (block_type, learner, PREFERENCE_FIELD, '"dark"', stamp, stamp)
                for learner in range(1, layout.learners + 1)
                for block_type in BLOCK_TYPES
            ),
        ),
        (
            XModuleStudentInfoField,
            ("student_id", "field_name", "value", "created", "modified"),
            (
                (learner, name, f'"{name} of {learner}"', stamp, stamp)
                for learner in range(1, layout.learners + 1)
                for name in INFO_FIELDS
            ),
        ),
    ]
    for model, columns, rows in tables:
        with (
            transaction.atomic(connection.alias),
            Loader(connection, model._meta.db_table, columns) as loader,
        ):
            for row in rows:
                loader.add(row)
        result.counts[model._meta.db_table] = loader.count


def _load_history(
    connection: Any,
    layout: Layout,
    rng: random.Random,
    problem_ids: list[int],
    result: Generated,
) -> None:
    """Write history: 100 entries per rich module, the rest spread evenly over the others."""
    from django.db import transaction

    from kvstate.models import StudentModuleHistory

    total = layout.shape.history_rows
    rich = len(result.rich_module_ids)
    others = problem_ids[rich:]
    spread = total - rich * RICH_HISTORY
    base, extra = divmod(spread, len(others)) if others else (0, 0)
    states = _problem_states(rng, 256)
    times = stamps(connection, NOW - WINDOW, NOW - timedelta(days=1), 4096)
    columns = ("student_module_id", "created", "state", "grade", "max_grade")
    with (
        transaction.atomic(connection.alias),
        Loader(connection, StudentModuleHistory._meta.db_table, columns) as loader,
    ):
        for index, module_id in enumerate(problem_ids):
            entries = RICH_HISTORY if index < rich else base + (index - rich < extra)
            start = rng.randrange(len(times) - entries) if entries < len(times) else 0
            for n in range(entries):
                state, grade, max_grade = states[rng.randrange(256)]
                loader.add((module_id, times[start + n], state, grade, max_grade))
    result.counts[StudentModuleHistory._meta.db_table] = loader.count


@contextmanager
def _indexes_built_after(using: str, models: Sequence[Any], enabled: bool) -> Iterator[None]:
    """Drop the models' secondary indexes and unique constraints, and build them afterwards.

    Taken from the models' ``Meta``, so they come back exactly as the migrations made them.
    """
    from django.db import connections
    from django.db.backends.base.schema import BaseDatabaseSchemaEditor

    if not enabled:
        yield
        return
    connection = connections[using]
    with connection.schema_editor() as editor:
        # On MySQL/MariaDB, the base class's methods: the backend's own add an index on a
        # foreign key column left without one, which would stay after the load.
        remover: Any = BaseDatabaseSchemaEditor if connection.vendor == "mysql" else type(editor)
        for model in models:
            for constraint in model._meta.constraints:
                remover.remove_constraint(editor, model, constraint)
            for index in model._meta.indexes:
                remover.remove_index(editor, model, index)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Session settings (no server change): index builds sort in memory.
            cursor.execute("SET maintenance_work_mem = '512MB'")
    yield
    with connection.schema_editor() as editor:
        for model in models:
            for index in model._meta.indexes:
                editor.add_index(model, index)
            for constraint in model._meta.constraints:
                editor.add_constraint(model, constraint)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("RESET maintenance_work_mem")


def _reset_sequences(connection: Any, models: Sequence[Any]) -> None:
    """Point id sequences past the explicit ids written (PostgreSQL; the others follow alone)."""
    from django.core.management.color import no_style

    statements = connection.ops.sequence_reset_sql(no_style(), models)
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def _analyse(connection: Any, models: Sequence[Any]) -> None:
    """Refresh the planner's statistics (and PostgreSQL's visibility map) after the load."""
    with connection.cursor() as cursor:
        for model in models:
            table = connection.ops.quote_name(model._meta.db_table)
            if connection.vendor == "postgresql":
                cursor.execute(f"VACUUM ANALYZE {table}")
            elif connection.vendor == "mysql":
                cursor.execute(f"ANALYZE TABLE {table}")
                cursor.fetchall()
        if connection.vendor == "sqlite":
            cursor.execute("ANALYZE")
