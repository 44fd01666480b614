"""Concurrent writers lose nothing and raise nothing (SPEC §4), on every backend.

Real threads, one database connection each (every thread closes its connections when it ends),
real commits (``TransactionTestCase``). The naive read-modify-write writer kept here is the
negative control: the same harness must catch it losing fields, or the harness proves nothing.

Figures (fields found, kvstate's internal retries, lock waits) are logged at INFO under
``tests.concurrency``: ``pytest -o log_cli=true --log-cli-level=INFO tests/test_concurrency.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from django.db import OperationalError, connection, connections, transaction
from django.test import TransactionTestCase
from xblock.exceptions import KeyValueMultiSaveError
from xblock.fields import Scope

from kvstate import storage
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.underfire import COURSE, HTML, PROBLEM, key, new_store

log = logging.getLogger("tests.concurrency")

THREADS = 8
SNAPSHOT_ISOLATION = "REPEATABLE READ + innodb_snapshot_isolation"
WRITES = 100
#: How long a thread may take before the test calls it hung.
JOIN_TIMEOUT = 300


def run_threads(
    count: int, target: Callable[[int, threading.Barrier], None], *, isolation: str | None = None
) -> list[BaseException]:
    """Run ``target(index, barrier)`` in ``count`` threads; return what they raised.

    Each thread sets its connection's isolation level first (if asked) and closes its
    connections at the end, as a request thread of a real server does.
    """
    barrier = threading.Barrier(count, timeout=60)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            if isolation is not None:
                set_isolation(isolation)
            target(index, barrier)
        except BaseException as exc:  # collected and re-checked by the test
            errors.append(exc)
            barrier.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "a writer thread hung"
    return errors


def describe(errors: list[BaseException]) -> list[str]:
    """Return each error with its cause (``KeyValueMultiSaveError`` wraps the database's)."""
    return [f"{exc!r} from {exc.__cause__!r}" for exc in errors]


def set_isolation(level: str) -> None:
    """Set this thread's connection to ``level`` (``READ COMMITTED``, ``REPEATABLE READ``)."""
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            if level == SNAPSHOT_ISOLATION:
                cursor.execute("SET SESSION innodb_snapshot_isolation = ON")
                level = "REPEATABLE READ"
            cursor.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")
            cursor.execute("SELECT @@SESSION.tx_isolation")
            assert cursor.fetchone()[0] == level.replace(" ", "-")
        elif connection.vendor == "postgresql":
            cursor.execute(f"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {level}")
            cursor.execute("SHOW transaction_isolation")
            assert cursor.fetchone()[0] == level.lower()


def isolation_levels() -> list[str | None]:
    """Return the isolation levels worth running the first-write races under on this backend.

    On MariaDB also REPEATABLE READ with ``innodb_snapshot_isolation`` (the default from
    MariaDB 11.6), under which a stale locking read fails instead of waiting.
    """
    if connection.vendor == "mysql":
        return ["READ COMMITTED", "REPEATABLE READ", SNAPSHOT_ISOLATION]
    if connection.vendor == "postgresql":
        return ["READ COMMITTED", "REPEATABLE READ"]
    return [None]  # SQLite transactions are serializable


def log_figures(test: str, **figures: Any) -> None:
    log.info(
        "%s [%s] %s", test, connection.vendor, " ".join(f"{k}={v}" for k, v in figures.items())
    )


def state_of(user: Any, usage_key: Any = PROBLEM) -> dict[str, Any]:
    text = StudentModule.objects.get(student=user, module_state_key=usage_key).state
    return json.loads(text) if text else {}


class ConcurrencyTestCase(TransactionTestCase):
    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.user = UserFactory()
        storage.stats.reset()

    def hammer(
        self, writer: Callable[[int, int], None], threads: int = THREADS, writes: int = WRITES
    ) -> tuple[list[BaseException], float]:
        """Run ``writer(thread, i)`` for ``writes`` values of i in each of ``threads`` threads."""

        def target(index: int, barrier: threading.Barrier) -> None:
            barrier.wait()
            for i in range(writes):
                writer(index, i)

        started = time.monotonic()
        errors = run_threads(threads, target)
        return errors, time.monotonic() - started


class DisjointFieldsTests(ConcurrencyTestCase):
    """Eight writers, distinct fields, one (user, block) row: every field survives."""

    def expected_fields(self, threads: int = THREADS, writes: int = WRITES) -> dict[str, int]:
        return {f"t{t}_{i}": i for t in range(threads) for i in range(writes)}

    def check_nothing_lost(self, name: str, errors: list[BaseException], elapsed: float) -> None:
        assert errors == [], describe(errors)
        state = state_of(self.user)
        expected = self.expected_fields()
        missing = sorted(set(expected) - set(state))
        log_figures(
            name,
            attempted=len(expected),
            found=len(set(expected) & set(state)),
            seconds=round(elapsed, 2),
            swaps_lost=storage.stats.swaps_lost,
            inserts_lost=storage.stats.inserts_lost,
            transactions_retried=storage.stats.transactions_retried,
            most_retries=storage.stats.most_retries,
        )
        assert missing == []
        assert state == expected

    def test_client_writers_lose_no_field(self) -> None:
        def write(thread: int, i: int) -> None:
            client = DjangoXBlockUserStateClient(self.user)
            client.set(self.user.username, PROBLEM, {f"t{thread}_{i}": i})

        errors, elapsed = self.hammer(write)
        self.check_nothing_lost("client disjoint fields", errors, elapsed)
        # One history row per write call.
        assert StudentModuleHistory.objects.count() == THREADS * WRITES

    def test_key_value_store_writers_lose_no_field(self) -> None:
        # A fresh cache per write, as each request builds its own.
        def write(thread: int, i: int) -> None:
            _cache, kvs = new_store(self.user, [PROBLEM], ["seed"])
            kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, f"t{thread}_{i}"), i)

        errors, elapsed = self.hammer(write)
        self.check_nothing_lost("key-value store disjoint fields", errors, elapsed)

    def test_the_harness_catches_a_naive_read_modify_write(self) -> None:
        # Negative control: Open edX's pattern (read the row, merge in Python, save the whole
        # text) under the same harness. If this stopped losing fields, the harness would no
        # longer prove anything about kvstate.
        module = StudentModule.objects.create(
            student=self.user, module_state_key=PROBLEM, course_id=COURSE, state="{}"
        )

        def write(thread: int, i: int) -> None:
            text = StudentModule.objects.filter(pk=module.pk).values_list("state", flat=True)[0]
            state = json.loads(text)
            state[f"t{thread}_{i}"] = i
            StudentModule.objects.filter(pk=module.pk).update(state=json.dumps(state))

        errors, elapsed = self.hammer(write)
        assert errors == [], describe(errors)
        state = state_of(self.user)
        lost = len(self.expected_fields()) - len(state)
        log_figures(
            "naive read-modify-write (negative control)",
            attempted=THREADS * WRITES,
            found=len(state),
            lost=lost,
            seconds=round(elapsed, 2),
        )
        assert lost > 0, "the naive writer lost nothing: the harness applies no pressure"


