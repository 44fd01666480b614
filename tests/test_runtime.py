"""Unit tests of kvstate.runtime: the in-memory store and the SplitFieldData wiring."""

from __future__ import annotations

import math

import pytest
from django.contrib.auth.models import AnonymousUser
from opaque_keys.edx.locator import CourseLocator
from xblock.exceptions import InvalidScopeError
from xblock.field_data import DictFieldData
from xblock.fields import BlockScope, Scope, ScopeIds, UserScope
from xblock.runtime import KeyValueStore

from kvstate.runtime import AUTHORED_SCOPES, USER_SCOPES, EphemeralKeyValueStore
from kvstate.testing.runtime import AuthoredContent, new_request

USAGE = CourseLocator("kvstate", "Unit", "2025").make_usage_key("thumbs", "t1")
Key = KeyValueStore.Key


def state_key(name: str = "voted", user_id: object = 7, usage: object = USAGE) -> Key:
    return Key(Scope.user_state, user_id, usage, name)


class TestEphemeralKeyValueStore:
    def test_round_trip_and_missing_values(self) -> None:
        store = EphemeralKeyValueStore()
        assert not store.has(state_key())
        with pytest.raises(KeyError):
            store.get(state_key())
        with pytest.raises(KeyError):
            store.delete(state_key())

        store.set(state_key(), {"nested": [1, 2.5, None, "é"]})

        assert store.has(state_key())
        assert store.get(state_key()) == {"nested": [1, 2.5, None, "é"]}
        store.delete(state_key())
        assert not store.has(state_key())
        assert len(store) == 0

    def test_json_null_is_a_value(self) -> None:
        store = EphemeralKeyValueStore()
        store.set(state_key(), None)
        assert store.has(state_key())
        assert store.get(state_key()) is None

    def test_reads_are_copies(self) -> None:
        store = EphemeralKeyValueStore()
        value = {"R": 1}
        store.set(state_key(), value)
        value["R"] = 2
        read = store.get(state_key())
        read["R"] = 3
        assert store.get(state_key()) == {"R": 1}

    @pytest.mark.parametrize(
        "scope",
        [
            Scope.content,
            Scope.settings,
            Scope.children,
            Scope.parent,
            Scope(UserScope.ONE, BlockScope.DEFINITION),
        ],
    )
    def test_only_user_scopes(self, scope: object) -> None:
        store = EphemeralKeyValueStore()
        key = Key(scope, None, USAGE, "field")
        with pytest.raises(InvalidScopeError):
            store.set(key, 1)
        with pytest.raises(InvalidScopeError):
            store.has(key)

    @pytest.mark.parametrize(
        ("value", "error"),
        [
            (math.nan, ValueError),
            (math.inf, ValueError),
            ({1, 2}, TypeError),
            (object(), TypeError),
        ],
    )
    def test_set_many_rejects_non_json_and_writes_nothing(
        self, value: object, error: type[Exception]
    ) -> None:
        store = EphemeralKeyValueStore()
        with pytest.raises(error):
            store.set_many({state_key("good"): 1, state_key("bad"): value})
        assert len(store) == 0

    @pytest.mark.parametrize("name", ["", None, 3])
    def test_field_names_must_be_non_empty_strings(self, name: object) -> None:
        store = EphemeralKeyValueStore()
        with pytest.raises((TypeError, ValueError)):
            store.set(state_key(name), 1)  # type: ignore[arg-type]

    def test_keys_keep_users_blocks_scopes_and_families_apart(self) -> None:
        store = EphemeralKeyValueStore()
        other_usage = USAGE.replace(block_id="t2")
        keys = [
            state_key(),
            state_key(user_id=8),
            state_key(usage=other_usage),
            Key(Scope.user_state_summary, None, USAGE, "voted"),
            Key(Scope.preferences, 7, "thumbs", "voted"),
            Key(Scope.user_info, 7, None, "voted"),
            Key(Scope.user_state, 7, USAGE, "voted", "xblock_asides.v1"),
        ]
        store.set_many({key: index for index, key in enumerate(keys)})
        assert [store.get(key) for key in keys] == list(range(len(keys)))

    def test_an_unnamed_scope_equal_to_a_named_one_is_the_same_key(self) -> None:
        store = EphemeralKeyValueStore()
        store.set(state_key(), "x")
        rebuilt = Scope.user_state._replace()  # an equal, distinct tuple
        assert store.get(Key(rebuilt, 7, USAGE, "voted")) == "x"


def test_split_field_data_routes_each_scope() -> None:
    content = AuthoredContent()
    content.add(USAGE)
    runtime = new_request(content, AnonymousUser())
    block = runtime.get_block(USAGE)
    authored = DictFieldData({})
    children = DictFieldData({})
    provider = runtime.student_data

    split = provider.split_field_data(block, authored, children_data=children)
    mapping = split._scope_mappings  # XBlock keeps no public accessor

    assert set(mapping) == set(AUTHORED_SCOPES) | set(USER_SCOPES)
    assert [mapping[scope] for scope in (Scope.content, Scope.settings, Scope.parent)] == [
        authored
    ] * 3
    assert mapping[Scope.children] is children
    user_data = {id(mapping[scope]) for scope in USER_SCOPES}
    assert len(user_data) == 1
    assert provider.user_scope_field_data(block).keys() == set(USER_SCOPES)


def test_blocks_carry_the_providers_user_id() -> None:
    content = AuthoredContent()
    content.add(USAGE)
    block = new_request(content, AnonymousUser()).get_block(USAGE)
    assert block.scope_ids == ScopeIds(None, "thumbs", USAGE, USAGE)
