"""One KeyValueStore contract, run against XBlock's DictKeyValueStore and against kvstate's stores.

XBlock's own in-memory store validates the contract (the tests describe a key-value store, not
kvstate's quirks); kvstate's stores must then behave the same, for every user scope, whether they
keep state in the database (a signed-in learner) or in memory (anonymous, ephemeral).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.test import SimpleTestCase, TestCase
from xblock.fields import Scope
from xblock.runtime import DictKeyValueStore, KeyValueStore

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.runtime import EphemeralKeyValueStore
from kvstate.testing.factories import UserFactory
from tests.blocks import COURSE_KEY, block, block_class, key

#: One field of StateBlock per user scope.
FIELD_BY_SCOPE = {
    "user_state": "answer",
    "user_state_summary": "tally",
    "preferences": "theme",
    "user_info": "nickname",
}


class KeyValueStoreContract:
    """What any XBlock key-value store does with the four user scopes.

    Subclasses provide :meth:`make_store` (an empty store over :attr:`block`) and may override
    :meth:`reopen` (a new store over what the first one persisted).
    """

    user_id: Any = None

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.block = block(user_id=self.user_id)
        self.store = self.make_store()

    def make_store(self) -> KeyValueStore:
        raise NotImplementedError

    def reopen(self) -> KeyValueStore:
        return self.store

    def key(self, scope: str, name: str | None = None) -> KeyValueStore.Key:
        """Return the key of StateBlock's field in ``scope``, renamed to ``name`` if given."""
        found = key(self.block, FIELD_BY_SCOPE[scope])
        return found if name is None else found._replace(field_name=name)

    def test_missing_value(self) -> None:
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                assert not self.store.has(self.key(scope))
                for method in (self.store.get, self.store.delete):
                    try:
                        method(self.key(scope))
                    except KeyError:
                        pass
                    else:
                        raise AssertionError(f"{method.__name__} of a missing key did not raise")

    def test_set_then_get(self) -> None:
        value = {"nested": [1, 2.5, None, True, "é ☃ 🎉"], "empty": {}}
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                self.store.set(self.key(scope), value)
                assert self.store.has(self.key(scope))
                assert self.store.get(self.key(scope)) == value
                assert self.reopen().get(self.key(scope)) == value

    def test_set_overwrites(self) -> None:
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                self.store.set(self.key(scope), "first")
                self.store.set(self.key(scope), "second")
                assert self.store.get(self.key(scope)) == "second"
                assert self.reopen().get(self.key(scope)) == "second"

    def test_json_null_is_a_value(self) -> None:
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                self.store.set(self.key(scope), None)
                assert self.store.has(self.key(scope))
                assert self.store.get(self.key(scope)) is None
                assert self.reopen().has(self.key(scope))

    def test_delete(self) -> None:
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                self.store.set(self.key(scope), 1)
                self.store.set(self.key(scope, "kept"), 2)
                self.store.delete(self.key(scope))
                for store in (self.store, self.reopen()):
                    assert not store.has(self.key(scope))
                    assert store.get(self.key(scope, "kept")) == 2

    def test_set_many_mixes_scopes(self) -> None:
        values = {
            self.key(scope, f"{scope}_{n}"): [scope, n]
            for scope in FIELD_BY_SCOPE
            for n in range(3)
        }
        self.store.set_many(values)
        for store in (self.store, self.reopen()):
            assert {k: store.get(k) for k in values} == values

    def test_set_many_of_nothing(self) -> None:
        self.store.set_many({})
        assert not self.store.has(self.key("user_state"))

    def test_names_compare_exactly(self) -> None:
        # 'B', 'b' and 'b ' (and 'é'/'e') would be one field under a case-, accent- or
        # pad-insensitive collation; they are five fields.
        names = ["B", "b", "b ", "é", "e"]
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                self.store.set_many({self.key(scope, name): name for name in names})
                for store in (self.store, self.reopen()):
                    assert [store.get(self.key(scope, name)) for name in names] == names
                self.store.delete(self.key(scope, "b "))
                assert [self.reopen().has(self.key(scope, name)) for name in names] == [
                    True,
                    True,
                    False,
                    True,
                    True,
                ]

    def test_other_blocks_are_apart(self) -> None:
        other = self.other_block()
        for scope in FIELD_BY_SCOPE:
            with self.subTest(scope=scope):  # type: ignore[attr-defined]
                self.store.set(self.key(scope), "mine")
                other_key = key(other, FIELD_BY_SCOPE[scope])
                for store in (self.store, self.reopen()):
                    if scope == "user_info":
                        # user_info belongs to the learner, not to a block: shared on purpose.
                        assert store.get(other_key) == "mine"
                    else:
                        assert not store.has(other_key)

    def other_block(self) -> Any:
        """Return a block with another usage and another type than :attr:`block`."""
        other_usage = self.block.scope_ids.usage_id.replace(block_id="p2")
        return block(other_usage, self.user_id, block_type="other_type")


class TestDictKeyValueStore(KeyValueStoreContract, SimpleTestCase):
    """XBlock's reference implementation: proves the contract describes a plain store."""

    def make_store(self) -> KeyValueStore:
        return DictKeyValueStore()


class TestEphemeralKeyValueStore(KeyValueStoreContract, SimpleTestCase):
    """kvstate's in-memory store (SimpleTestCase: any query would fail the test)."""

    def make_store(self) -> KeyValueStore:
        return EphemeralKeyValueStore()


class TestAnonymousDjangoKeyValueStore(KeyValueStoreContract, SimpleTestCase):
    """A cache for an anonymous user keeps state in memory (SimpleTestCase: no query allowed)."""

    def make_store(self) -> KeyValueStore:
        return DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, AnonymousUser()))


class TestDjangoKeyValueStore(KeyValueStoreContract, TestCase):
    """The database store; :meth:`reopen` reads back what reached the database."""

    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.user_id = self.user.pk
        super().setUp()

    def make_store(self) -> KeyValueStore:
        return DjangoKeyValueStore(FieldDataCache([self.block], COURSE_KEY, self.user))

    def reopen(self) -> KeyValueStore:
        usage_key = self.block.scope_ids.usage_id
        # A cache knows only the fields of its blocks: add blocks of the same usage and type
        # declaring every per-field name the tests use.
        names = [
            "B",
            "b",
            "b ",
            "é",
            "e",
            "kept",
            *(f"{s}_{n}" for s in FIELD_BY_SCOPE for n in range(3)),
        ]
        blocks = [self.block, self.other_block()]
        blocks += [
            block(usage_key, self.user_id, block_class(getattr(Scope, scope), *names))
            for scope in FIELD_BY_SCOPE
            if scope != "user_state"
        ]
        return DjangoKeyValueStore(FieldDataCache(blocks, COURSE_KEY, self.user))
