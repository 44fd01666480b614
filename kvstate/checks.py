"""System checks for kvstate's settings. Ids are never reused."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings as django_settings
from django.core import checks
from django.db import router
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
    if settings.history_alias_configured and settings.history_router_installed:
        errors.extend(_check_history_routes())
    return errors


def _check_history_routes() -> list[checks.CheckMessage]:
    """StudentModuleHistory's reads, writes and migrations all reach the history alias.

    Django asks routers in ``DATABASE_ROUTERS`` order and takes the first answer, so a router
    listed before kvstate's (a read/write split, say) can claim the history model.
    """
    from kvstate.models import StudentModuleHistory

    wrong: list[str] = []
    answered: dict[str, None] = {}
    for kind, method in (("reads", "db_for_read"), ("writes", "db_for_write")):
        alias = getattr(router, method)(StudentModuleHistory)
        if alias != HISTORY_ALIAS:
            wrong.append(f"{kind} to {alias!r}")
            answered[_deciding_router(method, StudentModuleHistory)] = None
    meta = StudentModuleHistory._meta
    for alias in django_settings.DATABASES:
        allowed = router.allow_migrate(alias, meta.app_label, model_name=meta.model_name)
        if bool(allowed) != (alias == HISTORY_ALIAS):
            verb = "migrations to" if allowed else "no migrations to"
            wrong.append(f"{verb} {alias!r}")
            answered[
                _deciding_router("allow_migrate", alias, meta.app_label, model_name=meta.model_name)
            ] = None
    if not wrong:
        return []
    return [
        checks.Error(
            f"StudentModuleHistory must be read, written and migrated on {HISTORY_ALIAS!r}, "
            f"but DATABASE_ROUTERS sends {', '.join(wrong)}; answered by "
            f"{', '.join(answered)}. History writes would fail or land on the wrong database.",
            hint=(
                f"List {_ROUTER!r} first in DATABASE_ROUTERS (Django takes the first router's "
                "answer), or make the other router return None for StudentModuleHistory."
            ),
            id="kvstate.E005",
        )
    ]


def _deciding_router(method: str, *args: Any, **hints: Any) -> str:
    """Return the dotted path of the first router with an answer, as Django asks them."""
    for candidate in router.routers:
        decide = getattr(candidate, method, None)
        if decide is not None and decide(*args, **hints) is not None:
            return f"{type(candidate).__module__}.{type(candidate).__qualname__}"
    return "Django's default (no router answered)"


def check_value_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """The value settings (``KVSTATE_HISTORY_BLOCK_TYPES``, ``..._MAX_VALUE_BYTES``,
    ``..._READ_ALIAS``, ``..._CONFLICT_RETRIES``) have usable values."""
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
    read_alias = getattr(django_settings, "KVSTATE_READ_ALIAS", None)
    if read_alias is not None and (
        not isinstance(read_alias, str) or read_alias not in django_settings.DATABASES
    ):
        errors.append(
            checks.Error(
                f"KVSTATE_READ_ALIAS is {read_alias!r}, which names no alias in DATABASES.",
                hint=(
                    "Name the DATABASES alias of a replica of the learner state tables, or "
                    "None to let DATABASE_ROUTERS choose."
                ),
                id="kvstate.E006",
            )
        )
    retries = getattr(django_settings, "KVSTATE_CONFLICT_RETRIES", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        errors.append(
            checks.Error(
                f"KVSTATE_CONFLICT_RETRIES is {retries!r}.",
                hint="Use a number of retries: an integer, 0 or more (default 50).",
                id="kvstate.E007",
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
