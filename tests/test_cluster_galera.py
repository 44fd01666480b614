"""On a 3-node MariaDB Galera cluster with default settings, no acknowledged write is lost.

A real cluster (``scripts/cluster/galera start``), ``KVSTATE_TEST_DB=galera``: Galera's and
kvstate's defaults (``wsrep_retry_autocommit=1``, ``wsrep_sync_wait=0``,
``KVSTATE_CONFLICT_RETRIES``). One learner's writers are spread over the three nodes (thread i
on node i % 3 + 1, through ``tests.cluster.NodeRouter``), as app servers behind different
nodes. Every error a writer sees is counted; conflict errors (1213, what a lost certification
is reported as) must never reach a caller. The node-kill test runs last and restarts the node.

Run: ``KVSTATE_TEST_DB=galera python -m pytest -m cluster``; figures are logged at INFO under
``tests.cluster`` (``-o log_cli=true --log-cli-level=INFO``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import DatabaseError, connections
from django.test import TransactionTestCase
from xblock.exceptions import KeyValueMultiSaveError
from xblock.fields import Scope

from kvstate import storage
from kvstate.exceptions import WriteOutcomeUnknown
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.cluster import GALERA_NODES, figures, galera, node_alias, on_node, synced_read
from tests.test_concurrency import describe, run_threads
from tests.underfire import COURSE, PROBLEM, key, new_store

pytestmark = pytest.mark.cluster("galera")

THREADS = 8
WRITES = 100
ROUNDS = 5
#: The node-kill test: seconds of load, when node 3 is killed, and how many fields each
#: thread cycles through (the row stays at a realistic size; a field is written many times).
LOAD_SECONDS = 30
KILL_AFTER = 10
FIELDS_PER_THREAD = 25


def node_of(thread: int) -> int:
    return GALERA_NODES[thread % len(GALERA_NODES)]


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a deadlock/certification conflict error."""
    while exc is not None:
        args = getattr(exc, "args", ())
        if args and args[0] in (1213, 1020):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


class GaleraTestCase(TransactionTestCase):
    databases = "__all__"

    def setUp(self) -> None:
        self.user = UserFactory()
        self.other = UserFactory()
        storage.stats.reset()
        # The writers read with wsrep_sync_wait=0 (the default): make the learner visible on
        # every node first, or a node that has not applied the row would not know them.
        for node in GALERA_NODES:
            alias = node_alias(node)
            synced_read(alias)
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM auth_user")
                cursor.execute("SET SESSION wsrep_sync_wait = 0")
        # The checks below read on node 1, after every write anywhere.
        synced_read("default")
        synced_read("student_module_history")

    def spread(
        self, write: Callable[[int, int], None], threads: int = THREADS, writes: int = WRITES
    ) -> list[BaseException]:
        """Run ``write(thread, i)`` ``writes`` times in each thread, each thread on its node."""

        def target(index: int, barrier: threading.Barrier) -> None:
            with on_node(node_of(index)):
                barrier.wait()
                for i in range(writes):
                    write(index, i)

        return run_threads(threads, target)

    def check_no_errors(self, name: str, errors: list[BaseException], **extra: Any) -> None:
        conflicts = sum(1 for exc in errors if is_conflict(exc))
        figures(
            name,
            errors=len(errors),
            conflict_errors=conflicts,
            transactions_retried=storage.stats.transactions_retried,
            most_retries=storage.stats.most_retries,
            swaps_lost=storage.stats.swaps_lost,
            inserts_lost=storage.stats.inserts_lost,
            **extra,
        )
        assert conflicts == 0, describe(errors)
        assert errors == [], describe(errors)


class DisjointFieldsTests(GaleraTestCase):
    """8 threads x 100 distinct fields of one learner's block, over 3 nodes: 800 of 800."""

    def check_all_fields(self, name: str, errors: list[BaseException]) -> None:
        text = StudentModule.objects.get(student=self.user, module_state_key=PROBLEM).state
        state = json.loads(text)
        expected = {f"t{t}_{i}": i for t in range(THREADS) for i in range(WRITES)}
        self.check_no_errors(name, errors, fields=f"{len(set(state) & set(expected))}/800")
        assert state == expected

    def test_client_writers(self) -> None:
        def write(thread: int, i: int) -> None:
            client = DjangoXBlockUserStateClient(self.user)
            client.set(self.user.username, PROBLEM, {f"t{thread}_{i}": i})

        self.check_all_fields("galera client, 800 distinct fields", self.spread(write))
        assert StudentModuleHistory.objects.count() == THREADS * WRITES

    def test_key_value_store_writers_with_a_fresh_cache_per_write(self) -> None:
        def write(thread: int, i: int) -> None:
            _cache, kvs = new_store(self.user, [PROBLEM], ["seed"])
            kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, f"t{thread}_{i}"), i)

        self.check_all_fields("galera key-value store, 800 distinct fields", self.spread(write))


