"""kvstate against the Open edX-style baseline on a production-sized table.

    python -m benchmarks.scale --db postgres                 # 1M rows, generated and dropped
    python -m benchmarks.scale --db mariadb --rows 10000000 --keep
    python -m benchmarks.scale --db postgres --reuse         # measure again on a kept dataset
    python -m benchmarks.scale --db sqlite --quick           # smoke test (CI): 20k rows

Generates the dataset of :mod:`benchmarks.dataset` in bulk (COPY on PostgreSQL, multi-row
INSERT elsewhere) into its own databases: Django's test databases of ``tests.settings``, named
with ``$KVSTATE_TEST_DB_SUFFIX`` + ``_scale``. ``--keep`` leaves them after the run, marked;
``--reuse`` measures on such a kept dataset of the same shape and keeps it. A run never
overwrites a kept dataset unless given ``--replace`` (another shape, say 10M rows beside a kept
1M, needs another ``KVSTATE_TEST_DB_SUFFIX``). The benchmark's own learners and rows are
deleted at the end; its writes to generated learners' rows stay (a few hundred states
rewritten, a few thousand history rows added).

Measures both implementations interleaved (A, B, B, A, ... in one process, same database,
warm), and prints medians, p95 and the ratio baseline / kvstate of the request-path
operations, throughput at 8 threads, 8 writers on one row, batch and reporting operations,
iteration memory, the prune rate, the database's share of kvstate's time, cProfile's top
functions, and the EXPLAIN plan of every statement kvstate issues on these paths, flagged where
it scans a big table, sorts, or throws rows away after an index. Asserts nothing about time: it
exits non-zero only when something fails.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import random
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.dataset import (
    BLOCKS_PER_UNIT,
    HISTORY_ALIAS,
    INFO_FIELDS,
    NOW,
    ORG,
    PREFERENCE_FIELD,
    RICH_HISTORY,
    RUN,
    SUMMARY_FIELD,
    WINDOW,
    Layout,
    Loader,
    Shape,
    generate,
    stamps,
)
from benchmarks.plans import Statement, Verdict, capture, explain, explainable, index_columns
from benchmarks.run import Impl, Kvstate, Naive, configure, describe_database, table

ALIASES = ("default", HISTORY_ALIAS)
#: Learners the benchmark creates (and deletes) for rows it must not take from the dataset.
BENCH_PREFIX = "scale-bench-"
BENCH_COURSE = f"course-v1:{ORG}+Bench+{RUN}"
MARKER_TABLE = "kvstate_scale_dataset"
#: Prune fodder: history rows far older than any generated row.
FODDER_AGE = timedelta(days=1000)

#: The issue's targets, as ratios baseline / kvstate (higher is better for kvstate).
TARGETS = {
    "cache_typical": 2.0,
    "cache_heavy": 2.0,
    "cache_fresh": 2.0,
    "cache_newcomer": 2.0,
    "get_many": 2.0,
    "submit": 1.5,
    "set_many_existing": 10.0,
    "set_many_new": 10.0,
    "history": 10.0,
    "iterate": 8.0,
    "submit_threads": 1.3,
    "contended": 1.0,
}


#: The operations profiled, with the share of ``Counts.profile`` runs each gets.
PROFILED = {
    "cache_typical": 1.0,
    "get_many": 1.0,
    "submit": 1.0,
    "set_many_existing": 0.2,
    "history": 0.2,
    "iterate": 0.02,
}
#: What ``--only`` can pick: the latency operations, then the other measurements.
PARTS = (
    "cache_typical",
    "cache_heavy",
    "cache_fresh",
    "cache_newcomer",
    "get_many",
    "submit",
    "set_many_existing",
    "set_many_new",
    "history",
    "iterate",
    "submit_threads",
    "contended",
    "memory",
    "prune",
    "explain",
)


@dataclass(frozen=True)
class Counts:
    """How often each measurement runs (``--quick`` shrinks them, ``--repeat`` scales them)."""

    latency: int = 200
    batch: int = 40
    iterate: int = 3
    thread_rounds: int = 4
    per_thread: int = 25
    profile: int = 50
    fodder: int = 20_000
    warmup: int = 3

    def scaled(self, factor: float) -> Counts:
        def n(value: int) -> int:
            return max(1, round(value * factor))

        return Counts(
            n(self.latency),
            n(self.batch),
            n(self.iterate),
            n(self.thread_rounds),
            n(self.per_thread),
            n(self.profile),
            self.fodder,
            self.warmup,
        )


QUICK = Counts(
    latency=6, batch=3, iterate=1, thread_rounds=1, per_thread=3, profile=3, fodder=2_000, warmup=1
)


# --- timing -----------------------------------------------------------------------------------


class DbClock:
    """Time spent waiting for the database, in this thread: statements, commits, rollbacks.

    Statements are timed by an ``execute_wrapper``; COMMIT/ROLLBACK and autocommit switches
    (a round trip on MySQL) do not go through ``execute``, so the connection's own methods are
    wrapped for the duration. Everything else is Python: kvstate's or Django's or the driver's
    turning rows into objects.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0

    def reset(self) -> None:
        self.seconds = 0.0
        self.statements = 0

    def _execute(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started
            self.statements += 1

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[DbClock]:
        from django.db import connections

        names = ("_commit", "_rollback", "_set_autocommit")
        with contextlib.ExitStack() as stack:
            for alias in ALIASES:
                connection = connections[alias]
                for name in names:
                    setattr(connection, name, self._timed(getattr(connection, name)))
                stack.callback(_restore, connection, names)
                stack.enter_context(connection.execute_wrapper(self._execute))
            yield self


def _restore(connection: Any, names: Sequence[str]) -> None:
    for name in names:
        vars(connection).pop(name, None)


@dataclass
class Samples:
    """One implementation's figures for one operation."""

    seconds: list[float] = field(default_factory=list)
    db_seconds: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    rows: int = 0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.seconds)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def db_share(self) -> float:
        total = sum(self.seconds)
        return sum(self.db_seconds) / total if total else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.seconds),
            "p50_ms": self.median * 1000,
            "p95_ms": self.percentile(95) * 1000,
            "db_share": self.db_share,
            "statements": statistics.median(self.statements) if self.statements else None,
        }


