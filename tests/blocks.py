"""Blocks, asides and keys shared by the model_data tests.

The blocks are real XBlock classes built on XBlock's own test runtime, so the keys the tests
use are the ones ``KvsFieldData`` builds (:func:`key`). :class:`TreeBlock` is a plain stand-in
for a block with children: it has exactly what ``FieldDataCache`` reads (``fields``,
``scope_ids``, ``entry_point``, ``has_children``, ``get_children()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.db import connections
from opaque_keys.edx.asides import AsideUsageKeyV1, AsideUsageKeyV2
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator
from xblock.core import XBlock, XBlockAside
from xblock.fields import Any as AnyField
from xblock.fields import Scope, ScopeIds, String
from xblock.runtime import KeyValueStore, KvsFieldData
from xblock.test.tools import TestRuntime

from kvstate.model_data import FieldDataCache
from kvstate.models import StudentModuleHistory

COURSE_KEY = CourseLocator("kvstate", "ModelData", "2025")
OTHER_COURSE_KEY = CourseLocator("kvstate", "Elsewhere", "2025")
ASIDE_TYPE = "note_aside"
Key = KeyValueStore.Key


def usage(name: str = "p1", block_type: str = "problem", course: Any = COURSE_KEY) -> UsageKey:
    return course.make_usage_key(block_type, name)


class StateBlock(XBlock):
    """A block with fields in every user scope, plus authored fields that kvstate never loads."""

    answer = AnyField(scope=Scope.user_state)
    attempts = AnyField(scope=Scope.user_state)
    tally = AnyField(scope=Scope.user_state_summary)
    theme = AnyField(scope=Scope.preferences)
    nickname = AnyField(scope=Scope.user_info)
    title = String(scope=Scope.settings)
    body = String(scope=Scope.content)


class AuthoredBlock(XBlock):
    """A block without user-scope fields."""

    title = String(scope=Scope.settings)


class ScoredBlock(StateBlock):
    """A block that is graded, as capa problems are."""

    has_score = True


class ConditionalBlock(XBlock):
    """Like Open edX's conditional block: it shows its children once its sources are done.

    Its sources are not its children, so a cache over its descendants holds their state only
    because ``FieldDataCache`` follows ``get_required_block_descriptors()``, as Open edX's does.
    """

    has_children = True
    shown = AnyField(scope=Scope.user_state)

    def get_required_block_descriptors(self) -> list[XBlock]:
        return list(self.sources)

    def get_children(self, usage_id_filter: Any = None) -> list[XBlock]:
        # The test runtime has no content store to load children from.
        return list(getattr(self, "child_blocks", []))

    def set_sources(self, *sources: XBlock) -> ConditionalBlock:
        self.sources = sources
        return self


class NoteAside(XBlockAside):
    """An aside with fields in every user scope; ``answer``/``theme`` share StateBlock's names."""

    answer = AnyField(scope=Scope.user_state)
    votes = AnyField(scope=Scope.user_state_summary)
    theme = AnyField(scope=Scope.preferences)
    badge = AnyField(scope=Scope.user_info)


def block_class(scope: Any, *names: str) -> type[XBlock]:
    """Return an XBlock class with one field in ``scope`` for each of ``names``."""
    fields = {name: AnyField(scope=scope) for name in names}
    return type(f"{scope.name.title().replace('_', '')}Block", (XBlock,), fields)


_runtime = TestRuntime()


def block(
    usage_key: UsageKey | None = None,
    user_id: Any = None,
    block_class: type[XBlock] = StateBlock,
    block_type: str | None = None,
) -> XBlock:
    """Return an instance of ``block_class`` for ``usage_key`` and learner ``user_id``."""
    usage_key = usage_key or usage()
    block_type = block_type or usage_key.block_type
    return _runtime.construct_xblock_from_class(
        block_class, ScopeIds(user_id, block_type, usage_key, usage_key)
    )


def aside(parent: XBlock, aside_class: type[XBlockAside] = NoteAside, v1: bool = False) -> Any:
    """Return the aside of type ``ASIDE_TYPE`` on ``parent`` (V2 usage key unless ``v1``)."""
    usage_key = parent.scope_ids.usage_id
    key_class = AsideUsageKeyV1 if v1 else AsideUsageKeyV2
    ids = ScopeIds(
        parent.scope_ids.user_id, ASIDE_TYPE, usage_key, key_class(usage_key, ASIDE_TYPE)
    )
    return _runtime.construct_xblock_from_class(aside_class, ids)


def key(block_: Any, field_name: str) -> Key:
    """Return the key XBlock's ``KvsFieldData`` builds for ``field_name`` of ``block_``."""
    return KvsFieldData(None)._key(block_, field_name)


#: Decorate a test to make ``XBlockAside.load_class(ASIDE_TYPE)`` find :class:`NoteAside`, as an
#: installed aside's entry point would.
with_note_aside = XBlockAside.register_temp_plugin(NoteAside, ASIDE_TYPE)


# Keys by hand, in the shapes KvsFieldData gives them (see NOTES.md), for tests that need a key
# no block would build (another learner, a bad scope, a bad name).


def state_key(name: str, user_id: Any, usage_key: Any = None) -> Key:
    return Key(Scope.user_state, user_id, usage_key or usage(), name)


def summary_key(name: str, usage_key: Any = None) -> Key:
    return Key(Scope.user_state_summary, None, usage_key or usage(), name)


def prefs_key(
    name: str, user_id: Any, block_type: Any = "problem", family: str = "xblock.v1"
) -> Key:
    return Key(Scope.preferences, user_id, block_type, name, family)


def info_key(name: str, user_id: Any) -> Key:
    return Key(Scope.user_info, user_id, None, name)


class TreeBlock:
    """A block with children, carrying just what ``FieldDataCache`` reads from a block."""

    entry_point = "xblock.v1"
    fields = StateBlock.fields

    def __init__(self, name: str, *children: TreeBlock, user_id: Any = None) -> None:
        usage_key = usage(name, "vertical")
        self.scope_ids = ScopeIds(user_id, "vertical", usage_key, usage_key)
        self.children = list(children)
        self.has_children = bool(children)

    def get_children(self) -> list[TreeBlock]:
        return list(self.children)


def rebuilt(
    cache: FieldDataCache, blocks: list[Any], asides: list[Any] | None = None
) -> FieldDataCache:
    """Return a fresh cache over ``blocks`` for the same learner and context: what the DB holds."""
    return FieldDataCache(blocks, cache.course_id, cache.user, asides=asides)


ALIASES = ("default", "student_module_history")


@contextlib.contextmanager
def no_queries(test: Any) -> Iterator[None]:
    """Assert, in a Django test, that no statement reaches either database alias."""
    with contextlib.ExitStack() as stack:
        for alias in ALIASES:
            stack.enter_context(test.assertNumQueries(0, using=alias))
        yield


class HistoryTableOnDefault:
    """Create the history table on ``default`` for a test class that routes history there.

    The router migrates it onto its own alias only. Created outside the class transaction:
    SQLite's schema editor refuses to run inside one.
    """

    @classmethod
    def setUpClass(cls) -> None:
        with connections["default"].schema_editor() as editor:
            editor.create_model(StudentModuleHistory)
        super().setUpClass()  # type: ignore[misc]

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()  # type: ignore[misc]
        with connections["default"].schema_editor() as editor:
            editor.delete_model(StudentModuleHistory)
