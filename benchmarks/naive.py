"""A naive baseline with Open edX's access patterns, for the benchmarks to measure kvstate against.

It reads and writes the same tables as kvstate, the way Open edX's courseware state layer does:

- user_state: read-modify-write per block. ``get_or_create`` the row, merge the new fields into
  the state read, ``save()`` it, then write a history row. Nothing guards the read against a
  concurrent writer, so two writers of one row can lose each other's fields.
- per-field scopes: one ``save()`` per field (``INSERT`` or ``UPDATE`` of one row).
- reads: one statement per scope per 500 keys; user_state is filtered by username (a join).
- history: each entry looks up its module and its learner again (N+1).
- iteration: ``Paginator`` (``COUNT`` + ``OFFSET`` pages), one user lookup per row (N+1).

Written for the benchmarks only. It is deliberately not kvstate's API and not a copy of Open
edX: it mimics the statements Open edX issues, which is what the benchmarks compare.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db import DatabaseError, transaction
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.keys import LearningContextKey, UsageKey
from xblock.exceptions import KeyValueMultiSaveError
from xblock.fields import Scope
from xblock.runtime import KeyValueStore

from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)

#: Open edX reads keys in chunks of this many per statement.
CHUNK = 500
#: Open edX keeps history for these block types only (kvstate's default too).
HISTORY_TYPES = frozenset({"problem"})

Key = KeyValueStore.Key


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record_history(module: StudentModule) -> None:
    """Write one history row after a save, as Open edX's post_save receiver does."""
    if module.module_type in HISTORY_TYPES:
        StudentModuleHistory.objects.create(
            student_module_id=module.pk,
            created=module.modified,
            state=module.state,
            grade=module.grade,
            max_grade=module.max_grade,
        )


class NaiveUserStateClient:
    """user_state by username, one row at a time."""

    def __init__(self, user: Any = None) -> None:
        self.user = user

    def _user(self, username: str) -> Any:
        if self.user is not None and self.user.username == username:
            return self.user
        return get_user_model().objects.get(username=username)

    def _modules(self, username: str, block_keys: Iterable[UsageKey]) -> Iterator[StudentModule]:
        by_course: dict[LearningContextKey, list[UsageKey]] = {}
        for key in block_keys:
            by_course.setdefault(key.context_key, []).append(key)
        for course_id, keys in by_course.items():
            for chunk in _chunks(keys):
                yield from StudentModule.objects.filter(
                    student__username=username, course_id=course_id, module_state_key__in=chunk
                ).select_related("student")

    def get_many(
        self, username: str, block_keys: Iterable[UsageKey]
    ) -> Iterator[tuple[UsageKey, dict[str, Any]]]:
        for module in self._modules(username, block_keys):
            state = json.loads(module.state) if module.state else {}
            if state:
                yield module.module_state_key, state

    def set_many(
        self, username: str, block_keys_to_state: Mapping[UsageKey, Mapping[str, Any]]
    ) -> None:
        user = self._user(username)
        for usage_key, state in block_keys_to_state.items():
            module, created = StudentModule.objects.get_or_create(
                student=user,
                course_id=usage_key.context_key,
                module_state_key=usage_key,
                defaults={"state": json.dumps(state), "module_type": usage_key.block_type},
            )
            if not created:
                current = json.loads(module.state) if module.state else {}
                current.update(state)
                module.state = json.dumps(current)
                with transaction.atomic():
                    module.save(force_update=True)
            _record_history(module)

    def delete_many(
        self, username: str, block_keys: Iterable[UsageKey], fields: Iterable[str] | None = None
    ) -> None:
        for module in list(self._modules(username, block_keys)):
            if fields is None:
                module.state = "{}"
            else:
                state = json.loads(module.state) if module.state else {}
                for name in fields:
                    state.pop(name, None)
                module.state = json.dumps(state)
            module.save()
            _record_history(module)

    def get_history(self, username: str, block_key: UsageKey) -> Iterator[tuple[Any, ...]]:
        modules = list(self._modules(username, [block_key]))
        if not modules:
            raise KeyError(block_key)
        entries = StudentModuleHistory.objects.filter(
            student_module_id__in=[m.pk for m in modules]
        ).order_by("-id")
        user_model = get_user_model()
        for entry in entries:
            # The entry's module and learner are looked up again, entry by entry.
            module = StudentModule.objects.get(pk=entry.student_module_id)
            name = user_model.objects.get(pk=module.student_id).username
            state = json.loads(entry.state) if entry.state else None
            yield name, module.module_state_key, state or None, entry.created

    def iter_all_for_course(
        self, course_id: LearningContextKey, page_size: int = 1000
    ) -> Iterator[tuple[Any, ...]]:
        modules = StudentModule.objects.filter(course_id=course_id).order_by("id")
        paginator = Paginator(modules, page_size)
        for number in paginator.page_range:
            for module in paginator.page(number).object_list:
                state = json.loads(module.state) if module.state else {}
                if state:
                    yield module.student.username, module.module_state_key, state, module.modified