@contextmanager
def watching_modified(user: Any, usage_key: Any) -> Iterator[list[Any]]:
    """Poll the row's ``modified`` on another connection while the block runs.

    Yields the list of backward steps seen: readers see commits in order, so a write stamped
    with a time older than the write it replaced shows up as ``modified`` going back.
    """
    backwards: list[Any] = []
    done = threading.Event()

    def watch() -> None:
        rows = StudentModule.objects.filter(student=user, module_state_key=usage_key)
        last = None
        try:
            while not done.is_set():
                for modified in rows.values_list("modified", flat=True):
                    if last is not None and modified < last:
                        backwards.append((last, modified))
                    last = modified
        finally:
            connections.close_all()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield backwards
    finally:
        done.set()
        watcher.join(30)


class SameFieldTests(ConcurrencyTestCase):
    """Eight writers, one field: the last write wins whole, and history agrees with it."""

    WRITES = 50

    def hammer(
        self, writer: Callable[[int, int], None], threads: int = THREADS, writes: int = WRITES
    ) -> tuple[list[BaseException], float]:
        # Another connection watches the row's timestamp meanwhile: it must never go back.
        with watching_modified(self.user, PROBLEM) as backwards:
            outcome = super().hammer(writer, threads, writes)
        assert backwards == []
        return outcome

    def check_last_write_won(self, name: str, errors: list[BaseException]) -> None:
        assert errors == [], describe(errors)
        written = {f"{t}-{i}" for t in range(THREADS) for i in range(self.WRITES)}
        module = StudentModule.objects.get(student=self.user, module_state_key=PROBLEM)
        state = json.loads(module.state)
        assert set(state) == {"answer"}
        assert state["answer"] in written
        # History: one row per write call, each a state that parses, the newest the current.
        entries = list(StudentModuleHistory.objects.for_module(module.pk))
        assert len(entries) == THREADS * self.WRITES
        assert {json.loads(entry.state)["answer"] for entry in entries} == written
        assert entries[0].state == module.state
        assert entries[0].created == module.modified
        log_figures(
            name,
            writes=len(written),
            swaps_lost=storage.stats.swaps_lost,
            inserts_lost=storage.stats.inserts_lost,
            transactions_retried=storage.stats.transactions_retried,
            most_retries=storage.stats.most_retries,
        )

    def test_client_writers(self) -> None:
        def write(thread: int, i: int) -> None:
            DjangoXBlockUserStateClient(self.user).set(
                self.user.username, PROBLEM, {"answer": f"{thread}-{i}"}
            )

        errors, _elapsed = self.hammer(write, writes=self.WRITES)
        self.check_last_write_won("client same field", errors)

    def test_key_value_store_writers(self) -> None:
        def write(thread: int, i: int) -> None:
            _cache, kvs = new_store(self.user, [PROBLEM], ["answer"])
            kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, "answer"), f"{thread}-{i}")

        errors, _elapsed = self.hammer(write, writes=self.WRITES)
        self.check_last_write_won("key-value store same field", errors)


