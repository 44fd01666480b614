"""System checks for kvstate's settings. Ids are never reused."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings as django_settings
from django.core import checks
from django.utils.module_loading import import_string

from kvstate.conf import HISTORY_ALIAS, settings

_ROUTER = "kvstate.routers.StudentModuleHistoryRouter"


def check_history_routing(**kwargs: Any) -> list[checks.CheckMessage]:
    """The history alias and the history router go together."""
    errors: list[checks.CheckMessage] = []
    if settings.history_alias_configured and not settings.history_router_installed:
        errors.append(
            checks.Error(
                f"DATABASES has a {HISTORY_ALIAS!r} alias but {_ROUTER} is not in "
                "DATABASE_ROUTERS, so StudentModuleHistory would be written to 'default'.",
                hint=f"Add {_ROUTER!r} to DATABASE_ROUTERS.",
                id="kvstate.E001",
            )
        )
    if settings.history_router_installed and not settings.history_alias_configured:
        errors.append(
            checks.Error(
                f"{_ROUTER} is in DATABASE_ROUTERS but DATABASES has no {HISTORY_ALIAS!r} alias.",
                hint=(
                    f"Add a {HISTORY_ALIAS!r} database, or remove the router to keep history "
                    "on 'default'."
                ),
                id="kvstate.E002",
            )
        )
    return errors


def check_value_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """``KVSTATE_HISTORY_BLOCK_TYPES`` and ``KVSTATE_MAX_VALUE_BYTES`` have usable values."""
    errors: list[checks.CheckMessage] = []
    block_types = getattr(django_settings, "KVSTATE_HISTORY_BLOCK_TYPES", None)
    if block_types is not None and block_types != "__all__" and not _is_str_collection(block_types):
        errors.append(
            checks.Error(
                f"KVSTATE_HISTORY_BLOCK_TYPES is {block_types!r}.",
                hint="Use a list or set of block type strings, [] for none, or '__all__'.",
                id="kvstate.E003",
            )
        )
    limit = getattr(django_settings, "KVSTATE_MAX_VALUE_BYTES", None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        errors.append(
            checks.Error(
                f"KVSTATE_MAX_VALUE_BYTES is {limit!r}.",
                hint="Use a positive number of bytes, or None to disable the limit.",
                id="kvstate.E004",
            )
        )
    return errors


def check_web_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """``KVSTATE_HISTORY_PERMISSION`` imports a callable; ``KVSTATE_ANONYMOUS_CACHE`` is a cache."""
    errors: list[checks.CheckMessage] = []
    hook = getattr(django_settings, "KVSTATE_HISTORY_PERMISSION", None)
    if hook is not None:
        problem = _hook_problem(hook)
        if problem:
            errors.append(
                checks.Error(
                    f"KVSTATE_HISTORY_PERMISSION is {hook!r}: {problem}.",
                    hint=(
                        "Give the dotted path of a function (request, username, usage_key) -> "
                        "bool, e.g. 'myproject.permissions.can_see_history', or None for the "
                        "default (staff, or the learner themself)."
                    ),
                    id="kvstate.E008",
                )
            )
    cache = getattr(django_settings, "KVSTATE_ANONYMOUS_CACHE", None)
    if cache is not None and (not isinstance(cache, str) or cache not in django_settings.CACHES):
        errors.append(
            checks.Error(
                f"KVSTATE_ANONYMOUS_CACHE is {cache!r}, which names no cache in CACHES "
                f"({', '.join(map(repr, django_settings.CACHES)) or 'none configured'}).",
                hint=(
                    "Name a CACHES alias, or set None to keep anonymous state in memory for "
                    "one request."
                ),
                id="kvstate.E009",
            )
        )
    return errors


def _hook_problem(path: object) -> str:
    """Return why ``path`` is not the dotted path of a callable, or ``''``."""
    if not isinstance(path, str):
        return f"a {type(path).__name__}, not a dotted path"
    try:
        hook = import_string(path)
    except ImportError as exc:
        return f"it does not import ({exc})"
    if not callable(hook):
        return f"{type(hook).__name__} {hook!r} is not callable"
    return ""


def check_open_edx_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """Open edX's ``USER_STATE_BATCH_SIZE``, which kvstate honours, has a usable value."""
    size = getattr(django_settings, "USER_STATE_BATCH_SIZE", None)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        return [
            checks.Error(
                f"USER_STATE_BATCH_SIZE is {size!r}.",
                hint="Use a positive number of rows per statement, or leave it unset (1000).",
                id="kvstate.E010",
            )
        ]
    return []


def _is_str_collection(value: object) -> bool:
    return (
        isinstance(value, Iterable)
        and not isinstance(value, str | bytes)
        and all(isinstance(item, str) for item in value)
    )


def register() -> None:
    """Register kvstate's checks with Django."""
    checks.register(check_history_routing)
    checks.register(check_value_settings)
    checks.register(check_web_settings)
    checks.register(check_open_edx_settings)
