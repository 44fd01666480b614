"""``FieldDataCache`` and ``DjangoKeyValueStore``: XBlock user-scope fields over kvstate's tables.

A ``FieldDataCache`` prefetches one learner's state for a set of blocks (one query for every
scope that has fields, no join) and then answers ``get``/``has`` from memory. Writes go straight to
the database through :mod:`kvstate.storage` and update the cache only once they have landed, so
the cache always equals what the database holds for this learner.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from django.db import DatabaseError, connections, router
from django.db.models import Model, Q
from django.utils import timezone
from opaque_keys.edx.asides import AsideUsageKeyV1, AsideUsageKeyV2
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.keys import LearningContextKey, UsageKey
from xblock.core import XBlockAside
from xblock.exceptions import InvalidScopeError, KeyValueMultiSaveError
from xblock.fields import Field, ScopeBase
from xblock.plugin import PluginMissingError
from xblock.runtime import KeyValueStore

from kvstate import sql, storage
from kvstate.exceptions import WriteOutcomeUnknown
from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.scores import Score, ScoresClient
from kvstate.storage import ModuleRow, StateChange, Target
from kvstate.validation import (
    PREFERENCES,
    USER_INFO,
    USER_STATE,
    USER_STATE_SUMMARY,
    check_column_text,
    check_field_name,
    check_length,
    check_usage_key,
    check_user,
    to_json,
    user_scope,
)

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

__all__ = [
    "DjangoKeyValueStore",
    "FieldDataCache",
    "InvalidScopeError",
    "InvalidWriteError",
    "Score",
    "ScoresClient",
    "get_score",
    "set_score",
]

log = logging.getLogger(__name__)

#: XBlock's ``KeyValueStore.Key`` namedtuple in annotations (XBlock ships no types).
KvsKey: TypeAlias = Any


class InvalidWriteError(Exception):
    """Writing to a key is disabled. Open edX's name; kvstate itself never raises it."""


def _fresh(value: Any) -> Any:
    """Return a copy a caller may mutate without changing the cache."""
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


def _block_type_key(family: str, block_type: str) -> BlockTypeKeyV1:
    # opaque-keys declares the key's fields abstract and sets them in __init__.
    return BlockTypeKeyV1(family, block_type)  # type: ignore[abstract, no-untyped-call]


def _aside_usage_keys(usage_id: UsageKey, aside_type: str) -> tuple[UsageKey, UsageKey]:
    """Return both spellings of an aside's usage key: runtimes have used each."""
    return (
        AsideUsageKeyV1(usage_id, aside_type),  # type: ignore[abstract, no-untyped-call]
        AsideUsageKeyV2(usage_id, aside_type),  # type: ignore[abstract, no-untyped-call]
    )


@dataclass(frozen=True)
class _Write:
    """A write one scope cache prepared and checked: how to run it, and to record its result.

    ``forget`` is for a write whose outcome is unknown (the connection was lost at COMMIT):
    the cache then neither keeps the old values nor claims the new ones, and reloads the keys
    on their next read.
    """

    run: Callable[[], Any]
    remember: Callable[[Any], None]
    forget: Callable[[], None]
    #: What a write of one existing user_state row changes: ``(target, change, row)``.
    state: tuple[Target, StateChange, ModuleRow] | None = None
    #: What an upsert of per-field rows writes: the model, and a function that returns new
    #: objects by cache key (new on every call: a retry must not reuse a failed attempt's).
    upsert: tuple[type[Model], Callable[[], dict[tuple[str, str], Model]]] | None = None


def _modified(objs: Mapping[tuple[str, str], Model]) -> dict[tuple[str, str], datetime]:
    """Return when each per-field row of ``objs`` (by cache key) was written."""
    return {cache_key: obj.modified for cache_key, obj in objs.items()}  # type: ignore[attr-defined]


def _in_one_statement(user_id: int, writes: list[_Write]) -> list[Any] | None:
    """Run ``writes`` as one statement if they are one block's user_state and per-field values.

    Returns their results, or ``None`` having written nothing (another shape of write, a
    database without the statement, a lost race): the caller then runs them in a transaction.
    """
    first, *rest = writes
    if first.state is None or any(write.upsert is None for write in rest):
        return None
    upserts = [write.upsert for write in rest if write.upsert is not None]
    objects = [new_objects() for _model, new_objects in upserts]
    target, change, row = first.state
    fields = [
        (model, list(objs.values())) for (model, _new), objs in zip(upserts, objects, strict=True)
    ]
    written = storage.write_state_and_fields(user_id, target, change, row, fields)
    if written is None:
        return None
    return [{target: written}, *(_modified(objs) for objs in objects)]