class FirstWriteRaceTests(ConcurrencyTestCase):
    """Eight writers create the same rows at the same instant: one row each, nothing raised."""

    ROUNDS = 10

    def blocks(self) -> list[Any]:
        return [COURSE.make_usage_key("problem", f"race_{r}") for r in range(self.ROUNDS)]

    def run_rounds(self, write: Callable[[int, Any], None], isolation: str | None) -> None:
        def target(index: int, barrier: threading.Barrier) -> None:
            for usage_key in self.blocks():
                barrier.wait()  # all eight writers hit the missing row at once
                write(index, usage_key)

        errors = run_threads(THREADS, target, isolation=isolation)
        assert errors == [], describe(errors)

    def check_one_row_each(self, name: str, isolation: str | None, per_field: bool) -> None:
        for usage_key in self.blocks():
            [module] = StudentModule.objects.filter(module_state_key=usage_key)
            assert json.loads(module.state) == {f"t{t}": t for t in range(THREADS)}
        if per_field:
            assert XModuleStudentInfoField.objects.filter(field_name="shared").count() == 1
            prefs = XModuleStudentPrefsField.objects.filter(field_name="shared")
            assert prefs.count() == 1
            for usage_key in self.blocks():
                summary = XModuleUserStateSummaryField.objects.filter(usage_id=usage_key)
                assert summary.count() == 1 + THREADS
                assert json.loads(summary.get(field_name="shared").value) in range(THREADS)
            for model in (XModuleStudentPrefsField, XModuleStudentInfoField):
                assert model.objects.exclude(field_name="shared").count() == THREADS
            assert XModuleStudentInfoField.objects.get(field_name="t0").value == "0"
        log_figures(
            name,
            isolation=isolation,
            rounds=self.ROUNDS,
            swaps_lost=storage.stats.swaps_lost,
            inserts_lost=storage.stats.inserts_lost,
            transactions_retried=storage.stats.transactions_retried,
            most_retries=storage.stats.most_retries,
        )

    def test_client_first_writes(self) -> None:
        for isolation in isolation_levels():
            with self.subTest(isolation=isolation):
                StudentModule.objects.all().delete()
                storage.stats.reset()

                def write(thread: int, usage_key: Any) -> None:
                    client = DjangoXBlockUserStateClient(self.user)
                    client.set(self.user.username, usage_key, {f"t{thread}": thread})

                self.run_rounds(write, isolation)
                self.check_one_row_each("client first writes", isolation, per_field=False)
                assert storage.stats.inserts_lost > 0, "no race happened: the test proves nothing"

    def test_client_first_writes_without_returning(self) -> None:
        # MySQL 8 has no INSERT ... RETURNING: kvstate reads back which rows it created (by
        # their text and timestamp). Run that path on every backend.
        features = type(connections["default"].features)
        with mock.patch.object(features, "can_return_rows_from_bulk_insert", False):

            def write(thread: int, usage_key: Any) -> None:
                client = DjangoXBlockUserStateClient(self.user)
                client.set_many(
                    self.user.username,
                    {usage_key: {f"t{thread}": thread}, HTML: {f"t{thread}": thread}},
                )

            self.run_rounds(write, isolation_levels()[-1])
        self.check_one_row_each(
            "client first writes without RETURNING", isolation_levels()[-1], per_field=False
        )
        assert storage.stats.inserts_lost > 0, "no race happened: the test proves nothing"
        assert state_of(self.user, HTML) == {f"t{t}": t for t in range(THREADS)}

    def test_key_value_store_first_writes_in_every_scope(self) -> None:
        for isolation in isolation_levels():
            with self.subTest(isolation=isolation):
                for model in (
                    StudentModule,
                    XModuleUserStateSummaryField,
                    XModuleStudentPrefsField,
                    XModuleStudentInfoField,
                ):
                    model.objects.all().delete()
                storage.stats.reset()

                def write(thread: int, usage_key: Any) -> None:
                    _cache, kvs = new_store(self.user, [usage_key], ["shared", f"t{thread}"])
                    values: dict[Any, Any] = {
                        key(Scope.user_state, self.user.pk, usage_key, f"t{thread}"): thread,
                    }
                    for scope in (Scope.user_state_summary, Scope.preferences, Scope.user_info):
                        values[key(scope, self.user.pk, usage_key, "shared")] = thread
                        values[key(scope, self.user.pk, usage_key, f"t{thread}")] = thread
                    kvs.set_many(values)

                self.run_rounds(write, isolation)
                self.check_one_row_each(
                    "key-value store first writes, every scope", isolation, per_field=True
                )


