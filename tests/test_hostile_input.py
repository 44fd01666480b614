"""Hostile input: refused with a clear error before any SQL, or stored and read back exactly.

Every case goes through the user_state path (one JSON text per block), the per-field paths
(user_state_summary, preferences, user_info) and, where it applies, the user state client.
A refusal must raise ``TypeError``/``ValueError``/``InvalidScopeError``/``WrongUserError``
before any statement on either alias, and leave all five tables as they were; an acceptance
must read back exactly, from the same cache and from a rebuilt one, and touch nothing else.
Never may the database be the one to refuse.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.test import TestCase, override_settings
from opaque_keys import InvalidKeyError
from opaque_keys.edx.keys import UsageKey
from xblock.exceptions import InvalidScopeError
from xblock.fields import BlockScope, Scope, ScopeBase, UserScope

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from kvstate.validation import WrongUserError
from tests.underfire import (
    COURSE,
    PER_FIELD_SCOPES,
    PROBLEM,
    USER_SCOPES,
    Key,
    assert_exact,
    key,
    new_store,
    probe_block,
    snapshot,
)

log = logging.getLogger("tests.hostile_input")

ALIASES = ("default", "student_module_history")
#: What a refusal may raise. ``WrongUserError`` is an ``AssertionError`` (Open edX asserted).
REFUSALS = (TypeError, ValueError, InvalidScopeError, WrongUserError)

NOT_JSON: dict[str, Any] = {
    "set": {1, 2},
    "object": object(),
    "bytes": b"bytes",
    "nested_bytes": {"a": [b"x"]},
    "complex": 1j,
    "function": len,
}
NOT_FINITE: dict[str, Any] = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "minus_infinity": float("-inf"),
    "nested_nan": {"a": [1.0, float("nan")]},
}
BAD_NAMES: dict[str, Any] = {
    "empty": "",
    "int": 5,
    "none": None,
    "bytes": b"name",
    "tuple": ("a",),
}
#: Names each path must either refuse up front or store exactly (and apart from all others).
ODD_NAMES: dict[str, str] = {
    "double_quote": 'a"b',
    "single_quote": "a'b",
    "backslash": "a\\b",
    "dot": "a.b",
    "dollar": "$",
    "json_path": "$.a",
    "json_path_quoted": '$."a"',
    "json_index": "a[0]",
    "percent": "%s",
    "non_bmp": "𝄞😀",
    "nul": "a\x00b",
    "lone_surrogate": "a\ud800b",
    "trailing_space": "a ",
    "trailing_newline": "a\n",
    "leading_space": " a",
    "tab": "a\tb",
    "upper": "A",
    "accented": "á",
    "long_64": "n" * 64,
    "long_65": "n" * 65,
    "long_300": "n" * 300,
}


@contextmanager
def statements() -> Iterator[list[str]]:
    """Record every statement sent on either alias, before it runs (so failed ones count too)."""
    sent: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    with ExitStack() as stack:
        for alias in ALIASES:
            stack.enter_context(connections[alias].execute_wrapper(record))
        yield sent


def message(error: BaseException) -> str:
    """Return an error's text (XBlock's ``InvalidScopeError`` keeps it in ``.message``)."""
    return str(error) or getattr(error, "message", "")


class HostileInputTestCase(TestCase):
    databases = set(ALIASES)

    def setUp(self) -> None:
        self.user = UserFactory()
        self.other = UserFactory()
        self.cache, self.kvs = new_store(self.user, [PROBLEM], ["a", "bystander"])
        # A value in every scope that no hostile write may touch.
        self.kvs.set_many(
            {key(scope, self.user.pk, PROBLEM, "bystander"): "untouched" for scope in USER_SCOPES}
        )
        self.tried = 0

    def tearDown(self) -> None:
        log.info(
            "%s [%s]: %d hostile inputs tried",
            self.id().rsplit(".", 1)[-1],
            connections["default"].vendor,
            self.tried,
        )

    def refused(self, write: Callable[[], Any], *, reads: int = 0) -> BaseException:
        """Assert ``write`` raises a clear error after ``reads`` reads and no write; return it."""
        self.tried += 1
        before = snapshot()
        with statements() as captured:
            try:
                write()
            except REFUSALS as exc:
                error = exc
            else:
                raise AssertionError("accepted, expected a refusal")
        assert len(captured) == reads, captured
        assert not any(_writes(sql) for sql in captured), captured
        assert snapshot() == before
        assert message(error), "the error says nothing"
        return error

    def refused_or_exact(
        self,
        label: str,
        write: Callable[[], Any],
        read: Callable[[Any], Any],
        value: Any,
        *,
        names: tuple[str, ...] = (),
        scope: ScopeBase | None = None,
        rebuild: Callable[[], Any] | None = None,
    ) -> str:
        """Assert ``write`` is refused before any SQL, or its value reads back exactly.

        ``read(kvs)`` reads the value back through the same store and through a rebuilt one
        (``rebuild()``, by default one declaring ``names`` in ``scope``). Returns "refused" or
        "stored".
        """
        self.tried += 1
        before = snapshot()
        refusal: BaseException | None = None
        try:
            # A savepoint per case, so that a case the database refuses cannot poison the next.
            with transaction.atomic(), statements() as captured:
                write()
        except REFUSALS as exc:
            refusal = exc
        except DatabaseError as exc:
            raise AssertionError(f"{label}: refused by the database, not up front") from exc
        if refusal is not None:
            assert not any(_writes(sql) for sql in captured), (
                f"{label}: refused by the database, not up front: {refusal!r}"
            )
            assert snapshot() == before, f"{label}: refused but changed the tables"
            return "refused"
        rebuilt = rebuild() if rebuild is not None else self.rebuilt(names, scope)
        for cache_label, kvs in (("same", self.kvs), ("rebuilt", rebuilt)):
            assert_exact(read(kvs), value, f"{label} ({cache_label} cache)")
        self.assert_bystanders()
        return "stored"

    def rebuilt(self, names: tuple[str, ...] = (), scope: ScopeBase | None = None) -> Any:
        """Return a store a new request builds, declaring ``names`` in ``scope`` only."""
        block = probe_block(PROBLEM, self.user.pk, ["a", "bystander"])
        if scope is not None:
            block.fields.update(probe_block(PROBLEM, self.user.pk, names, [scope]).fields)
        return DjangoKeyValueStore(FieldDataCache([block], COURSE, self.user))

    def assert_bystanders(self) -> None:
        kvs = self.rebuilt()
        for scope in USER_SCOPES:
            assert kvs.get(key(scope, self.user.pk, PROBLEM, "bystander")) == "untouched"


def _writes(sql: str) -> bool:
    return not sql.lstrip().upper().startswith(("SELECT", "SAVEPOINT", "RELEASE", "ROLLBACK"))


class ValueTests(HostileInputTestCase):
    """Values JSON cannot hold, NaN/Infinity, oversize states: refused before any SQL."""

    def test_values_json_cannot_hold_are_refused_in_every_path(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        for label, value in {**NOT_JSON, **NOT_FINITE}.items():
            for scope in USER_SCOPES:
                with self.subTest(value=label, scope=scope.name):
                    k = key(scope, self.user.pk, PROBLEM, "a")
                    error = self.refused(lambda k=k, value=value: self.kvs.set(k, value))
                    expected = ValueError if label in NOT_FINITE else TypeError
                    assert isinstance(error, expected), error
                    assert "'a'" in str(error)  # names the field
                    assert not self.kvs.has(k)
            with self.subTest(value=label, path="client"):
                # The client checks a block's values in one dump; the error still names the
                # field among good ones.
                error = self.refused(
                    lambda value=value: client.set(
                        self.user.username, PROBLEM, {"ok": 1, "a": value, "z": [2]}
                    )
                )
                expected = ValueError if label in NOT_FINITE else TypeError
                assert isinstance(error, expected), error
                assert "'a'" in str(error)

    def test_set_many_with_one_bad_value_writes_nothing(self) -> None:
        good = {key(scope, self.user.pk, PROBLEM, "a"): 1 for scope in USER_SCOPES}
        for scope in USER_SCOPES:
            with self.subTest(scope=scope.name):
                bad = {**good, key(scope, self.user.pk, PROBLEM, "b"): float("nan")}
                self.refused(lambda bad=bad: self.kvs.set_many(bad))
                assert not any(self.kvs.has(k) for k in good)

    @override_settings(KVSTATE_MAX_VALUE_BYTES=1000)
    def test_oversize_values_and_states_are_refused(self) -> None:
        big = "x" * 1000  # serialised with its quotes: 1002 bytes
        for scope in USER_SCOPES:
            with self.subTest(scope=scope.name, what="one value"):
                self.refused(
                    lambda scope=scope: self.kvs.set(key(scope, self.user.pk, PROBLEM, "a"), big)
                )
        # Each value fits; the block's whole state would not.
        half = "x" * 500
        self.kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, "a"), half)
        with self.subTest(what="whole user_state, key-value store"):
            self.refused(
                lambda: self.kvs.set(key(Scope.user_state, self.user.pk, PROBLEM, "b"), half)
            )
        with self.subTest(what="whole user_state, client"):
            client = DjangoXBlockUserStateClient(self.user)
            # The client has no cache: it reads the stored state (1 statement) to merge.
            error = self.refused(
                lambda: client.set(self.user.username, PROBLEM, {"b": half}), reads=1
            )
            assert "KVSTATE_MAX_VALUE_BYTES" in str(error)
        # Exactly at the limit is fine (nothing is truncated either way).
        fits = "x" * 998
        self.kvs.set(key(Scope.user_info, self.user.pk, PROBLEM, "a"), fits)
        assert self.rebuilt().get(key(Scope.user_info, self.user.pk, PROBLEM, "a")) == fits

    def test_lossy_json_values_read_back_as_the_database_holds_them(self) -> None:
        # Python's json turns tuples into lists and non-str keys into strings, as Open edX's
        # text column does. The cache must show what the database holds, not what was passed.
        for scope in USER_SCOPES:
            with self.subTest(scope=scope.name):
                k = key(scope, self.user.pk, PROBLEM, "a")
                self.kvs.set(k, {"t": (1, 2), 3: "three", None: "none", True: "yes"})
                expected = {"t": [1, 2], "3": "three", "null": "none", "true": "yes"}
                assert_exact(self.kvs.get(k), expected)
                assert_exact(self.rebuilt().get(k), expected)


class NameTests(HostileInputTestCase):
    """Field names: non-str and empty refused; the rest refused up front or stored exactly."""

    def test_non_str_and_empty_names_are_refused_in_every_path(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        for label, name in BAD_NAMES.items():
            for scope in USER_SCOPES:
                with self.subTest(name=label, scope=scope.name):
                    k = key(scope, self.user.pk, PROBLEM, name)
                    for call in (
                        lambda k=k: self.kvs.set(k, 1),
                        lambda k=k: self.kvs.get(k),
                        lambda k=k: self.kvs.has(k),
                        lambda k=k: self.kvs.delete(k),
                    ):
                        self.refused(call)
            with self.subTest(name=label, path="client"):
                self.refused(lambda name=name: client.set(self.user.username, PROBLEM, {name: 1}))
                if isinstance(name, str) or name is None:
                    continue  # delete_many(fields=None) means "every field"
                self.refused(
                    lambda name=name: client.delete(self.user.username, PROBLEM, fields=[name])
                )

    def test_odd_names_are_refused_up_front_or_stored_exactly(self) -> None:
        outcomes: dict[tuple[str, str], str] = {}
        for label, name in ODD_NAMES.items():
            for scope in USER_SCOPES:
                with self.subTest(name=label, scope=scope.name):
                    k = key(scope, self.user.pk, PROBLEM, name)
                    value = {"name": name}
                    outcomes[label, scope.name] = self.refused_or_exact(
                        f"{label} in {scope.name}",
                        lambda k=k, value=value: self.kvs.set(k, value),
                        lambda kvs, k=k: kvs.get(k),
                        value,
                        names=(name,),
                        scope=scope,
                    )
        # user_state keeps names inside its JSON text: every str is a name there.
        assert all(outcomes[label, "user_state"] == "stored" for label in ODD_NAMES)
        # The per-field columns hold 64 characters; longer names are refused, not truncated.
        for scope in PER_FIELD_SCOPES:
            assert outcomes["long_64", scope.name] == "stored"
            assert outcomes["long_65", scope.name] == "refused"
            # Each backend must decide the same way (the database never decides).
            for label in ("nul", "lone_surrogate"):
                assert outcomes[label, scope.name] == outcomes[label, "user_info"]

    def test_client_stores_odd_names_exactly(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        state = {name: label for label, name in ODD_NAMES.items()}
        client.set(self.user.username, PROBLEM, state)
        fresh = DjangoXBlockUserStateClient(self.user).get(self.user.username, PROBLEM).state
        assert_exact(fresh, {"bystander": "untouched", **state})
        # The key-value store reads the client's names back exactly too.
        kvs = self.rebuilt(tuple(ODD_NAMES.values()), Scope.user_state)
        for label, name in ODD_NAMES.items():
            assert kvs.get(key(Scope.user_state, self.user.pk, PROBLEM, name)) == label

    def test_names_that_differ_only_in_case_space_or_accent_are_distinct(self) -> None:
        names = ["b", "B", "b ", " b", "á", "a", "a\u0301"]
        for scope in USER_SCOPES:
            with self.subTest(scope=scope.name):
                self.kvs.set_many({key(scope, self.user.pk, PROBLEM, n): n for n in names})
                kvs = new_store(self.user, [PROBLEM], names)[1]
                for name in names:
                    assert kvs.get(key(scope, self.user.pk, PROBLEM, name)) == name


class KeyTests(HostileInputTestCase):
    """Usage keys, block types and users that do not fit: refused before any SQL."""

    def test_key_strings_with_trailing_whitespace_do_not_parse(self) -> None:
        # opaque-keys refuses them at parse time, so they never reach kvstate as keys...
        for suffix in ("\n", " ", "\t", "\r\n"):
            with self.subTest(suffix=repr(suffix)), self.assertRaises(InvalidKeyError):
                UsageKey.from_string(str(PROBLEM) + suffix)
        # ...and a string passed where a key belongs is refused, not parsed or stored.
        client = DjangoXBlockUserStateClient(self.user)
        text = str(PROBLEM) + "\n"
        self.refused(lambda: self.kvs.set(Key(Scope.user_state, self.user.pk, text, "a"), 1))
        self.refused(lambda: self.kvs.set(Key(Scope.user_state_summary, None, text, "a"), 1))
        self.refused(lambda: client.set(self.user.username, text, {"a": 1}))
        self.refused(lambda: list(client.get_many(self.user.username, [text])))

    def test_long_block_types_and_keys_are_refused(self) -> None:
        long_type = COURSE.make_usage_key("t" * 33, "x")
        fits_type = COURSE.make_usage_key("t" * 32, "x")
        long_key = COURSE.make_usage_key("problem", "x" * 255)
        client = DjangoXBlockUserStateClient(self.user)
        for label, usage_key in (("block type of 33", long_type), ("key over 255", long_key)):
            with self.subTest(usage_key=label):
                error = self.refused(
                    lambda usage_key=usage_key: self.kvs.set(
                        Key(Scope.user_state, self.user.pk, usage_key, "a"), 1
                    )
                )
                assert "column" in str(error)
                self.refused(
                    lambda usage_key=usage_key: client.set(self.user.username, usage_key, {"a": 1})
                )
        with self.subTest(usage_key="summary key over 255"):
            self.refused(
                lambda: self.kvs.set(Key(Scope.user_state_summary, None, long_key, "a"), 1)
            )
        # 32 characters fit.
        kvs = new_store(self.user, [fits_type], ["a"])[1]
        kvs.set(Key(Scope.user_state, self.user.pk, fits_type, "a"), 1)
        assert (
            new_store(self.user, [fits_type], ["a"])[1].get(
                Key(Scope.user_state, self.user.pk, fits_type, "a")
            )
            == 1
        )

    PREFERENCES_TYPES: dict[str, str] = {
        "plain": "poll",
        "upper": "Poll",
        "trailing_space": "poll ",
        "trailing_newline": "poll\n",
        "colon": "a:b",
        "looks_like_an_aside_key": "block-type-v1:xblock_asides.v1:poll",
        "nul": "po\x00ll",
        "lone_surrogate": "po\ud800ll",
        "non_bmp": "𝄞",
        "fits_64": "t" * 64,
        "long_65": "t" * 65,
    }

    def test_preferences_block_types(self) -> None:
        # Preferences are keyed by a plain block type string that nothing upstream validates.
        # The aside family's "poll" must stay apart from every one of them.
        aside = Key(Scope.preferences, self.user.pk, "poll", "a", "xblock_asides.v1")
        self.kvs.set(aside, "aside")
        outcomes = {}
        for label, block_type in self.PREFERENCES_TYPES.items():
            with self.subTest(block_type=label):
                k = Key(Scope.preferences, self.user.pk, block_type, "a")
                outcomes[label] = self.refused_or_exact(
                    f"preferences block type {label}",
                    lambda k=k, label=label: self.kvs.set(k, label),
                    lambda kvs, k=k: kvs.get(k),
                    label,
                    rebuild=lambda block_type=block_type: self.store_for_type(block_type),
                )
        # Nothing overwrote anything: every stored type holds its own value.
        for label, block_type in self.PREFERENCES_TYPES.items():
            if outcomes[label] == "stored":
                k = Key(Scope.preferences, self.user.pk, block_type, "a")
                assert self.store_for_type(block_type).get(k) == label, label
        assert self.store_for_type("poll", "xblock_asides.v1").get(aside) == "aside"
        assert outcomes["plain"] == outcomes["upper"] == outcomes["fits_64"] == "stored"
        assert outcomes["long_65"] == "refused"
        for label, bad in {"empty": "", "int": 5, "none": None}.items():
            with self.subTest(block_type=label):
                k = Key(Scope.preferences, self.user.pk, bad, "a")
                self.refused(lambda k=k: self.kvs.set(k, 1))

    def store_for_type(self, block_type: str, family: str = "xblock.v1") -> Any:
        """Return a store over a probe block of type ``block_type`` (preferences are per type)."""
        block = probe_block(PROBLEM, self.user.pk, ["a"], [Scope.preferences])
        block.scope_ids = block.scope_ids._replace(block_type=block_type)
        block.entry_point = family
        return DjangoKeyValueStore(FieldDataCache([block], COURSE, self.user))

    def test_other_users_keys_are_refused(self) -> None:
        for scope in (Scope.user_state, Scope.preferences, Scope.user_info):
            with self.subTest(scope=scope.name):
                k = key(scope, self.other.pk, PROBLEM, "a")
                for call in (
                    lambda k=k: self.kvs.set(k, 1),
                    lambda k=k: self.kvs.get(k),
                    lambda k=k: self.kvs.has(k),
                    lambda k=k: self.kvs.delete(k),
                    lambda k=k: self.kvs.set_many(
                        {key(Scope.user_info, self.user.pk, PROBLEM, "a"): 1, k: 1}
                    ),
                ):
                    error = self.refused(call)
                    assert isinstance(error, WrongUserError)
                    assert str(self.other.pk) in str(error)

    def test_other_users_keys_are_refused_under_python_dash_o(self) -> None:
        # An ``assert`` would vanish under -O; kvstate's check must not.
        script = textwrap.dedent(
            """
            import django
            django.setup()
            from django.contrib.auth.models import User
            from xblock.fields import Scope
            from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
            from kvstate.validation import WrongUserError
            from tests.underfire import COURSE, PROBLEM, key

            assert False, "asserts must be off under -O"
            """
        )
        script = script.replace(
            'assert False, "asserts must be off under -O"',
            textwrap.dedent(
                """
            user = User(pk=1, username="learner")  # never saved: no query may run
            kvs = DjangoKeyValueStore(FieldDataCache([], COURSE, user))
            for scope in (Scope.user_state, Scope.preferences, Scope.user_info):
                try:
                    kvs.set(key(scope, 2, PROBLEM, "a"), 1)
                except WrongUserError as exc:
                    print("refused", scope.name, exc)
                else:
                    raise SystemExit(f"accepted another user's {scope.name} key")
            """
            ),
        )
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        result = subprocess.run(
            [sys.executable, "-O", "-c", script],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("refused") == 3


class ScopeTests(HostileInputTestCase):
    """Only the four user scopes: anything else is refused before any SQL."""

    INVALID: dict[str, Any] = {
        "content": Scope.content,
        "settings": Scope.settings,
        "children": Scope.children,
        "parent": Scope.parent,
        "user_definition": Scope(UserScope.ONE, BlockScope.DEFINITION),
        "none_type": Scope(UserScope.NONE, BlockScope.TYPE),
        "none_all": Scope(UserScope.NONE, BlockScope.ALL),
        "all_usage": Scope(UserScope.ALL, BlockScope.USAGE),
        "string": "user_state",
        "none": None,
    }

    def test_invalid_scopes_are_refused_by_every_method(self) -> None:
        for label, scope in self.INVALID.items():
            with self.subTest(scope=label):
                k = Key(scope, self.user.pk, PROBLEM, "a")
                for call in (
                    lambda k=k: self.kvs.set(k, 1),
                    lambda k=k: self.kvs.get(k),
                    lambda k=k: self.kvs.has(k),
                    lambda k=k: self.kvs.delete(k),
                    lambda k=k: self.kvs.set_many(
                        {key(Scope.user_info, self.user.pk, PROBLEM, "a"): 1, k: 1}
                    ),
                ):
                    error = self.refused(call)
                    assert isinstance(error, InvalidScopeError), error

    def test_the_client_serves_user_state_only(self) -> None:
        client = DjangoXBlockUserStateClient(self.user)
        for scope in (*PER_FIELD_SCOPES, Scope.content, Scope.children):
            with self.subTest(scope=getattr(scope, "name", scope)):
                self.refused(
                    lambda scope=scope: client.set(self.user.username, PROBLEM, {"a": 1}, scope)
                )
                self.refused(
                    lambda scope=scope: list(client.get_many(self.user.username, [PROBLEM], scope))
                )
                self.refused(lambda scope=scope: client.delete(self.user.username, PROBLEM, scope))