@dataclass(frozen=True)
class _Read:
    """A statement of a cache build, and what keeps the rows it reads."""

    select: sql.Select
    take: Callable[[list[tuple[Any, ...]]], None]


def _read(alias: str, reads: list[_Read]) -> None:
    """Run ``reads`` on ``alias`` in as few statements as they fit in (one, mostly)."""
    found = sql.select_all(connections[alias], [read.select for read in reads])
    for read, rows in zip(reads, found, strict=True):
        read.take(rows)


class _ScopeCache:
    """The part of a ``FieldDataCache`` that holds one scope."""

    scope: ClassVar[ScopeBase]

    def __init__(self, cache: FieldDataCache) -> None:
        self.owner = cache

    @property
    def persistent(self) -> bool:
        return self.owner.persistent

    def load(self, fields: Mapping[Any, set[str]]) -> None:
        """Prefetch the rows of ``fields``: {stored owner: names of this scope's fields}.

        Owners are the strings their rows are stored under (:func:`_owners`), so that building
        a cache neither parses nor hashes opaque keys.
        """
        _read(self.alias(), self.reads(fields))

    def alias(self) -> str:
        """Return the alias this scope's rows are read from.

        The write alias, not the read one: what is read here is merged and written back (a
        replica's stale value would be written back by blocks that read, change and save).
        """
        raise NotImplementedError

    def reads(self, fields: Mapping[Any, set[str]]) -> list[_Read]:
        """Return the statements that read the rows of ``fields`` (see :meth:`load`)."""
        raise NotImplementedError

    def get(self, key: KvsKey) -> Any:
        raise NotImplementedError

    def has(self, key: KvsKey) -> bool:
        raise NotImplementedError

    def last_modified(self, key: KvsKey) -> datetime | None:
        raise NotImplementedError

    def plan_set(self, items: Mapping[KvsKey, Any]) -> _Write:
        raise NotImplementedError

    def plan_delete(self, key: KvsKey) -> _Write:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class UserStateCache(_ScopeCache):
    """``user_state``: one ``StudentModule`` row per block, all fields in one JSON object."""

    scope = USER_STATE

    def __init__(self, cache: FieldDataCache) -> None:
        super().__init__(cache)
        self._rows: dict[tuple[str, str], ModuleRow] = {}
        #: Rows a write of unknown outcome touched: reloaded on their next read.
        self._unknown: dict[tuple[str, str], Target] = {}

    def __len__(self) -> int:
        self._reload_unknown()
        return sum(1 for row in self._rows.values() if row.visible)

    def _target(self, key: KvsKey) -> Target:
        return Target.of(check_usage_key(key.block_scope_id))

    def alias(self) -> str:
        return storage.state_alias()

    def reads(self, fields: Mapping[Any, set[str]]) -> list[_Read]:
        keys = list(fields)

        def take(rows: list[tuple[Any, ...]]) -> None:
            self._rows.update(storage.modules_found(keys, rows))

        selects = storage.module_selects(self.alias(), self.owner.user_id, keys)
        return [_Read(select, take) for select in selects]

    def _reload_unknown(self) -> None:
        if self._unknown:
            self.load({stored: set() for stored in self._unknown})
            self._unknown.clear()

    def _row(self, key: KvsKey) -> ModuleRow | None:
        stored = self._target(key).stored
        if stored in self._unknown:
            self._reload_unknown()
        return self._rows.get(stored)

    def _state(self, key: KvsKey) -> dict[str, Any]:
        row = self._row(key)
        return row.state if row is not None else {}

    def get(self, key: KvsKey) -> Any:
        return _fresh(self._state(key)[key.field_name])

    def has(self, key: KvsKey) -> bool:
        return key.field_name in self._state(key)

    def last_modified(self, key: KvsKey) -> datetime | None:
        row = self._row(key)
        return row.modified if row is not None and row.visible else None

    def plan_set(self, items: Mapping[KvsKey, Any]) -> _Write:
        sets: dict[Target, dict[str, Any]] = {}
        for key, value in items.items():
            to_json(value, key.field_name)  # reject what JSON cannot hold, before any SQL
            sets.setdefault(self._target(key).check(), {})[key.field_name] = value
        changes = {target: StateChange(set_fields=values) for target, values in sets.items()}
        return self._plan(changes)

    def plan_delete(self, key: KvsKey) -> _Write:
        if not self.has(key):
            raise KeyError(key.field_name)
        target = self._target(key)
        return self._plan({target: StateChange(delete_fields=frozenset({key.field_name}))})

    def _plan(self, changes: Mapping[Target, StateChange]) -> _Write:
        known = {t: self._rows[t.stored] for t in changes if t.stored in self._rows}
        # Build every new state now, so that one over the size limit is refused before any
        # statement of any scope runs. (The write engine builds them again from what it
        # finds in the database; they differ only when another writer got there first.)
        texts = {
            t: storage.dump_state(c.apply(known[t].state if t in known else {}))
            for t, c in changes.items()
        }
        if self.persistent:

            def run() -> dict[Target, ModuleRow]:
                return storage.write_user_states(self.owner.user_id, changes, known)
        else:
            now = timezone.now()

            def run() -> dict[Target, ModuleRow]:
                return {
                    t: ModuleRow(None, text, None, None, now, t.module_type)
                    for t, text in texts.items()
                }

        def remember(rows: dict[Target, ModuleRow]) -> None:
            for target, row in rows.items():
                self._rows[target.stored] = row

        def forget() -> None:
            for target in changes:
                self._rows.pop(target.stored, None)
                self._unknown[target.stored] = target

        state = None
        if self.persistent and len(changes) == 1:
            [(target, change)] = changes.items()
            if target in known:
                state = (target, change, known[target])
        return _Write(run, remember, forget, state=state)