class NaiveFieldDataCache:
    """One learner's state for some blocks: user_state via the client, per-field rows as models."""

    def __init__(self, blocks: Iterable[Any], course_id: LearningContextKey, user: Any) -> None:
        self.course_id = course_id
        self.user = user
        self.client = NaiveUserStateClient(user)
        self.user_state: dict[UsageKey, dict[str, Any]] = {}
        self.rows: dict[tuple[Any, ...], Any] = {}
        self._load(list(blocks))

    def _load(self, blocks: list[Any]) -> None:
        names: dict[Any, set[str]] = {
            scope: set()
            for scope in (
                Scope.user_state,
                Scope.user_state_summary,
                Scope.preferences,
                Scope.user_info,
            )
        }
        usages: list[UsageKey] = []
        types: set[BlockTypeKeyV1] = set()
        for block in blocks:
            usages.append(block.scope_ids.usage_id)
            types.add(BlockTypeKeyV1(block.entry_point, block.scope_ids.block_type))
            for field in block.fields.values():
                if field.scope in names:
                    names[field.scope].add(field.name)
        if names[Scope.user_state]:
            for usage_key, state in self.client.get_many(self.user.username, usages):
                self.user_state[usage_key] = state
        if names[Scope.user_state_summary]:
            for chunk in _chunks(usages):
                for row in XModuleUserStateSummaryField.objects.filter(
                    usage_id__in=chunk, field_name__in=names[Scope.user_state_summary]
                ):
                    self.rows[Scope.user_state_summary, row.usage_id, row.field_name] = row
        if names[Scope.preferences]:
            for chunk in _chunks(sorted(types, key=str)):
                for row in XModuleStudentPrefsField.objects.filter(
                    student=self.user,
                    module_type__in=chunk,
                    field_name__in=names[Scope.preferences],
                ):
                    self.rows[Scope.preferences, row.module_type, row.field_name] = row
        if names[Scope.user_info]:
            for row in XModuleStudentInfoField.objects.filter(
                student=self.user, field_name__in=names[Scope.user_info]
            ):
                self.rows[Scope.user_info, None, row.field_name] = row

    @staticmethod
    def _row_key(key: Key) -> tuple[Any, ...]:
        if key.scope == Scope.preferences:
            return key.scope, BlockTypeKeyV1(key.block_family, key.block_scope_id), key.field_name
        return key.scope, key.block_scope_id, key.field_name

    def _new_row(self, key: Key) -> Any:
        if key.scope == Scope.user_state_summary:
            return XModuleUserStateSummaryField(
                usage_id=key.block_scope_id, field_name=key.field_name
            )
        if key.scope == Scope.preferences:
            return XModuleStudentPrefsField(
                student=self.user,
                module_type=BlockTypeKeyV1(key.block_family, key.block_scope_id),
                field_name=key.field_name,
            )
        return XModuleStudentInfoField(student=self.user, field_name=key.field_name)

    def get(self, key: Key) -> Any:
        if key.scope == Scope.user_state:
            return self.user_state[key.block_scope_id][key.field_name]
        return json.loads(self.rows[self._row_key(key)].value)

    def has(self, key: Key) -> bool:
        try:
            self.get(key)
        except KeyError:
            return False
        return True

    def set_many(self, kv_dict: Mapping[Key, Any]) -> None:
        pending: dict[UsageKey, dict[str, Any]] = {}
        saved: list[str] = []
        for key, value in kv_dict.items():
            if key.scope == Scope.user_state:
                pending.setdefault(key.block_scope_id, {})[key.field_name] = value
                continue
            row_key = self._row_key(key)
            row = self.rows.get(row_key) or self._new_row(key)
            row.value = json.dumps(value)
            try:
                row.save()
            except DatabaseError as exc:
                raise KeyValueMultiSaveError(saved) from exc
            self.rows[row_key] = row
            saved.append(key.field_name)
        if pending:
            self.client.set_many(self.user.username, pending)
            for usage_key, fields in pending.items():
                self.user_state.setdefault(usage_key, {}).update(fields)

    def delete(self, key: Key) -> None:
        if key.scope == Scope.user_state:
            state = self.user_state[key.block_scope_id]
            del state[key.field_name]
            self.client.delete_many(self.user.username, [key.block_scope_id], [key.field_name])
            return
        self.rows.pop(self._row_key(key)).delete()


class NaiveKeyValueStore(KeyValueStore):  # type: ignore[misc]
    """XBlock's KeyValueStore over :class:`NaiveFieldDataCache`."""

    def __init__(self, cache: NaiveFieldDataCache) -> None:
        self.cache = cache

    def get(self, key: Key) -> Any:
        return self.cache.get(key)

    def set(self, key: Key, value: Any) -> None:
        self.cache.set_many({key: value})

    def set_many(self, update_dict: Mapping[Key, Any]) -> None:
        self.cache.set_many(update_dict)

    def delete(self, key: Key) -> None:
        self.cache.delete(key)

    def has(self, key: Key) -> bool:
        return self.cache.has(key)
