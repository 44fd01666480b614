"""A stateful property test: kvstate against a plain dict, over random sequences of calls.

Hypothesis drives get/set/set_many/delete/has across the four user scopes, two learners and
three blocks, plus "new request" (rebuild a learner's cache from the database). The model is a
dict of what the database should hold and, per learner, what that learner's cache should show:
its own writes at once, other learners' writes to the shared user_state_summary only after a
new request (a cache is a per-request snapshot, as in Open edX).

Each example runs inside a savepoint of one ``TestCase`` test that is rolled back afterwards.
The example count and wall time are logged at INFO under ``tests.state_machine``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.test import TestCase
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import UserFactory
from tests.underfire import (
    COURSE,
    MISSING,
    PROBE_TYPE,
    USER_SCOPES,
    assert_exact,
    key,
    new_store,
)

log = logging.getLogger("tests.state_machine")

EXAMPLES = 200
STEPS = 15
BLOCKS = [COURSE.make_usage_key("html", f"sm_{i}") for i in range(3)]
NAMES = ["b", "B", "b ", "$.a", 'q"', "😀"]
SCOPES = {scope.name: scope for scope in USER_SCOPES}

special_values = st.sampled_from([-0.0, 1e16, 10**30, -(10**30), "a\x00b", "\ud800", None, ""])
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | special_values
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(NAMES), children, max_size=3)
    ),
    max_leaves=6,
)
users = st.sampled_from([0, 1])
scopes = st.sampled_from(sorted(SCOPES))
blocks = st.sampled_from(range(len(BLOCKS)))
names = st.sampled_from(NAMES)
slots = st.tuples(scopes, blocks, names)

ModelKey = tuple[Any, ...]


def model_key(scope_name: str, user: int, block: int, name: str) -> ModelKey:
    """Return where the database keeps a field: per-field scopes ignore what they do not use."""
    if scope_name == "user_state":
        return ("user_state", user, block, name)
    if scope_name == "user_state_summary":
        return ("user_state_summary", block, name)
    return (scope_name, user, name)


def visible_to(mkey: ModelKey, user: int) -> bool:
    return mkey[0] == "user_state_summary" or mkey[1] == user


class KeyValueStoreMachine(RuleBasedStateMachine):
    """Two learners' requests against the database, checked against a dict model."""

    def __init__(self, test: StateMachineTests) -> None:
        super().__init__()
        self.test = test
        self.users = test.users
        # An atomic block per example, rolled back in teardown (transaction.savepoint() is
        # deprecated in Django 6.1).
        self.example = transaction.atomic()
        self.example.__enter__()
        self.database: dict[ModelKey, Any] = {}
        self.views: list[dict[ModelKey, Any]] = [{}, {}]
        self.stores = [self.new_store(user) for user in (0, 1)]
        test.examples += 1

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self.example.__exit__(None, None, None)

    # Helpers

    def new_store(self, user: int) -> Any:
        return new_store(self.users[user], BLOCKS, NAMES)[1]

    def key(self, user: int, scope_name: str, block: int, name: str) -> Any:
        return key(SCOPES[scope_name], self.users[user].pk, BLOCKS[block], name)

    def remember(self, user: int, mkey: ModelKey, value: Any) -> None:
        # What the database and this learner's cache now hold: JSON's view of the value.
        stored = json.loads(json.dumps(value))
        self.database[mkey] = stored
        self.views[user][mkey] = stored

    # Rules

    @rule(user=users, slot=slots, value=json_values)
    def set(self, user: int, slot: tuple[str, int, str], value: Any) -> None:
        self.stores[user].set(self.key(user, *slot), value)
        self.remember(user, model_key(slot[0], user, slot[1], slot[2]), value)
        self.check_view(user, [slot[0]])

    @rule(user=users, items=st.dictionaries(slots, json_values, min_size=1, max_size=6))
    def set_many(self, user: int, items: dict[tuple[str, int, str], Any]) -> None:
        by_key = {}
        for slot, value in items.items():
            # Two slots can name one per-field row (user_info ignores the block): the last wins,
            # as in a dict of keys.
            by_key[self.key(user, *slot)] = (slot, value)
        self.stores[user].set_many({k: value for k, (_slot, value) in by_key.items()})
        for slot, value in by_key.values():
            self.remember(user, model_key(slot[0], user, slot[1], slot[2]), value)
        self.check_view(user, [slot[0]])

    @rule(user=users, slot=slots)
    def delete(self, user: int, slot: tuple[str, int, str]) -> None:
        mkey = model_key(slot[0], user, slot[1], slot[2])
        k = self.key(user, *slot)
        if mkey in self.views[user]:
            self.stores[user].delete(k)
            del self.views[user][mkey]
            self.database.pop(mkey, None)  # another learner may have deleted a summary first
        else:
            with self.test.assertRaises(KeyError):
                self.stores[user].delete(k)
        self.check_view(user, [slot[0]])

    @rule(user=users, slot=slots)
    def get_and_has(self, user: int, slot: tuple[str, int, str]) -> None:
        mkey = model_key(slot[0], user, slot[1], slot[2])
        k = self.key(user, *slot)
        with self.test.assertNumQueries(0):
            assert self.stores[user].has(k) == (mkey in self.views[user])
            if mkey in self.views[user]:
                assert_exact(self.stores[user].get(k), self.views[user][mkey])
            else:
                with self.test.assertRaises(KeyError):
                    self.stores[user].get(k)

    @rule(user=users)
    def new_request(self, user: int) -> None:
        self.stores[user] = self.new_store(user)
        self.views[user] = {k: v for k, v in self.database.items() if visible_to(k, user)}
        self.check_view(user)
        self.check_database()

    @precondition(lambda self: len(self.database) > 0)
    @rule()
    def check_database(self) -> None:
        """Compare every stored row with the model."""
        stored: dict[ModelKey, Any] = {}
        index = {str(usage_key): i for i, usage_key in enumerate(BLOCKS)}
        user_index = {u.pk: i for i, u in enumerate(self.users)}
        for student, usage_key, text in StudentModule.objects.values_list(
            "student_id", "module_state_key", "state"
        ):
            for name, value in (json.loads(text) if text else {}).items():
                stored["user_state", user_index[student], index[str(usage_key)], name] = value
        for usage_key, name, text in XModuleUserStateSummaryField.objects.values_list(
            "usage_id", "field_name", "value"
        ):
            stored["user_state_summary", index[str(usage_key)], name] = json.loads(text)
        for student, block_type, name, text in XModuleStudentPrefsField.objects.values_list(
            "student_id", "module_type", "field_name", "value"
        ):
            assert str(block_type) == PROBE_TYPE
            stored["preferences", user_index[student], name] = json.loads(text)
        for student, name, text in XModuleStudentInfoField.objects.values_list(
            "student_id", "field_name", "value"
        ):
            stored["user_info", user_index[student], name] = json.loads(text)
        assert set(stored) == set(self.database)
        for mkey, value in self.database.items():
            assert_exact(stored[mkey], value, repr(mkey))

    def check_view(self, user: int, scope_names: Iterable[str] = SCOPES) -> None:
        """Assert the learner's cache shows exactly its view for every key of ``scope_names``.

        After a write, the scopes written (a write that changed another scope's rows shows up
        in :meth:`check_database`); after a new request, every scope. Reads cost no statement.
        """
        store, view = self.stores[user], self.views[user]
        with self.test.assertNumQueries(0):
            for scope_name in set(scope_names):
                for block in range(len(BLOCKS)):
                    for name in NAMES:
                        mkey = model_key(scope_name, user, block, name)
                        k = self.key(user, scope_name, block, name)
                        shown = store.get(k) if store.has(k) else MISSING
                        if mkey not in view:
                            assert shown is MISSING, mkey
                        else:
                            assert_exact(shown, view[mkey], repr(mkey))


class StateMachineTests(TestCase):
    databases = {"default", "student_module_history"}

    @classmethod
    def setUpTestData(cls) -> None:
        cls.users = [UserFactory(), UserFactory()]

    def test_key_value_store_behaves_like_a_dict(self) -> None:
        self.examples = 0
        started = time.monotonic()
        run_state_machine_as_test(
            lambda: KeyValueStoreMachine(self),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,  # nothing written into the checkout
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            ),
        )
        log.info(
            "state machine [%s]: %d examples (up to %d steps each) in %.1f s",
            connection.vendor,
            self.examples,
            STEPS,
            time.monotonic() - started,
        )
        assert self.examples >= EXAMPLES