class _FieldCache(_ScopeCache):
    """A per-field scope: one row per (owner, field name), values as JSON text."""

    model: ClassVar[type[Model]]
    #: The model field (and column) holding the owner (usage, block type), or None (user_info).
    owner_field: ClassVar[str | None]
    owner_max_length: ClassVar[int] = 255

    def __init__(self, cache: FieldDataCache) -> None:
        super().__init__(cache)
        # (stored owner, field name) -> (value, modified)
        self._values: dict[tuple[str, str], tuple[Any, datetime]] = {}
        #: Keys a write of unknown outcome touched, with their owners: reloaded on next read.
        self._unknown: dict[tuple[str, str], Any] = {}

    def __len__(self) -> int:
        self._reload_unknown()
        return len(self._values)

    # What differs per scope.

    def owner_of(self, key: KvsKey) -> Any:
        """Return the owner object (key) ``key`` is stored under."""
        raise NotImplementedError

    def row_filter(self) -> dict[str, Any]:
        """Return the filter selecting this learner's rows (empty for shared scopes)."""
        return {"student_id": self.owner.user_id}

    # Shared machinery.

    def _stored_owner(self, owner: Any) -> str:
        if self.owner_field is None:
            return ""
        return storage.stored_key(owner)

    def _cache_key(self, key: KvsKey) -> tuple[str, str]:
        return self._stored_owner(self.owner_of(key)), key.field_name

    def alias(self) -> str:
        return router.db_for_write(self.model)

    def reads(self, fields: Mapping[Any, set[str]]) -> list[_Read]:
        names = sorted(set().union(*fields.values()))
        if not names:
            return []
        connection = connections[self.alias()]
        table = self.model._meta.db_table
        learner = [(column, [value]) for column, value in self.row_filter().items()]

        def take(rows: list[tuple[Any, ...]]) -> None:
            for owner, name, text, modified in rows:
                self._values[owner, name] = (json.loads(text), modified)

        # Read as (owner, field name, value, modified), the owner NULL for user_info, to line
        # up with the other scopes' reads in one union (see storage.module_selects).
        if self.owner_field is None:
            columns: tuple[str | None, ...] = (None, "field_name", "value", "modified")
            select = sql.fields_select(
                connection, table, columns, [*learner, ("field_name", names)]
            )
            return [_Read(select, lambda rows: take([("", *row[1:]) for row in rows]))]
        # Owners compared and read as the strings stored (see storage.fetch_modules).
        owner_column = self.owner_field
        columns = (owner_column, "field_name", "value", "modified")
        size = max(sql.max_query_params(connection) - len(names) - len(learner), 1)
        return [
            _Read(
                sql.fields_select(
                    connection,
                    table,
                    columns,
                    [*learner, (owner_column, chunk), ("field_name", names)],
                ),
                take,
            )
            for chunk in storage.chunked(sorted(fields), size)
        ]

    def _reload_unknown(self) -> None:
        if not self._unknown:
            return
        fields: dict[str, set[str]] = {}
        for stored_owner, name in self._unknown:
            fields.setdefault(stored_owner, set()).add(name)
        self.load(fields)
        self._unknown.clear()

    def _fresh_key(self, key: KvsKey) -> tuple[str, str]:
        cache_key = self._cache_key(key)
        if cache_key in self._unknown:
            self._reload_unknown()
        return cache_key

    def get(self, key: KvsKey) -> Any:
        return _fresh(self._values[self._fresh_key(key)][0])

    def has(self, key: KvsKey) -> bool:
        return self._fresh_key(key) in self._values

    def last_modified(self, key: KvsKey) -> datetime | None:
        found = self._values.get(self._fresh_key(key))
        return found[1] if found is not None else None

    def _forget(self, owners: Mapping[tuple[str, str], Any]) -> None:
        for cache_key, owner in owners.items():
            self._values.pop(cache_key, None)
            self._unknown[cache_key] = owner

    def plan_set(self, items: Mapping[KvsKey, Any]) -> _Write:
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        values: dict[tuple[str, str], Any] = {}
        owners: dict[tuple[str, str], Any] = {}
        for key, value in items.items():
            check_field_name(key.field_name, self.model.FIELD_NAME_MAX_LENGTH)  # type: ignore[attr-defined]
            check_column_text("field name", key.field_name)
            owner = self.owner_of(key)
            stored_owner = self._stored_owner(owner)
            if self.owner_field is not None:
                check_length(self.owner_field, stored_owner, self.owner_max_length)
                check_column_text(self.owner_field, stored_owner)
            cache_key = (stored_owner, key.field_name)
            text = to_json(value, key.field_name)
            rows[cache_key] = {"field_name": key.field_name, "value": text, **self.row_filter()}
            if self.owner_field is not None:
                rows[cache_key][self.owner_field] = owner
            values[cache_key] = json.loads(text)
            owners[cache_key] = owner

        def objects() -> dict[tuple[str, str], Model]:
            # New instances on every run: a retried transaction must not reuse ids that the
            # rolled-back attempt was given.
            return {cache_key: self.model(**fields) for cache_key, fields in rows.items()}

        def run() -> dict[tuple[str, str], datetime]:
            if not self.persistent:
                return dict.fromkeys(rows, timezone.now())
            objs = objects()
            storage.upsert_fields(router.db_for_write(self.model), self.model, list(objs.values()))
            return _modified(objs)

        def remember(modified: dict[tuple[str, str], datetime]) -> None:
            for cache_key, when in modified.items():
                self._values[cache_key] = (values[cache_key], when)

        upsert = (self.model, objects) if self.persistent else None
        return _Write(run, remember, lambda: self._forget(owners), upsert=upsert)

    def plan_delete(self, key: KvsKey) -> _Write:
        cache_key = self._fresh_key(key)
        if cache_key not in self._values:
            raise KeyError(key.field_name)
        owner = self.owner_of(key)
        condition = Q(field_name=key.field_name, **self.row_filter())
        if self.owner_field is not None:
            condition &= Q(**{self.owner_field: owner})

        def run() -> None:
            if self.persistent:
                storage.delete_fields(router.db_for_write(self.model), self.model, condition)

        def remember(_: None) -> None:
            del self._values[cache_key]

        return _Write(run, remember, lambda: self._forget({cache_key: owner}))