# --- the world the operations run in ----------------------------------------------------------


class World:
    """Blocks, learners and samples for the operations, all drawn from the layout."""

    def __init__(self, layout: Layout, seed: int, counts: Counts, threads: int) -> None:
        from django.contrib.auth import get_user_model
        from opaque_keys.edx.keys import CourseKey
        from xblock.core import XBlock
        from xblock.fields import Dict, Integer, Scope, String

        class UnitBlock(XBlock):  # type: ignore[misc]
            """A block with fields in the four user scopes, as a problem has."""

            answer = String(scope=Scope.user_state)
            attempts = Integer(scope=Scope.user_state)
            correct_map = Dict(scope=Scope.user_state)
            tally = Dict(scope=Scope.user_state_summary)
            theme = String(scope=Scope.preferences)
            nickname = String(scope=Scope.user_info)

        class StateBlock(XBlock):  # type: ignore[misc]
            """Fields in user_state only: one row, nothing else read (the contended writes)."""

            answer = String(scope=Scope.user_state)

        assert UnitBlock.fields["tally"].name == SUMMARY_FIELD
        assert UnitBlock.fields["theme"].name == PREFERENCE_FIELD
        assert UnitBlock.fields["nickname"].name == INFO_FIELDS[0]
        self.unit_fields = UnitBlock.fields
        self.state_fields = StateBlock.fields
        self.entry_point = UnitBlock.entry_point
        self.layout = layout
        rng = random.Random(seed + 2)
        pool = counts.latency + counts.warmup
        threaded = threads * counts.thread_rounds * (counts.per_thread + 1)
        self.typical = layout.units(rng, pool)
        self.heavy = layout.units(rng, pool, heavy=True)
        self.fresh = layout.units(rng, pool, among=layout.fresh)
        self.newcomers = layout.units(rng, pool, among=layout.newcomers)
        self.submits = layout.units(rng, pool + threaded)
        wide = [
            e
            for e in layout.enrollments
            if e.full_units >= 4 and e.course is not layout.iteration_course
        ]
        self.batches = [
            (e, rng.randrange(1, e.full_units - 2))
            for e in rng.choices(wide, k=counts.batch + counts.warmup)
        ]
        samples = [*self.typical, *self.heavy, *self.fresh, *self.newcomers, *self.submits]
        samples += self.batches
        learners = {e.learner for e, _ in samples}
        learners |= {e.learner for e in layout.rich}
        self.users = get_user_model()._default_manager.in_bulk(sorted(learners))
        self.bench_course = CourseKey.from_string(BENCH_COURSE)
        self._serial = 0
        self._bench_users: dict[str, Any] = {}

    # Keys and blocks

    def usage(self, text: str) -> Any:
        return _usage(text)

    def course(self, text: str) -> Any:
        return _course(text)

    def block(self, usage: Any, user: Any, block_type: str, *, state_only: bool = False) -> Any:
        """Return a stand-in for an XBlock: what a FieldDataCache reads of one."""
        from xblock.fields import ScopeIds

        return SimpleNamespace(
            fields=self.state_fields if state_only else self.unit_fields,
            entry_point=self.entry_point,
            scope_ids=ScopeIds(user.pk, block_type, usage, usage),
            has_children=False,
        )

    def unit(self, enrollment: Any, unit: int) -> tuple[Any, Any, list[Any], list[Any]]:
        """Return (user, course key, usage keys, blocks) of one learner's unit."""
        user = self.users[enrollment.learner]
        usages = []
        blocks = []
        for block_type, text in enrollment.course.unit_usages(unit):
            usage = self.usage(text)
            usages.append(usage)
            blocks.append(self.block(usage, user, block_type))
        return user, self.course(enrollment.course.key), usages, blocks

    def bench_user(self, label: str) -> Any:
        from django.contrib.auth import get_user_model

        name = f"{BENCH_PREFIX}{label}"
        if name not in self._bench_users:
            self._bench_users[name] = get_user_model()._default_manager.create(username=name)
        return self._bench_users[name]

    def fresh_usage(self, block_type: str = "problem") -> Any:
        self._serial += 1
        return self.bench_course.make_usage_key(block_type, f"fresh{self._serial:07d}")


@lru_cache(maxsize=65_536)
def _usage(text: str) -> Any:
    from opaque_keys.edx.keys import UsageKey

    return UsageKey.from_string(text)


@lru_cache(maxsize=1_024)
def _course(text: str) -> Any:
    from opaque_keys.edx.keys import CourseKey

    return CourseKey.from_string(text)


def _key(scope: Any, user: Any, owner: Any, name: str) -> Any:
    from xblock.runtime import KeyValueStore

    return KeyValueStore.Key(scope, user.pk if user is not None else None, owner, name)


# --- operations: each prepares (untimed) and returns the timed step --------------------------

Step = Callable[[], Any]
Prepare = Callable[[Impl, int], Step]


def op_cache(world: World, samples: list[tuple[Any, int]]) -> Prepare:
    def prepare(impl: Impl, i: int) -> Step:
        user, course, _usages, blocks = world.unit(*samples[i % len(samples)])
        return lambda: impl.cache(blocks, course, user)

    return prepare


def op_get_many(world: World) -> Prepare:
    def prepare(impl: Impl, i: int) -> Step:
        user, _course, usages, _blocks = world.unit(*world.typical[i % len(world.typical)])
        client = impl.client(user)
        return lambda: sum(1 for _ in client.get_many(user.username, usages))

    return prepare


