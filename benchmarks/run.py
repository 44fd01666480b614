"""Measure kvstate against a naive Open edX-style baseline on a real database.

    python -m benchmarks.run                  # SQLite
    python -m benchmarks.run --db postgres    # or mariadb

Creates its own databases (Django's test databases of ``tests.settings``, named with the suffix
``$KVSTATE_TEST_DB_SUFFIX`` + ``_bench``), fills them, measures, and drops them. Prints figures
only; it asserts nothing about timings. What it measures, for both implementations:

- statements per operation, per database alias, counted twice: inside an outer transaction, as
  Django's ``TestCase`` does (SAVEPOINT/RELEASE counted; the unit of SPEC section 7), and in
  autocommit, as a web request sends them (BEGIN/COMMIT counted);
- latency percentiles (p50/p95/p99) and throughput of each operation in autocommit;
- a concurrency figure: 8 threads write 8 different fields of one learner's row at the same
  instant; how many fields each implementation loses, and how often kvstate had to retry.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HISTORY = "student_module_history"
ALIASES = ("default", HISTORY)


@dataclass
class Figures:
    """What was measured for one operation and one implementation."""

    txn: dict[str, int] = field(default_factory=dict)
    autocommit: dict[str, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    sql: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.seconds)  # nearest-rank percentile
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def throughput(self) -> float:
        return len(self.seconds) / sum(self.seconds)


# --- setting up Django ------------------------------------------------------------------------


def configure(backend: str, suffix: str = "_bench") -> None:
    """Point Django at ``tests.settings`` on ``backend`` with this run's database names.

    ``suffix`` goes after ``$KVSTATE_TEST_DB_SUFFIX`` in every database name.
    """
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    os.environ["KVSTATE_TEST_DB"] = backend
    # Benchmarks and test runs of the same developer must not share databases.
    os.environ["KVSTATE_TEST_DB_SUFFIX"] = os.environ.get("KVSTATE_TEST_DB_SUFFIX", "") + suffix
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django

    django.setup()
    # kvstate logs each retried transaction at WARNING; the concurrency figure counts them.
    logging.getLogger("kvstate").setLevel(logging.ERROR)


@contextmanager
def own_databases() -> Iterator[None]:
    """Create fresh databases for every alias, and drop them afterwards."""
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    old_config = setup_databases(
        verbosity=0, interactive=False, keepdb=False, serialized_aliases=set()
    )
    try:
        yield
    finally:
        connections.close_all()
        teardown_databases(old_config, verbosity=0)


# --- the two implementations --------------------------------------------------------------------


class Impl:
    """What an operation needs from an implementation."""

    name = ""

    def cache(self, blocks: list[Any], course: Any, user: Any) -> Any:
        raise NotImplementedError

    def kvs(self, cache: Any) -> Any:
        raise NotImplementedError

    def client(self, user: Any) -> Any:
        raise NotImplementedError

    def history(self, client: Any, username: str, usage: Any) -> list[Any]:
        return list(client.get_history(username, usage))

    def iterate(self, client: Any, course: Any) -> int:
        return sum(1 for _ in client.iter_all_for_course(course))


class Kvstate(Impl):
    name = "kvstate"

    def cache(self, blocks: list[Any], course: Any, user: Any) -> Any:
        from kvstate.model_data import FieldDataCache

        return FieldDataCache(blocks, course, user)

    def kvs(self, cache: Any) -> Any:
        from kvstate.model_data import DjangoKeyValueStore

        return DjangoKeyValueStore(cache)

    def client(self, user: Any) -> Any:
        from kvstate.user_state_client import DjangoXBlockUserStateClient

        return DjangoXBlockUserStateClient(user)


class Naive(Impl):
    name = "baseline"

    def cache(self, blocks: list[Any], course: Any, user: Any) -> Any:
        from benchmarks.naive import NaiveFieldDataCache

        return NaiveFieldDataCache(blocks, course, user)

    def kvs(self, cache: Any) -> Any:
        from benchmarks.naive import NaiveKeyValueStore

        return NaiveKeyValueStore(cache)

    def client(self, user: Any) -> Any:
        from benchmarks.naive import NaiveUserStateClient

        return NaiveUserStateClient(user)


# --- data ---------------------------------------------------------------------------------------


class World:
    """Users, keys and blocks shared by the operations."""

    def __init__(self, blocks: int, history: int, learners: int, per_learner: int) -> None:
        from django.contrib.auth import get_user_model
        from opaque_keys.edx.keys import CourseKey
        from xblock.core import XBlock
        from xblock.fields import Dict, Integer, Scope, String

        class BenchBlock(XBlock):  # type: ignore[misc]
            """Fields in each of the four user scopes, like a typical problem."""

            answer = String(scope=Scope.user_state)
            attempts = Integer(scope=Scope.user_state)
            tally = Dict(scope=Scope.user_state_summary)
            theme = String(scope=Scope.preferences)
            nickname = String(scope=Scope.user_info)

        self.block_fields = BenchBlock.fields
        self.entry_point = BenchBlock.entry_point
        self.course = CourseKey.from_string("course-v1:kvstate+Bench+2025")
        self.other_course = CourseKey.from_string("course-v1:kvstate+Iterate+2025")
        self.users = get_user_model().objects
        self.n_blocks = blocks
        self.n_history = history
        self.n_rows = learners * per_learner
        self._serial = 0
        self._fill(blocks, history, learners, per_learner)

    def usage(self, name: str, course: Any = None) -> Any:
        return (course or self.course).make_usage_key("problem", name)

    def fresh_usage(self) -> Any:
        self._serial += 1
        return self.usage(f"fresh{self._serial:06d}")

    def block(self, usage: Any, user: Any) -> Any:
        """Return a stand-in for an XBlock instance: what a FieldDataCache reads of one."""
        from xblock.fields import ScopeIds

        return SimpleNamespace(
            fields=self.block_fields,
            entry_point=self.entry_point,
            scope_ids=ScopeIds(user.pk, "problem", usage, usage),
            has_children=False,
        )

    def user(self, name: str) -> Any:
        return self.users.create(username=name)

    def _fill(self, blocks: int, history: int, learners: int, per_learner: int) -> None:
        from opaque_keys.edx.block_types import BlockTypeKeyV1

        from kvstate.models import (
            StudentModule,
            StudentModuleHistory,
            XModuleStudentInfoField,
            XModuleStudentPrefsField,
            XModuleUserStateSummaryField,
        )

        self.reader = self.user("reader")
        self.reader_usages = [self.usage(f"b{i:05d}") for i in range(blocks)]
        self.reader_blocks = [self.block(u, self.reader) for u in self.reader_usages]
        state = json.dumps({"answer": "42", "attempts": 1})
        StudentModule.objects.bulk_create(
            [
                StudentModule(
                    student=self.reader,
                    module_state_key=u,
                    course_id=self.course,
                    module_type="problem",
                    state=state,
                )
                for u in self.reader_usages
            ],
            batch_size=500,
        )
        XModuleUserStateSummaryField.objects.bulk_create(
            [
                XModuleUserStateSummaryField(usage_id=u, field_name="tally", value='{"a": 1}')
                for u in self.reader_usages
            ],
            batch_size=500,
        )
        XModuleStudentPrefsField.objects.create(
            student=self.reader,
            module_type=BlockTypeKeyV1(self.entry_point, "problem"),
            field_name="theme",
            value='"dark"',
        )
        XModuleStudentInfoField.objects.create(
            student=self.reader, field_name="nickname", value='"reader"'
        )
        # One block with a long history.
        module = StudentModule.objects.get(
            student=self.reader, module_state_key=self.reader_usages[0]
        )
        StudentModuleHistory.objects.bulk_create(
            [
                StudentModuleHistory(
                    student_module_id=module.pk,
                    created=module.modified,
                    state=json.dumps({"answer": str(i)}),
                )
                for i in range(history)
            ]
        )
        # A second course for iteration: many learners, many blocks.
        usages = [self.usage(f"i{i:04d}", self.other_course) for i in range(per_learner)]
        learners_created = [self.user(f"learner{i:03d}") for i in range(learners)]
        StudentModule.objects.bulk_create(
            [
                StudentModule(
                    student=learner,
                    module_state_key=u,
                    course_id=self.other_course,
                    module_type="problem",
                    state=state,
                )
                for learner in learners_created
                for u in usages
            ],
            batch_size=500,
        )


# --- operations -------------------------------------------------------------------------------

#: An operation yields, forever, one zero-argument callable per iteration. Untimed preparation
#: (building a cache over a fresh block, say) happens in the generator between yields.
Operation = Callable[[Impl, World], Iterator[Callable[[], Any]]]


def _key(scope: Any, user: Any, owner: Any, name: str) -> Any:
    from xblock.runtime import KeyValueStore

    return KeyValueStore.Key(scope, user.pk, owner, name)


def op_build(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    while True:
        yield lambda: impl.cache(world.reader_blocks, world.course, world.reader)


def op_get(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    from xblock.fields import Scope

    kvs = impl.kvs(impl.cache(world.reader_blocks[:1], world.course, world.reader))
    key = _key(Scope.user_state, world.reader, world.reader_usages[0], "answer")
    while True:
        yield lambda: kvs.get(key)


def op_set_existing(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    from xblock.fields import Scope

    user = world.user(f"{impl.name}-set-existing")
    usage = world.fresh_usage()
    kvs = impl.kvs(impl.cache([world.block(usage, user)], world.course, user))
    key = _key(Scope.user_state, user, usage, "answer")
    kvs.set(_key(Scope.user_state, user, usage, "attempts"), 1)  # the row exists from here on
    counter = 0
    while True:
        counter += 1
        yield lambda value=f"answer {counter}": kvs.set(key, value)


def op_set_new(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    from xblock.fields import Scope

    user = world.user(f"{impl.name}-set-new")
    while True:
        usage = world.fresh_usage()
        kvs = impl.kvs(impl.cache([world.block(usage, user)], world.course, user))
        key = _key(Scope.user_state, user, usage, "answer")
        yield lambda kvs=kvs, key=key: kvs.set(key, "first answer")


def op_delete(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    from xblock.fields import Scope

    user = world.user(f"{impl.name}-delete")
    usage = world.fresh_usage()
    kvs = impl.kvs(impl.cache([world.block(usage, user)], world.course, user))
    kvs.set(_key(Scope.user_state, user, usage, "attempts"), 1)
    key = _key(Scope.user_state, user, usage, "answer")
    while True:
        kvs.set(key, "to be deleted")
        yield lambda: kvs.delete(key)


def _set_many(impl: Impl, world: World, label: str, new_rows: bool) -> Iterator[Callable[[], Any]]:
    user = world.user(f"{impl.name}-{label}")
    client = impl.client(user)
    usages = [world.fresh_usage() for _ in range(50)]
    counter = 0
    while True:
        counter += 1
        if new_rows:
            usages = [world.fresh_usage() for _ in range(50)]
        states = {u: {"answer": f"answer {counter}"} for u in usages}
        yield lambda states=states: client.set_many(user.username, states)


def op_set_many_existing(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    return _set_many(impl, world, "set-many-existing", new_rows=False)


def op_set_many_new(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    return _set_many(impl, world, "set-many-new", new_rows=True)


def op_per_field(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    from xblock.fields import Scope

    user = world.user(f"{impl.name}-per-field")
    kvs = impl.kvs(impl.cache([], world.course, user))
    keys = [_key(Scope.user_info, user, None, f"info{j}") for j in range(10)]
    counter = 0
    while True:
        counter += 1
        values = dict.fromkeys(keys, counter)
        yield lambda values=values: kvs.set_many(values)


def op_history(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    client = impl.client(world.reader)
    while True:
        yield lambda: impl.history(client, world.reader.username, world.reader_usages[0])


def op_iterate(impl: Impl, world: World) -> Iterator[Callable[[], Any]]:
    client = impl.client(None)
    while True:
        yield lambda: impl.iterate(client, world.other_course)


@dataclass(frozen=True)
class Spec:
    label: str
    operation: Operation
    iterations: int


def specs(world: World, scale: float) -> list[Spec]:
    def n(base: int) -> int:
        return max(3, round(base * scale))

    return [
        Spec(f"build cache over {world.n_blocks} blocks (4 scopes)", op_build, n(12)),
        Spec("get a cached user_state field", op_get, n(300)),
        Spec("set user_state of 1 block, row exists", op_set_existing, n(150)),
        Spec("set user_state of 1 block, new row", op_set_new, n(150)),
        Spec("delete 1 user_state field", op_delete, n(80)),
        Spec("client.set_many, 50 blocks, rows exist", op_set_many_existing, n(20)),
        Spec("client.set_many, 50 blocks, new rows", op_set_many_new, n(20)),
        Spec("set 10 user_info fields (set_many)", op_per_field, n(80)),
        Spec(f"get_history, {world.n_history} entries", op_history, n(40)),
        Spec(f"iter_all_for_course, {world.n_rows} rows", op_iterate, n(4)),
    ]


# --- measuring --------------------------------------------------------------------------------


@contextmanager
def capture() -> Iterator[dict[str, Any]]:
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with ExitStack() as stack:
        yield {
            alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
            for alias in ALIASES
        }


@contextmanager
def rolled_back() -> Iterator[Callable[[], Any]]:
    """Open one transaction per alias, as Django's TestCase does, and roll them back after.

    Yields a context manager factory that runs the on_commit callbacks (history on its own
    alias) registered inside it, as ``captureOnCommitCallbacks(execute=True)`` does in a test.
    """
    from django.db import transaction
    from django.test import TestCase

    def run_on_commit() -> Any:
        return TestCase.captureOnCommitCallbacks(using="default", execute=True)

    with transaction.atomic("default"), transaction.atomic(HISTORY):
        yield run_on_commit
        transaction.set_rollback(True, "default")
        transaction.set_rollback(True, HISTORY)


def count(step: Callable[[], Any], in_transaction: bool) -> tuple[dict[str, int], list[str]]:
    if in_transaction:
        with rolled_back() as run_on_commit, capture() as captured, run_on_commit():
            step()
    else:
        with capture() as captured:
            step()
    return (
        {alias: len(ctx.captured_queries) for alias, ctx in captured.items()},
        [f"{alias}: {q['sql']}" for alias, ctx in captured.items() for q in ctx.captured_queries],
    )


def measure(impl: Impl, world: World, spec: Spec) -> Figures:
    figures = Figures()
    steps = spec.operation(impl, world)
    for _ in range(2):  # warm up: first-time imports, prepared plans, the first insert
        next(steps)()
    figures.autocommit, figures.sql = count(next(steps), in_transaction=False)
    for _ in range(spec.iterations):
        step = next(steps)
        started = time.perf_counter()
        step()
        figures.seconds.append(time.perf_counter() - started)
    # Last: its rollback leaves a cache that believes in a write the database no longer has.
    figures.txn, _ = count(next(steps), in_transaction=True)
    steps.close()
    return figures


# --- concurrency ------------------------------------------------------------------------------


@dataclass
class Race:
    rounds: int = 0
    written: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    retries: dict[str, int] = field(default_factory=dict)


def race(impl: Impl, world: World, threads: int, rounds: int, existing: bool) -> Race:
    """``threads`` writers, each setting its own field of one learner's row at the same instant."""
    from django.db import connections
    from xblock.fields import Scope

    from kvstate.models import StudentModule
    from kvstate.storage import stats

    user = world.user(f"{impl.name}-race-{'existing' if existing else 'new'}")
    result = Race()
    stats.reset()
    started = time.perf_counter()
    for _ in range(rounds):
        usage = world.fresh_usage()
        if existing:
            StudentModule.objects.create(
                student=user,
                module_state_key=usage,
                course_id=world.course,
                module_type="problem",
                state=json.dumps({"seed": True}),
            )
        barrier = threading.Barrier(threads)

        def writer(number: int, usage: Any = usage, barrier: threading.Barrier = barrier) -> None:
            try:
                # A request: read the learner's state, then save one field of it.
                kvs = impl.kvs(impl.cache([world.block(usage, user)], world.course, user))
                barrier.wait()
                kvs.set(_key(Scope.user_state, user, usage, f"field{number}"), number)
            except Exception as exc:  # every failure is a figure here
                result.errors.append(f"{type(exc).__name__}: {exc}"[:160])
            finally:
                connections.close_all()

        workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        text = StudentModule.objects.get(student=user, module_state_key=usage).state
        stored = json.loads(text or "{}")
        present = sum(1 for i in range(threads) if stored.get(f"field{i}") == i)
        result.rounds += 1
        result.written += threads
        result.lost += threads - present
    result.seconds = time.perf_counter() - started
    result.retries = {
        "swaps_lost": stats.swaps_lost,
        "inserts_lost": stats.inserts_lost,
        "transactions_retried": stats.transactions_retried,
    }
    return result