class UserStateSummaryCache(_FieldCache):
    """``user_state_summary``: per block, shared by every learner."""

    scope = USER_STATE_SUMMARY
    model = XModuleUserStateSummaryField
    owner_field = "usage_id"

    def owner_of(self, key: KvsKey) -> Any:
        return check_usage_key(key.block_scope_id)

    def row_filter(self) -> dict[str, Any]:
        return {}


class PreferencesCache(_FieldCache):
    """``preferences``: per learner and block type (family included)."""

    scope = PREFERENCES
    model = XModuleStudentPrefsField
    owner_field = "module_type"
    owner_max_length = XModuleStudentPrefsField.BLOCK_TYPE_MAX_LENGTH

    def owner_of(self, key: KvsKey) -> Any:
        return _preferences_owner(key.block_family, key.block_scope_id)


@functools.lru_cache(maxsize=1024)
def _preferences_owner(family: str, block_type: object) -> BlockTypeKeyV1:
    """Return the block type key preferences of ``block_type`` in ``family`` are stored under."""
    if not isinstance(block_type, str) or not block_type:
        raise TypeError(f"preferences key needs a block type string, not {block_type!r}")
    type_key = _block_type_key(family, block_type)
    # The column gives back BlockTypeKeyV1.from_string(stored), with a trailing newline
    # stripped: a type that would come back as another would read and overwrite that
    # one's preferences (e.g. 'block-type-v1:xblock_asides.v1:poll' in family xblock.v1).
    stored = str(type_key)
    if stored.endswith("\n") or BlockTypeKeyV1.from_string(stored) != type_key:
        read_back = BlockTypeKeyV1.from_string(stored.rstrip())
        raise ValueError(
            f"preferences block type {block_type!r} of family {family!r} would be "
            f"read back from the database as {read_back!r}, another block type"
        )
    return type_key