def submit_step(world: World, impl: Impl, enrollment: Any, unit: int, serial: int) -> Step:
    """A problem submission: build the unit's cache, save 3 user_state fields and a tally."""
    from xblock.fields import Scope

    user, course, usages, blocks = world.unit(enrollment, unit)
    problem = usages[enrollment.course.first_problem(unit)]

    def step() -> None:
        kvs = impl.kvs(impl.cache(blocks, course, user))
        kvs.set_many(
            {
                _key(Scope.user_state, user, problem, "answer"): f"choice_{serial % 4}",
                _key(Scope.user_state, user, problem, "attempts"): serial,
                _key(Scope.user_state, user, problem, "correct_map"): {"x": serial % 2 == 0},
                _key(Scope.user_state_summary, None, problem, SUMMARY_FIELD): {"n": serial},
            }
        )

    return step


def op_submit(world: World) -> Prepare:
    def prepare(impl: Impl, i: int) -> Step:
        enrollment, unit = world.submits[i % len(world.submits)]
        return submit_step(world, impl, enrollment, unit, i)

    return prepare


def op_set_many(world: World, new_rows: bool) -> Prepare:
    def prepare(impl: Impl, i: int) -> Step:
        if new_rows:
            user = world.bench_user(f"{impl.name}-set-many-new")
            usages = [world.fresh_usage() for _ in range(50)]
        else:
            enrollment, unit = world.batches[i % len(world.batches)]
            user = world.users[enrollment.learner]
            usages = []
            for offset in range(3):
                usages += [world.usage(u) for _t, u in enrollment.course.unit_usages(unit + offset)]
            usages = usages[:50]
        client = impl.client(user)
        states = {usage: {"answer": f"answer {i}", "attempts": i} for usage in usages}
        return lambda: client.set_many(user.username, states)

    return prepare


def op_history(world: World) -> Prepare:
    rich = world.layout.rich

    def prepare(impl: Impl, i: int) -> Step:
        enrollment = rich[i % len(rich)]
        user = world.users[enrollment.learner]
        course = enrollment.course
        usage = world.usage(course.usage(0, course.first_problem(0)))
        client = impl.client(user)
        return lambda: len(impl.history(client, user.username, usage))

    return prepare


def op_iterate(world: World, course_key: str) -> Prepare:
    def prepare(impl: Impl, i: int) -> Step:
        client = impl.client(None)
        return lambda: impl.iterate(client, world.course(course_key))

    return prepare


# --- running ----------------------------------------------------------------------------------


def interleaved(prepare: Prepare, n: int, warmup: int) -> dict[str, Samples]:
    """Run both implementations ``n`` times each, alternating which goes first."""
    impls: list[Impl] = [Naive(), Kvstate()]
    found = {impl.name: Samples() for impl in impls}
    clock = DbClock()
    with clock.installed():
        for i in range(warmup + n):
            for impl in impls if i % 2 == 0 else impls[::-1]:
                step = prepare(impl, i)
                clock.reset()
                started = time.perf_counter()
                result = step()
                elapsed = time.perf_counter() - started
                if i >= warmup:
                    samples = found[impl.name]
                    samples.seconds.append(elapsed)
                    samples.db_seconds.append(clock.seconds)
                    samples.statements.append(clock.statements)
                    if isinstance(result, int):
                        samples.rows = result
    return found


def run_threads(
    count: int, target: Callable[[int, threading.Barrier], None]
) -> tuple[list[str], float]:
    """Run ``target(index, barrier)`` in ``count`` threads; return their errors and the wall time.

    The time runs from the moment all threads passed the barrier to the last one's end.
    """
    from django.db import connections

    barrier = threading.Barrier(count + 1, timeout=120)
    errors: list[str] = []

    def body(index: int) -> None:
        try:
            target(index, barrier)
        except Exception as exc:  # every failure is a figure here
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            barrier.abort()
        finally:
            connections.close_all()

    workers = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join(600)
    return errors, time.perf_counter() - started


@dataclass
class Throughput:
    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost: int = 0
    written: int = 0
    retries: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else float("nan")


def submits_in_threads(world: World, threads: int, counts: Counts) -> dict[str, Throughput]:
    """``threads`` learners submit at once, each on their own unit; operations per second."""
    impls: list[Impl] = [Naive(), Kvstate()]
    found = {impl.name: Throughput() for impl in impls}
    base = counts.latency + counts.warmup
    for round_ in range(counts.thread_rounds + 1):  # round 0 warms up
        for impl in impls if round_ % 2 == 0 else impls[::-1]:
            latencies: list[float] = []

            def target(
                index: int,
                barrier: threading.Barrier,
                impl: Impl = impl,
                round_: int = round_,
                latencies: list[float] = latencies,
            ) -> None:
                steps = []
                for k in range(counts.per_thread):
                    j = base + (round_ * threads + index) * counts.per_thread + k
                    enrollment, unit = world.submits[j % len(world.submits)]
                    steps.append(submit_step(world, impl, enrollment, unit, j))
                barrier.wait()
                for step in steps:
                    started = time.perf_counter()
                    step()
                    latencies.append(time.perf_counter() - started)

            errors, seconds = run_threads(threads, target)
            if round_:
                result = found[impl.name]
                result.ops += len(latencies)
                result.seconds += seconds
                result.latencies += latencies
                result.errors += errors
    return found