class FirstWriteRaceTests(GaleraTestCase):
    """8 threads create the same rows through different nodes at once, 5 rounds."""

    def blocks(self, round_: int) -> list[Any]:
        return [
            COURSE.make_usage_key("html", f"race_{round_}"),
            COURSE.make_usage_key("problem", f"race_{round_}"),
        ]

    def race(self, write: Callable[[int, list[Any]], None]) -> list[BaseException]:
        def target(index: int, barrier: threading.Barrier) -> None:
            with on_node(node_of(index)):
                for round_ in range(ROUNDS):
                    barrier.wait()  # all eight writers hit the missing rows at once
                    write(index, self.blocks(round_))

        return run_threads(THREADS, target)

    def check_first_writes(self, per_field: bool) -> int:
        present = 0
        for round_ in range(ROUNDS):
            for usage_key in self.blocks(round_):
                [module] = StudentModule.objects.filter(module_state_key=usage_key)
                state = json.loads(module.state)
                assert state == {f"t{t}": t for t in range(THREADS)}, usage_key
                present += len(state)
                if per_field:
                    summary = XModuleUserStateSummaryField.objects.filter(usage_id=usage_key)
                    assert summary.count() == 1 + THREADS
                    assert json.loads(summary.get(field_name="shared").value) in range(THREADS)
        if per_field:
            for model in (XModuleStudentPrefsField, XModuleStudentInfoField):
                assert model.objects.filter(field_name="shared").count() == 1
                assert model.objects.exclude(field_name="shared").count() == THREADS
        return present

    def test_client_first_writes(self) -> None:
        def write(thread: int, blocks: list[Any]) -> None:
            client = DjangoXBlockUserStateClient(self.user)
            for usage_key in blocks:
                client.set(self.user.username, usage_key, {f"t{thread}": thread})

        errors = self.race(write)
        present = self.check_first_writes(per_field=False)
        self.check_no_errors("galera client first writes", errors, present=f"{present}/80")
        assert storage.stats.inserts_lost > 0, "no race happened: the test proves nothing"

    def test_key_value_store_first_writes_in_every_scope(self) -> None:
        def write(thread: int, blocks: list[Any]) -> None:
            _cache, kvs = new_store(self.user, blocks, ["shared", f"t{thread}"])
            values: dict[Any, Any] = {}
            for usage_key in blocks:
                values[key(Scope.user_state, self.user.pk, usage_key, f"t{thread}")] = thread
                values[key(Scope.user_state_summary, None, usage_key, "shared")] = thread
                values[key(Scope.user_state_summary, None, usage_key, f"t{thread}")] = thread
            for scope in (Scope.preferences, Scope.user_info):
                values[key(scope, self.user.pk, blocks[0], "shared")] = thread
                values[key(scope, self.user.pk, blocks[0], f"t{thread}")] = thread
            kvs.set_many(values)

        errors = self.race(write)
        present = self.check_first_writes(per_field=True)
        self.check_no_errors(
            "galera key-value store first writes, 4 scopes", errors, present=f"{present}/80"
        )


class PerFieldRaceTests(GaleraTestCase):
    """Per-field upserts of the same and of distinct keys, racing across nodes."""

    def test_per_field_upserts(self) -> None:
        writes = 30

        def write(thread: int, i: int) -> None:
            _cache, kvs = new_store(self.user, [PROBLEM], ["shared", f"t{thread}_{i}"])
            values = {}
            for scope in (Scope.user_state_summary, Scope.preferences, Scope.user_info):
                values[key(scope, self.user.pk, PROBLEM, "shared")] = thread * 1000 + i
                values[key(scope, self.user.pk, PROBLEM, f"t{thread}_{i}")] = i
            kvs.set_many(values)

        errors = self.spread(write, writes=writes)
        written = {t * 1000 + i for t in range(THREADS) for i in range(writes)}
        for model in (
            XModuleUserStateSummaryField,
            XModuleStudentPrefsField,
            XModuleStudentInfoField,
        ):
            rows = dict(model.objects.values_list("field_name", "value"))
            assert json.loads(rows.pop("shared")) in written
            assert rows == {f"t{t}_{i}": str(i) for t in range(THREADS) for i in range(writes)}
        self.check_no_errors("galera per-field upserts", errors, values=3 * len(written))


