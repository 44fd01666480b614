"""DjangoKeyValueStore over a FieldDataCache: the upstream behaviour, scope by scope.

Statement counts live in test_budgets_model_data.py; these tests pin what is read and stored.
Where kvstate deliberately differs from Open edX (SPEC §8) the test says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
from django.test import TestCase
from opaque_keys.edx.block_types import BlockTypeKeyV1
from xblock.exceptions import InvalidScopeError
from xblock.fields import BlockScope, Scope, UserScope

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, set_score
from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentModuleFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from kvstate.validation import WrongUserError
from tests.blocks import (
    COURSE_KEY,
    AuthoredBlock,
    Key,
    block,
    block_class,
    info_key,
    no_queries,
    prefs_key,
    state_key,
    summary_key,
    usage,
)

DATABASES = {"default", "student_module_history"}


def every_method(kvs: DjangoKeyValueStore, key: Key) -> list[Callable[[], Any]]:
    """Return a call of each store method on ``key``."""
    return [
        partial(kvs.get, key),
        partial(kvs.set, key, "value"),
        partial(kvs.delete, key),
        partial(kvs.has, key),
        partial(kvs.set_many, {key: "value"}),
    ]


def stored_state(**filters: Any) -> dict[str, Any]:
    return json.loads(StudentModule.objects.get(**filters).state)


class TestMissingStudentModule(TestCase):
    """The learner has no row for the block yet."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        # A block without user-scope fields: nothing to prefetch, so no statement at all.
        with no_queries(self):
            self.cache = FieldDataCache(
                [block(usage(), self.user.pk, AuthoredBlock)], COURSE_KEY, self.user
            )
        self.kvs = DjangoKeyValueStore(self.cache)
        self.key = state_key("a_field", self.user.pk)

    def test_get_raises_key_error(self) -> None:
        with no_queries(self), pytest.raises(KeyError):
            self.kvs.get(self.key)

    def test_delete_raises_key_error(self) -> None:
        with no_queries(self), pytest.raises(KeyError):
            self.kvs.delete(self.key)

    def test_has_is_false(self) -> None:
        with no_queries(self):
            assert not self.kvs.has(self.key)

    def test_set_creates_the_row(self) -> None:
        assert len(self.cache) == 0
        assert not StudentModule.objects.exists()

        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set(self.key, "a_value")

        assert len(self.cache) == 1
        assert sum(len(scope_cache) for scope_cache in self.cache.cache.values()) == 1
        module = StudentModule.objects.get()
        assert json.loads(module.state) == {"a_field": "a_value"}
        assert module.student == self.user
        assert module.module_state_key == usage()
        assert module.course_id == COURSE_KEY
        assert module.module_type == "problem"
        assert self.kvs.get(self.key) == "a_value"