class UserInfoCache(_FieldCache):
    """``user_info``: per learner, across all blocks."""

    scope = USER_INFO
    model = XModuleStudentInfoField
    owner_field = None

    def owner_of(self, key: KvsKey) -> Any:
        return None


_SCOPES = (USER_STATE, USER_STATE_SUMMARY, PREFERENCES, USER_INFO)

_SCOPE_CACHES: tuple[type[_ScopeCache], ...] = (
    UserStateCache,
    UserStateSummaryCache,
    PreferencesCache,
    UserInfoCache,
)


class FieldDataCache:
    """One learner's user-scope state for a set of blocks in one learning context.

    Build it over the blocks a request will touch (one query for all the scopes those blocks
    have fields in), extend it with :meth:`add_blocks_to_cache`, and wrap it in a
    :class:`DjangoKeyValueStore`. Anonymous users get a cache that never touches the database;
    ``read_only=True`` turns writes into silent no-ops.
    """

    def __init__(
        self,
        blocks: Iterable[Any],
        course_id: LearningContextKey,
        user: AbstractBaseUser | AnonymousUser,
        asides: Iterable[Any] | None = None,
        read_only: bool = False,
    ) -> None:
        if user is None:
            raise TypeError("FieldDataCache needs a user; pass AnonymousUser() for visitors")
        self.course_id = course_id
        self.user = user
        self.asides = list(asides or [])
        self.read_only = read_only
        self.persistent = bool(user.is_authenticated)
        self.user_id: Any = user.pk if self.persistent else None
        #: Usage keys of the cached blocks that are graded (``has_score``), for a
        #: ``ScoresClient``. Empty for anonymous users, as in Open edX.
        self.scorable_locations: set[UsageKey] = set()
        self.cache: dict[ScopeBase, _ScopeCache] = {
            cache_class.scope: cache_class(self) for cache_class in _SCOPE_CACHES
        }
        self.add_blocks_to_cache(blocks)

    def __repr__(self) -> str:
        return f"<FieldDataCache user={self.user_id!r} course={self.course_id} len={len(self)}>"

    def __len__(self) -> int:
        return sum(len(cache) for cache in self.cache.values())

    # Building

    @classmethod
    def cache_for_block_descendents(
        cls,
        course_id: LearningContextKey,
        user: AbstractBaseUser | AnonymousUser,
        block: Any,
        depth: int | None = None,
        block_filter: Callable[[Any], bool] = lambda block: True,
        asides: Iterable[Any] | None = None,
        read_only: bool = False,
    ) -> FieldDataCache:
        """Return a cache over ``block`` and its descendants (see :meth:`add_block_descendents`)."""
        cache = cls([], course_id, user, asides=asides, read_only=read_only)
        cache.add_block_descendents(block, depth, block_filter)
        return cache

    def add_block_descendents(
        self,
        block: Any,
        depth: int | None = None,
        block_filter: Callable[[Any], bool] = lambda block: True,
    ) -> None:
        """Add ``block`` and its descendants down to ``depth`` levels (``None``: all).

        Descendants are the children and, where a block has them, the blocks it requires
        (``get_required_block_descriptors()``: a conditional block's sources), one level down.
        ``block_filter`` leaves a block out of the cache without pruning its descendants.
        """
        self.add_blocks_to_cache(
            found for found in _descendants(block, depth) if block_filter(found)
        )

    def add_blocks_to_cache(self, blocks: Iterable[Any]) -> None:
        """Prefetch the state of ``blocks`` (and their asides): one query for all their scopes."""
        blocks = list(blocks)
        if not self.persistent or not blocks:
            return
        self.scorable_locations.update(
            block.scope_ids.usage_id for block in blocks if getattr(block, "has_score", False)
        )
        wanted = self._fields_by_scope(blocks)
        # One statement per alias (all of kvstate's tables share the state alias), user_state
        # first: its columns type the union's (see sql.select_all).
        by_alias: dict[str, list[_Read]] = {}
        for scope, fields in wanted.items():
            if fields:
                scope_cache = self.cache[scope]
                by_alias.setdefault(scope_cache.alias(), []).extend(scope_cache.reads(fields))
        for alias, reads in by_alias.items():
            _read(alias, reads)

    def _fields_by_scope(self, blocks: list[Any]) -> dict[ScopeBase, dict[Any, set[str]]]:
        """Return {scope: {stored owner: field names}} for the blocks and their asides."""
        wanted: dict[ScopeBase, dict[Any, set[str]]] = {scope: {} for scope in self.cache}
        asides = [(_aside_type(aside), _aside_names(aside)) for aside in self.asides]
        # Blocks of one class share their fields: sort them by scope once per class.
        names_by_fields: dict[int, dict[ScopeBase, list[str]]] = {}
        for block in blocks:
            usage_id = block.scope_ids.usage_id
            fields = block.fields
            names = names_by_fields.get(id(fields))
            if names is None:
                names = names_by_fields[id(fields)] = _names_by_scope(fields.values())
            _add_fields(wanted, names, usage_id, block.entry_point, block.scope_ids.block_type)
            for aside_type, aside_names in asides:
                for aside_usage in _aside_usage_keys(usage_id, aside_type):
                    if aside_names is None:
                        # An aside type we cannot load: its user_state needs no field names.
                        owner = _owner(USER_STATE, aside_usage, XBlockAside.entry_point, aside_type)
                        wanted[USER_STATE].setdefault(owner, set())
                    else:
                        family = XBlockAside.entry_point
                        _add_fields(wanted, aside_names, aside_usage, family, aside_type)
        return wanted

    # Older names, kept for code written against Open edX.

    def add_descriptors_to_cache(self, descriptors: Iterable[Any]) -> None:
        """Alias of :meth:`add_blocks_to_cache`."""
        self.add_blocks_to_cache(descriptors)

    def add_descriptor_descendents(
        self,
        descriptor: Any,
        depth: int | None = None,
        descriptor_filter: Callable[[Any], bool] = lambda descriptor: True,
    ) -> None:
        """Alias of :meth:`add_block_descendents`."""
        self.add_block_descendents(descriptor, depth, descriptor_filter)

    @classmethod
    def cache_for_descriptor_descendents(
        cls,
        course_id: LearningContextKey,
        user: AbstractBaseUser | AnonymousUser,
        descriptor: Any,
        depth: int | None = None,
        descriptor_filter: Callable[[Any], bool] = lambda descriptor: True,
        asides: Iterable[Any] | None = None,
        read_only: bool = False,
    ) -> FieldDataCache:
        """Alias of :meth:`cache_for_block_descendents`."""
        return cls.cache_for_block_descendents(
            course_id, user, descriptor, depth, descriptor_filter, asides, read_only
        )

    # Reading: from memory only

    # A key of a scope kvstate does not store has no value here, as in Open edX (no query);
    # DjangoKeyValueStore refuses such keys with InvalidScopeError before they get here.

    def get(self, key: KvsKey) -> Any:
        """Return the value of ``key``; ``KeyError`` if it has none."""
        found = self._readable(key)
        if found is None:
            raise KeyError(key.field_name)
        return found[0].get(found[1])

    def has(self, key: KvsKey) -> bool:
        """Return whether ``key`` has a stored value."""
        found = self._readable(key)
        return found is not None and found[0].has(found[1])

    def last_modified(self, key: KvsKey) -> datetime | None:
        """Return when ``key``'s row was last written, or ``None`` if it has no value."""
        found = self._readable(key)
        return None if found is None else found[0].last_modified(found[1])

    # Writing

    def set_many(self, kv_dict: Mapping[KvsKey, Any]) -> None:
        """Store every value of ``kv_dict``, or raise.

        Invalid keys and values raise before any SQL. A database failure raises
        ``KeyValueMultiSaveError([])``: the write is all-or-nothing, so nothing was saved.
        """
        by_scope: dict[ScopeBase, dict[KvsKey, Any]] = {scope: {} for scope in self.cache}
        for key, value in kv_dict.items():
            scope_cache, checked = self._scope_cache(key)
            by_scope[scope_cache.scope][checked] = value
        if self.read_only:
            return
        # Scopes are written in one fixed order, so two requests of one learner lock rows
        # in the same order.
        writes = [self.cache[scope].plan_set(items) for scope, items in by_scope.items() if items]
        try:
            self._run(writes)
        except DatabaseError as exc:
            # [] also when the outcome is unknown (WriteOutcomeUnknown): XBlock then retries
            # every field, which is safe, where naming one that was not saved would lose it.
            raise KeyValueMultiSaveError([]) from exc

    def delete(self, key: KvsKey) -> None:
        """Delete the value of ``key``; ``KeyError`` if it has none."""
        scope_cache, key = self._scope_cache(key)
        if self.read_only:
            return  # before the lookup, as Open edX: a missing key is no error either
        self._run([scope_cache.plan_delete(key)])

    def _run(self, writes: list[_Write]) -> None:
        """Run ``writes`` all-or-nothing, then record them in the cache.

        When the outcome is unknown (:class:`~kvstate.exceptions.WriteOutcomeUnknown`) the
        cache forgets what the writes touched and reloads it on the next read.
        """
        try:
            results = self._run_writes(writes)
        except WriteOutcomeUnknown:
            for write in writes:
                write.forget()
            raise
        for write, result in zip(writes, results, strict=True):
            write.remember(result)

    def _run_writes(self, writes: list[_Write]) -> list[Any]:
        if len(writes) > 1 and self.persistent:
            written = _in_one_statement(self.user_id, writes)
            if written is not None:
                return written
            # Several scopes: one transaction. It joins the caller's transaction if there is
            # one, as Django's own multi-statement writes do; else kvstate owns it and retries
            # it whole after a deadlock, like a single-scope write.
            using = storage.state_alias()

            def attempt() -> list[Any]:
                with storage.committing(using, atomic=True):
                    return [write.run() for write in writes]

            in_transaction = connections[using].in_atomic_block
            return attempt() if in_transaction else storage.retrying_conflicts(using, attempt)
        return [write.run() for write in writes]

    def _readable(self, key: KvsKey) -> tuple[_ScopeCache, KvsKey] | None:
        """Return what :meth:`_scope_cache` does, or ``None`` for a scope kvstate does not store."""
        try:
            return self._scope_cache(key)
        except InvalidScopeError:
            return None

    def _scope_cache(self, key: KvsKey) -> tuple[_ScopeCache, KvsKey]:
        """Return the cache of ``key``'s scope and the key with its named scope; or raise."""
        scope = user_scope(key.scope)
        check_field_name(key.field_name)
        if self.persistent:
            check_user(scope, key.user_id, self.user_id)
        if key.scope is not scope:
            key = key._replace(scope=scope)
        return self.cache[scope], key


