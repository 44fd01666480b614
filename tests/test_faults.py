"""A database error at any statement of a write leaves no partial write and no false report.

Each write below is first run once to count its statements (on both aliases), then once per
statement n with ``connection.execute_wrapper`` failing the n-th one; and again with the
statement executed before the error is raised (the database did the work, the client saw an
error), and with a retryable deadlock instead of a plain error. After every run:

- the database equals what the error said was saved (kvstate is all-or-nothing: nothing);
- the in-memory cache and a freshly built cache both equal the database;
- no history row describes a write that did not commit;
- a failure of the history database loses no state and is logged.

The number of fault points tried per write is logged at INFO under ``tests.faults``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, OperationalError, connection, connections
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
from tests.underfire import (
    ALL_MODELS,
    COURSE,
    HTML,
    MISSING,
    PER_FIELD_SCOPES,
    PROBE_TYPE,
    PROBLEM,
    PROBLEM_2,
    USER_SCOPES,
    key,
    new_store,
    snapshot,
    visible,
)

log = logging.getLogger("tests.faults")

ALIASES = ("default", "student_module_history")
BLOCKS = (PROBLEM, PROBLEM_2, HTML)
NAMES = ("old", "answer", "extra")


def deadlock() -> DatabaseError:
    """Return the error this backend's driver raises for a deadlock, as Django wraps it."""
    cause: BaseException
    if connection.vendor == "postgresql":
        from psycopg import errors

        cause = errors.DeadlockDetected("injected deadlock")
    elif connection.vendor == "mysql":
        import MySQLdb

        cause = MySQLdb.OperationalError(1213, "injected deadlock")
    else:
        import sqlite3

        cause = sqlite3.OperationalError("database is locked")
    error = OperationalError(str(cause))
    error.__cause__ = cause
    return error


