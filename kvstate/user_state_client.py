"""``DjangoXBlockUserStateClient``: edx-user-state-client's interface over ``StudentModule``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import router
from edx_user_state_client.interface import XBlockUserState, XBlockUserStateClient
from opaque_keys.edx.keys import LearningContextKey, UsageKey
from xblock.fields import Scope, ScopeBase

from kvstate import history, storage
from kvstate.conf import settings
from kvstate.models import StudentModule, StudentModuleQuerySet
from kvstate.routers import read_alias
from kvstate.storage import StateChange, Target
from kvstate.validation import (
    check_field_name,
    check_size,
    check_usage_key,
    lacks_run,
    to_json,
)

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

__all__ = ["DjangoXBlockUserStateClient"]

#: An empty state, as ``delete`` leaves it: invisible to reads, distinct from NULL.
_DELETED = "{}"


def _check_values(state: Mapping[str, Any]) -> None:
    """Refuse values JSON cannot hold, or too big, naming the field: before any SQL.

    One dump for the block's values; only when it fails is each value dumped on its own, to
    name the culprit.
    """
    try:
        check_size("the state given for the block", json.dumps(state, allow_nan=False))
    except (TypeError, ValueError):
        for name, value in state.items():
            to_json(value, name)
        raise


class DjangoXBlockUserStateClient(XBlockUserStateClient):  # type: ignore[misc]  # untyped base
    """Read and write learners' ``user_state`` by username, one statement per batch.

    ``user`` (optional) is the learner most calls are about; other usernames are looked up
    once per client. Only ``Scope.user_state`` is served, as in Open edX. For an anonymous
    ``user``, calls about its username store nothing and find nothing, without a query.
    """

    #: Rows per statement when iterating over a whole block or course; ``None``: Open edX's
    #: ``USER_STATE_BATCH_SIZE`` setting (default 1,000).
    iteration_page_size: int | None = None

    def __init__(self, user: AbstractBaseUser | AnonymousUser | None = None) -> None:
        self.user = user
        self._user_ids: dict[str, int] = {}
        self._anonymous: str | None = None
        if user is not None and user.is_authenticated:
            self._user_ids[user.get_username()] = user.pk
        elif user is not None:
            self._anonymous = user.get_username()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} user={self.user!r}>"

    # Reading

    def get_many(
        self,
        username: str,
        block_keys: Iterable[UsageKey],
        scope: ScopeBase = Scope.user_state,
        fields: Iterable[str] | None = None,
    ) -> Iterator[XBlockUserState]:
        """Yield the stored state of each block that has one, in the order asked."""
        _check_scope(scope)
        targets = [Target.of(check_usage_key(key)) for key in block_keys]
        wanted = None if fields is None else set(fields)
        if username == self._anonymous:
            return
        student_id = self._student_id(username)
        if student_id is None or not targets:
            return
        # Keyed by the stored strings: hashing opaque keys costs more than reading the rows.
        by_key = {target.stored: target for target in targets}
        states = storage.fetch_states(storage.state_alias(), student_id, by_key)
        for stored, target in by_key.items():
            state, modified = states.get(stored, ({}, None))
            if not state:
                continue  # no row, or a NULL or deleted state
            if wanted is not None:
                state = {name: value for name, value in state.items() if name in wanted}
            yield XBlockUserState(username, target.usage_key, state, modified, scope)

    def get_history(
        self, username: str, block_key: UsageKey, scope: ScopeBase = Scope.user_state
    ) -> Iterator[XBlockUserState]:
        """Yield the block's state after each write, newest first (``None`` once deleted).

        Raises ``DoesNotExist`` when the learner has no row for the block, or the row has no
        history (its block type is not recorded), as Open edX does. Two statements however
        long the history is: the module's id (with the username, when this client has not
        looked it up yet) and its history.
        """
        _check_scope(scope)
        target = Target.of(check_usage_key(block_key))
        module_id = None if username == self._anonymous else self._module_id(username, target)
        if module_id is None:
            raise self.DoesNotExist(f"{username!r} has no state for {block_key}")
        entries = history.for_module(module_id)
        if not entries:
            raise self.DoesNotExist(f"{username!r} has no history for {block_key}")
        for text, created in entries:
            state = storage.parse_state(text) or None
            yield XBlockUserState(username, block_key, state, created, scope)

    def iter_all_for_block(
        self, block_key: UsageKey, scope: ScopeBase = Scope.user_state, *, using: str | None = None
    ) -> Iterator[XBlockUserState]:
        """Yield every learner's stored state for one block, page by page (no order promised).

        Read-only work, so it may read a replica: ``using``, else ``KVSTATE_READ_ALIAS``, else
        the routers' read alias (:func:`kvstate.routers.read_alias`). An old-style key without
        its course run (``i4x://...`` read from a string) finds the block's rows in every run
        of the course, as in Open edX, each with its run.
        """
        _check_scope(scope)
        usage_key = check_usage_key(block_key)
        if lacks_run(usage_key):
            rows = StudentModule.objects.filter(module_state_key=usage_key)
        else:
            target = Target.of(usage_key)
            rows = StudentModule.objects.filter(
                module_state_key=target.usage_key, course_id=target.course_id
            )
        # Index (module_id, id) serves the pages in order.
        yield from self._iterate(rows, ("id",), scope, using)

    def iter_all_for_course(
        self,
        course_key: LearningContextKey,
        block_type: str | None = None,
        scope: ScopeBase = Scope.user_state,
        *,
        using: str | None = None,
    ) -> Iterator[XBlockUserState]:
        """Yield every stored state in a course (or of one block type in it), page by page.

        Reads from ``using`` or the read alias, as :meth:`iter_all_for_block`.
        """
        _check_scope(scope)
        rows = StudentModule.objects.filter(course_id=course_key)
        # Index (course_id, module_type, id) serves both orderings in order.
        order: tuple[str, ...] = ("module_type", "id")
        if block_type is not None:
            rows = rows.filter(module_type=block_type)
            order = ("id",)
        yield from self._iterate(rows, order, scope, using)

    def _iterate(
        self,
        rows: StudentModuleQuerySet,
        order: Sequence[str],
        scope: ScopeBase,
        using: str | None,
    ) -> Iterator[XBlockUserState]:
        """Walk ``rows`` in pages by keyset on ``order`` (no OFFSET), skipping empty states.

        Each page is one statement that also brings the usernames (a join, not a query per
        learner); memory stays at one page. R rows take ceil(R / page) statements, plus one
        that finds nothing when R is a multiple of the page size.
        """
        rows = rows.using(read_alias(StudentModule, using))
        visible = rows.exclude(state__isnull=True).exclude(state=_DELETED)
        # Keys read as the strings stored, each parsed once per page: a course has far fewer
        # blocks than rows, and parsing a key costs more than reading its row.
        columns = (
            storage.column_text("module_state_key"),
            storage.column_text("course_id"),
            "student__username",
            "state",
            "modified",
        )
        size = self.iteration_page_size or settings.USER_STATE_BATCH_SIZE
        after: tuple[Any, ...] | None = None
        while True:
            page_query = visible if after is None else visible.after(order, after)
            page = list(page_query.order_by(*order).values_list(*order, *columns)[:size])
            block_keys: dict[tuple[str, str], UsageKey] = {}
            for values in page:
                module_id, course_id, username, text, modified = values[len(order) :]
                state = storage.parse_state(text)
                if state:
                    block_key = block_keys.get((module_id, course_id))
                    if block_key is None:
                        block_key = block_keys[module_id, course_id] = _block_key(
                            module_id, course_id
                        )
                    yield XBlockUserState(username, block_key, state, modified, scope)
            if len(page) < size:
                return
            after = tuple(page[-1][: len(order)])

    # Writing

    def set_many(
        self,
        username: str,
        block_keys_to_state: Mapping[UsageKey, Mapping[str, Any]],
        scope: ScopeBase = Scope.user_state,
    ) -> None:
        """Overlay each block's stored state with the fields given (absent fields stay).

        Three statements at most for any number of blocks: read, insert the new rows, swap the
        others. All or nothing; history for all the blocks in one more statement.
        """
        _check_scope(scope)
        changes: dict[Target, StateChange] = {}
        for block_key, state in block_keys_to_state.items():
            target = Target.of(check_usage_key(block_key)).check()
            if not isinstance(state, Mapping):
                raise TypeError(f"state for {block_key} is a {type(state).__name__}, not a dict")
            for name in state:
                check_field_name(name)
            _check_values(state)
            changes[target] = StateChange(set_fields=dict(state))
        if username == self._anonymous:
            return  # as Open edX: an anonymous learner's state is not persisted
        student_id = self._require_student_id(username)
        if any(change.creates for change in changes.values()):
            self._write(student_id, changes)

    def delete_many(
        self,
        username: str,
        block_keys: Iterable[UsageKey],
        scope: ScopeBase = Scope.user_state,
        fields: Iterable[str] | None = None,
    ) -> None:
        """Delete the given fields (all when ``fields`` is None) of each block's state."""
        _check_scope(scope)
        if fields is None:
            change = StateChange(clear=True)
        else:
            names = frozenset(check_field_name(name) for name in fields)
            change = StateChange(delete_fields=names)
        changes = {Target.of(check_usage_key(key)).check(): change for key in block_keys}
        if username == self._anonymous:
            return
        student_id = self._student_id(username)
        if student_id is None or not changes:
            return
        self._write(student_id, changes)

    def _write(self, student_id: int, changes: Mapping[Target, StateChange]) -> None:
        known = storage.fetch_modules(storage.state_alias(), student_id, changes)
        storage.write_user_states(student_id, changes, known)

    # Users

    def _student_id(self, username: str) -> int | None:
        """Return the id of the user ``username`` (None if there is none), looked up once."""
        if username not in self._user_ids:
            user_model = get_user_model()
            # The write alias: a learner created a moment ago may not be on a replica yet.
            found = (
                user_model._default_manager.using(router.db_for_write(user_model))
                .filter(**{user_model.USERNAME_FIELD: username})
                .values_list("pk", flat=True)
                .first()
            )
            if found is None:
                return None  # not remembered: the user may yet be created
            self._user_ids[username] = found
        return self._user_ids[username]

    def _module_id(self, username: str, target: Target) -> int | None:
        """Return the id of ``username``'s row for ``target`` (None if none), in one statement.

        A username this client has not looked up yet is joined in rather than fetched first.
        """
        rows = StudentModule.objects.using(storage.state_alias()).filter(
            module_state_key=target.usage_key, course_id=target.course_id
        )
        if username in self._user_ids:
            found = rows.filter(student_id=self._user_ids[username]).values_list("id").first()
            return None if found is None else found[0]
        user_field = get_user_model().USERNAME_FIELD
        with_user = rows.filter(**{f"student__{user_field}": username})
        row = with_user.values_list("id", "student_id").first()
        if row is None:
            return None
        self._user_ids[username] = row[1]
        return int(row[0])

    def _require_student_id(self, username: str) -> int:
        """Return the id of ``username``, or raise the user model's ``DoesNotExist`` (Open edX)."""
        student_id = self._student_id(username)
        if student_id is None:
            raise get_user_model().DoesNotExist(f"there is no user named {username!r}")
        return student_id


def _block_key(module_id: str, course_id: str) -> UsageKey:
    """Return the usage key of a row stored under ``module_id`` in ``course_id``, with its run."""
    # As the fields read them (a trailing newline stripped); opaque-keys' fields are untyped.
    usage_field: Any = StudentModule._meta.get_field("module_state_key")
    course_field: Any = StudentModule._meta.get_field("course_id")
    usage_key: UsageKey = usage_field.to_python(module_id)
    return usage_key.map_into_course(course_field.to_python(course_id))


def _check_scope(scope: ScopeBase) -> None:
    if scope != Scope.user_state:
        raise ValueError(f"DjangoXBlockUserStateClient serves Scope.user_state only, not {scope}")