@contextmanager
def row_locked_elsewhere(
    module_pk: int, *, release_after: float | None, write_field: str | None = None
) -> Iterator[threading.Event]:
    """Hold ``module_pk``'s row lock on another connection (SQLite: the database write lock).

    The holder releases it after ``release_after`` seconds (``None``: when the block exits),
    first adding ``write_field`` to the row's state if given. Yields once the lock is held.
    """
    locked, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                if connection.vendor == "sqlite":
                    # Upgrade to the write lock: SQLite locks the database, not rows.
                    StudentModule.objects.filter(pk=module_pk).update(done="na")
                else:
                    StudentModule.objects.select_for_update().get(pk=module_pk)
                locked.set()
                release.wait(release_after if release_after is not None else JOIN_TIMEOUT)
                if write_field is not None:
                    row = StudentModule.objects.get(pk=module_pk)
                    state = json.loads(row.state)
                    state[write_field] = "holder"
                    StudentModule.objects.filter(pk=module_pk).update(state=json.dumps(state))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert locked.wait(30), errors
    try:
        yield release
    finally:
        release.set()
        holder.join(60)
        assert errors == [], describe(errors)


def set_lock_timeout(seconds: int) -> None:
    """Make this thread's connection give up waiting for a lock after ``seconds``."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SET lock_timeout = '{seconds}s'")
        elif connection.vendor == "mysql":
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}")
        else:
            cursor.execute(f"PRAGMA busy_timeout = {seconds * 1000}")


class LockWaitTests(ConcurrencyTestCase):
    """A write that meets a row lock held elsewhere waits for it, or fails having written nothing.

    Which one depends only on whether the lock is released within the database's lock timeout
    (PostgreSQL ``lock_timeout``, MariaDB ``innodb_lock_wait_timeout``, SQLite's busy timeout):
    kvstate adds no timeout and no retry of its own.
    """

    def setUp(self) -> None:
        super().setUp()
        self.module = StudentModule.objects.create(
            student=self.user,
            module_state_key=PROBLEM,
            course_id=COURSE,
            module_type="problem",
            state=json.dumps({"before": 1}),
        )
        # That save left a history row (ORM saves are recorded); the tests count what the
        # writes under test leave.
        StudentModuleHistory.objects.all().delete()

    def in_thread(self, fn: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
        """Run ``fn`` on a fresh connection with a 1 s lock timeout; return result, error, time."""
        outcome: list[Any] = [None, None, 0.0]

        def body() -> None:
            started = time.monotonic()
            try:
                set_lock_timeout(1)
                outcome[0] = fn()
            except BaseException as exc:
                outcome[1] = exc
            finally:
                outcome[2] = time.monotonic() - started
                connections.close_all()

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        thread.join(60)
        return outcome[0], outcome[1], outcome[2]

    # Each write first creates the html block's row (its key sorts first), then meets the lock
    # on the problem's row: a timeout must take the html row back with it.

    def client_write(self) -> None:
        DjangoXBlockUserStateClient(self.user).set_many(
            self.user.username, {HTML: {"mine": 2}, PROBLEM: {"mine": 2}}
        )

    def kvs_write(self) -> None:
        _cache, kvs = new_store(self.user, [PROBLEM, HTML], ["mine"])
        kvs.set_many(
            {
                key(Scope.user_state, self.user.pk, HTML, "mine"): 2,
                key(Scope.user_state, self.user.pk, PROBLEM, "mine"): 2,
                key(Scope.preferences, self.user.pk, PROBLEM, "mine"): 2,
            }
        )

    def test_a_write_times_out_having_written_nothing(self) -> None:
        for name, write in (("client", self.client_write), ("key-value store", self.kvs_write)):
            with self.subTest(writer=name):
                with row_locked_elsewhere(self.module.pk, release_after=None):
                    _result, error, waited = self.in_thread(write)
                log_figures(
                    f"{name} write against a held lock",
                    outcome=type(error).__name__,
                    waited=round(waited, 2),
                )
                if isinstance(error, KeyValueMultiSaveError):
                    assert error.saved_field_names == []
                    error = error.__cause__
                assert isinstance(error, OperationalError), error
                assert 0.9 < waited < 10
                assert state_of(self.user) == {"before": 1}
                assert not StudentModule.objects.filter(module_state_key=HTML).exists()
                assert not XModuleStudentPrefsField.objects.exists()
                assert not StudentModuleHistory.objects.exists()

    def test_a_write_waits_for_a_released_lock_and_keeps_the_holders_change(self) -> None:
        for name, write in (("client", self.client_write), ("key-value store", self.kvs_write)):
            with self.subTest(writer=name):
                storage.stats.reset()
                with row_locked_elsewhere(
                    self.module.pk, release_after=0.3, write_field=f"holder_{name}"
                ):
                    _result, error, waited = self.in_thread(write)
                log_figures(
                    f"{name} write against a lock released after 0.3 s",
                    outcome=type(error).__name__,
                    waited=round(waited, 2),
                    swaps_lost=storage.stats.swaps_lost,
                )
                assert error is None
                # That it waited shows below (the holder's change is kept, one swap was lost);
                # how long depends on when this thread got to run, so only the bound is checked.
                assert waited < 10
                state = state_of(self.user)
                assert state["mine"] == 2
                assert state[f"holder_{name}"] == "holder"
                assert state_of(self.user, HTML)["mine"] == 2
                # The holder changed the row while we waited: our swap missed and merged again.
                assert storage.stats.swaps_lost == 1