def _names_by_scope(fields: Iterable[Field]) -> dict[ScopeBase, list[str]]:
    """Return the names of ``fields`` per kvstate scope (fields of other scopes left out)."""
    names: dict[ScopeBase, list[str]] = {}
    for field in fields:
        for scope in _SCOPES:
            if field.scope == scope:
                names.setdefault(scope, []).append(field.name)
    return names


def _owner(scope: ScopeBase, usage_id: UsageKey, family: str, block_type: str) -> Any:
    """Return what a block's rows of ``scope`` are stored under (see ``_ScopeCache.load``)."""
    if scope is USER_STATE:
        return Target.of(usage_id).stored  # refuses a key that does not name its run
    if scope is USER_STATE_SUMMARY:
        return storage.stored_key(usage_id)
    if scope is PREFERENCES:
        return _stored_block_type(family, block_type)
    return ""


@functools.lru_cache(maxsize=1024)
def _stored_block_type(family: str, block_type: str) -> str:
    """Return the preferences owner of ``block_type`` in ``family`` as its column holds it."""
    return storage.stored_key(_block_type_key(family, block_type))


def _add_fields(
    wanted: dict[ScopeBase, dict[Any, set[str]]],
    names: Mapping[ScopeBase, Iterable[str]],
    usage_id: UsageKey,
    family: str,
    block_type: str,
) -> None:
    for scope, scope_names in names.items():
        owner = _owner(scope, usage_id, family, block_type)
        wanted[scope].setdefault(owner, set()).update(scope_names)


