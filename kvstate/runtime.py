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
per block. Anonymous visitors, and authors previewing content (``ephemeral=True``), never reach
the database: their state lives in an :class:`EphemeralKeyValueStore` for as long as the
provider, or, when ``KVSTATE_ANONYMOUS_CACHE`` names a Django cache and the provider is built
with :meth:`StudentDataProvider.for_request`, in a :class:`CacheKeyValueStore` keyed by the
visitor's session, so it is kept across requests.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.core.cache import caches
from xblock.exceptions import KeyValueMultiSaveError
from xblock.field_data import FieldData, SplitFieldData
from xblock.fields import Scope, ScopeBase
from xblock.runtime import KeyValueStore, KvsFieldData

from kvstate.conf import settings
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache
from kvstate.validation import USER_SCOPES, check_field_name, to_json, user_scope

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from django.core.cache.backends.base import BaseCache
    from django.http import HttpRequest
    from opaque_keys.edx.keys import LearningContextKey, UsageKey
    from xblock.core import XBlock

__all__ = [
    "AUTHORED_SCOPES",
    "USER_SCOPES",
    "VISITOR_SESSION_KEY",
    "CacheKeyValueStore",
    "EphemeralKeyValueStore",
    "StudentDataProvider",
    "visitor_id",
]

#: The session entry holding a visitor's id for :class:`CacheKeyValueStore`.
VISITOR_SESSION_KEY = "kvstate_visitor"

#: The scopes a content store (modulestore, Learning Core, a dict in tests) provides.
AUTHORED_SCOPES: tuple[ScopeBase, ...] = (
    Scope.content,
    Scope.settings,
    Scope.children,
    Scope.parent,
)


def _checked_key(key: KeyValueStore.Key) -> KeyValueStore.Key:
    """Return ``key`` with its named scope, or raise as the database store would."""
    scope = user_scope(key.scope)
    check_field_name(key.field_name)
    return key if key.scope is scope else key._replace(scope=scope)


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

    _checked = staticmethod(_checked_key)


