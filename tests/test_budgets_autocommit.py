"""Round trips in production's autocommit mode, where a transaction costs BEGIN and COMMIT.

SPEC §7's budgets are counted inside ``TestCase``. Outside it, Django logs the BEGIN/COMMIT of
every ``atomic`` block too, so these tests pin what a web request actually sends: writes that
are one statement run without a transaction, and only writes that need several statements pay
for one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from django.db import connection
from django.test import TransactionTestCase

from kvstate import storage
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, set_score
from kvstate.models import StudentModule, StudentModuleHistory, XModuleUserStateSummaryField
from kvstate.testing.factories import StudentModuleFactory, UserFactory, UserStateSummaryFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import COURSE_KEY, block, info_key, key, usage

HISTORY = "student_module_history"


class AutocommitRoundTrips(TransactionTestCase):
    databases = {"default", HISTORY}

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"answer": 1}')
        UserStateSummaryFactory(usage_id=usage(), field_name="tally")
        self.block = block(usage(), self.user.pk)
        self.kvs = DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, self.user))

    @contextlib.contextmanager
    def round_trips(self, default: int, history: int) -> Iterator[None]:
        with (
            self.assertNumQueries(history, using=HISTORY),
            self.assertNumQueries(default, using="default"),
        ):
            yield

    def test_set_user_state_of_an_existing_row(self) -> None:
        # The compare-and-swap UPDATE alone; history's INSERT, after it, alone on its alias.
        with self.round_trips(1, 1):
            self.kvs.set(key(self.block, "answer"), 2)

    def test_set_user_state_of_a_new_row(self) -> None:
        # One insert-or-ignore RETURNING the id; history's INSERT. On MySQL/MariaDB one more:
        # in autocommit a Galera node may re-run the INSERT after a certification failure
        # and send back the aborted attempt's row, so the rows are read back instead.
        other = block(usage("p2"), self.user.pk)
        kvs = DjangoKeyValueStore(FieldDataCache([other], COURSE_KEY, self.user))
        with self.round_trips(2 if connection.vendor == "mysql" else 1, 1):
            kvs.set(key(other, "answer"), 1)
        assert kvs.get(key(other, "answer")) == 1
        [module] = StudentModule.objects.filter(module_state_key=usage("p2"))
        assert module.state == '{"answer": 1}'
        # The cache remembers the row it created, with its id: the next write swaps it.
        with self.round_trips(1, 1):
            kvs.set(key(other, "answer"), 2)

    def test_a_lost_swap_queues_on_the_row_lock(self) -> None:
        # Another request changes the row after this cache read it: the optimistic swap misses.
        other = DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, self.user))
        other.set(key(self.block, "attempts"), 1)
        storage.stats.reset()
        # The missed UPDATE; then BEGIN, the row read FOR UPDATE by id, the UPDATE (which
        # cannot miss under the lock), COMMIT: the losers of a race wait their turn on the
        # row instead of re-reading and racing again. SQLite has no row locks: a write that
        # changes nothing takes the database's write lock first (one more statement), the
        # read is a plain SELECT. History's INSERT after the commit.
        with self.round_trips(6 if connection.vendor == "sqlite" else 5, 1):
            self.kvs.set(key(self.block, "answer"), 2)
        assert storage.stats.swaps_lost == 1
        assert json.loads(StudentModule.objects.get().state) == {"answer": 2, "attempts": 1}
        assert self.kvs.get(key(self.block, "attempts")) == 1
        [entry] = StudentModuleHistory.objects.order_by("-id")[:1]
        assert json.loads(entry.state) == {"answer": 2, "attempts": 1}

    def test_delete_a_user_state_field(self) -> None:
        with self.round_trips(1, 1):
            self.kvs.delete(key(self.block, "answer"))

    def test_per_field_values_of_one_scope(self) -> None:
        # One upsert for any number of values, with no transaction around it.
        with self.round_trips(1, 0):
            self.kvs.set_many({info_key(f"f{n}", self.user.pk): n for n in range(10)})
        with self.round_trips(1, 0):
            self.kvs.delete(key(self.block, "tally"))

    def test_a_write_over_several_scopes_of_one_block(self) -> None:
        # PostgreSQL: one statement, the compare-and-swap and the upserts it guards in one
        # writable CTE (atomic by itself). Elsewhere BEGIN, UPDATE (user_state), upsert
        # (summary), COMMIT. Then history's INSERT.
        with self.round_trips(1 if connection.vendor == "postgresql" else 4, 1):
            self.kvs.set_many({key(self.block, "answer"): 3, key(self.block, "tally"): 9})
        assert json.loads(StudentModule.objects.get().state) == {"answer": 3}
        assert XModuleUserStateSummaryField.objects.get().value == "9"

    def test_a_write_over_several_scopes_that_loses_a_race(self) -> None:
        other = DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, self.user))
        other.set(key(self.block, "attempts"), 1)
        storage.stats.reset()
        # PostgreSQL: the one statement's swap misses, so its upsert does not run either; then
        # the transaction: BEGIN, the UPDATE that misses again, the row read FOR UPDATE, the
        # UPDATE, the upsert, COMMIT (7). Elsewhere the same without the first statement (6;
        # on SQLite the read is a plain SELECT: the missed UPDATE took the write lock).
        with self.round_trips(7 if connection.vendor == "postgresql" else 6, 1):
            self.kvs.set_many({key(self.block, "answer"): 3, key(self.block, "tally"): 9})
        assert json.loads(StudentModule.objects.get().state) == {"answer": 3, "attempts": 1}
        assert XModuleUserStateSummaryField.objects.get().value == "9"
        assert self.kvs.get(key(self.block, "attempts")) == 1
        [entry] = StudentModuleHistory.objects.order_by("-id")[:1]
        assert json.loads(entry.state) == {"answer": 3, "attempts": 1}

    def test_client_set_many_over_fifty_blocks(self) -> None:
        blocks = {usage(f"b{n}"): {"n": n} for n in range(50)}
        client = DjangoXBlockUserStateClient(self.user)
        # SELECT the rows; BEGIN, one INSERT for the 50, COMMIT (several rows are written
        # all-or-nothing: a lost race would need a second statement); history: one INSERT.
        with self.round_trips(4, 1):
            client.set_many(self.user.username, blocks)
        # SELECT; BEGIN, one compare-and-swap UPDATE of the 50 rows, COMMIT; history.
        with self.round_trips(4, 1):
            client.set_many(self.user.username, {k: {"m": 1} for k in blocks})

    def test_set_score(self) -> None:
        # One upsert; reading the state back for history; history's INSERT.
        with self.round_trips(2, 1):
            set_score(self.user.pk, usage(), 1.0, 2.0)