# --- printing ---------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _statements(counts: dict[str, int]) -> str:
    return f"{counts['default']} + {counts[HISTORY]}"


def _ratio(base: float, ours: float) -> str:
    if ours == 0:
        return "-"
    return f"{base / ours:.1f}x"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(results: list[tuple[Spec, Figures, Figures]]) -> None:
    print("\n## Statements per operation: default + history alias\n")
    print("In a transaction (as in Django's TestCase; SAVEPOINT/RELEASE counted) and in")
    print("autocommit (as a request sends them; BEGIN/COMMIT counted).\n")
    rows = []
    for spec, base, ours in results:
        rows.append(
            [
                spec.label,
                _statements(base.txn),
                _statements(ours.txn),
                _ratio(sum(base.txn.values()), sum(ours.txn.values())),
                _statements(base.autocommit),
                _statements(ours.autocommit),
                _ratio(sum(base.autocommit.values()), sum(ours.autocommit.values())),
            ]
        )
    print(
        table(
            [
                "operation",
                "baseline txn",
                "kvstate txn",
                "ratio",
                "baseline autocommit",
                "kvstate autocommit",
                "ratio",
            ],
            rows,
        )
    )

    print("\n## Latency (ms, autocommit) and throughput (operations/s)\n")
    rows = []
    for spec, base, ours in results:
        rows.append(
            [
                spec.label,
                str(len(ours.seconds)),
                " / ".join(_ms(base.percentile(p)) for p in (50, 95, 99)),
                f"{base.throughput:,.0f}",
                " / ".join(_ms(ours.percentile(p)) for p in (50, 95, 99)),
                f"{ours.throughput:,.0f}",
                _ratio(base.percentile(50), ours.percentile(50)),
            ]
        )
    print(
        table(
            [
                "operation",
                "n",
                "baseline p50 / p95 / p99",
                "ops/s",
                "kvstate p50 / p95 / p99",
                "ops/s",
                "faster (p50)",
            ],
            rows,
        )
    )


