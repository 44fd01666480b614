"""Exact round-trips (SPEC §3): every JSON value and every name comes back as it was written.

Through ``FieldDataCache``/``DjangoKeyValueStore`` in each user scope and through
``DjangoXBlockUserStateClient``; read back from the same cache, from a cache rebuilt from the
database, and from the raw text column; on the insert path, on the compare-and-swap path (a
second write to an existing row) and after a lost race.
"""

from __future__ import annotations

import json
from typing import Any

from django.test import TestCase
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
    EXACT_VALUES,
    HOSTILE_NAMES,
    HTML,
    PROBLEM,
    PROBLEM_2,
    USER_SCOPES,
    USER_STATE_ONLY_NAMES,
    assert_exact,
    key,
    new_store,
)

VALUE_NAMES = tuple(EXACT_VALUES)
PER_FIELD_MODELS = {
    Scope.user_state_summary: XModuleUserStateSummaryField,
    Scope.preferences: XModuleStudentPrefsField,
    Scope.user_info: XModuleStudentInfoField,
}
#: Every name a probe block declares: the value cases, the hostile names, and the bystanders
#: that hostile names look like paths into.
BYSTANDERS = {"a": {"b": "kept", "0": "kept"}, "": "unused"}
ALL_NAMES = (*VALUE_NAMES, *HOSTILE_NAMES, *USER_STATE_ONLY_NAMES, "a")


def names_for(scope: Any) -> tuple[str, ...]:
    """Return the hostile names ``scope`` stores (per-field tables refuse the text-only ones)."""
    return HOSTILE_NAMES + (USER_STATE_ONLY_NAMES if scope == Scope.user_state else ())