@dataclass
class Fault:
    """Count the statements on both aliases; make the ``fail_at``-th one fail (1-based)."""

    fail_at: int | None = None
    #: Run the statement first, then raise: the database did the work, the client saw an error.
    after_execute: bool = False
    error: Callable[[], DatabaseError] = lambda: DatabaseError("injected fault")
    statements: list[tuple[str, str]] = field(default_factory=list)
    #: (alias, SQL, whether a transaction was open) of the statement that failed.
    failed: tuple[str, str, bool] | None = None

    def wrapper(self, alias: str) -> Callable[..., Any]:
        def wrap(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            self.statements.append((alias, sql))
            if len(self.statements) != self.fail_at:
                return execute(sql, params, many, context)
            self.failed = (alias, sql, connections[alias].in_atomic_block)
            # Not a BEGIN (SQLite issues it as a statement): one the database ran while the
            # client saw an error would leave the connection in a transaction Django does not
            # know about, which only a broken connection does, and Django discards those.
            if self.after_execute and not sql.startswith("BEGIN"):
                execute(sql, params, many, context)
            raise self.error()

        return wrap

    @contextmanager
    def installed(self) -> Iterator[Fault]:
        with ExitStack() as stack:
            for alias in ALIASES:
                stack.enter_context(connections[alias].execute_wrapper(self.wrapper(alias)))
            yield self


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def kvstate_errors() -> Iterator[list[logging.LogRecord]]:
    """Collect the ERROR records kvstate logs while the block runs."""
    handler = _Collect()
    logger = logging.getLogger("kvstate")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@dataclass
class Run:
    """One faulted run of a write."""

    mode: str
    n: int
    fault: Fault
    prepared: Any
    error: BaseException | None
    baseline: dict[str, Any]
    logged: list[logging.LogRecord]


class FaultInjectionTestCase(TransactionTestCase):
    databases = set(ALIASES)

    def setUp(self) -> None:
        self.user = UserFactory()
        self.username = self.user.username

    def reset(self) -> None:
        """Put the baseline in place: rows in every scope, one block without a row, no history."""
        for model in (
            StudentModule,
            *(m for m in ALL_MODELS if m not in (StudentModule, StudentModuleHistory)),
        ):
            model.objects.all().delete()
        for usage_key in (PROBLEM, HTML):
            StudentModule.objects.create(
                student=self.user,
                module_state_key=usage_key,
                course_id=COURSE,
                module_type=usage_key.block_type,
                state=json.dumps({"old": usage_key.block_id}),
            )
        XModuleUserStateSummaryField.objects.create(
            usage_id=PROBLEM, field_name="old", value='"summary"'
        )
        XModuleStudentPrefsField.objects.create(
            student=self.user, module_type=PROBE_TYPE, field_name="old", value='"prefs"'
        )
        XModuleStudentInfoField.objects.create(student=self.user, field_name="old", value='"info"')
        # Last: the saves above are recorded, as ORM saves are.
        StudentModuleHistory.objects.all().delete()

    def all_keys(self) -> list[Any]:
        return [
            key(scope, self.user.pk, usage_key, name)
            for scope in USER_SCOPES
            for usage_key in BLOCKS
            for name in NAMES
        ]

    def each_fault(
        self, name: str, prepare: Callable[[], Any], write: Callable[[Any], Any]
    ) -> Iterator[Run]:
        """Run ``write`` once per mode and statement, that statement failing; yield each run."""
        self.reset()
        prepared = prepare()
        with Fault().installed() as counting:
            write(prepared)
        total = len(counting.statements)
        assert total > 0, "the write issued no statement"
        tried = 0
        for mode in ("before", "after", "deadlock"):
            for n in range(1, total + 1):
                self.reset()
                storage.stats.reset()
                prepared = prepare()
                baseline = snapshot()
                fault = Fault(
                    fail_at=n,
                    after_execute=mode == "after",
                    error=deadlock if mode == "deadlock" else Fault.error,
                )
                error: BaseException | None = None
                with fault.installed(), kvstate_errors() as logged:
                    try:
                        write(prepared)
                    except (KeyValueMultiSaveError, DatabaseError) as exc:
                        error = exc
                tried += 1
                yield Run(mode, n, fault, prepared, error, baseline, logged)
        log.info(
            "%s [%s]: %d statements, %d fault points tried",
            name,
            connection.vendor,
            total,
            tried,
        )

    def check_new_history(self, run: Run) -> None:
        """Assert the run's history rows describe committed states only (none if it failed)."""
        known = [row[0] for row in run.baseline["StudentModuleHistory"]]
        added = list(StudentModuleHistory.objects.exclude(pk__in=known))
        if run.error is not None:
            assert added == []
        for entry in added:
            module = StudentModule.objects.get(pk=entry.student_module_id)
            assert entry.state == module.state
            assert entry.created == module.modified

    def check(self, run: Run, succeeded: Callable[[], None]) -> None:
        """Check one faulted run: nothing written (a state failure) or all (a history failure)."""
        assert run.fault.failed is not None, f"statement {run.n} never ran"
        alias, sql, in_transaction = run.fault.failed
        if alias == "student_module_history":
            # History is written after the state committed: the learner's write stands, and
            # the failure is logged with the module's id.
            assert run.error is None, f"a history failure failed the write: {run.error!r}"
            succeeded()
            assert run.logged, "the history failure was not logged"
            if run.mode != "after":
                assert not StudentModuleHistory.objects.exclude(
                    pk__in=[row[0] for row in run.baseline["StudentModuleHistory"]]
                ).exists()
            return
        assert run.logged == []
        if run.mode == "deadlock" and in_transaction and connection.vendor != "sqlite":
            # A deadlock inside kvstate's own transaction: retried whole, and it succeeds.
            assert run.error is None, f"a deadlock at {sql[:60]!r} was not retried"
            assert storage.stats.transactions_retried == 1
            succeeded()
            return
        assert run.error is not None, f"fault at {sql[:60]!r} did not surface"
        if isinstance(run.error, KeyValueMultiSaveError):
            assert run.error.saved_field_names == []
        assert snapshot() == run.baseline, f"fault at {sql[:60]!r} left a partial write"


class KeyValueStoreFaultTests(FaultInjectionTestCase):
    """``DjangoKeyValueStore.set_many`` across the four scopes and several blocks."""

    def new_values(self) -> dict[Any, Any]:
        values: dict[Any, Any] = {}
        for usage_key in BLOCKS:
            values[key(Scope.user_state, self.user.pk, usage_key, "answer")] = usage_key.block_id
        for scope in PER_FIELD_SCOPES:
            values[key(scope, self.user.pk, PROBLEM, "answer")] = scope.name
            values[key(scope, self.user.pk, PROBLEM, "old")] = f"new {scope.name}"
        values[key(Scope.user_state, self.user.pk, PROBLEM, "old")] = "new user_state"
        return values

    def run_faults(self, name: str, *, stale: bool) -> None:
        values = self.new_values()
        theirs = key(Scope.user_state, self.user.pk, PROBLEM, "extra")

        def prepare() -> Any:
            cache, kvs = new_store(self.user, BLOCKS, NAMES)
            if stale:
                # Another request writes after ours read: our swap misses and merges again.
                other = DjangoXBlockUserStateClient(self.user)
                other.set(self.username, PROBLEM, {"extra": "theirs"})
            return cache, kvs

        def write(prepared: Any) -> None:
            prepared[1].set_many(values)

        for run in self.each_fault(name, prepare, write):
            _cache, kvs = run.prepared
            with self.subTest(mode=run.mode, n=run.n, statement=run.fault.failed):

                def succeeded() -> None:
                    stored = visible(new_store(self.user, BLOCKS, NAMES)[1], self.all_keys())
                    for k, value in values.items():
                        assert stored[k] == value, k
                    if stale:
                        assert stored[theirs] == "theirs"

                self.check(run, succeeded)
                fresh = visible(new_store(self.user, BLOCKS, NAMES)[1], self.all_keys())
                mine = visible(kvs, self.all_keys())
                if run.error is not None:
                    assert all(mine[k] != v for k, v in values.items())  # nothing remembered
                # The cache equals the database, except for the field another request wrote
                # after this cache was built and before a write that failed (no cache can
                # know that one until it merges).
                if stale and run.error is not None:
                    assert mine[theirs] is MISSING
                    mine[theirs] = fresh[theirs]
                assert mine == fresh
                self.check_new_history(run)

    def test_every_statement_of_a_multi_scope_set_many(self) -> None:
        self.run_faults("key-value store set_many, 4 scopes x 3 blocks", stale=False)

    def test_every_statement_of_a_set_many_that_loses_a_race(self) -> None:
        self.run_faults("key-value store set_many after a lost race", stale=True)


class ClientFaultTests(FaultInjectionTestCase):
    """``DjangoXBlockUserStateClient.set_many`` / ``delete_many`` over several blocks."""

    def states(self) -> dict[str, Any]:
        return {
            str(k): json.loads(s) if s else None
            for k, s in StudentModule.objects.values_list("module_state_key", "state")
        }

    def run_faults(
        self, name: str, write: Callable[[Any], Any], expected: Callable[[], dict[str, Any]]
    ) -> None:
        def prepare() -> Any:
            return DjangoXBlockUserStateClient(self.user)

        for run in self.each_fault(name, prepare, write):
            with self.subTest(mode=run.mode, n=run.n, statement=run.fault.failed):

                def succeeded() -> None:
                    assert self.states() == expected()

                self.check(run, succeeded)
                self.check_new_history(run)

    def test_every_statement_of_set_many(self) -> None:
        def write(client: Any) -> None:
            client.set_many(
                self.username,
                {
                    PROBLEM: {"answer": 1},
                    PROBLEM_2: {"answer": 2},
                    HTML: {"answer": 3},
                },
            )

        self.run_faults(
            "client set_many over 3 blocks",
            write,
            lambda: {
                str(PROBLEM): {"old": "p1", "answer": 1},
                str(PROBLEM_2): {"answer": 2},
                str(HTML): {"old": "h1", "answer": 3},
            },
        )

    def test_every_statement_of_delete_many(self) -> None:
        def write(client: Any) -> None:
            client.delete_many(self.username, BLOCKS, fields=["old"])

        self.run_faults(
            "client delete_many of a field over 3 blocks",
            write,
            lambda: {
                str(PROBLEM): {},
                str(HTML): {},
            },
        )

    def test_every_statement_of_delete_many_of_whole_states(self) -> None:
        def write(client: Any) -> None:
            client.delete_many(self.username, [PROBLEM, HTML])

        self.run_faults(
            "client delete_many of whole states",
            write,
            lambda: {
                str(PROBLEM): {},
                str(HTML): {},
            },
        )


class HistoryFaultTests(FaultInjectionTestCase):
    """A failing history database: the state is kept, the failure logged with the module id."""

    def test_a_history_failure_keeps_the_state_and_is_logged(self) -> None:
        self.reset()
        client = DjangoXBlockUserStateClient(self.user)
        module = StudentModule.objects.get(module_state_key=PROBLEM)

        def fail_history(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            raise DatabaseError("injected history failure")

        with (
            connections["student_module_history"].execute_wrapper(fail_history),
            self.assertLogs("kvstate", "ERROR") as logs,
        ):
            client.set(self.username, PROBLEM, {"answer": 42})
            _cache, kvs = new_store(self.user, [PROBLEM], NAMES)
            kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, "extra"), "kept")
        assert json.loads(StudentModule.objects.get(pk=module.pk).state) == {
            "old": "p1",
            "answer": 42,
            "extra": "kept",
        }
        assert not StudentModuleHistory.objects.exists()
        assert len(logs.records) == 2
        assert all(str(module.pk) in record.getMessage() for record in logs.records)
