"""The one reader of ``KVSTATE_*`` settings.

Properties read ``django.conf.settings`` on every access, so ``override_settings`` just works.
"""

from __future__ import annotations

from django.conf import settings as django_settings

#: The database alias that holds ``StudentModuleHistory`` when it is configured.
HISTORY_ALIAS = "student_module_history"

#: Open edX keeps history for capa problems only.
DEFAULT_HISTORY_BLOCK_TYPES: frozenset[str] = frozenset({"problem"})

DEFAULT_MAX_VALUE_BYTES = 2 * 1024 * 1024

#: 8 writers of one learner's block spread over a 3-node Galera cluster, one node killed,
#: needed up to 27 retries for one write (see the README): 50 leaves a margin.
DEFAULT_CONFLICT_RETRIES = 50

#: Rows per statement when the client iterates over a block or a course.
DEFAULT_USER_STATE_BATCH_SIZE = 1000


class _Settings:
    """Typed, live view of the ``KVSTATE_*`` settings."""

    @property
    def HISTORY_BLOCK_TYPES(self) -> frozenset[str] | None:
        """Block types whose user_state writes leave history rows; ``None`` means every type.

        ``KVSTATE_HISTORY_BLOCK_TYPES``: an iterable of block types, ``"__all__"`` for every type,
        or an empty iterable for none. Default: ``{"problem"}``, as Open edX.
        """
        value = getattr(django_settings, "KVSTATE_HISTORY_BLOCK_TYPES", DEFAULT_HISTORY_BLOCK_TYPES)
        if value == "__all__":
            return None
        return frozenset(value)

    @property
    def MAX_VALUE_BYTES(self) -> int | None:
        """Largest serialised user_state (one block) or per-field value; ``None`` disables it.

        ``KVSTATE_MAX_VALUE_BYTES``, default 2 MiB.
        """
        value: int | None = getattr(
            django_settings, "KVSTATE_MAX_VALUE_BYTES", DEFAULT_MAX_VALUE_BYTES
        )
        return value

    @property
    def CONFLICT_RETRIES(self) -> int:
        """How often a write that lost a deadlock or certification conflict is run again.

        ``KVSTATE_CONFLICT_RETRIES``, default 50; each retry waits with exponential backoff
        and full jitter (:func:`kvstate.storage.conflict_pause`).
        """
        value: int = getattr(django_settings, "KVSTATE_CONFLICT_RETRIES", DEFAULT_CONFLICT_RETRIES)
        return value

    @property
    def READ_ALIAS(self) -> str | None:
        """The alias read-only work (iteration, reports) reads from; ``None``: the router's.

        ``KVSTATE_READ_ALIAS``, default ``None``. Never used for reads that feed a write or a
        learner's request: those go to ``router.db_for_write``.
        """
        value: str | None = getattr(django_settings, "KVSTATE_READ_ALIAS", None)
        return value

    @property
    def HISTORY_PERMISSION(self) -> str | None:
        """Dotted path of the submission-history permission hook, or ``None`` for the default.

        ``KVSTATE_HISTORY_PERMISSION``: a callable ``(request, username, usage_key) -> bool``
        that replaces the default rule (staff, or the learner themself).
        """
        value: str | None = getattr(django_settings, "KVSTATE_HISTORY_PERMISSION", None)
        return value

    @property
    def ANONYMOUS_CACHE(self) -> str | None:
        """Alias in ``CACHES`` that keeps anonymous and ephemeral state across requests.

        ``KVSTATE_ANONYMOUS_CACHE``, default ``None``: such state lives in memory for one
        request (one ``StudentDataProvider``).
        """
        value: str | None = getattr(django_settings, "KVSTATE_ANONYMOUS_CACHE", None)
        return value

    @property
    def USER_STATE_BATCH_SIZE(self) -> int:
        """Rows per statement when iterating over all the state of a block or a course.

        Open edX's ``USER_STATE_BATCH_SIZE`` (not namespaced: code ported from Open edX sets
        it), default 1,000.
        """
        value: int | None = getattr(django_settings, "USER_STATE_BATCH_SIZE", None)
        return DEFAULT_USER_STATE_BATCH_SIZE if value is None else value

    @property
    def history_alias_configured(self) -> bool:
        """Whether ``DATABASES`` has the dedicated history alias."""
        return HISTORY_ALIAS in django_settings.DATABASES

    @property
    def history_router_installed(self) -> bool:
        """Whether ``DATABASE_ROUTERS`` includes the history router (or a subclass)."""
        from django.db import router

        from kvstate.routers import StudentModuleHistoryRouter

        # Django's own view of DATABASE_ROUTERS: dotted paths imported and classes instantiated
        # (it is rebuilt when override_settings changes the setting).
        return any(isinstance(r, StudentModuleHistoryRouter) for r in router.routers)


settings = _Settings()