class NodeKillTests(GaleraTestCase):
    """A node SIGKILLed during 30 s of load: no acknowledged write is lost. Runs last."""

    def test_no_acknowledged_write_lost_across_a_node_kill(self) -> None:
        stop = threading.Event()
        # Per field: the value of the last call that returned (acknowledged), and the values
        # of later calls whose outcome is unknown (either may be stored). Each field is written
        # by one thread only, in order, so nothing else can change it.
        acknowledged: dict[str, int] = {}
        maybe: dict[str, set[int]] = {}
        info_acknowledged: dict[str, int] = {}
        info_maybe: dict[str, set[int]] = {}
        outcomes: dict[str, int] = {"acknowledged": 0, "unknown": 0, "failed": 0, "conflicts": 0}
        lock = threading.Lock()

        def target(index: int, barrier: threading.Barrier) -> None:
            node = node_of(index)
            with on_node(node):
                barrier.wait()
                i = 0
                while not stop.is_set():
                    name = f"t{index}_{i % FIELDS_PER_THREAD}"
                    try:
                        if i % 2:
                            client = DjangoXBlockUserStateClient(self.user)
                            client.set(self.user.username, PROBLEM, {name: i})
                        else:
                            _cache, kvs = new_store(self.user, [PROBLEM], [name])
                            kvs.set_many(
                                {
                                    key(Scope.user_state, self.user.pk, PROBLEM, name): i,
                                    key(Scope.user_info, self.user.pk, PROBLEM, name): i,
                                }
                            )
                    except (DatabaseError, KeyValueMultiSaveError) as exc:
                        # Counted, never acknowledged. set_many wraps the database's error.
                        cause = exc.__cause__ if isinstance(exc, KeyValueMultiSaveError) else exc
                        if not isinstance(cause, DatabaseError):
                            raise
                        with lock:
                            if isinstance(cause, WriteOutcomeUnknown):
                                outcomes["unknown"] += 1
                                maybe.setdefault(name, set()).add(i)
                                if not i % 2:
                                    info_maybe.setdefault(name, set()).add(i)
                            elif is_conflict(cause):
                                outcomes["conflicts"] += 1
                            else:
                                outcomes["failed"] += 1
                        connections.close_all()  # a new connection, as a new request
                        time.sleep(0.2)
                    else:
                        with lock:
                            outcomes["acknowledged"] += 1
                            acknowledged[name] = i
                            maybe.pop(name, None)
                            if not i % 2:
                                info_acknowledged[name] = i
                                info_maybe.pop(name, None)
                    i += 1

        killer = threading.Timer(KILL_AFTER, galera, args=("kill-node", "3"))
        stopper = threading.Timer(LOAD_SECONDS, stop.set)
        killer.start()
        stopper.start()
        try:
            errors = run_threads(THREADS, target)
        finally:
            killer.cancel()
            stopper.cancel()
        survivors: dict[int, tuple[int, int]] = {}
        try:
            for node in (1, 2):
                alias = node_alias(node)
                synced_read(alias)
                state = json.loads(
                    StudentModule.objects.using(alias)
                    .get(student=self.user, module_state_key=PROBLEM)
                    .state
                )
                info = dict(
                    XModuleStudentInfoField.objects.using(alias)
                    .filter(student=self.user)
                    .values_list("field_name", "value")
                )
                lost = [
                    n for n, v in acknowledged.items() if state.get(n) not in {v, *maybe.get(n, ())}
                ]
                lost_info = [
                    n
                    for n, v in info_acknowledged.items()
                    if json.loads(info.get(n, "null")) not in {v, *info_maybe.get(n, ())}
                ]
                survivors[node] = (len(lost), len(lost_info))
        finally:
            began = time.monotonic()
            galera("start-node", "3")
            rejoined = time.monotonic() - began
        figures(
            "galera node 3 SIGKILLed during load",
            seconds=LOAD_SECONDS,
            acknowledged=outcomes["acknowledged"],
            unknown_outcome=outcomes["unknown"],
            failed=outcomes["failed"],
            conflict_errors=outcomes["conflicts"],
            lost_on_node1=survivors[1],
            lost_on_node2=survivors[2],
            transactions_retried=storage.stats.transactions_retried,
            most_retries=storage.stats.most_retries,
            rejoin_seconds=round(rejoined, 1),
        )
        assert errors == [], describe(errors)
        assert outcomes["acknowledged"] > 100, "too little load to prove anything"
        assert survivors == {1: (0, 0), 2: (0, 0)}
        assert outcomes["conflicts"] == 0
        # Node 3 rejoined by IST and holds the same (a new connection: the old one died).
        connections["node3"].close()
        synced_read("node3")
        state_on_3 = (
            StudentModule.objects.using("node3")
            .get(student=self.user, module_state_key=PROBLEM)
            .state
        )
        assert state_on_3 == StudentModule.objects.get(module_state_key=PROBLEM).state
