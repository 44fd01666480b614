"""The staff submission-history page: a learner's state of one block and how it got there.

Wire it into a project with ``path("kvstate/", include("kvstate.urls"))``; the page is then
``reverse("kvstate:history", kwargs={"username": ..., "usage_key": ...})``, as HTML or, with
``?format=json``, as JSON. Staff and the learner themself may see it (or whoever
``KVSTATE_HISTORY_PERMISSION`` allows); anonymous visitors are sent to the login page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.module_loading import import_string
from django.views.decorators.http import require_safe
from opaque_keys import InvalidKeyError
from opaque_keys.edx.keys import UsageKey

from kvstate import history, storage
from kvstate.conf import settings
from kvstate.models import StudentModuleHistory
from kvstate.validation import lacks_run

#: History entries per page (HTML and JSON).
HISTORY_PAGE_SIZE = 25

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between a history entry and the entry before it.

    ``kind`` is ``added``, ``removed`` or ``changed`` for a state field named ``name``, or
    ``grade`` for the grade or max_grade (``name`` says which).
    """

    kind: str
    name: str
    old: Any = None
    new: Any = None

    @property
    def old_json(self) -> str:
        return _compact(self.old)

    @property
    def new_json(self) -> str:
        return _compact(self.new)


@dataclass(frozen=True, slots=True)
class Entry:
    """The module after one write: its state, grade and what that write changed."""

    created: datetime
    state: dict[str, Any] | None
    grade: float | None
    max_grade: float | None
    changes: list[Change] = field(default_factory=list)

    @property
    def state_json(self) -> str:
        return _pretty(self.state)

    def as_json(self) -> dict[str, Any]:
        return {
            "created": self.created.isoformat(),
            "state": self.state,
            "grade": self.grade,
            "max_grade": self.max_grade,
        }


@require_safe
def submission_history(request: HttpRequest, username: str, usage_key: str) -> HttpResponse:
    """Show ``username``'s current state of ``usage_key`` and its history, newest first.

    ``?format=json`` answers with JSON; ``?before=<cursor>`` shows older entries (the cursor
    is the page's ``next`` link). Statements: the learner's id and their module on the
    module's write alias, one page of history on the history alias.
    """
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    output = request.GET.get("format", "html")
    if output not in ("html", "json"):
        return _error(400, f"format={output!r}: use format=json, or none for HTML", "html")
    try:
        key = UsageKey.from_string(usage_key)
    except InvalidKeyError:
        return _error(404, f"{usage_key!r} is not a usage key", output)
    if lacks_run(key):
        # An i4x:// key's string has no course run, and old courses reuse it in every run.
        return _error(404, f"{usage_key!r} has no course run, so it names no learner's row", output)
    if not _permission_hook()(request, username, key):
        return _error(403, f"you may not see {username!r}'s submission history", output)
    try:
        before = _parse_cursor(request.GET.get("before"))
    except ValueError as exc:
        return _error(400, str(exc), output)

    user_model = get_user_model()
    student_id = (
        user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username})
        .values_list("pk", flat=True)
        .first()
    )
    if student_id is None:
        return _error(404, f"there is no user named {username!r}", output)
    target = storage.Target.of(key)
    module = storage.fetch_modules(storage.state_alias(), student_id, [target]).get(target)

    entries: list[Entry] = []
    next_url = None
    if module is not None and module.id is not None:
        rows = history.page_for_module(module.id, HISTORY_PAGE_SIZE, before)
        entries = _entries(rows[:HISTORY_PAGE_SIZE], older=rows[HISTORY_PAGE_SIZE:])
        if len(rows) > HISTORY_PAGE_SIZE:
            last = rows[HISTORY_PAGE_SIZE - 1]
            query = {"before": _cursor(last)}
            if output == "json":
                query["format"] = "json"
            next_url = f"{request.path}?{urlencode(query)}"

    state, grade, max_grade = None, None, None
    if module is not None:
        state, grade, max_grade = module.state or None, module.grade, module.max_grade
    if output == "json":
        return JsonResponse(
            {
                "username": username,
                "usage_key": str(key),
                "state": state,
                "grade": grade,
                "max_grade": max_grade,
                "history": [entry.as_json() for entry in entries],
                "next": next_url,
            }
        )
    return render(
        request,
        "kvstate/history.html",
        {
            "username": username,
            "usage_key": key,
            "found": module is not None,
            "state_json": _pretty(state),
            "grade": grade,
            "max_grade": max_grade,
            "entries": entries,
            "next_url": next_url,
            "first_page": before is None,
            "page_size": HISTORY_PAGE_SIZE,
        },
    )


def can_see_history(request: HttpRequest, username: str, usage_key: UsageKey) -> bool:
    """Return whether ``request``'s user may see the history: staff, or the learner themself.

    The default of ``KVSTATE_HISTORY_PERMISSION``.
    """
    user = request.user
    return bool(user.is_authenticated and (user.is_staff or user.get_username() == username))


def _error(status: int, message: str, output: str) -> HttpResponse:
    """Answer ``status`` with a message saying what was wrong (plain text or JSON)."""
    if output == "json":
        return JsonResponse({"error": message}, status=status)
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}[status]
    return HttpResponse(
        f"{status} {reason}: {message}\n", status=status, content_type="text/plain; charset=utf-8"
    )


def _permission_hook() -> Any:
    path = settings.HISTORY_PERMISSION
    return can_see_history if path is None else import_string(path)


def _entries(rows: list[StudentModuleHistory], older: list[StudentModuleHistory]) -> list[Entry]:
    """Return the page's entries, each with what it changed since the entry before it."""
    states = [storage.parse_state(row.state) or None for row in [*rows, *older]]
    entries = []
    for index, row in enumerate(rows):
        previous = rows[index + 1] if index + 1 < len(rows) else (older[0] if older else None)
        changes = _state_changes(states[index + 1] if previous else None, states[index])
        for name in ("grade", "max_grade"):
            old = getattr(previous, name) if previous else None
            if getattr(row, name) != old:
                changes.append(Change("grade", name, old, getattr(row, name)))
        entries.append(Entry(row.created, states[index], row.grade, row.max_grade, changes))
    return entries


def _state_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Change]:
    old, new = old or {}, new or {}
    changes = [Change("added", name, None, new[name]) for name in sorted(new) if name not in old]
    changes += [Change("removed", name, old[name]) for name in sorted(old) if name not in new]
    changes += [
        Change("changed", name, old[name], new[name])
        for name in sorted(new)
        if name in old and _compact(old[name]) != _compact(new[name])
    ]
    return changes


def _cursor(row: StudentModuleHistory) -> str:
    """Return the keyset of ``row`` as ``<microseconds since 1970>.<id>``."""
    since = row.created - _EPOCH
    micros = (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds
    return f"{micros}.{row.pk}"


def _parse_cursor(text: str | None) -> tuple[datetime, int] | None:
    if text is None:
        return None
    micros, _, row_id = text.partition(".")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(row_id)
    except (ValueError, OverflowError):
        raise ValueError(
            f"before={text!r} is not a history cursor; follow the page's 'next' link"
        ) from None


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