class TestStudentModuleStorage(TestCase):
    """The learner's row for the block holds two fields."""

    databases = DATABASES

    def setUp(self) -> None:
        module = StudentModuleFactory(
            module_state_key=usage(), state=json.dumps({"a_field": "a_value", "b_field": "b_value"})
        )
        self.user = module.student
        self.cache = FieldDataCache([block(usage(), self.user.pk)], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)

    def key(self, name: str) -> Key:
        return state_key(name, self.user.pk)

    def set(self, kv_dict: dict[Key, Any]) -> None:
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.set_many(kv_dict)

    def test_get_existing_field(self) -> None:
        with no_queries(self):
            assert self.kvs.get(self.key("a_field")) == "a_value"

    def test_get_missing_field(self) -> None:
        with no_queries(self), pytest.raises(KeyError):
            self.kvs.get(self.key("not_a_field"))

    def test_set_existing_field(self) -> None:
        self.set({self.key("a_field"): "new_value"})
        assert StudentModule.objects.count() == 1
        assert stored_state() == {"a_field": "new_value", "b_field": "b_value"}

    def test_set_missing_field(self) -> None:
        self.set({self.key("not_a_field"): "new_value"})
        assert StudentModule.objects.count() == 1
        assert stored_state() == {
            "a_field": "a_value",
            "b_field": "b_value",
            "not_a_field": "new_value",
        }

    def test_delete_existing_field(self) -> None:
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.kvs.delete(self.key("a_field"))
        assert StudentModule.objects.count() == 1
        assert stored_state() == {"b_field": "b_value"}
        assert not self.kvs.has(self.key("a_field"))
        with pytest.raises(KeyError):
            self.kvs.get(self.key("a_field"))

    def test_delete_missing_field(self) -> None:
        with no_queries(self), pytest.raises(KeyError):
            self.kvs.delete(self.key("not_a_field"))
        assert stored_state() == {"a_field": "a_value", "b_field": "b_value"}

    def test_has_existing_field(self) -> None:
        with no_queries(self):
            assert self.kvs.has(self.key("a_field"))

    def test_has_missing_field(self) -> None:
        with no_queries(self):
            assert not self.kvs.has(self.key("not_a_field"))

    def test_set_many(self) -> None:
        kv_dict = {self.key("field_a"): "new value", self.key("field_b"): "newer value"}
        self.set(kv_dict)
        for key, value in kv_dict.items():
            assert self.kvs.get(key) == value
        assert stored_state() == {
            "a_field": "a_value",
            "b_field": "b_value",
            "field_a": "new value",
            "field_b": "newer value",
        }

    def test_reads_are_copies(self) -> None:
        # A block that mutates what it read must not change the cache behind the database's back.
        self.set({self.key("list"): [1, {"x": 1}]})
        self.kvs.get(self.key("list"))[1]["x"] = 2
        assert self.kvs.get(self.key("list")) == [1, {"x": 1}]

    def test_deleting_the_last_field_hides_the_row(self) -> None:
        for name in ("a_field", "b_field"):
            with self.captureOnCommitCallbacks(using="default", execute=True):
                self.kvs.delete(self.key(name))
        # '{}' means stored, then deleted (SPEC §3): the row stays, reads see nothing.
        assert StudentModule.objects.get().state == "{}"
        assert len(self.cache) == 0
        assert len(FieldDataCache([block(usage(), self.user.pk)], COURSE_KEY, self.user)) == 0


class TestInvisibleStates(TestCase):
    """NULL (never stored) and '{}' (deleted) states read as missing."""

    databases = DATABASES

    def test_null_and_empty_states(self) -> None:
        user = UserFactory()
        set_score(user.pk, usage("scored"), 1.0, 2.0)  # creates the row with state NULL
        StudentModuleFactory(student=user, module_state_key=usage("emptied"), state="{}")
        assert StudentModule.objects.get(module_state_key=usage("scored")).state is None

        blocks = [block(usage(name), user.pk) for name in ("scored", "emptied")]
        kvs = DjangoKeyValueStore(FieldDataCache(blocks, COURSE_KEY, user))

        with no_queries(self):
            for name in ("scored", "emptied"):
                key = state_key("answer", user.pk, usage(name))
                assert not kvs.has(key)
                with pytest.raises(KeyError):
                    kvs.get(key)
                with pytest.raises(KeyError):
                    kvs.delete(key)

        with self.captureOnCommitCallbacks(using="default", execute=True):
            kvs.set(state_key("answer", user.pk, usage("scored")), 42)
        scored = StudentModule.objects.get(module_state_key=usage("scored"))
        assert (json.loads(scored.state), scored.grade, scored.max_grade) == ({"answer": 42}, 1, 2)