def rotated(values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` with each name given the next name's value (a different value)."""
    names = list(values)
    return {name: values[names[(i + 1) % len(names)]] for i, name in enumerate(names)}


class KeyValueStoreRoundTripTests(TestCase):
    """Values and names round-trip through the cache, a rebuilt cache and the stored text."""

    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.user = UserFactory()
        storage.stats.reset()

    def store(self) -> Any:
        return new_store(self.user, [PROBLEM, PROBLEM_2, HTML], ALL_NAMES)

    def assert_reads(self, values: dict[str, Any], scope: Any, usage_key: Any = PROBLEM) -> None:
        """Assert the values are read back exactly by the same and by a rebuilt cache."""
        for label, kvs in (("same", self.kvs), ("rebuilt", self.store()[1])):
            for name, value in values.items():
                with self.subTest(cache=label, scope=scope.name, name=name):
                    k = key(scope, self.user.pk, usage_key, name)
                    assert kvs.has(k)
                    assert_exact(kvs.get(k), value)

    def test_values_round_trip_in_every_scope_on_insert_and_on_swap(self) -> None:
        self.cache, self.kvs = self.store()
        for scope in USER_SCOPES:
            first = {f"{name}": value for name, value in EXACT_VALUES.items()}
            with self.captureOnCommitCallbacks(using="default", execute=True):
                self.kvs.set_many(
                    {key(scope, self.user.pk, PROBLEM, n): v for n, v in first.items()}
                )
            self.assert_reads(first, scope)
            # Second write of every field: an existing row (user_state: compare-and-swap on the
            # text holding all the values above; per-field: the upsert's update branch).
            second = rotated(first)
            with self.captureOnCommitCallbacks(using="default", execute=True):
                self.kvs.set_many(
                    {key(scope, self.user.pk, PROBLEM, n): v for n, v in second.items()}
                )
            self.assert_reads(second, scope)
        self.assert_stored_text_is_pythons_json(second)

    def test_field_by_field_swaps_keep_every_other_value(self) -> None:
        # One field per write: each write swaps against a text that holds all the others.
        self.cache, self.kvs = self.store()
        values = dict(EXACT_VALUES)
        for name, value in values.items():
            self.kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, name), value)
        for name, value in rotated(values).items():
            self.kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, name), value)
            values[name] = value
            self.assert_reads(values, Scope.user_state)

    def test_hostile_names_touch_no_other_field(self) -> None:
        self.cache, self.kvs = self.store()
        for scope in USER_SCOPES:
            names = names_for(scope)
            bystander = key(scope, self.user.pk, PROBLEM, "a")
            self.kvs.set(bystander, BYSTANDERS["a"])
            # Each name gets its own value, so a name that aliases another shows up as a
            # wrong value; the bystander shows names that act as paths into it.
            written = {name: {"written_as": name} for name in names}
            self.kvs.set_many({key(scope, self.user.pk, PROBLEM, n): v for n, v in written.items()})
            self.assert_reads({**written, "a": BYSTANDERS["a"]}, scope)
            # The same names on another block are other fields (preferences and user_info are
            # not per block).
            for other_scope in (Scope.user_state, Scope.user_state_summary):
                for name in names:
                    other = key(other_scope, self.user.pk, HTML, name)
                    assert not self.kvs.has(other), (other_scope.name, name)
            # Deleting one name deletes only that field.
            for name in names:
                self.kvs.delete(key(scope, self.user.pk, PROBLEM, name))
                del written[name]
                self.assert_reads({**written, "a": BYSTANDERS["a"]}, scope)
                for label, kvs in (("same", self.kvs), ("rebuilt", self.store()[1])):
                    with self.subTest(cache=label, deleted=name):
                        assert not kvs.has(key(scope, self.user.pk, PROBLEM, name))

    def test_scopes_do_not_share_names(self) -> None:
        self.cache, self.kvs = self.store()
        for scope in USER_SCOPES:
            self.kvs.set(key(scope, self.user.pk, PROBLEM, "$.a"), scope.name)
        for label, kvs in (("same", self.kvs), ("rebuilt", self.store()[1])):
            for scope in USER_SCOPES:
                with self.subTest(cache=label, scope=scope.name):
                    assert kvs.get(key(scope, self.user.pk, PROBLEM, "$.a")) == scope.name

    def test_json_null_is_present(self) -> None:
        self.cache, self.kvs = self.store()
        for scope in USER_SCOPES:
            self.kvs.set(key(scope, self.user.pk, PROBLEM, "json_null"), None)
        for label, kvs in (("same", self.kvs), ("rebuilt", self.store()[1])):
            for scope in USER_SCOPES:
                with self.subTest(cache=label, scope=scope.name):
                    k = key(scope, self.user.pk, PROBLEM, "json_null")
                    assert kvs.has(k)
                    assert kvs.get(k) is None

    def test_values_round_trip_after_lost_races(self) -> None:
        # Two requests build their caches before the row exists. The second to write loses the
        # insert race, and later a compare-and-swap race, and must still store its values
        # exactly, next to the winner's.
        (_early_cache, early), (_late_cache, late) = self.store(), self.store()
        winner = {f"w_{name}": value for name, value in EXACT_VALUES.items()}
        loser = {f"l_{name}": value for name, value in EXACT_VALUES.items()}
        early.set_many(
            {key(Scope.user_state, self.user.pk, PROBLEM_2, n): v for n, v in winner.items()}
        )
        late.set_many(
            {key(Scope.user_state, self.user.pk, PROBLEM_2, n): v for n, v in loser.items()}
        )
        assert storage.stats.inserts_lost == 1
        # ``early`` still believes the row holds only its own fields: its swap misses.
        early.set(key(Scope.user_state, self.user.pk, PROBLEM_2, "w_unicode"), "second")
        assert storage.stats.swaps_lost == 1
        expected = {**winner, **loser, "w_unicode": "second"}
        stored = json.loads(StudentModule.objects.get(module_state_key=PROBLEM_2).state)
        assert_exact(stored, expected)
        # The writer that merged last knows everything; a new request too.
        for label, kvs in (("merged", early), ("rebuilt", self.store()[1])):
            for name, value in expected.items():
                with self.subTest(cache=label, name=name):
                    assert_exact(
                        kvs.get(key(Scope.user_state, self.user.pk, PROBLEM_2, name)), value
                    )

    def assert_stored_text_is_pythons_json(self, values: dict[str, Any]) -> None:
        """Assert the columns hold Python's own JSON text of what was written."""
        row = StudentModule.objects.get(student=self.user, module_state_key=PROBLEM)
        assert_exact(json.loads(row.state), values)
        assert row.state == json.dumps(json.loads(row.state))
        for scope, model in PER_FIELD_MODELS.items():
            texts = dict(model.objects.values_list("field_name", "value"))
            for name, value in values.items():
                with self.subTest(scope=scope.name, name=name):
                    assert texts[name] == json.dumps(value)


class ClientRoundTripTests(TestCase):
    """Values and names round-trip through ``DjangoXBlockUserStateClient``, history included."""

    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.client = DjangoXBlockUserStateClient(self.user)
        self.username = self.user.username

    def assert_client_reads(self, expected: dict[str, Any], block: Any = PROBLEM) -> None:
        fresh = DjangoXBlockUserStateClient()
        for label, client in (("same", self.client), ("fresh", fresh)):
            with self.subTest(client=label):
                assert_exact(client.get(self.username, block).state, expected)
                [many] = list(client.get_many(self.username, [block]))
                assert_exact(many.state, expected)

    def test_values_and_names_round_trip_on_insert_swap_and_history(self) -> None:
        first = dict(EXACT_VALUES)
        for name in (*HOSTILE_NAMES, *USER_STATE_ONLY_NAMES):
            first[name] = {"written_as": name}
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.client.set(self.username, PROBLEM, first)
        self.assert_client_reads(first)
        second = rotated(first)
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.client.set_many(self.username, {PROBLEM: second, PROBLEM_2: first})
        self.assert_client_reads(second)
        self.assert_client_reads(first, PROBLEM_2)
        # Deleting hostile names removes only them.
        doomed = [*HOSTILE_NAMES[:5], *USER_STATE_ONLY_NAMES]
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.client.delete(self.username, PROBLEM, fields=doomed)
        remaining = {n: v for n, v in second.items() if n not in doomed}
        self.assert_client_reads(remaining)
        # History holds each state exactly, newest first.
        history = list(self.client.get_history(self.username, PROBLEM))
        assert len(history) == 3
        for entry, expected in zip(history, (remaining, second, first), strict=True):
            assert_exact(entry.state, expected)
        assert StudentModuleHistory.objects.count() == 4  # three for PROBLEM, one for PROBLEM_2

    def test_client_sees_what_the_key_value_store_wrote(self) -> None:
        _cache, kvs = new_store(self.user, [PROBLEM], ALL_NAMES)
        kvs.set_many(
            {key(Scope.user_state, self.user.pk, PROBLEM, n): v for n, v in EXACT_VALUES.items()}
        )
        self.assert_client_reads(dict(EXACT_VALUES))