class CacheKeyValueStore(KeyValueStore):  # type: ignore[misc]  # XBlock ships no types
    """Keep the four user scopes of one visitor in a Django cache, across requests.

    ``namespace`` says whose state it is (a visitor id, see :func:`visitor_id`): two stores
    with the same cache and namespace see the same values. Each key is its own cache entry, so
    two requests of one visitor that write different fields at the same time keep both (the
    same field: the later write wins, as in the database). Semantics are those of
    :class:`EphemeralKeyValueStore`: only the user scopes, values validated and kept as JSON
    text, fresh copies on every read, and a ``set_many`` that validates everything before one
    ``cache.set_many`` call. A cache that reports keys it could not store (memcached) gets a
    ``KeyValueMultiSaveError`` naming exactly the fields that were stored.

    Reads go to the cache once per key and are remembered for the store's lifetime (a
    request); :meth:`prefetch` reads many keys in one round trip. Entries expire with the
    cache's own ``TIMEOUT``: make it at least as long as ``SESSION_COOKIE_AGE``.
    """

    def __init__(self, cache: BaseCache, namespace: str) -> None:
        if not namespace:
            raise ValueError("a CacheKeyValueStore needs a non-empty namespace (the visitor id)")
        self.cache = cache
        self.namespace = namespace
        # JSON text per key as last read or written; None: known to be absent.
        self._known: dict[KeyValueStore.Key, str | None] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"

    def cache_key(self, key: KeyValueStore.Key) -> str:
        """Return the cache entry of ``key``: short and plain, whatever the field name holds."""
        key = self._checked(key)
        parts = [
            key.scope.name,
            None if key.user_id is None else str(key.user_id),
            None if key.block_scope_id is None else str(key.block_scope_id),
            key.field_name,
            key.block_family,
        ]
        digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
        # memcached allows 250 characters without spaces or control characters.
        return f"kvstate:{self.namespace}:{digest}"

    def get(self, key: KeyValueStore.Key) -> Any:
        """Return the value stored under ``key``; raise ``KeyError`` when there is none."""
        text = self._text(key)
        if text is None:
            raise KeyError(key)
        return json.loads(text)

    def set(self, key: KeyValueStore.Key, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self.set_many({key: value})

    def set_many(self, update_dict: Mapping[KeyValueStore.Key, Any]) -> None:
        """Store every value of ``update_dict``, or nothing if any key or value is invalid."""
        texts = {
            self._checked(key): to_json(value, key.field_name) for key, value in update_dict.items()
        }
        entries = {self.cache_key(key): (key, text) for key, text in texts.items()}
        failed = set(self.cache.set_many({entry: text for entry, (_k, text) in entries.items()}))
        for entry, (key, text) in entries.items():
            if entry not in failed:
                self._known[key] = text
        if failed:
            saved = [key.field_name for entry, (key, _t) in entries.items() if entry not in failed]
            raise KeyValueMultiSaveError(saved)

    def delete(self, key: KeyValueStore.Key) -> None:
        """Remove the value under ``key``; raise ``KeyError`` when there is none."""
        key = self._checked(key)
        if self._text(key) is None:
            raise KeyError(key)
        self.cache.delete(self.cache_key(key))
        self._known[key] = None

    def has(self, key: KeyValueStore.Key) -> bool:
        """Return whether a value is stored under ``key``."""
        return self._text(key) is not None

    def prefetch(self, keys: Iterable[KeyValueStore.Key]) -> None:
        """Read every key not read yet in one cache round trip."""
        entries = {
            self.cache_key(key): self._checked(key) for key in keys if key not in self._known
        }
        if not entries:
            return
        found = self.cache.get_many(list(entries))
        for entry, key in entries.items():
            self._known[key] = found.get(entry)

    def _text(self, key: KeyValueStore.Key) -> str | None:
        key = self._checked(key)
        if key not in self._known:
            self._known[key] = self.cache.get(self.cache_key(key))
        return self._known[key]

    _checked = staticmethod(_checked_key)


def visitor_id(request: HttpRequest) -> str:
    """Return the id of the visitor behind ``request``, kept in their session.

    Created on first use; storing it marks the session modified, so Django's
    ``SessionMiddleware`` saves the session and sends its cookie. The id is random and lives in
    the session's data, so it survives the session key changing (as it does on login).
    """
    session = request.session
    visitor = session.get(VISITOR_SESSION_KEY)
    if not isinstance(visitor, str) or not visitor:
        visitor = secrets.token_urlsafe(18)
        session[VISITOR_SESSION_KEY] = visitor
    return visitor


class StudentDataProvider:
    """Hand out the user-scope field data of blocks for one user during one request.

    ``user`` is a Django user or ``AnonymousUser``. With ``ephemeral=True`` (an author
    previewing in a studio) or for an anonymous user, nothing is read from or written to the
    database: state is kept in one store shared by every block, a :class:`CacheKeyValueStore`
    when ``visitor`` is given and ``KVSTATE_ANONYMOUS_CACHE`` names a cache (kept across
    requests), else an :class:`EphemeralKeyValueStore` (kept for the provider's lifetime).
    Otherwise each learning context gets a :class:`~kvstate.model_data.FieldDataCache` created
    on first use and extended block by block. ``read_only=True`` builds those caches read-only
    (writes are silently dropped), for views such as "view this course as that learner".

    Build one provider per request, not per process: the caches hold the user's state as read
    at the start of the request. :meth:`for_request` builds it from a Django request.
    """

    def __init__(
        self,
        user: AbstractBaseUser | AnonymousUser,
        *,
        ephemeral: bool = False,
        read_only: bool = False,
        visitor: str | None = None,
    ) -> None:
        self.user = user
        self.ephemeral = ephemeral
        self.read_only = read_only
        self._memory_store: EphemeralKeyValueStore | CacheKeyValueStore | None = None
        if not self.persistent:
            self._memory_store = self._visitor_store(visitor)
        self._caches: dict[LearningContextKey, FieldDataCache] = {}
        self._cached_usages: dict[LearningContextKey, set[UsageKey]] = {}

    @classmethod
    def for_request(
        cls, request: HttpRequest, *, ephemeral: bool = False, read_only: bool = False
    ) -> StudentDataProvider:
        """Return the provider for ``request``'s user.

        An anonymous or ephemeral provider keeps its state in ``KVSTATE_ANONYMOUS_CACHE``
        under the visitor's id (see :func:`visitor_id`) when that setting names a cache and
        the request has a session; else in memory for this request.
        """
        user = request.user
        visitor = None
        has_session = hasattr(request, "session")  # no SessionMiddleware: nowhere to keep an id
        if (
            (ephemeral or user.is_anonymous)
            and settings.ANONYMOUS_CACHE is not None
            and has_session
        ):
            visitor = visitor_id(request)
        return cls(user, ephemeral=ephemeral, read_only=read_only, visitor=visitor)

    def __repr__(self) -> str:
        mode = "database" if self.persistent else "ephemeral"
        return f"<{type(self).__name__} user={self.user_id!r} {mode}>"

    def _visitor_store(self, visitor: str | None) -> EphemeralKeyValueStore | CacheKeyValueStore:
        alias = settings.ANONYMOUS_CACHE
        if visitor is None or alias is None:
            return EphemeralKeyValueStore()
        # A signed-in author's preview and the same browser's anonymous visit stay apart.
        mode = "preview" if self.ephemeral else "anonymous"
        return CacheKeyValueStore(caches[alias], f"{mode}:{visitor}")

    @property
    def persistent(self) -> bool:
        """Whether this provider's writes reach the database."""
        return not self.ephemeral and not self.user.is_anonymous

    @property
    def user_id(self) -> Any:
        """The id blocks should carry in ``ScopeIds.user_id`` (``None`` for anonymous users)."""
        return None if self.user.is_anonymous else self.user.pk

    @property
    def memory_store(self) -> EphemeralKeyValueStore | CacheKeyValueStore | None:
        """The store of an ephemeral or anonymous provider (memory or cache), else ``None``."""
        return self._memory_store

    def cache_for(self, context_key: LearningContextKey) -> FieldDataCache | None:
        """Return the cache built so far for one learning context, if any."""
        return self._caches.get(context_key)

    def prefetch(self, blocks: Iterable[XBlock]) -> None:
        """Load the state of many blocks up front, with one round of queries per context.

        Optional: :meth:`kvs_for` loads blocks one at a time on first use. Call this before
        rendering a page of many blocks (a unit, a sequence) to batch their queries.
        """
        if isinstance(self._memory_store, CacheKeyValueStore):
            store = self._memory_store
            store.prefetch(key for block in blocks for key in _user_scope_keys(store, block))
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
        if isinstance(self._memory_store, CacheKeyValueStore):
            # One cache round trip for the block's fields instead of one per field read.
            self._memory_store.prefetch(_user_scope_keys(self._memory_store, block))
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


def _user_scope_keys(store: KeyValueStore, block: XBlock) -> list[KeyValueStore.Key]:
    """Return the keys ``KvsFieldData`` would use for ``block``'s user-scope fields."""
    field_data = KvsFieldData(store)
    return [
        field_data._key(block, name)
        for name, field in block.fields.items()
        if field.scope in USER_SCOPES
    ]