class PerFieldStorageTests:
    """One per-field scope (summary, preferences, info): one row per field.

    Subclasses name the scope, the factory of an existing row and how keys are built.
    """

    databases = DATABASES
    scope: ClassVar[Any]
    model: ClassVar[Any]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.user = UserFactory()
        self.create_existing()
        block_ = block(
            usage(), self.user.pk, block_class(self.scope, "existing_field", "other_existing_field")
        )
        self.cache = FieldDataCache([block_], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)

    def create_existing(self) -> None:
        raise NotImplementedError

    def key(self, name: str) -> Key:
        raise NotImplementedError

    def values(self) -> dict[str, Any]:
        return {row.field_name: json.loads(row.value) for row in self.model.objects.all()}

    def test_set_and_get_existing_field(self) -> None:
        self.kvs.set(self.key("existing_field"), "test_value")
        with no_queries(self):  # type: ignore[arg-type]
            assert self.kvs.get(self.key("existing_field")) == "test_value"

    def test_get_existing_field(self) -> None:
        with no_queries(self):  # type: ignore[arg-type]
            assert self.kvs.get(self.key("existing_field")) == "old_value"

    def test_get_missing_field(self) -> None:
        with no_queries(self), pytest.raises(KeyError):  # type: ignore[arg-type]
            self.kvs.get(self.key("missing_field"))

    def test_set_existing_field(self) -> None:
        self.kvs.set(self.key("existing_field"), "new_value")
        assert self.values() == {"existing_field": "new_value"}

    def test_set_missing_field(self) -> None:
        self.kvs.set(self.key("missing_field"), "new_value")
        assert self.values() == {"existing_field": "old_value", "missing_field": "new_value"}

    def test_delete_existing_field(self) -> None:
        self.kvs.delete(self.key("existing_field"))
        assert self.values() == {}
        assert not self.kvs.has(self.key("existing_field"))

    def test_delete_missing_field(self) -> None:
        with no_queries(self), pytest.raises(KeyError):  # type: ignore[arg-type]
            self.kvs.delete(self.key("missing_field"))
        assert self.values() == {"existing_field": "old_value"}

    def test_has_existing_field(self) -> None:
        with no_queries(self):  # type: ignore[arg-type]
            assert self.kvs.has(self.key("existing_field"))

    def test_has_missing_field(self) -> None:
        with no_queries(self):  # type: ignore[arg-type]
            assert not self.kvs.has(self.key("missing_field"))

    def test_set_many(self) -> None:
        kv_dict = {
            self.key("existing_field"): "new value",
            self.key("other_existing_field"): "newer value",
        }
        self.kvs.set_many(kv_dict)
        for key, value in kv_dict.items():
            assert self.kvs.get(key) == value
        assert self.values() == {
            "existing_field": "new value",
            "other_existing_field": "newer value",
        }

    def test_len_counts_rows(self) -> None:
        assert len(self.cache) == 1
        self.kvs.set(self.key("missing_field"), 1)
        assert len(self.cache) == 2
        self.kvs.delete(self.key("existing_field"))
        assert len(self.cache) == 1


class TestUserStateSummaryStorage(PerFieldStorageTests, TestCase):
    scope = Scope.user_state_summary
    model = XModuleUserStateSummaryField

    def create_existing(self) -> None:
        UserStateSummaryFactory(usage_id=usage())

    def key(self, name: str) -> Key:
        return summary_key(name)


class TestPreferencesStorage(PerFieldStorageTests, TestCase):
    scope = Scope.preferences
    model = XModuleStudentPrefsField

    def create_existing(self) -> None:
        StudentPrefsFactory(student=self.user, module_type=BlockTypeKeyV1("xblock.v1", "problem"))

    def key(self, name: str) -> Key:
        return prefs_key(name, self.user.pk)


class TestUserInfoStorage(PerFieldStorageTests, TestCase):
    scope = Scope.user_info
    model = XModuleStudentInfoField

    def create_existing(self) -> None:
        StudentInfoFactory(student=self.user)

    def key(self, name: str) -> Key:
        return info_key(name, self.user.pk)


INVALID_SCOPES: list[Any] = [
    Scope(UserScope.ONE, BlockScope.DEFINITION),
    Scope(UserScope.NONE, BlockScope.TYPE),
    Scope(UserScope.NONE, BlockScope.ALL),
    # The same pair as user_state but unnamed: XBlock never builds it, and it is not user_state.
    Scope(UserScope.ONE, BlockScope.USAGE),
    Scope.content,
    Scope.settings,
    Scope.children,
    Scope.parent,
    # Not scopes at all.
    "user_state",
    None,
]


