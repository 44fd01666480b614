"""Shared pieces of the "under fire" suites (round-trips, concurrency, faults, hostile input).

Probe blocks that declare the same field names in every user scope, the SPEC §3 values and
names that must round-trip exactly, an exact (type-aware) comparison, and snapshots of the five
tables to prove that a refused write changed nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import router
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator
from xblock.fields import Field, Scope, ScopeBase, ScopeIds
from xblock.runtime import KeyValueStore

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)

Key = KeyValueStore.Key

COURSE = CourseLocator("kvstate", "UnderFire", "2025")
#: History is recorded for ``problem`` blocks by default (SPEC §5), not for ``html``.
PROBLEM = COURSE.make_usage_key("problem", "p1")
PROBLEM_2 = COURSE.make_usage_key("problem", "p2")
HTML = COURSE.make_usage_key("html", "h1")
#: The block type probe blocks keep their preferences under.
PROBE_TYPE = "probe"

USER_SCOPES: tuple[ScopeBase, ...] = (
    Scope.user_state,
    Scope.user_state_summary,
    Scope.preferences,
    Scope.user_info,
)
PER_FIELD_SCOPES: tuple[ScopeBase, ...] = USER_SCOPES[1:]
ALL_MODELS = (
    StudentModule,
    StudentModuleHistory,
    XModuleUserStateSummaryField,
    XModuleStudentPrefsField,
    XModuleStudentInfoField,
)


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


#: SPEC §3: every value Python's json encodes must come back with the same type and value.
EXACT_VALUES: dict[str, Any] = {
    "negative_zero": -0.0,
    "float_1e16": 1e16,
    "big_int": 10**30,
    "big_negative_int": -(10**30),
    "tiny_float": 5e-324,
    "max_float": 1.7976931348623157e308,
    "inexact_sum": 0.1 + 0.2,
    "nul_string": "a\x00b\x00",
    "lone_high_surrogate": "\ud800",
    "lone_low_surrogate": "x\udfffy",
    "nested_200": _nested(200),
    "ten_thousand_keys": {f"k{i}": i for i in range(10_000)},
    "json_null": None,
    "unicode": "héllo wörld ✓ 😀 𝄞 ﷽",
    "bools_and_ints": [True, 1, False, 0, 1.0],
    "empty_things": [[], {}, "", [[]], {"": {}}],
    "odd_keys_object": {"😀": "🎉", "": "empty", "$.a": 1, "a.b": [0.1, -0.0], "\x00": "nul"},
    "sqlish": "'; DROP TABLE courseware_studentmodule; --",
    "percent": "%s %(x)s %%",
}

#: SPEC §3: names that must be stored and read back exactly without touching another field.
HOSTILE_NAMES: tuple[str, ...] = (
    'double"quote',
    "single'quote",
    "back\\slash",
    "dot.ted",
    "$",
    "$.a",
    '$."a"',
    "a.b",
    "a[0]",
    "a.*",
    "😀",
    "𝄞 clef",
    "B",
    "b",
    "b ",
    "é",
    "e",
    "%s",
    "' OR '1'='1",
)
#: Names only the JSON of user_state can hold (the per-field tables' text columns may not).
USER_STATE_ONLY_NAMES: tuple[str, ...] = ("nul\x00name", "lone\ud800surrogate")


def assert_exact(actual: Any, expected: Any, path: str = "$") -> None:
    """Assert ``actual`` is ``expected`` in type and value, down to ``-0.0`` and int vs float."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, float):
        assert actual == expected or (math.isnan(actual) and math.isnan(expected)), path
        assert math.copysign(1, actual) == math.copysign(1, expected), f"{path}: sign of zero"
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), (
            f"{path}: keys {sorted(set(actual) ^ set(expected))[:5]!r} differ"
        )
        for name, value in expected.items():
            assert_exact(actual[name], value, f"{path}[{name!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: length"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_exact(got, want, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@dataclass
class ProbeBlock:
    """What ``FieldDataCache`` reads from a block: fields, scope ids, entry point, children.

    A real XBlock class cannot declare one name in two scopes (a class attribute is one field);
    a probe can, which is how the suites show that scopes never touch each other.
    """

    scope_ids: ScopeIds
    fields: dict[str, Field] = field(default_factory=dict)
    entry_point: str = "xblock.v1"
    has_children: bool = False

    def get_children(self) -> list[Any]:
        return []


def probe_block(
    usage_key: UsageKey,
    user_id: int | None,
    names: Iterable[str],
    scopes: Iterable[ScopeBase] = USER_SCOPES,
) -> ProbeBlock:
    """Return a probe block declaring every name of ``names`` in every scope of ``scopes``."""
    block = ProbeBlock(ScopeIds(user_id, PROBE_TYPE, usage_key, usage_key))
    for scope in scopes:
        for name in names:
            declared = Field(scope=scope)
            declared.__name__ = name  # what XBlock's metaclass does for class attributes
            block.fields[f"{scope.name}:{name}"] = declared
    return block


def key(scope: ScopeBase, user_id: int | None, usage_key: UsageKey, name: str) -> Key:
    """Return the key ``KvsFieldData`` builds for field ``name`` of a probe block in ``scope``."""
    if scope == Scope.user_state:
        return Key(scope, user_id, usage_key, name)
    if scope == Scope.user_state_summary:
        return Key(scope, None, usage_key, name)
    if scope == Scope.preferences:
        return Key(scope, user_id, PROBE_TYPE, name)
    return Key(scope, user_id, None, name)


def new_store(
    user: Any, usage_keys: Iterable[UsageKey], names: Iterable[str]
) -> tuple[FieldDataCache, DjangoKeyValueStore]:
    """Build a cache (as a new request would) over probe blocks declaring ``names``.

    Names only user_state can hold are declared in user_state only: the per-field tables'
    columns cannot even be queried for them on every backend.
    """
    names = list(names)
    per_field = [name for name in names if name not in USER_STATE_ONLY_NAMES]
    blocks = []
    for usage_key in usage_keys:
        block = probe_block(usage_key, user.pk, names, [Scope.user_state])
        block.fields.update(probe_block(usage_key, user.pk, per_field, PER_FIELD_SCOPES).fields)
        blocks.append(block)
    cache = FieldDataCache(blocks, COURSE, user)
    return cache, DjangoKeyValueStore(cache)


MISSING = object()


def visible(kvs: DjangoKeyValueStore, keys: Iterable[Key]) -> dict[Key, Any]:
    """Return what ``kvs`` shows for each key (``MISSING`` when ``has`` is False)."""
    shown: dict[Key, Any] = {}
    for k in keys:
        shown[k] = kvs.get(k) if kvs.has(k) else MISSING
    return shown


def assert_same_view(actual: Mapping[Key, Any], expected: Mapping[Key, Any]) -> None:
    """Assert two ``visible`` results agree exactly."""
    assert set(actual) == set(expected)
    for k, want in expected.items():
        got = actual[k]
        if want is MISSING or got is MISSING:
            assert got is want, f"{k}: {got!r} != {want!r}"
        else:
            assert_exact(got, want, f"{k.scope.name}:{k.field_name!r}")


def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the five tables (each on its own alias), in primary-key order."""
    return {
        model.__name__: list(
            model.objects.using(router.db_for_read(model)).order_by("pk").values_list()
        )
        for model in ALL_MODELS
    }


def stored_states(user_id: int) -> dict[str, dict[str, Any]]:
    """Return a learner's parsed user_state rows by module id (NULL and ``{}`` included)."""
    return {
        str(module_id): json.loads(text) if text else {}
        for module_id, text in StudentModule.objects.filter(student_id=user_id).values_list(
            "module_state_key", "state"
        )
    }
