"""Check keys, names and values before any SQL runs, with errors that name the culprit."""

from __future__ import annotations

import json
from typing import Any

from opaque_keys.edx.keys import UsageKey
from xblock.exceptions import InvalidScopeError
from xblock.fields import Scope, ScopeBase

from kvstate.conf import settings

#: The four scopes kvstate stores. Named scopes are plain ``ScopeBase`` tuples, so they are
#: matched by identity (or exact tuple equality), never by ``str(scope)``.
USER_STATE = Scope.user_state
USER_STATE_SUMMARY = Scope.user_state_summary
PREFERENCES = Scope.preferences
USER_INFO = Scope.user_info
USER_SCOPES: tuple[ScopeBase, ...] = (USER_STATE, USER_STATE_SUMMARY, PREFERENCES, USER_INFO)
#: Scopes whose keys carry the learner's id.
LEARNER_SCOPES: tuple[ScopeBase, ...] = (USER_STATE, PREFERENCES, USER_INFO)

FIELD_NAME_MAX_LENGTH = 64
MODULE_TYPE_MAX_LENGTH = 32
KEY_MAX_LENGTH = 255
BLOCK_TYPE_KEY_MAX_LENGTH = 64


class WrongUserError(AssertionError):
    """A key names another learner than the one the cache or store was built for.

    A subclass of ``AssertionError`` because Open edX asserted here and callers catch that;
    unlike an ``assert`` it is raised under ``python -O`` too.
    """


def user_scope(scope: object) -> ScopeBase:
    """Return the kvstate scope ``scope`` is, or raise ``InvalidScopeError``."""
    for known in USER_SCOPES:
        if scope is known or (type(scope) is ScopeBase and scope == known):
            return known
    error = InvalidScopeError(
        f"kvstate stores only the user scopes (user_state, user_state_summary, preferences, "
        f"user_info), not {scope!r}"
    )
    # XBlock keeps the text in .message only, so str(error) (logs, tracebacks) would be empty.
    error.args = (error.message,)
    raise error


def check_user(scope: ScopeBase, key_user_id: object, user_id: object) -> None:
    """Raise ``WrongUserError`` if a learner-scoped key belongs to another learner."""
    if scope in LEARNER_SCOPES and key_user_id != user_id:
        raise WrongUserError(f"key for user {key_user_id!r} used with a store for user {user_id!r}")


def check_usage_key(value: object) -> UsageKey:
    """Return ``value`` if it is a usage key, else raise ``TypeError``."""
    if not isinstance(value, UsageKey):
        raise TypeError(f"expected a usage key (UsageKey), got {type(value).__name__} {value!r}")
    return value


def lacks_run(usage_key: UsageKey) -> bool:
    """Return whether ``usage_key`` is an old-style key that does not know its course run.

    ``UsageKey.from_string("i4x://org/course/category/name")`` gives one (the string has no
    run, so the same block id appears in every run of an old course).
    """
    context = usage_key.context_key
    return bool(getattr(context, "deprecated", False)) and getattr(context, "run", "") is None


def check_course_run(usage_key: UsageKey) -> UsageKey:
    """Return ``usage_key`` if it names its learning context fully, else raise ``ValueError``."""
    if lacks_run(usage_key):
        raise ValueError(
            f"usage key {usage_key} has no course run, so it names no learner's row (old "
            "courses reuse it in every run): map it into its course first, "
            "usage_key.map_into_course(course_key)"
        )
    return usage_key


def check_field_name(name: object, max_length: int | None = None) -> str:
    """Return ``name`` if it is a usable field name, else raise ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"field name {name!r} is a {type(name).__name__}, not a str")
    if not name:
        raise ValueError("field name is empty")
    if max_length is not None and len(name) > max_length:
        raise ValueError(
            f"field name {name[:20]!r}... is {len(name)} characters, longer than the "
            f"{max_length} the column allows"
        )
    return name


def check_column_text(what: str, value: str) -> str:
    """Return ``value`` if every backend's text columns can hold it, else raise ``ValueError``.

    PostgreSQL refuses NUL characters in text, and no UTF-8 column holds a lone surrogate. Both
    are refused here on every backend, before any SQL, rather than by one database mid-write.
    (user_state field names live inside JSON text, which escapes both: they need no check.)
    """
    if "\x00" in value:
        raise ValueError(
            f"{what} {value!r} contains a NUL character, which per-field rows cannot store "
            "(PostgreSQL text refuses it); use a name without one"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{what} {value!r} contains a lone surrogate, which is not valid UTF-8 and no "
            "database column can store; use a name without one"
        ) from None
    return value


def check_length(what: str, value: str, max_length: int) -> str:
    """Return ``value`` if it fits a column of ``max_length`` characters, else ``ValueError``."""
    if len(value) > max_length:
        raise ValueError(
            f"{what} {value[:40]!r}... is {len(value)} characters, longer than the "
            f"{max_length} its column allows"
        )
    return value


def to_json(value: Any, field_name: str) -> str:
    """Serialise ``value`` exactly as Open edX's text columns hold it, or raise.

    ``TypeError`` for values JSON cannot hold, ``ValueError`` for NaN/Infinity or a value over
    ``KVSTATE_MAX_VALUE_BYTES``.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"value of field {field_name!r} is not JSON-serialisable: {exc}") from exc
    except ValueError as exc:
        # allow_nan=False reports NaN and Infinity as "Out of range float values".
        raise ValueError(
            f"value of field {field_name!r} cannot be stored: {exc}. JSON has no NaN or "
            "Infinity: store None or a string instead"
        ) from exc
    check_size(f"value of field {field_name!r}", text)
    return text


def check_size(what: str, text: str) -> str:
    """Raise ``ValueError`` if ``text`` is over ``KVSTATE_MAX_VALUE_BYTES``."""
    limit = settings.MAX_VALUE_BYTES
    # json.dumps escapes everything outside ASCII, so characters are bytes.
    if limit is not None and len(text) > limit:
        raise ValueError(
            f"{what} is {len(text)} bytes serialised, over the KVSTATE_MAX_VALUE_BYTES "
            f"limit of {limit}; nothing was written"
        )
    return text