def _descendants(block: Any, depth: int | None) -> Iterator[Any]:
    """Yield ``block`` and its descendants (children, required blocks), breadth first, each once."""
    seen: set[Any] = set()
    level = [block]
    remaining = depth
    while level:
        next_level = []
        for found in level:
            usage_id = found.scope_ids.usage_id
            if usage_id in seen:
                continue
            seen.add(usage_id)
            yield found
            if remaining is None or remaining > 0:
                if getattr(found, "has_children", False):
                    next_level.extend(found.get_children())
                required = getattr(found, "get_required_block_descriptors", None)
                if required is not None:
                    next_level.extend(required())
        level = next_level
        remaining = None if remaining is None else remaining - 1


def _aside_type(aside: Any) -> str:
    return aside if isinstance(aside, str) else str(aside.scope_ids.block_type)


def _aside_names(aside: Any) -> dict[ScopeBase, list[str]] | None:
    """Return an aside's field names per scope: from the instance, or its registered class.

    ``None`` for an aside type that is not installed.
    """
    if not isinstance(aside, str):
        return _names_by_scope(aside.fields.values())
    try:
        return _names_by_scope(XBlockAside.load_class(aside).fields.values())
    except PluginMissingError:
        log.warning(
            "kvstate: aside type %r is not installed; prefetching its user_state only", aside
        )
        return None