def report_races(races: list[tuple[str, Race, Race]], threads: int) -> None:
    print(f"\n## Concurrency: {threads} threads each set their own field of one row at once\n")
    rows = []
    for label, base, ours in races:
        for name, race_result in (("baseline", base), ("kvstate", ours)):
            retries = (
                ", ".join(f"{k} {v}" for k, v in race_result.retries.items())
                if name == "kvstate"
                else "-"
            )
            rows.append(
                [
                    label,
                    name,
                    f"{race_result.rounds} x {threads}",
                    f"{race_result.lost} ({race_result.lost / max(race_result.written, 1):.0%})",
                    str(len(race_result.errors)),
                    retries,
                    f"{race_result.seconds:.1f}",
                ]
            )
    print(
        table(
            ["row", "writer", "rounds x writers", "fields lost", "errors", "kvstate retries", "s"],
            rows,
        )
    )
    for label, base, ours in races:
        for name, race_result in (("baseline", base), ("kvstate", ours)):
            for error in sorted(set(race_result.errors))[:3]:
                print(f"  {label} / {name} error: {error}")


def describe_database() -> str:
    from django.db import connection

    connection.ensure_connection()
    vendor = connection.vendor
    if vendor == "sqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()" if vendor == "mysql" else "SHOW server_version")
        version = cursor.fetchone()[0]
    return f"{'MariaDB/MySQL' if vendor == 'mysql' else 'PostgreSQL'} {version}"


