"""A minimal XBlock runtime over kvstate, for tests and the ``kvstate_demo`` command.

Not a production runtime: it renders nothing, serves no URLs and keeps authored content in
memory. It does what matters for state: the ``field-data`` service is a ``SplitFieldData``
whose authored scopes come from an :class:`AuthoredContent` and whose four user scopes come from
a :class:`~kvstate.runtime.StudentDataProvider`, and ``grade`` events are recorded with
:func:`kvstate.model_data.set_score`, as the LMS does.

Model each simulated request as a fresh runtime and fresh block instances over the same
database (see :func:`new_request`); reusing a block across requests would let the block's own
field cache hide what kvstate did or did not store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from webob import Request
from xblock.core import XBlock
from xblock.exceptions import NoSuchDefinition, NoSuchUsage
from xblock.fields import Scope, ScopeIds
from xblock.runtime import DictKeyValueStore, IdGenerator, IdReader, KvsFieldData, Runtime

from kvstate.runtime import StudentDataProvider

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from opaque_keys.edx.keys import UsageKey
    from xblock.field_data import FieldData, SplitFieldData

__all__ = ["AuthoredContent", "MinimalRuntime", "PublishedEvent", "json_request", "new_request"]


class _ContentIds(IdReader, IdGenerator):  # type: ignore[misc]  # XBlock ships no types
    """Map usage keys to block types; a usage key doubles as its own definition id."""

    def __init__(self) -> None:
        self.block_types: dict[UsageKey, str] = {}

    def get_definition_id(self, usage_id: UsageKey) -> UsageKey:
        if usage_id not in self.block_types:
            raise NoSuchUsage(repr(usage_id))
        return usage_id

    def get_block_type(self, def_id: UsageKey) -> str:
        try:
            return self.block_types[def_id]
        except KeyError:
            raise NoSuchDefinition(repr(def_id)) from None

    def create_usage(self, def_id: Any) -> Any:
        raise NotImplementedError("AuthoredContent.add() creates usages")

    def create_definition(self, block_type: str, slug: str | None = None) -> Any:
        raise NotImplementedError("AuthoredContent.add() creates definitions")

    def create_aside(self, definition_id: Any, usage_id: Any, aside_type: str) -> Any:
        raise NotImplementedError("the minimal runtime has no asides")

    def get_usage_id_from_aside(self, aside_id: Any) -> Any:
        raise NotImplementedError("the minimal runtime has no asides")

    def get_definition_id_from_aside(self, aside_id: Any) -> Any:
        raise NotImplementedError("the minimal runtime has no asides")

    def get_aside_type_from_usage(self, aside_id: Any) -> Any:
        raise NotImplementedError("the minimal runtime has no asides")

    def get_aside_type_from_definition(self, aside_id: Any) -> Any:
        raise NotImplementedError("the minimal runtime has no asides")


class AuthoredContent:
    """An in-memory content store: which blocks exist and their authored field values.

    Stands in for a modulestore. Authored scopes live in a ``DictKeyValueStore`` behind a
    ``KvsFieldData``; every request's runtime reads the same one.
    """

    def __init__(self) -> None:
        self.ids = _ContentIds()
        self.kvs = DictKeyValueStore()
        self.field_data: FieldData = KvsFieldData(self.kvs)

    def add(self, usage_key: UsageKey, **fields: Any) -> UsageKey:
        """Declare the block ``usage_key`` (its type is the key's) with authored ``fields``.

        Only ``content`` and ``settings`` fields can be given here; others raise ``ValueError``.
        """
        block_type = usage_key.block_type
        block_class = XBlock.load_class(block_type)
        self.ids.block_types[usage_key] = block_type
        for name, value in fields.items():
            field = block_class.fields.get(name)
            if field is None or field.scope not in (Scope.content, Scope.settings):
                raise ValueError(
                    f"{block_type!r} has no authored (content/settings) field {name!r}"
                )
            # The key KvsFieldData builds: content is definition-scoped, settings usage-scoped,
            # and here a usage key is its own definition id.
            key = DictKeyValueStore.Key(field.scope, None, usage_key, name, block_class.entry_point)
            self.kvs.set(key, field.to_json(value))
        return usage_key


@dataclass(frozen=True)
class PublishedEvent:
    """An event a block published through ``runtime.publish``."""

    usage_key: UsageKey
    event_type: str
    data: dict[str, Any]


class MinimalRuntime(Runtime):  # type: ignore[misc]  # XBlock ships no types
    """Run real XBlocks against kvstate for one request of one user.

    Provides the ``field-data`` service (authored scopes from ``content``, user scopes from
    ``student_data``), the URL hooks blocks call while handling requests, and ``publish``
    (events are kept in :attr:`events`; ``grade`` events are stored with ``set_score`` when the
    provider persists).
    """

    def __init__(
        self,
        content: AuthoredContent,
        student_data: StudentDataProvider,
        *,
        services: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(id_reader=content.ids, id_generator=content.ids, services=services)
        self.content = content
        self.student_data = student_data
        self.events: list[PublishedEvent] = []
        self._block_field_data: dict[ScopeIds, SplitFieldData] = {}

    # Blocks and their data

    def get_block(self, usage_id: UsageKey, for_parent: XBlock | None = None) -> XBlock:
        """Return a new instance of the block ``usage_id`` bound to this runtime's user."""
        def_id = self.id_reader.get_definition_id(usage_id)
        block_type = self.id_reader.get_block_type(def_id)
        scope_ids = ScopeIds(self.student_data.user_id, block_type, def_id, usage_id)
        return self.construct_xblock(block_type, scope_ids, for_parent=for_parent)

    def service(self, block: XBlock, service_name: str) -> Any:
        """Return ``block``'s field data for ``field-data``; other services as usual."""
        if service_name == "field-data":
            field_data = self._block_field_data.get(block.scope_ids)
            if field_data is None:
                field_data = self.student_data.split_field_data(block, self.content.field_data)
                self._block_field_data[block.scope_ids] = field_data
            return field_data
        return super().service(block, service_name)

    # What blocks call while handling a request

    def handler_url(
        self,
        block: XBlock,
        handler_name: str,
        suffix: str = "",
        query: str = "",
        thirdparty: bool = False,
    ) -> str:
        """Return a URL that would reach ``handler_name`` of ``block``."""
        usage = quote(str(block.scope_ids.usage_id), safe="")
        url = f"/xblock/{usage}/handler/{handler_name}"
        if suffix:
            url += f"/{suffix}"
        if query:
            url += f"?{query}"
        return url

    def resource_url(self, resource: str) -> str:
        """Return the URL of a runtime-wide static resource."""
        return f"/static/xblock/{resource}"

    def local_resource_url(self, block: XBlock, uri: str) -> str:
        """Return the URL of a file packaged with ``block``'s class."""
        return f"/xblock/resource/{block.scope_ids.block_type}/{uri}"

    def publish(self, block: XBlock, event_type: str, event_data: dict[str, Any]) -> None:
        """Record an event; store the score of a ``grade`` event as the LMS does."""
        usage_key = block.scope_ids.usage_id
        self.events.append(PublishedEvent(usage_key, event_type, dict(event_data)))
        if event_type == "grade" and self.student_data.persistent:
            from kvstate.model_data import set_score

            set_score(
                self.student_data.user_id,
                usage_key,
                event_data["value"],
                event_data["max_value"],
            )

    # Convenience for tests and the demo

    def call_json_handler(self, block: XBlock, handler_name: str, data: Any) -> Any:
        """POST ``data`` as JSON to a handler through ``runtime.handle``; return its JSON reply."""
        response = self.handle(block, handler_name, json_request(data))
        return json.loads(response.body)

    def call_get_handler(self, block: XBlock, handler_name: str) -> Any:
        """GET a handler through ``runtime.handle``; return its JSON reply."""
        response = self.handle(block, handler_name, Request.blank("/", method="GET"))
        return json.loads(response.body)


def json_request(data: Any) -> Request:
    """Return a POST request with ``data`` as its JSON body, as a block's JavaScript sends."""
    return Request.blank(
        "/",
        method="POST",
        body=json.dumps(data).encode(),
        content_type="application/json",
    )


def new_request(
    content: AuthoredContent,
    user: AbstractBaseUser | AnonymousUser,
    *,
    ephemeral: bool = False,
) -> MinimalRuntime:
    """Start a simulated request: a fresh provider (fresh caches) and a fresh runtime."""
    return MinimalRuntime(content, StudentDataProvider(user, ephemeral=ephemeral))