def contended_row(world: World, threads: int, counts: Counts) -> dict[str, Throughput]:
    """``threads`` writers each set their own fields of one learner's row, request by request."""
    from xblock.fields import Scope

    from kvstate.models import StudentModule
    from kvstate.storage import stats

    impls: list[Impl] = [Naive(), Kvstate()]
    found = {impl.name: Throughput() for impl in impls}
    for round_ in range(counts.thread_rounds + 1):
        for impl in impls if round_ % 2 == 0 else impls[::-1]:
            user = world.bench_user(f"{impl.name}-contended")
            usage = world.fresh_usage()
            StudentModule.objects.create(
                student=user,
                module_state_key=usage,
                course_id=world.bench_course,
                module_type="problem",
                state='{"seed": true}',
            )
            block = world.block(usage, user, "problem", state_only=True)
            stats.reset()

            def target(
                index: int,
                barrier: threading.Barrier,
                impl: Impl = impl,
                block: Any = block,
                user: Any = user,
                usage: Any = usage,
            ) -> None:
                barrier.wait()
                for k in range(counts.per_thread):
                    kvs = impl.kvs(impl.cache([block], world.bench_course, user))
                    kvs.set(_key(Scope.user_state, user, usage, f"t{index}w{k}"), k)

            errors, seconds = run_threads(threads, target)
            if not round_:
                continue
            text = StudentModule.objects.get(student=user, module_state_key=usage).state
            stored = json.loads(text or "{}")
            written = threads * counts.per_thread
            present = sum(
                1
                for t in range(threads)
                for k in range(counts.per_thread)
                if stored.get(f"t{t}w{k}") == k
            )
            result = found[impl.name]
            result.ops += written
            result.written += written
            result.lost += written - present
            result.seconds += seconds
            result.errors += errors
            if impl.name == "kvstate":
                for tally in ("swaps_lost", "inserts_lost", "transactions_retried", "most_retries"):
                    value = getattr(stats, tally)
                    merge = max if tally == "most_retries" else (lambda a, b: a + b)
                    result.retries[tally] = merge(result.retries.get(tally, 0), value)
    return found


@dataclass
class Memory:
    rows: int
    traced_peak_kib: float
    rss_growth_kib: float


def _rss_kib() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    except OSError:
        return float("nan")


def iteration_memory(impl: Impl, course_key: str) -> Memory:
    """Peak Python memory (tracemalloc) and RSS growth while iterating over one course."""
    import gc

    gc.collect()
    client = impl.client(None)
    rss_before = _rss_kib()
    rss_peak = rss_before
    tracemalloc.start()
    rows = 0
    try:
        for _ in client.iter_all_for_course(_course(course_key)):
            rows += 1
            if rows % 500 == 0:
                rss_peak = max(rss_peak, _rss_kib())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Memory(rows, peak / 1024, max(rss_peak, _rss_kib()) - rss_before)


@dataclass
class Prune:
    label: str
    deleted: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.deleted / self.seconds if self.seconds else float("nan")


