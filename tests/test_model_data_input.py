"""Bad input fails before any SQL, with an error naming the culprit, and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import TestCase, override_settings
from xblock.exceptions import InvalidScopeError
from xblock.fields import Scope

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import UserFactory
from kvstate.validation import WrongUserError
from tests.blocks import (
    COURSE_KEY,
    Key,
    block,
    info_key,
    no_queries,
    prefs_key,
    rebuilt,
    state_key,
    summary_key,
    usage,
)

DATABASES = {"default", "student_module_history"}


def table_contents() -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the four state tables, to compare before and after."""
    return {
        "state": sorted(StudentModule.objects.values_list("module_state_key", "state")),
        "summary": sorted(XModuleUserStateSummaryField.objects.values_list("field_name", "value")),
        "prefs": sorted(XModuleStudentPrefsField.objects.values_list("field_name", "value")),
        "info": sorted(XModuleStudentInfoField.objects.values_list("field_name", "value")),
    }


class InputTestCase(TestCase):
    """A learner with one stored value in every scope, and a cache over their block."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        self.block = block(usage(), self.user.pk)
        self.cache = FieldDataCache([self.block], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set_many(dict.fromkeys(self.good_keys().values(), "stored"))
        self.before = table_contents()

    def good_keys(self, name: str | None = None) -> dict[str, Key]:
        """Return a key per scope: StateBlock's fields, or fields called ``name``."""
        uid = self.user.pk
        return {
            "user_state": state_key(name or "answer", uid),
            "user_state_summary": summary_key(name or "tally"),
            "preferences": prefs_key(name or "theme", uid),
            "user_info": info_key(name or "nickname", uid),
        }

    def assert_rejected(
        self, kv_dict: dict[Key, Any], error: type[Exception], match: str | None = None
    ) -> None:
        """Assert ``set_many(kv_dict)`` raises before any SQL, leaving database and cache alone."""
        with no_queries(self), pytest.raises(error, match=match):
            self.kvs.set_many(kv_dict)
        assert table_contents() == self.before
        self.assert_cache_equals_database()

    def assert_cache_equals_database(self) -> None:
        fresh = rebuilt(self.cache, [self.block])
        for k in self.good_keys().values():
            assert self.cache.get(k) == fresh.get(k) == "stored"


class TestValues(InputTestCase):
    def test_not_json(self) -> None:
        for value in (object(), b"bytes", {1, 2}, [1, {"deep": object()}]):
            for scope, k in self.good_keys().items():
                with self.subTest(scope=scope, value=value):
                    self.assert_rejected(
                        {k: value}, TypeError, f"'{k.field_name}'.*not JSON-serialisable"
                    )

    def test_nan_and_infinity(self) -> None:
        for value in (float("nan"), float("inf"), -float("inf"), {"a": [float("nan")]}):
            for scope, k in self.good_keys().items():
                with self.subTest(scope=scope, value=value):
                    self.assert_rejected({k: value}, ValueError, f"'{k.field_name}'.*NaN")

    def test_one_bad_value_in_a_batch_writes_nothing(self) -> None:
        kv_dict: dict[Key, Any] = dict.fromkeys(self.good_keys("y").values(), "new")
        kv_dict[state_key("bad", self.user.pk)] = float("nan")
        self.assert_rejected(kv_dict, ValueError, "'bad'")

    @override_settings(KVSTATE_MAX_VALUE_BYTES=100)
    def test_value_over_the_size_limit(self) -> None:
        too_big = "v" * 99  # 101 bytes once quoted
        for scope, k in self.good_keys().items():
            with self.subTest(scope=scope):
                self.assert_rejected({k: too_big}, ValueError, "KVSTATE_MAX_VALUE_BYTES")

    @override_settings(KVSTATE_MAX_VALUE_BYTES=100)
    def test_value_at_the_size_limit(self) -> None:
        # 100 bytes once quoted. user_state gets a new block, whose whole state
        # {"x": "v...v"} is exactly 100 bytes too.
        keys = self.good_keys()
        kv_dict: dict[Key, Any] = {keys[scope]: "v" * 98 for scope in keys if scope != "user_state"}
        kv_dict[state_key("x", self.user.pk, usage("other"))] = "v" * 91
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set_many(kv_dict)
        assert len(StudentModule.objects.get(module_state_key=usage("other")).state) == 100
        fresh = rebuilt(self.cache, [self.block, block(usage("other"), self.user.pk)])
        assert {k: fresh.get(k) for k in kv_dict} == kv_dict

    @override_settings(KVSTATE_MAX_VALUE_BYTES=100)
    def test_whole_user_state_over_the_size_limit(self) -> None:
        # Each value fits, the block's merged state ({"answer": "stored", "y": ...}) does not.
        self.assert_rejected({state_key("y", self.user.pk): "v" * 80}, ValueError, "user_state")

    @override_settings(KVSTATE_MAX_VALUE_BYTES=100)
    def test_whole_user_state_over_the_limit_after_other_scopes(self) -> None:
        # The per-field scopes come first in the batch; still nothing may run.
        kv_dict: dict[Key, Any] = {
            k: "new" for k in self.good_keys("y").values() if k.scope != Scope.user_state
        }
        kv_dict[state_key("y", self.user.pk)] = "v" * 80
        self.assert_rejected(kv_dict, ValueError, "user_state")

    @override_settings(KVSTATE_MAX_VALUE_BYTES=None)
    def test_no_limit(self) -> None:
        big = "v" * (3 * 1024 * 1024)
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set(info_key("big", self.user.pk), big)
        assert len(XModuleStudentInfoField.objects.get(field_name="big").value) == len(big) + 2


