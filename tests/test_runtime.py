"""Unit tests of kvstate.runtime: the stores of anonymous state and the SplitFieldData wiring."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.test import override_settings
from opaque_keys.edx.locator import CourseLocator
from xblock.exceptions import InvalidScopeError, KeyValueMultiSaveError
from xblock.field_data import DictFieldData
from xblock.fields import BlockScope, Scope, ScopeIds, UserScope
from xblock.runtime import KeyValueStore

from kvstate.runtime import (
    AUTHORED_SCOPES,
    USER_SCOPES,
    CacheKeyValueStore,
    EphemeralKeyValueStore,
)
from kvstate.testing.runtime import AuthoredContent, new_request

USAGE = CourseLocator("kvstate", "Unit", "2025").make_usage_key("thumbs", "t1")
Key = KeyValueStore.Key


def state_key(name: str = "voted", user_id: object = 7, usage: object = USAGE) -> Key:
    return Key(Scope.user_state, user_id, usage, name)


class KeyValueStoreContract:
    """What every store of anonymous/ephemeral state promises: EphemeralKeyValueStore's rules.

    Subclasses provide ``make_store()``; each call is a new store over the same data, as the
    next request of the same visitor would get.
    """

    def make_store(self) -> KeyValueStore:
        raise NotImplementedError

    def test_round_trip_and_missing_values(self) -> None:
        store = self.make_store()
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
        with pytest.raises(KeyError):
            store.get(state_key())

    def test_json_null_is_a_value(self) -> None:
        store = self.make_store()
        store.set(state_key(), None)
        assert store.has(state_key())
        assert store.get(state_key()) is None

    def test_values_round_trip_exactly(self) -> None:
        store = self.make_store()
        values = [-0.0, 1e16, 10**30, "\x00 \ud800 é", [[[[]]]], {"k" * 300: True}]
        store.set_many({state_key(f"v{i}"): value for i, value in enumerate(values)})
        read = [store.get(state_key(f"v{i}")) for i in range(len(values))]
        assert json.dumps(read) == json.dumps(values)
        assert [type(value) for value in read] == [type(value) for value in values]

    def test_reads_are_copies(self) -> None:
        store = self.make_store()
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
        store = self.make_store()
        key = Key(scope, None, USAGE, "field")
        with pytest.raises(InvalidScopeError):
            store.set(key, 1)
        with pytest.raises(InvalidScopeError):
            store.has(key)
        with pytest.raises(InvalidScopeError):
            store.set_many({state_key(): 1, key: 1})
        assert not store.has(state_key())

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
        store = self.make_store()
        with pytest.raises(error):
            store.set_many({state_key("good"): 1, state_key("bad"): value})
        assert not store.has(state_key("good"))
        assert not self.make_store().has(state_key("good"))

    @override_settings(KVSTATE_MAX_VALUE_BYTES=100)
    def test_oversize_values_are_refused(self) -> None:
        store = self.make_store()
        with pytest.raises(ValueError, match="KVSTATE_MAX_VALUE_BYTES"):
            store.set_many({state_key("small"): 1, state_key("big"): "x" * 200})
        assert not store.has(state_key("small"))

    @pytest.mark.parametrize("name", ["", None, 3])
    def test_field_names_must_be_non_empty_strings(self, name: object) -> None:
        store = self.make_store()
        with pytest.raises((TypeError, ValueError)):
            store.set(state_key(name), 1)  # type: ignore[arg-type]

    def test_keys_keep_users_blocks_scopes_and_families_apart(self) -> None:
        store = self.make_store()
        other_usage = USAGE.replace(block_id="t2")
        keys = [
            state_key(),
            state_key(user_id=8),
            state_key(usage=other_usage),
            Key(Scope.user_state_summary, None, USAGE, "voted"),
            Key(Scope.preferences, 7, "thumbs", "voted"),
            Key(Scope.user_info, 7, None, "voted"),
            Key(Scope.user_info, "None", None, "voted"),
            Key(Scope.user_state, 7, USAGE, "voted", "xblock_asides.v1"),
        ]
        store.set_many({key: index for index, key in enumerate(keys)})
        assert [store.get(key) for key in keys] == list(range(len(keys)))

    def test_an_unnamed_scope_equal_to_a_named_one_is_the_same_key(self) -> None:
        store = self.make_store()
        store.set(state_key(), "x")
        rebuilt = Scope.user_state._replace()  # an equal, distinct tuple
        assert store.get(Key(rebuilt, 7, USAGE, "voted")) == "x"

    def test_hostile_field_names_are_stored_exactly(self) -> None:
        store = self.make_store()
        names = ['a"b', "a\\b", "a.b", "$", "$.x", "💥", " x ", "B", "b", "b "]
        store.set_many({state_key(name): name for name in names})
        assert [store.get(state_key(name)) for name in names] == names


class TestEphemeralKeyValueStore(KeyValueStoreContract):
    def make_store(self) -> KeyValueStore:
        # Memory lives as long as the store: "the next request" is the same store here.
        if not hasattr(self, "_store"):
            self._store = EphemeralKeyValueStore()
        return self._store

    def test_len_counts_values(self) -> None:
        store = EphemeralKeyValueStore()
        store.set_many({state_key("a"): 1, state_key("b"): 2})
        store.delete(state_key("a"))
        assert len(store) == 1

    def test_a_new_store_starts_empty(self) -> None:
        EphemeralKeyValueStore().set(state_key(), 1)
        assert not EphemeralKeyValueStore().has(state_key())


class CacheStoreContract(KeyValueStoreContract):
    """CacheKeyValueStore over one Django cache: state kept across requests, per visitor."""

    cache_alias = ""

    @pytest.fixture(autouse=True)
    def _namespace(self) -> Iterator[None]:
        self.cache = caches[self.cache_alias]
        self.namespace = f"visitor-{uuid.uuid4().hex}"
        self.made: list[CacheKeyValueStore] = []
        yield
        # Delete what this test wrote, never the whole cache (another run may share it).
        for store in self.made:
            self.cache.delete_many([store.cache_key(key) for key in store._known])

    def make_store(self, namespace: str | None = None) -> CacheKeyValueStore:
        store = CacheKeyValueStore(self.cache, namespace or self.namespace)
        self.made.append(store)
        return store

    def test_state_is_kept_across_requests_per_visitor(self) -> None:
        self.make_store().set_many({state_key(): "mine", state_key("other"): [1]})

        next_request = self.make_store()
        assert next_request.get(state_key()) == "mine"
        assert next_request.get(state_key("other")) == [1]
        assert not self.make_store(self.namespace + "-someone-else").has(state_key())

        next_request.delete(state_key())
        assert not self.make_store().has(state_key())
        assert self.make_store().get(state_key("other")) == [1]

    def test_two_requests_writing_different_fields_keep_both(self) -> None:
        # Both requests read the visitor's state, then each writes its own field.
        first, second = self.make_store(), self.make_store()
        assert not first.has(state_key("a"))
        assert not second.has(state_key("b"))
        first.set(state_key("a"), 1)
        second.set(state_key("b"), 2)

        later = self.make_store()
        assert (later.get(state_key("a")), later.get(state_key("b"))) == (1, 2)

    def test_reads_are_remembered_for_the_request(self) -> None:
        store = self.make_store()
        store.set(state_key(), "before")
        assert store.get(state_key()) == "before"
        self.make_store().set(state_key(), "meanwhile")
        # Like a FieldDataCache: what this request read stays what it sees.
        assert store.get(state_key()) == "before"
        assert self.make_store().get(state_key()) == "meanwhile"

    def test_prefetch_reads_many_keys_at_once(self) -> None:
        keys = [state_key(f"f{i}") for i in range(5)]
        self.make_store().set_many({key: i for i, key in enumerate(keys[:3])})
        store = self.make_store()

        store.prefetch([*keys, state_key("f0")])
        # Prove the values came from the prefetch: remove them behind the store's back.
        self.cache.delete_many([store.cache_key(key) for key in keys])

        assert [store.has(key) for key in keys] == [True, True, True, False, False]
        assert store.get(keys[2]) == 2

    def test_cache_keys_are_short_and_plain_whatever_the_name(self) -> None:
        store = self.make_store()
        for name in ["x" * 64, "a b\tc\nd", "💥" * 64, "\x00"]:
            entry = store.cache_key(state_key(name))
            assert len(entry) < 250
            assert entry.isascii()
            assert not any(char.isspace() or ord(char) < 32 for char in entry)

    def test_an_empty_namespace_is_refused(self) -> None:
        with pytest.raises(ValueError, match="namespace"):
            CacheKeyValueStore(self.cache, "")


class TestCacheKeyValueStoreLocmem(CacheStoreContract):
    cache_alias = "default"

    def test_keys_the_cache_could_not_store_are_reported_exactly(self) -> None:
        cache = _RefusingCache()
        store = CacheKeyValueStore(cache, self.namespace)
        cache.refuse = {store.cache_key(state_key("big"))}

        with pytest.raises(KeyValueMultiSaveError) as raised:
            store.set_many({state_key("small"): 1, state_key("big"): 2, state_key("other"): 3})

        assert sorted(raised.value.saved_field_names) == ["other", "small"]
        fresh = CacheKeyValueStore(cache, self.namespace)
        assert [fresh.has(state_key(name)) for name in ("small", "big", "other")] == [
            True,
            False,
            True,
        ]
        assert not store.has(state_key("big"))


class _RefusingCache(LocMemCache):
    """A cache that, like memcached with an oversized value, refuses some keys of a set_many."""

    def __init__(self) -> None:
        super().__init__(f"refusing-{uuid.uuid4().hex}", {})
        self.refuse: set[str] = set()

    def set_many(self, data: dict[str, Any], timeout: Any = None, version: Any = None) -> list[str]:
        refused = [key for key in data if key in self.refuse]
        super().set_many({k: v for k, v in data.items() if k not in refused}, timeout, version)
        return refused


def _redis_reachable() -> bool:
    try:
        caches["redis"].get("kvstate-ping")
    except Exception:
        return False
    return True


@pytest.mark.skipif(
    not os.environ.get("KVSTATE_REQUIRE_REDIS") and not _redis_reachable(),
    reason=f"no Redis at {settings.REDIS_URL} (set KVSTATE_REDIS_URL; CI requires it)",
)
class TestCacheKeyValueStoreRedis(CacheStoreContract):
    cache_alias = "redis"

    def test_the_cache_is_redis(self) -> None:
        assert type(self.cache).__name__ == "RedisCache"


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