def _add_fodder(rows: int, per_module: int) -> None:
    """Add ``rows`` history rows far older than the dataset, ``per_module`` per module."""
    from django.db import connections, transaction

    from kvstate.models import StudentModuleHistory

    connection = connections[HISTORY_ALIAS]
    start = NOW - FODDER_AGE
    times = stamps(connection, start, start + timedelta(days=90), 512)
    columns = ("student_module_id", "created", "state")
    first_module = 10**12  # ids no StudentModule has: the dataset's history is not touched
    with (
        transaction.atomic(HISTORY_ALIAS),
        Loader(connection, StudentModuleHistory._meta.db_table, columns) as loader,
    ):
        for n in range(rows):
            loader.add((first_module + n // per_module, times[n % 512], '{"old": true}'))


def _prune_days() -> int:
    """Days for ``--days``: older than the dataset's oldest history row, newer than the fodder."""
    from django.utils import timezone

    return (timezone.now() - (NOW - WINDOW - timedelta(days=30))).days


def _remove_fodder() -> int:
    from django.utils import timezone

    from kvstate.models import StudentModuleHistory

    cutoff = timezone.now() - timedelta(days=_prune_days())
    return (
        StudentModuleHistory.objects.using(HISTORY_ALIAS)
        .filter(created__lt=cutoff)
        ._raw_delete(HISTORY_ALIAS)
    )


def prune_rates(fodder: int) -> list[Prune]:
    """Time ``manage.py kvstate_prune_history`` deleting fodder from the big history table."""
    from django.core.management import call_command

    results = []
    for label, per_module, options in (
        ("--days (all old rows)", 10, []),
        ("--days --keep 3", 10, ["--keep", "3"]),
    ):
        _remove_fodder()
        _add_fodder(fodder, per_module)
        started = time.perf_counter()
        call_command(
            "kvstate_prune_history", "--days", str(_prune_days()), *options, stdout=io.StringIO()
        )
        seconds = time.perf_counter() - started
        left = _remove_fodder()
        results.append(Prune(label, fodder - left, seconds))
    return results


# --- profiles and plans -----------------------------------------------------------------------


@dataclass
class Profile:
    label: str
    iterations: int
    stats: pstats.Stats


def profile(label: str, prepare: Prepare, iterations: int) -> Profile:
    """Profile kvstate's side of an operation over ``iterations`` runs (preparation untimed)."""
    impl = Kvstate()
    profiler = cProfile.Profile()
    for i in range(iterations):
        step = prepare(impl, i)
        profiler.enable()
        step()
        profiler.disable()
    return Profile(label, iterations, pstats.Stats(profiler))


def _where(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    else:
        filename = os.path.relpath(filename, Path(__file__).resolve().parent.parent)
    return f"{name} ({filename}:{line})"


def profile_rows(result: Profile, top: int, sort: str) -> list[list[str]]:
    """Return the top functions by cumulative (``cum``) or own (``own``) time, per operation."""
    entries = []
    for key, (_cc, calls, own, cumulative, _callers) in result.stats.stats.items():  # type: ignore[attr-defined]
        where = _where(key)
        if "benchmarks/" in where or "cProfile" in where or "disable" in where:
            continue
        entries.append((cumulative if sort == "cum" else own, where, calls, own, cumulative))
    entries.sort(reverse=True)
    n = result.iterations
    return [
        [where[:110], f"{calls / n:,.1f}", f"{own / n * 1000:.3f}", f"{cumulative / n * 1000:.3f}"]
        for _key, where, calls, own, cumulative in entries[:top]
    ]


@dataclass
class Explained:
    """The worst plan of one statement shape in one operation, over every time it ran."""

    operation: str
    statement: Statement
    verdict: Verdict
    times: int = 1
    flagged: int = 0


def big_tables(threshold: int) -> dict[str, int]:
    """Return ``{table: rows}`` of kvstate's tables and the user table with ``threshold`` rows+."""
    from django.contrib.auth import get_user_model

    from kvstate.models import (
        StudentModule,
        StudentModuleHistory,
        XModuleStudentInfoField,
        XModuleStudentPrefsField,
        XModuleUserStateSummaryField,
    )

    sizes = {}
    for model in (
        StudentModule,
        StudentModuleHistory,
        XModuleUserStateSummaryField,
        XModuleStudentPrefsField,
        XModuleStudentInfoField,
        get_user_model(),
    ):
        rows = model._default_manager.count()
        if rows >= threshold:
            sizes[model._meta.db_table] = rows
    return sizes


def explain_operations(world: World, threshold: int) -> tuple[list[Explained], dict[str, int], int]:
    """Run each of kvstate's operations once, capturing its statements; explain each shape once."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from xblock.fields import Scope

    from kvstate.models import StudentModule, StudentModuleHistory

    impl = Kvstate()
    runs: list[tuple[str, Callable[[], Any]]] = [
        *[
            ("cache build, typical learner", op_cache(world, world.typical)(impl, i))
            for i in range(3)
        ],
        *[("cache build, heavy learner", op_cache(world, world.heavy)(impl, i)) for i in range(3)],
        *[("cache build, fresh course", op_cache(world, world.fresh)(impl, i)) for i in range(3)],
        *[("cache build, newcomer", op_cache(world, world.newcomers)(impl, i)) for i in range(3)],
        ("get_many(20)", op_get_many(world)(impl, 0)),
        ("submit", op_submit(world)(impl, 0)),
        ("set_many(50), rows exist", op_set_many(world, new_rows=False)(impl, 0)),
        ("set_many(50), new rows", op_set_many(world, new_rows=True)(impl, 0)),
        ("get_history(100)", op_history(world)(impl, 0)),
        (
            "iter_all_for_course",
            op_iterate(world, world.layout.iteration_course.key)(impl, 0),
        ),
    ]

    user = world.bench_user("kvstate-explain")

    def lost_swap() -> None:
        # A write that loses the race: another writer changes the row between read and swap.
        usage = world.fresh_usage()
        block = world.block(usage, user, "problem", state_only=True)
        kvs = impl.kvs(impl.cache([block], world.bench_course, user))
        kvs.set(_key(Scope.user_state, user, usage, "answer"), "first")
        other = impl.kvs(impl.cache([block], world.bench_course, user))
        other.set(_key(Scope.user_state, user, usage, "answer"), "second")
        kvs.set(_key(Scope.user_state, user, usage, "other"), "third")

    runs.append(("write that lost a swap", lost_swap))
    days = str(_prune_days())
    runs.append(
        (
            "prune --days",
            lambda: call_command(
                "kvstate_prune_history", "--days", days, "--batch-size", "200", stdout=io.StringIO()
            ),
        )
    )
    runs.append(
        (
            "prune --days --keep 3",
            lambda: call_command(
                "kvstate_prune_history",
                "--days",
                days,
                "--keep",
                "3",
                "--batch-size",
                "200",
                stdout=io.StringIO(),
            ),
        )
    )
    sizes = big_tables(threshold)
    tables = [m._meta.db_table for m in (StudentModule, StudentModuleHistory)] + [
        t
        for t in sizes
        if t not in {StudentModule._meta.db_table, StudentModuleHistory._meta.db_table}
    ]
    tables.append(get_user_model()._meta.db_table)
    indexes = index_columns(ALIASES, sorted(set(tables)))
    explained: dict[tuple[str, str, str], Explained] = {}
    total = 0
    for label, run in runs:
        if label.startswith("prune"):
            _remove_fodder()
            _add_fodder(400, 10)

        def before(statement: Statement, label: str = label) -> None:
            if not explainable(statement):
                return
            verdict = explain(statement, sizes, indexes)
            identity = (label, statement.alias, statement.shape)
            found = explained.get(identity)
            if found is None:
                found = explained[identity] = Explained(label, statement, verdict, times=0)
            elif len(verdict.flags) > len(found.verdict.flags):
                found.statement, found.verdict = statement, verdict
            found.times += 1
            found.flagged += bool(verdict.flags)

        with capture(ALIASES, before) as statements:
            run()
        total += len(statements)
    _remove_fodder()
    return list(explained.values()), sizes, total


# --- the databases ----------------------------------------------------------------------------


@contextlib.contextmanager
def scale_databases() -> Iterator[dict[str, bool]]:
    """Create the benchmark's databases, or open those a kept run left.

    Yields ``{"drop": False}``: set ``drop`` once it is clear they may go (never before a kept
    dataset has been found and refused).
    """
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    old_config = setup_databases(
        verbosity=0, interactive=False, keepdb=True, serialized_aliases=set()
    )
    plan = {"drop": False}
    try:
        yield plan
    finally:
        connections.close_all()
        teardown_databases(old_config, verbosity=0, keepdb=not plan["drop"])


def dataset_marker() -> str | None:
    from django.db import connection

    with connection.cursor() as cursor:
        if MARKER_TABLE not in connection.introspection.table_names(cursor):
            return None
        cursor.execute(f"SELECT marker FROM {connection.ops.quote_name(MARKER_TABLE)}")
        row = cursor.fetchone()
    return row[0] if row else None


def set_marker(marker: str | None) -> None:
    from django.db import connection

    name = connection.ops.quote_name(MARKER_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {name} (marker varchar(200) NOT NULL)")
        cursor.execute(f"DELETE FROM {name}")
        if marker is not None:
            cursor.execute(f"INSERT INTO {name} (marker) VALUES (%s)", [marker])


def empty_tables() -> None:
    """Delete every row of the benchmark's databases (before generating into kept ones)."""
    from django.core.management.color import no_style
    from django.db import connections

    for alias in ALIASES:
        connection = connections[alias]
        tables = connection.introspection.django_table_names(only_existing=True)
        statements = connection.ops.sql_flush(
            no_style(), tables, reset_sequences=True, allow_cascade=True
        )
        connection.ops.execute_sql_flush(statements)


def remove_bench_rows() -> None:
    """Delete the benchmark's own learners and everything they own (history included)."""
    from django.contrib.auth import get_user_model

    from kvstate.models import (
        StudentModule,
        StudentModuleHistory,
        XModuleStudentInfoField,
        XModuleStudentPrefsField,
    )

    users = get_user_model()._default_manager.filter(username__startswith=BENCH_PREFIX)
    ids = list(users.values_list("pk", flat=True))
    if ids:
        modules = list(
            StudentModule.objects.filter(student_id__in=ids).values_list("pk", flat=True)
        )
        for start in range(0, len(modules), 5_000):
            chunk = modules[start : start + 5_000]
            StudentModuleHistory.objects.using(HISTORY_ALIAS).filter(
                student_module_id__in=chunk
            )._raw_delete(HISTORY_ALIAS)
        for model in (StudentModule, XModuleStudentPrefsField, XModuleStudentInfoField):
            model.objects.filter(student_id__in=ids)._raw_delete("default")
        users._raw_delete("default")
    _remove_fodder()


# --- printing ---------------------------------------------------------------------------------


def machine() -> str:
    """Describe the machine: CPU, cores, memory, load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {memory} RAM; load average {load}"


def database_settings() -> str:
    """Return the server settings that decide how much of the data stays in memory."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW shared_buffers")
            buffers = cursor.fetchone()[0]
            cursor.execute("SHOW work_mem")
            return f"shared_buffers {buffers}, work_mem {cursor.fetchone()[0]}"
        if connection.vendor == "mysql":
            cursor.execute("SELECT @@innodb_buffer_pool_size")
            pool = int(cursor.fetchone()[0]) // 2**20
            return f"innodb_buffer_pool_size {pool} MiB; Django's READ COMMITTED sessions"
    return "defaults"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f}"


def _ratio(base: float, ours: float) -> str:
    return f"{base / ours:.2f}x" if ours and ours == ours and base == base else "-"


def _status(ratio: float, target: float | None) -> str:
    if target is None:
        return ""
    return f">= {target:g}x: {'met' if ratio >= target else 'NOT met'}"


@dataclass
class Report:
    latency: dict[str, tuple[str, dict[str, Samples]]] = field(default_factory=dict)
    threads: dict[str, tuple[str, dict[str, Throughput]]] = field(default_factory=dict)
    memory: list[tuple[str, Memory]] = field(default_factory=list)
    prune: list[Prune] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    explained: list[Explained] = field(default_factory=list)
    big: dict[str, int] = field(default_factory=dict)
    statements_explained: int = 0
    header: dict[str, Any] = field(default_factory=dict)

    def print(self, top: int) -> None:
        print("\n## Latency, interleaved (ms; ratio = baseline / kvstate at p50)\n")
        rows = []
        for name, (label, found) in self.latency.items():
            base, ours = found["baseline"], found["kvstate"]
            ratio = base.median / ours.median
            rows.append(
                [
                    label,
                    str(len(ours.seconds)),
                    f"{_ms(base.median)} / {_ms(base.percentile(95))}",
                    f"{_ms(ours.median)} / {_ms(ours.percentile(95))}",
                    f"{ratio:.2f}x",
                    _ratio(base.percentile(95), ours.percentile(95)),
                    _status(ratio, TARGETS.get(name)),
                ]
            )
        print(
            table(
                [
                    "operation",
                    "n",
                    "baseline p50 / p95",
                    "kvstate p50 / p95",
                    "ratio p50",
                    "ratio p95",
                    "target",
                ],
                rows,
            )
        )
        iterate = self.latency.get("iterate")
        if iterate:
            _label, found = iterate
            print(
                "\niteration: baseline "
                f"{found['baseline'].rows / found['baseline'].median:,.0f} rows/s, kvstate "
                f"{found['kvstate'].rows / found['kvstate'].median:,.0f} rows/s (p50)"
            )

        print("\n## Throughput with threads\n")
        rows = []
        for name, (label, found) in self.threads.items():
            base, ours = found["baseline"], found["kvstate"]
            ratio = ours.rate / base.rate
            for impl, result in (("baseline", base), ("kvstate", ours)):
                lost = f"{result.lost} of {result.written}" if result.written else "-"
                latencies = sorted(result.latencies)
                p50 = _ms(statistics.median(latencies)) if latencies else "-"
                retries = ", ".join(f"{k} {v}" for k, v in result.retries.items()) or "-"
                rows.append(
                    [
                        label,
                        impl,
                        str(result.ops),
                        f"{result.rate:,.1f}",
                        p50,
                        lost,
                        str(len(result.errors)),
                        retries,
                        f"{ratio:.2f}x {_status(ratio, TARGETS.get(name))}"
                        if impl == "kvstate"
                        else "",
                    ]
                )
        print(
            table(
                [
                    "operation",
                    "impl",
                    "ops",
                    "ops/s",
                    "p50 ms",
                    "fields lost",
                    "errors",
                    "kvstate retries",
                    "ratio (ops/s)",
                ],
                rows,
            )
        )
        for _name, (label, found) in self.threads.items():
            for impl, result in found.items():
                for error in sorted(set(result.errors))[:3]:
                    print(f"  {label} / {impl} error: {error}")

        print("\n## Iteration memory (iter_all_for_course)\n")
        print(
            table(
                ["implementation", "rows", "tracemalloc peak KiB", "RSS growth KiB"],
                [
                    [impl, f"{m.rows:,}", f"{m.traced_peak_kib:,.0f}", f"{m.rss_growth_kib:,.0f}"]
                    for impl, m in self.memory
                ],
            )
        )

        print("\n## Prune (manage.py kvstate_prune_history, batches of 1,000, big history table)\n")
        print(
            table(
                ["run", "rows deleted", "s", "rows/s"],
                [
                    [p.label, f"{p.deleted:,}", f"{p.seconds:.2f}", f"{p.rate:,.0f}"]
                    for p in self.prune
                ],
            )
        )

        print("\n## Where the time goes: database share (time in execute + commit / total)\n")
        rows = []
        for _name, (label, found) in self.latency.items():
            base, ours = found["baseline"], found["kvstate"]
            rows.append(
                [
                    label,
                    f"{statistics.median(base.statements):.0f}",
                    f"{base.db_share:.0%}",
                    f"{statistics.median(ours.statements):.0f}",
                    _ms(statistics.median(ours.db_seconds)),
                    _ms(ours.median - statistics.median(ours.db_seconds)),
                    f"{ours.db_share:.0%}",
                    f"{1 - ours.db_share:.0%}",
                ]
            )
        print(
            table(
                [
                    "operation",
                    "baseline statements",
                    "baseline db share",
                    "kvstate statements",
                    "kvstate db ms (p50)",
                    "kvstate python ms",
                    "kvstate db share",
                    "kvstate python share",
                ],
                rows,
            )
        )

        print(
            f"\n## EXPLAIN: every statement shape kvstate issued ({self.statements_explained} "
            f"statements; big tables: {', '.join(f'{t} {n:,}' for t, n in self.big.items())})\n"
        )
        rows = []
        for number, item in enumerate(self.explained, start=1):
            rows.append(
                [
                    str(number),
                    item.operation,
                    "history" if item.statement.alias == HISTORY_ALIAS else "default",
                    item.verdict.summary[:150],
                    ("; ".join(item.verdict.flags) or "ok")
                    + (f" ({item.flagged} of {item.times} runs)" if item.times > 1 else ""),
                ]
            )
        print(table(["#", "operation", "alias", "plan", "flags"], rows))
        print("\nStatement shapes:")
        for number, item in enumerate(self.explained, start=1):
            print(f"  {number}. {item.statement.shape[:400]}")
        flagged = [i for i in self.explained if i.verdict.flags]
        print(f"\n{len(flagged)} of {len(self.explained)} statement shapes flagged.")

        if self.profiles:
            print("\n## cProfile of kvstate's request path (per operation; ms)\n")
            for result in self.profiles:
                for sort, title in (("cum", "cumulative"), ("own", "own time")):
                    print(
                        f"\n### {result.label}: top {top} by {title} ({result.iterations} runs)\n"
                    )
                    print(
                        table(
                            ["function", "calls", "own ms", "cumulative ms"],
                            profile_rows(result, top, sort),
                        )
                    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "latency": {
                name: {"label": label, **{impl: s.as_dict() for impl, s in found.items()}}
                for name, (label, found) in self.latency.items()
            },
            "threads": {
                name: {
                    "label": label,
                    **{
                        impl: {
                            "ops": t.ops,
                            "ops_per_s": t.rate,
                            "lost": t.lost,
                            "written": t.written,
                            "errors": len(t.errors),
                            "retries": t.retries,
                        }
                        for impl, t in found.items()
                    },
                }
                for name, (label, found) in self.threads.items()
            },
            "memory": [{"impl": impl, **vars(m)} for impl, m in self.memory],
            "prune": [
                {"label": p.label, "deleted": p.deleted, "seconds": p.seconds} for p in self.prune
            ],
            "explain": [
                {
                    "operation": i.operation,
                    "alias": i.statement.alias,
                    "shape": i.statement.shape,
                    "plan": i.verdict.summary,
                    "flags": i.verdict.flags,
                    "raw": i.verdict.raw,
                }
                for i in self.explained
            ],
        }


# --- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "mariadb"), default="postgres")
    parser.add_argument(
        "--rows", type=int, help="StudentModule rows (default 1,000,000; --quick 20,000)"
    )
    parser.add_argument(
        "--history-rows", type=int, help="history rows (default: as many as --rows)"
    )
    parser.add_argument(
        "--iterate-rows",
        type=int,
        help="rows of the iterated course (default 20,000; --quick 2,000)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--quick", action="store_true", help="small table, every operation a few times"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the databases for a later --reuse"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="measure on a kept dataset (implies --keep)"
    )
    parser.add_argument("--replace", action="store_true", help="regenerate over a kept dataset")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=float, default=1.0, help="multiply the iteration counts")
    parser.add_argument(
        "--big-table", type=int, default=10_000, help="rows from which a full scan is flagged"
    )
    parser.add_argument("--top", type=int, default=15, help="functions per profile table")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure (and raw plans) here")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help=f"measure only these parts, comma-separated: {', '.join(PARTS)}",
    )
    args = parser.parse_args(argv)
    unknown = (args.only or set()) - set(PARTS)
    if unknown:
        parser.error(f"--only: no part named {', '.join(sorted(unknown))}; choose from {PARTS}")
    wanted = args.only or set(PARTS)

    rows = args.rows or (20_000 if args.quick else 1_000_000)
    shape = Shape(
        rows=rows,
        history_rows=rows if args.history_rows is None else args.history_rows,
        iterate_rows=args.iterate_rows or min(2_000 if args.quick else 20_000, rows // 2),
        seed=args.seed,
    )
    counts = (QUICK if args.quick else Counts()).scaled(args.repeat)
    keep = args.keep or args.reuse
    began = time.perf_counter()
    configure(args.db, "_scale")
    import django
    from django.db import connections

    from kvstate.models import StudentModule

    report = Report()
    with scale_databases() as plan:
        layout = Layout(shape)
        print(
            f"# kvstate at scale: {describe_database()}, Django {django.get_version()}, "
            f"Python {platform.python_version()}"
        )
        print(f"machine: {machine()}")
        print(f"server: {database_settings()}")
        databases = ", ".join(connections[a].settings_dict["NAME"] for a in ALIASES)
        kept = dataset_marker()
        if kept is not None and not args.replace and not (args.reuse and kept == shape.marker):
            raise SystemExit(
                f"{databases} hold a dataset an earlier --keep run left ({kept}). Measure on it "
                "with --reuse and the same shape, regenerate it with --replace, or choose other "
                "databases with KVSTATE_TEST_DB_SUFFIX."
            )
        plan["drop"] = not keep
        if kept is not None and kept == shape.marker and args.reuse:
            print(f"dataset: reused ({shape.marker}) in {databases}")
            remove_bench_rows()
        else:
            if kept is not None or StudentModule.objects.exists():
                empty_tables()
            set_marker(None)
            started = time.perf_counter()
            generated = generate(layout)
            # Only a kept dataset is marked: the mark protects it from the next run.
            set_marker(shape.marker if keep else None)
            seconds = time.perf_counter() - started
            counted = ", ".join(f"{t} {n:,}" for t, n in generated.counts.items())
            print(f"dataset: generated in {seconds:.0f} s into {databases}: {counted}")
            report.header["generation_seconds"] = seconds
        per_course = layout.rows_per_course()
        heavy = max(e.blocks for e in layout.enrollments)
        iterated = per_course[layout.iteration_course.key]
        print(
            f"shape: {len(layout.courses)} courses + 1 iterated + 1 fresh "
            f"({len(layout.fresh)} learners x {layout.fresh_course.blocks:,} rows, loaded after "
            f"ANALYZE), {len(layout.newcomers)} newcomers x {layout.newcomers[0].blocks:,} rows "
            f"(after ANALYZE), {layout.learners:,} learners, "
            f"{len(layout.enrollments):,} enrollments (largest {heavy:,} rows in one course), "
            f"units of {BLOCKS_PER_UNIT}; iterated course {iterated:,} "
            f"rows, biggest course {per_course[layout.biggest_course.key]:,} rows; "
            f"{len(layout.rich)} modules with {RICH_HISTORY} history entries"
        )
        report.header.update(
            database=describe_database(),
            machine=machine(),
            server=database_settings(),
            shape=shape.marker,
            learners=layout.learners,
            enrollments=len(layout.enrollments),
        )
        logging.getLogger("kvstate").setLevel(logging.ERROR)  # retries are counted, not logged
        try:
            world = World(layout, shape.seed, counts, args.threads)
            operations: list[tuple[str, str, Prepare, int]] = [
                (
                    "cache_typical",
                    "FieldDataCache, 20-block unit, 4 scopes, typical learner",
                    op_cache(world, world.typical),
                    counts.latency,
                ),
                (
                    "cache_heavy",
                    f"FieldDataCache, 20-block unit, learner with "
                    f"{min(e.blocks for e, _u in world.heavy):,}+ rows in the course",
                    op_cache(world, world.heavy),
                    counts.latency,
                ),
                (
                    "cache_fresh",
                    "FieldDataCache, 20-block unit, course newer than the planner statistics",
                    op_cache(world, world.fresh),
                    counts.latency,
                ),
                (
                    "cache_newcomer",
                    f"FieldDataCache, 20-block unit, learner newer than the planner statistics "
                    f"({layout.newcomers[0].blocks:,} rows in the course)",
                    op_cache(world, world.newcomers),
                    counts.latency,
                ),
                ("get_many", "client get_many, 20 blocks", op_get_many(world), counts.latency),
                (
                    "submit",
                    "submit (cache + set_many 3 user_state + summary), 1 thread",
                    op_submit(world),
                    counts.latency,
                ),
                (
                    "set_many_existing",
                    "client set_many, 50 blocks, rows exist",
                    op_set_many(world, new_rows=False),
                    counts.batch,
                ),
                (
                    "set_many_new",
                    "client set_many, 50 blocks, new rows",
                    op_set_many(world, new_rows=True),
                    counts.batch,
                ),
                (
                    "history",
                    f"get_history, {RICH_HISTORY} entries",
                    op_history(world),
                    counts.batch,
                ),
                (
                    "iterate",
                    f"iter_all_for_course, {per_course[layout.iteration_course.key]:,} rows",
                    op_iterate(world, layout.iteration_course.key),
                    counts.iterate,
                ),
            ]
            operations = [op for op in operations if op[0] in wanted]
            for name, label, prepare, n in operations:
                print(f"... {label} ({n} each)", flush=True)
                report.latency[name] = (label, interleaved(prepare, n, counts.warmup))
            if "submit_threads" in wanted:
                print(f"... submits in {args.threads} threads", flush=True)
                report.threads["submit_threads"] = (
                    f"submit, {args.threads} threads (different learners)",
                    submits_in_threads(world, args.threads, counts),
                )
            if "contended" in wanted:
                print(f"... {args.threads} writers on one row", flush=True)
                report.threads["contended"] = (
                    f"{args.threads} writers, one row, fresh cache per write",
                    contended_row(world, args.threads, counts),
                )
            if "memory" in wanted:
                print("... iteration memory", flush=True)
                for impl, course in (
                    (Kvstate(), layout.iteration_course),
                    (Kvstate(), layout.biggest_course),
                    (Naive(), layout.iteration_course),
                ):
                    report.memory.append((impl.name, iteration_memory(impl, course.key)))
            if "prune" in wanted:
                print("... prune", flush=True)
                report.prune = prune_rates(counts.fodder)
            if not args.no_profile:
                print("... profiles", flush=True)
                for name, label, prepare, _n in operations:
                    if name in PROFILED:
                        runs = max(1, round(counts.profile * PROFILED[name]))
                        report.profiles.append(profile(label, prepare, runs))
            if "explain" in wanted:
                print("... EXPLAIN", flush=True)
                report.explained, report.big, report.statements_explained = explain_operations(
                    world, args.big_table
                )
        finally:
            remove_bench_rows()
        report.header["load_after"] = machine()
        report.print(args.top)
        print(f"\nmachine after the run: {machine()}")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=1, default=str))
    kept = " (databases kept)" if keep else " (databases dropped)"
    print(f"\n(run took {time.perf_counter() - began:.0f} s{kept})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