class DjangoKeyValueStore(KeyValueStore):  # type: ignore[misc]  # XBlock ships no types
    """XBlock's ``KeyValueStore`` over a :class:`FieldDataCache`.

    Accepts the four user scopes; any other raises ``InvalidScopeError`` before any query.
    """

    Key = KeyValueStore.Key

    def __init__(self, field_data_cache: FieldDataCache) -> None:
        self._field_data_cache = field_data_cache

    def get(self, key: KvsKey) -> Any:
        """Return the value of ``key``; ``KeyError`` if it has none."""
        user_scope(key.scope)
        return self._field_data_cache.get(key)

    def set(self, key: KvsKey, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.set_many({key: value})

    def set_many(self, kv_dict: Mapping[KvsKey, Any]) -> None:
        """Store all of ``kv_dict`` or raise ``KeyValueMultiSaveError`` (see FieldDataCache)."""
        self._field_data_cache.set_many(kv_dict)

    def delete(self, key: KvsKey) -> None:
        """Delete the value of ``key``; ``KeyError`` if it has none."""
        self._field_data_cache.delete(key)

    def has(self, key: KvsKey) -> bool:
        """Return whether ``key`` has a stored value."""
        user_scope(key.scope)
        return self._field_data_cache.has(key)


def set_score(
    user_id: int, usage_key: UsageKey, score: float | None, max_score: float | None
) -> datetime:
    """Store a learner's raw score for a block and return when it was stored.

    Creates the block's row (with a NULL state) if it is missing; keeps the state of an
    existing one. Safe under concurrent callers. Leaves one history row (for recorded types).
    """
    target = Target.of(check_usage_key(usage_key))
    return storage.write_score(user_id, target, score, max_score).modified


def get_score(user_id: int, usage_key: UsageKey) -> StudentModule | None:
    """Return the learner's ``StudentModule`` for a block (with its grade), or ``None``.

    Read from the write alias: a grade just stored must not read as the old one.
    """
    return (
        StudentModule.objects.using(storage.state_alias())
        .filter(student_id=user_id, module_state_key=usage_key, course_id=usage_key.context_key)
        .first()
    )
