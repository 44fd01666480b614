"""Give an XBlock runtime the user-scope field data of each block it loads.

An XBlock reads and writes its fields through the runtime's ``field-data`` service, which is
usually a :class:`~xblock.field_data.SplitFieldData`: authored scopes (``content``,
``settings``, ``children``, ``parent``) come from the course's content store, the four user
scopes from kvstate. :class:`StudentDataProvider` is the kvstate half, built once per request::

    provider = StudentDataProvider(request.user, ephemeral=in_studio_preview)

    def field_data_for(block):  # the runtime's "field-data" service, one per block
        return provider.split_field_data(block, authored_field_data)

For a signed-in learner every learning context (course or library) gets one
:class:`~kvstate.model_data.FieldDataCache`, built for the first block of that context and
extended for later ones, so a page showing many blocks costs a few prefetch queries, not a few
per block. Anonymous visitors, and authors previewing content (``ephemeral=True``), get an
:class:`EphemeralKeyValueStore` instead: their state lives as long as the provider and never
reaches the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xblock.field_data import FieldData, SplitFieldData
from xblock.fields import Scope, ScopeBase
from xblock.runtime import KeyValueStore, KvsFieldData

from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.validation import USER_SCOPES, check_field_name, to_json, user_scope

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from opaque_keys.edx.keys import LearningContextKey, UsageKey
    from xblock.core import XBlock

__all__ = [
    "AUTHORED_SCOPES",
    "USER_SCOPES",
    "EphemeralKeyValueStore",
    "StudentDataProvider",
]

#: The scopes a content store (modulestore, Learning Core, a dict in tests) provides.
AUTHORED_SCOPES: tuple[ScopeBase, ...] = (
    Scope.content,
    Scope.settings,
    Scope.children,
    Scope.parent,
)


class EphemeralKeyValueStore(KeyValueStore):  # type: ignore[misc]  # XBlock ships no types
    """Keep the four user scopes in memory for as long as the store lives.

    Behaves like :class:`~kvstate.model_data.DjangoKeyValueStore` without the database: other
    scopes raise ``InvalidScopeError``; values are validated and stored as JSON text, so a value
    the database would reject is rejected here too, reads return fresh copies (a block that
    mutates what it read changes nothing until it saves), and a ``set_many`` with one bad value
    stores nothing. Keys keep their user, block and family apart exactly as XBlock builds them.
    """

    def __init__(self) -> None:
        self._values: dict[KeyValueStore.Key, str] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self._values)} values>)"

    def get(self, key: KeyValueStore.Key) -> Any:
        """Return the value stored under ``key``; raise ``KeyError`` when there is none."""
        return json.loads(self._values[self._checked(key)])

    def set(self, key: KeyValueStore.Key, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.set_many({key: value})

    def set_many(self, update_dict: Mapping[KeyValueStore.Key, Any]) -> None:
        """Store every value of ``update_dict``, or nothing if any key or value is invalid."""
        checked = {
            self._checked(key): to_json(value, key.field_name) for key, value in update_dict.items()
        }
        self._values.update(checked)

    def delete(self, key: KeyValueStore.Key) -> None:
        """Remove the value under ``key``; raise ``KeyError`` when there is none."""
        del self._values[self._checked(key)]

    def has(self, key: KeyValueStore.Key) -> bool:
        """Return whether a value is stored under ``key``."""
        return self._checked(key) in self._values

    @staticmethod
    def _checked(key: KeyValueStore.Key) -> KeyValueStore.Key:
        """Return ``key`` with its named scope, or raise as the database store would."""
        scope = user_scope(key.scope)
        check_field_name(key.field_name)
        return key if key.scope is scope else key._replace(scope=scope)


class StudentDataProvider:
    """Hand out the user-scope field data of blocks for one user during one request.

    ``user`` is a Django user or ``AnonymousUser``. With ``ephemeral=True`` (an author
    previewing in a studio) or for an anonymous user, state is kept in one
    :class:`EphemeralKeyValueStore` shared by every block for the provider's lifetime; nothing
    is read from or written to the database. Otherwise each learning context gets a
    :class:`~kvstate.model_data.FieldDataCache` created on first use and extended block by
    block. ``read_only=True`` builds those caches read-only (writes are silently dropped), for
    views such as "view this course as that learner".

    Build one provider per request, not per process: the caches hold the user's state as read
    at the start of the request.
    """

    def __init__(
        self,
        user: AbstractBaseUser | AnonymousUser,
        *,
        ephemeral: bool = False,
        read_only: bool = False,
    ) -> None:
        self.user = user
        self.ephemeral = ephemeral
        self.read_only = read_only
        self._memory_store: EphemeralKeyValueStore | None = (
            EphemeralKeyValueStore() if not self.persistent else None
        )
        self._caches: dict[LearningContextKey, FieldDataCache] = {}
        self._cached_usages: dict[LearningContextKey, set[UsageKey]] = {}

    def __repr__(self) -> str:
        mode = "database" if self.persistent else "ephemeral"
        return f"<{type(self).__name__} user={self.user_id!r} {mode}>"

    @property
    def persistent(self) -> bool:
        """Whether this provider's writes reach the database."""
        return not self.ephemeral and not self.user.is_anonymous

    @property
    def user_id(self) -> Any:
        """The id blocks should carry in ``ScopeIds.user_id`` (``None`` for anonymous users)."""
        return None if self.user.is_anonymous else self.user.pk

    @property
    def memory_store(self) -> EphemeralKeyValueStore | None:
        """The in-memory store of an ephemeral or anonymous provider, else ``None``."""
        return self._memory_store

    def cache_for(self, context_key: LearningContextKey) -> FieldDataCache | None:
        """Return the cache built so far for one learning context, if any."""
        return self._caches.get(context_key)

    def prefetch(self, blocks: Iterable[XBlock]) -> None:
        """Load the state of many blocks up front, with one round of queries per context.

        Optional: :meth:`kvs_for` loads blocks one at a time on first use. Call this before
        rendering a page of many blocks (a unit, a sequence) to batch their queries.
        """
        if not self.persistent:
            return
        by_context: dict[LearningContextKey, dict[UsageKey, XBlock]] = {}
        for block in blocks:
            usage_id = block.scope_ids.usage_id
            context_key = usage_id.context_key
            if usage_id not in self._cached_usages.get(context_key, ()):
                by_context.setdefault(context_key, {}).setdefault(usage_id, block)
        for context_key, context_blocks in by_context.items():
            self._add_to_cache(context_key, list(context_blocks.values()))

    def kvs_for(self, block: XBlock) -> KeyValueStore:
        """Return the key-value store holding ``block``'s user-scope fields."""
        if self._memory_store is not None:
            return self._memory_store
        usage_id = block.scope_ids.usage_id
        context_key = usage_id.context_key
        if usage_id not in self._cached_usages.get(context_key, ()):
            self._add_to_cache(context_key, [block])
        return DjangoKeyValueStore(self._caches[context_key])

    def field_data_for(self, block: XBlock) -> FieldData:
        """Return a ``FieldData`` for ``block``'s four user scopes."""
        return KvsFieldData(self.kvs_for(block))

    def user_scope_field_data(self, block: XBlock) -> dict[ScopeBase, FieldData]:
        """Return the user-scope part of a ``SplitFieldData`` mapping for ``block``."""
        student_data = self.field_data_for(block)
        return dict.fromkeys(USER_SCOPES, student_data)

    def split_field_data(
        self,
        block: XBlock,
        authored_data: FieldData,
        *,
        children_data: FieldData | None = None,
    ) -> SplitFieldData:
        """Return ``block``'s complete field data.

        ``authored_data`` serves ``content``, ``settings``, ``parent`` and (unless
        ``children_data`` is given) ``children``; kvstate serves the four user scopes.
        """
        scope_mappings: dict[ScopeBase, FieldData] = dict.fromkeys(AUTHORED_SCOPES, authored_data)
        if children_data is not None:
            scope_mappings[Scope.children] = children_data
        scope_mappings.update(self.user_scope_field_data(block))
        return SplitFieldData(scope_mappings)

    def _add_to_cache(self, context_key: LearningContextKey, blocks: list[XBlock]) -> None:
        cache = self._caches.get(context_key)
        if cache is None:
            self._caches[context_key] = FieldDataCache(
                blocks, context_key, self.user, read_only=self.read_only
            )
        else:
            cache.add_blocks_to_cache(blocks)
        self._cached_usages.setdefault(context_key, set()).update(
            block.scope_ids.usage_id for block in blocks
        )