class TestNames(InputTestCase):
    def test_field_name_not_a_string(self) -> None:
        for name in (1, None, b"x", ("x",)):
            for scope, k in self.good_keys().items():
                with self.subTest(scope=scope, name=name):
                    self.assert_rejected({k._replace(field_name=name): 1}, TypeError, "not a str")

    def test_empty_field_name(self) -> None:
        for scope, k in self.good_keys().items():
            with self.subTest(scope=scope):
                self.assert_rejected({k._replace(field_name=""): 1}, ValueError, "empty")

    def test_bad_names_fail_reads_too(self) -> None:
        k = state_key(None, self.user.pk)  # type: ignore[arg-type]
        with no_queries(self):
            for method in (self.kvs.get, self.kvs.has, self.kvs.delete):
                with pytest.raises(TypeError):
                    method(k)

    def test_per_field_name_over_64_characters(self) -> None:
        for scope, k in self.good_keys().items():
            if scope == "user_state":
                continue
            with self.subTest(scope=scope):
                self.assert_rejected({k._replace(field_name="n" * 65): 1}, ValueError, "65")

    def test_field_names_that_fit(self) -> None:
        # 64 characters fit a per-field row; user_state names live inside the JSON: no limit.
        kv_dict = {k._replace(field_name="n" * 64): 1 for k in self.good_keys().values()}
        kv_dict[state_key("s" * 300, self.user.pk)] = 2
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set_many(kv_dict)
        assert json.loads(StudentModule.objects.get().state)["s" * 300] == 2

    def test_names_no_column_can_hold(self) -> None:
        # NUL (PostgreSQL text refuses it) and lone surrogates (not UTF-8) cannot be stored in
        # a name column on every backend: refused up front everywhere, not by one database.
        for name in ("a\x00b", "a\ud800b"):
            for scope, k in self.good_keys().items():
                if scope == "user_state":
                    continue
                with self.subTest(scope=scope, name=name):
                    self.assert_rejected({k._replace(field_name=name): 1}, ValueError, "field name")

    def test_user_state_names_live_in_json(self) -> None:
        # Inside the state's JSON text every str is a name: escaped, stored, read back exactly.
        names = ["a\x00b", "a\ud800b", 'q"uote', "back\\slash", "$.a", "a.b", "%s", "😀"]
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set_many({state_key(name, self.user.pk): name for name in names})
        fresh = rebuilt(self.cache, [self.block])
        assert [fresh.get(state_key(name, self.user.pk)) for name in names] == names

    def test_user_state_block_type_over_32_characters(self) -> None:
        k = state_key("x", self.user.pk, usage("p1", "t" * 33))
        self.assert_rejected({k: 1}, ValueError, "block type")

    def test_usage_key_over_255_characters(self) -> None:
        long_usage = usage("b" * 250)
        for k in (state_key("x", self.user.pk, long_usage), summary_key("x", long_usage)):
            with self.subTest(scope=k.scope.name):
                self.assert_rejected({k: 1}, ValueError, "usage")

    def test_preferences_block_type_over_64_characters(self) -> None:
        for k in (
            prefs_key("x", self.user.pk, "t" * 65),
            # The aside family prefixes "block-type-v1:xblock_asides.v1:" (31) to the type.
            prefs_key("x", self.user.pk, "t" * 34, family="xblock_asides.v1"),
        ):
            with self.subTest(key=k):
                self.assert_rejected({k: 1}, ValueError, "module_type")

    def test_preferences_block_types_that_do_not_read_back(self) -> None:
        for block_type in (
            "poll\n",  # the key column strips a trailing newline when it reads the row
            "block-type-v1:xblock_asides.v1:poll",  # would read back as the aside's type
            "po\x00ll",
            "po\ud800ll",
        ):
            with self.subTest(block_type=block_type):
                self.assert_rejected(
                    {prefs_key("theme", self.user.pk, block_type): 1},
                    ValueError,
                    "block type|NUL|surrogate",
                )

    def test_preferences_block_types_that_read_back(self) -> None:
        uid = self.user.pk
        types = ["a:b", "poll ", " poll", "Poll", "t" * 64]
        self.kvs.set_many({prefs_key("theme", uid, t): t for t in types})
        fresh = rebuilt(self.cache, [block(usage(), uid, block_type=t) for t in types])
        assert [fresh.get(prefs_key("theme", uid, t)) for t in types] == types

    def test_block_ids_of_the_wrong_kind(self) -> None:
        for k in (
            state_key("x", self.user.pk, "not a usage key"),
            summary_key("x", str(usage())),
            prefs_key("x", self.user.pk, None),
        ):
            with self.subTest(scope=k.scope.name):
                self.assert_rejected({k: 1}, TypeError)

    def test_one_bad_key_in_a_batch_writes_nothing(self) -> None:
        uid = self.user.pk
        for bad_key, error in [
            (Key(Scope.content, None, usage(), "x"), InvalidScopeError),
            (state_key("x", uid + 1), WrongUserError),
            (info_key("n" * 65, uid), ValueError),
            (state_key("x", uid, usage("p", "t" * 33)), ValueError),
            (prefs_key("", uid), ValueError),
        ]:
            kv_dict: dict[Key, Any] = dict.fromkeys(self.good_keys().values(), "new")
            kv_dict[bad_key] = 1
            with self.subTest(bad=bad_key):
                self.assert_rejected(kv_dict, error)


class TestExactNames(InputTestCase):
    """Keys and block types differing only in case, accents or a trailing space are distinct."""

    def test_usage_keys(self) -> None:
        uid = self.user.pk
        ids = ["b", "B", "é", "e"]  # block ids admit no spaces
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set_many({state_key("x", uid, usage(i)): i for i in ids})
            self.kvs.set_many({summary_key("x", usage(i)): i for i in ids})
        fresh = rebuilt(self.cache, [block(usage(i), uid) for i in ids])
        assert [fresh.get(state_key("x", uid, usage(i))) for i in ids] == ids
        assert (
            StudentModule.objects.filter(module_state_key__in=[usage(i) for i in ids]).count() == 4
        )

    def test_preference_block_types(self) -> None:
        uid = self.user.pk
        types = ["b", "B", "b ", "é", "e"]
        self.kvs.set_many({prefs_key("theme", uid, t): t for t in types})
        fresh = rebuilt(self.cache, [block(usage(), uid, block_type=t) for t in types])
        assert [fresh.get(prefs_key("theme", uid, t)) for t in types] == types