# --- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "mariadb"), default="sqlite")
    parser.add_argument("--blocks", type=int, default=1000, help="blocks in the cache build")
    parser.add_argument("--history", type=int, default=25, help="history entries read")
    parser.add_argument("--learners", type=int, default=20, help="learners in iteration")
    parser.add_argument("--per-learner", type=int, default=100, help="rows per learner iterated")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="concurrency rounds per case")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    parser.add_argument("--sql", action="store_true", help="print the statements counted")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    configure(args.db)
    import django

    with own_databases():
        world = World(args.blocks, args.history, args.learners, args.per_learner)
        print(
            f"# kvstate benchmarks: {describe_database()}, Django {django.get_version()}, "
            f"Python {platform.python_version()}"
        )
        print(
            "baseline = naive Open edX-style read-modify-write (benchmarks/naive.py); "
            "history on its own alias; block type 'problem' (history kept)"
        )
        results = []
        for spec in specs(world, args.scale):
            base = measure(Naive(), world, spec)
            ours = measure(Kvstate(), world, spec)
            results.append((spec, base, ours))
            if args.sql:
                for name, figures in (("baseline", base), ("kvstate", ours)):
                    print(f"\n-- {spec.label} / {name} (autocommit)")
                    for statement in figures.sql[:12]:
                        print(f"   {statement[:200]}")
                    if len(figures.sql) > 12:
                        print(f"   ... {len(figures.sql) - 12} more")
        report(results)
        races = [
            (
                label,
                race(Naive(), world, args.threads, args.rounds, existing),
                race(Kvstate(), world, args.threads, args.rounds, existing),
            )
            for label, existing in (("existing", True), ("new", False))
        ]
        report_races(races, args.threads)
    print(f"\n(run took {time.perf_counter() - started:.0f} s, databases created and dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