class TestInvalidScopes(TestCase):
    """Only the four user scopes are stored; anything else fails before any statement."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"a": 1}')
        self.cache = FieldDataCache([block(usage(), self.user.pk)], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)

    def test_every_method_raises(self) -> None:
        for scope in INVALID_SCOPES:
            key = Key(scope, self.user.pk, usage(), "a")
            with self.subTest(scope=scope), no_queries(self):
                for call in every_method(self.kvs, key):
                    with pytest.raises(InvalidScopeError) as info:
                        call()
                    # XBlock's InvalidScopeError keeps its text in .message; str() has it too.
                    assert "user scopes" in str(info.value)
                    assert str(info.value) == info.value.message

    def test_set_many_with_one_invalid_key_writes_nothing(self) -> None:
        kv_dict = {
            state_key("a", self.user.pk): 2,
            info_key("nickname", self.user.pk): "x",
            Key(Scope.settings, None, usage(), "title"): "oops",
        }
        with no_queries(self), pytest.raises(InvalidScopeError):
            self.kvs.set_many(kv_dict)
        assert stored_state() == {"a": 1}
        assert self.kvs.get(state_key("a", self.user.pk)) == 1
        assert not XModuleStudentInfoField.objects.exists()


class TestOtherUserKeys(TestCase):
    """A key of another learner raises WrongUserError (an AssertionError, as Open edX's assert).

    Open edX used a bare ``assert``, which ``python -O`` strips: the key would then read or
    write the other learner's data. kvstate raises explicitly (SPEC §8.4).
    """

    databases = DATABASES

    def setUp(self) -> None:
        self.user, self.other = UserFactory(), UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"a": 1}')
        self.cache = FieldDataCache([block(usage(), self.user.pk)], COURSE_KEY, self.user)
        self.kvs = DjangoKeyValueStore(self.cache)

    def test_every_method_and_scope_raises(self) -> None:
        for key in (
            state_key("a", self.other.pk),
            prefs_key("theme", self.other.pk),
            info_key("nickname", self.other.pk),
        ):
            with self.subTest(scope=key.scope.name), no_queries(self):
                for call in every_method(self.kvs, key):
                    with pytest.raises(WrongUserError, match=str(self.other.pk)):
                        call()
        assert issubclass(WrongUserError, AssertionError)
        assert stored_state() == {"a": 1}

    def test_set_many_with_one_foreign_key_writes_nothing(self) -> None:
        with no_queries(self), pytest.raises(WrongUserError):
            self.kvs.set_many({state_key("a", self.user.pk): 2, state_key("a", self.other.pk): 3})
        assert stored_state() == {"a": 1}

    def test_summary_keys_belong_to_nobody(self) -> None:
        # user_state_summary is shared by all learners: its keys carry no user.
        self.kvs.set(summary_key("tally"), 3)
        assert self.kvs.get(summary_key("tally")) == 3


def test_wrong_user_raises_under_python_optimize() -> None:
    """``python -O`` strips asserts; the wrong-user check must survive it."""
    script = textwrap.dedent(
        """
        import sys
        import django
        django.setup()
        from django.contrib.auth import get_user_model
        from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
        from kvstate.validation import WrongUserError
        from tests.blocks import COURSE_KEY, state_key

        assert False, "asserts must be stripped in this interpreter"
        """
    )
    # The `assert False` above proves -O is in effect; the check itself follows.
    script += textwrap.dedent(
        """
        if sys.flags.optimize != 1:
            sys.exit("not running under python -O")
        user = get_user_model()(pk=1, username="one")
        kvs = DjangoKeyValueStore(FieldDataCache([], COURSE_KEY, user))  # no blocks: no query
        try:
            kvs.get(state_key("a", 2))
        except WrongUserError as exc:
            print("raised:", exc)
        else:
            print("NOT RAISED")
            sys.exit(1)
        """
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PATH": "/usr/bin:/bin",
            "PYTHONWARNINGS": "ignore",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "raised: key for user 2" in result.stdout
