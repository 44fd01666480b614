"""kvstate reports what the database did, even when the server or the connection blur it.

- A row an ``INSERT ... RETURNING`` sends back is trusted only where no server re-runs the
  statement behind the client's back: on MySQL/MariaDB in autocommit, a Galera node does
  (``wsrep_retry_autocommit``) and sends the aborted attempt's row, so kvstate reads back.
- A connection lost while a write commits (at COMMIT, or at an autocommit statement, which is
  its own commit) leaves the outcome unknown: ``WriteOutcomeUnknown``, never "nothing saved";
  the cache forgets what it cannot know and reloads it on the next read.

Faults are injected with ``connection.execute_wrapper`` on real connections: the statement
runs (and commits, in autocommit), then the server ends the session (``pg_terminate_backend``,
``KILL CONNECTION``), as a killed server or a dropped network would leave it, and the client
meets the driver's own lost-connection error. SQLite runs in-process and has no connection to
lose: there only :class:`ConnectionLostTests` applies.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, OperationalError, connection, transaction
from django.test import TransactionTestCase
from django.utils import timezone
from xblock.exceptions import KeyValueMultiSaveError

from kvstate import sql
from kvstate.exceptions import WriteOutcomeUnknown
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.models import StudentModule, XModuleStudentInfoField
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentModuleFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import COURSE_KEY, block, key, rebuilt, usage

HISTORY = "student_module_history"


def end_session() -> None:
    """End this thread's ``default`` session, as a server crash or a dropped network would.

    The server terminates it (from another connection), so the client learns of it only at
    its next round trip.
    """
    raw = connection.connection
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        cursor = other.cursor()
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [raw.info.backend_pid])
        else:
            cursor.execute(f"KILL CONNECTION {raw.thread_id()}")
    finally:
        other.close()


def lost_connection_error() -> DatabaseError:
    """Return the error the driver raises at the next round trip of an ended session."""
    raw = connection.connection
    for _ in range(100):
        try:
            with connection.wrap_database_errors:
                raw.cursor().execute("SELECT 1")
        except DatabaseError as exc:
            return exc
        time.sleep(0.05)  # the server ends the session asynchronously
    raise AssertionError("the session outlived its end")


@contextmanager
def connection_lost(
    when: Callable[[str], bool], *, execute_first: bool = True, then_raise: bool = True
) -> Iterator[list[str]]:
    """Lose ``default``'s connection at the first statement ``when`` accepts.

    ``execute_first``: the statement runs (and, in autocommit, commits) before the session
    ends. ``then_raise``: the statement's caller sees the driver's error, as when the server
    went before its reply arrived; otherwise the statement returns normally and the loss
    surfaces at the next round trip (the COMMIT, after a transaction's last statement).
    """
    hit: list[str] = []

    def wrapper(execute: Any, sql_text: str, params: Any, many: bool, context: Any) -> Any:
        if hit or not when(sql_text):
            return execute(sql_text, params, many, context)
        hit.append(sql_text)
        result = execute(sql_text, params, many, context) if execute_first else None
        end_session()
        if then_raise:
            raise lost_connection_error()
        return result

    with connection.execute_wrapper(wrapper):
        yield hit


def starts(prefix: str, table: str) -> Callable[[str], bool]:
    return lambda sql_text: sql_text.startswith(prefix) and table in sql_text


class OutcomeTestCase(TransactionTestCase):
    databases = {"default", HISTORY}

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"answer": 1}')
        UserStateSummaryFactory(usage_id=usage(), field_name="tally", value="1")
        StudentInfoFactory(student=self.user, field_name="nickname", value='"old"')
        self.block = block(usage(), self.user.pk)
        self.cache = FieldDataCache([self.block], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)

    def view(self, cache: FieldDataCache) -> dict[str, Any]:
        return {
            name: cache.get(key(self.block, name)) if cache.has(key(self.block, name)) else None
            for name in ("answer", "attempts", "tally", "nickname")
        }

    def assert_cache_equals_database(self) -> None:
        assert self.view(self.cache) == self.view(rebuilt(self.cache, [self.block]))


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="SQLite runs in-process: no server connection to lose (see ConnectionLostTests)",
)
class UnknownOutcomeTests(OutcomeTestCase):
    def test_an_autocommit_update_that_committed(self) -> None:
        # The compare-and-swap UPDATE is the write's only statement: it committed, then the
        # connection went. "Nothing saved" would be false.
        with (
            connection_lost(starts("UPDATE", "courseware_studentmodule")) as hit,
            pytest.raises(KeyValueMultiSaveError) as info,
        ):
            self.kvs.set(key(self.block, "answer"), 2)
        assert hit
        assert info.value.saved_field_names == []
        assert isinstance(info.value.__cause__, WriteOutcomeUnknown)
        assert isinstance(info.value.__cause__, OperationalError)  # old handlers still catch it
        assert json.loads(StudentModule.objects.get().state) == {"answer": 2}
        # The cache forgot the row: its next read reloads it (one statement, a new connection).
        with self.assertNumQueries(1):
            assert self.kvs.get(key(self.block, "answer")) == 2
        self.assert_cache_equals_database()

    def test_an_autocommit_per_field_upsert_that_committed(self) -> None:
        with (
            connection_lost(starts("INSERT", "xmodulestudentinfofield")),
            pytest.raises(KeyValueMultiSaveError) as info,
        ):
            self.kvs.set(key(self.block, "nickname"), "new")
        assert isinstance(info.value.__cause__, WriteOutcomeUnknown)
        assert XModuleStudentInfoField.objects.get().value == '"new"'
        self.assert_cache_equals_database()
        assert self.kvs.get(key(self.block, "nickname")) == "new"

    def test_an_autocommit_delete_that_committed(self) -> None:
        with (
            connection_lost(starts("DELETE", "xmodulestudentinfofield")),
            pytest.raises(WriteOutcomeUnknown),
        ):
            self.kvs.delete(key(self.block, "nickname"))
        assert not XModuleStudentInfoField.objects.exists()
        assert not self.kvs.has(key(self.block, "nickname"))
        self.assert_cache_equals_database()

    def test_a_commit_that_may_not_have_happened(self) -> None:
        # Two per-field scopes: one transaction. The session ends after its last statement, so
        # COMMIT fails and the server rolls back; kvstate cannot tell, and says so.
        with (
            connection_lost(starts("INSERT", "xmodulestudentinfofield"), then_raise=False) as hit,
            pytest.raises(KeyValueMultiSaveError) as info,
        ):
            self.kvs.set_many({key(self.block, "tally"): 9, key(self.block, "nickname"): "new"})
        assert hit
        assert info.value.saved_field_names == []
        assert isinstance(info.value.__cause__, WriteOutcomeUnknown)
        assert "may or may not have been saved" in str(info.value.__cause__)
        assert "retrying the same write is safe" in str(info.value.__cause__).lower()
        # The truth here is "not saved": the cache, reloaded, shows the old values.
        assert XModuleStudentInfoField.objects.get().value == '"old"'
        assert self.view(self.cache)["tally"] == 1
        assert self.view(self.cache)["nickname"] == "old"
        self.assert_cache_equals_database()

    @pytest.mark.skipif(
        not sql.swaps_with_upserts(connection),
        reason="one statement writes one block's scopes on PostgreSQL only",
    )
    def test_one_statement_over_several_scopes_that_committed(self) -> None:
        # One block's user_state and summary in one statement, without a transaction: it
        # committed, then the connection went.
        with (
            connection_lost(starts("WITH", "courseware_studentmodule")) as hit,
            pytest.raises(KeyValueMultiSaveError) as info,
        ):
            self.kvs.set_many({key(self.block, "answer"): 3, key(self.block, "tally"): 9})
        assert hit
        assert info.value.saved_field_names == []
        assert isinstance(info.value.__cause__, WriteOutcomeUnknown)
        assert json.loads(StudentModule.objects.get().state) == {"answer": 3}
        self.assert_cache_equals_database()
        assert self.view(self.cache)["tally"] == 9

    def test_a_retry_after_an_unknown_outcome_is_safe(self) -> None:
        with (
            connection_lost(starts("UPDATE", "courseware_studentmodule")),
            pytest.raises(KeyValueMultiSaveError),
        ):
            self.kvs.set_many({key(self.block, "answer"): 5, key(self.block, "attempts"): 1})
        # What XBlock does after KeyValueMultiSaveError([]): save every field again.
        self.kvs.set_many({key(self.block, "answer"): 5, key(self.block, "attempts"): 1})
        assert json.loads(StudentModule.objects.get().state) == {"answer": 5, "attempts": 1}
        self.assert_cache_equals_database()

    def test_a_connection_lost_before_commit_is_a_plain_failure(self) -> None:
        # Inside kvstate's transaction, before COMMIT: the server rolls it back. That outcome
        # is known (nothing saved), so it is the database's own error, not an unknown one.
        # Two blocks' user_state and a summary value: one transaction on every backend.
        other = block(usage("p2"), self.user.pk)
        cache = FieldDataCache([self.block, other], COURSE_KEY, self.user)
        kvs = DjangoKeyValueStore(cache)
        with (
            connection_lost(starts("INSERT", "xmoduleuserstatesummaryfield"), execute_first=False),
            pytest.raises(KeyValueMultiSaveError) as info,
        ):
            kvs.set_many(
                {
                    key(self.block, "answer"): 3,
                    key(other, "answer"): 3,
                    key(self.block, "tally"): 9,
                }
            )
        assert isinstance(info.value.__cause__, DatabaseError)
        assert not isinstance(info.value.__cause__, WriteOutcomeUnknown)
        assert json.loads(StudentModule.objects.get().state) == {"answer": 1}
        with self.assertNumQueries(0):  # nothing forgotten: nothing to reload
            assert kvs.get(key(self.block, "answer")) == 1
            assert not kvs.has(key(other, "answer"))
        assert self.view(rebuilt(cache, [self.block]))["answer"] == 1

    def test_the_client_raises_it(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        with (
            connection_lost(starts("UPDATE", "courseware_studentmodule")),
            pytest.raises(WriteOutcomeUnknown),
        ):
            client.set(self.user.username, usage(), {"answer": 7})
        assert client.get(self.user.username, usage()).state == {"answer": 7}

    def test_inside_the_callers_transaction_the_caller_commits(self) -> None:
        # kvstate commits nothing there, so it knows nothing is saved yet: the database's own
        # error, and the caller's transaction is done for.
        with (
            pytest.raises(DatabaseError) as info,
            transaction.atomic(),
            connection_lost(starts("UPDATE", "courseware_studentmodule")),
        ):
            DjangoXBlockUserStateClient(self.user).set(self.user.username, usage(), {"a": 1})
        assert not isinstance(info.value, WriteOutcomeUnknown)
        assert json.loads(StudentModule.objects.get().state) == {"answer": 1}


class ConnectionLostTests(TransactionTestCase):
    """Which errors mean the connection is gone (``sql.connection_lost``), on every backend."""

    def test_an_error_on_a_live_connection_is_not_a_lost_connection(self) -> None:
        with pytest.raises(DatabaseError) as info, connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")
        assert not sql.connection_lost(connection, info.value)

    def test_a_closed_connection_is_lost(self) -> None:
        connection.ensure_connection()
        connection.connection.close()
        assert sql.connection_lost(connection, DatabaseError("gone"))
        with contextlib.suppress(DatabaseError):  # MySQLdb refuses to close twice
            connection.close()
        # Django drops a connection whose rollback failed: it is lost too.
        assert sql.connection_lost(connection, DatabaseError("gone"))


class ReturnedRowsTests(OutcomeTestCase):
    def test_which_returned_rows_are_trusted(self) -> None:
        # Only MySQL/MariaDB in autocommit re-run a statement behind the client's back (Galera).
        in_autocommit = sql.trusts_returned_rows(connection)
        with transaction.atomic():
            in_transaction = sql.trusts_returned_rows(connection)
        if connection.vendor == "mysql":
            assert (in_autocommit, in_transaction) == (False, True)
        else:
            assert (in_autocommit, in_transaction) == (True, True)

    def test_an_insert_the_server_may_have_retried_is_read_back(self) -> None:
        # What wsrep_retry_autocommit leaves behind on a Galera node: our INSERT lost
        # certification to another node's insert of the same row and was re-run (and ignored),
        # but an INSERT ... RETURNING would still have sent us the aborted attempt's row. The
        # wrapper makes the row we inserted into the other writer's row, as if ours had never
        # been; trusting a returned row would then lose our field. (Elsewhere a returned row
        # is the truth, and the same trick would fake an impossible event: see the test above.)
        if connection.vendor != "mysql":
            assert sql.trusts_returned_rows(connection)
            return
        theirs = timezone.now() - timedelta(seconds=1)
        new_block = block(usage("p2"), self.user.pk)
        kvs = DjangoKeyValueStore(FieldDataCache([new_block], COURSE_KEY, self.user))
        done: list[str] = []

        def other_node_won(execute: Any, sql_text: str, params: Any, many: bool, ctx: Any) -> Any:
            result = execute(sql_text, params, many, ctx)
            if not done and sql_text.startswith("INSERT IGNORE INTO `courseware_studentmodule`"):
                done.append(sql_text)
                StudentModule.objects.filter(module_state_key=usage("p2")).update(
                    state='{"theirs": 1}', created=theirs, modified=theirs
                )
            return result

        with connection.execute_wrapper(other_node_won):
            kvs.set(key(new_block, "answer"), 1)
        assert "RETURNING" not in done[0]
        assert json.loads(StudentModule.objects.get(module_state_key=usage("p2")).state) == {
            "theirs": 1,
            "answer": 1,
        }
        assert kvs.get(key(new_block, "answer")) == 1
