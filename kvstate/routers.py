"""Send ``StudentModuleHistory`` to its own database when one is configured."""

from __future__ import annotations

from typing import Any

from django.db import models, router

from kvstate.conf import HISTORY_ALIAS, settings

_APP_LABEL = "kvstate"
_HISTORY_MODEL = "studentmodulehistory"


def _is_history(model: type[models.Model] | None) -> bool:
    return (
        model is not None
        and model._meta.app_label == _APP_LABEL
        and model._meta.model_name == _HISTORY_MODEL
    )


class StudentModuleHistoryRouter:
    """Route reads, writes and migrations of ``StudentModuleHistory`` to ``student_module_history``.

    Without that alias in ``DATABASES`` the router stays out of the way and history lives on
    ``default``. Nothing but the history model migrates onto the history alias.
    """

    def _history_db(self) -> str | None:
        return HISTORY_ALIAS if settings.history_alias_configured else None

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return self._history_db() if _is_history(model) else None

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        return self._history_db() if _is_history(model) else None

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        # History refers to its module by id only (no database constraint), so relations that
        # span the two databases are fine at the ORM level.
        if _is_history(type(obj1)) or _is_history(type(obj2)):
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        history_db = self._history_db()
        if history_db is None:
            return None
        if app_label == _APP_LABEL and model_name == _HISTORY_MODEL:
            return db == history_db
        if db == history_db:
            return False
        return None


def read_alias(model: type[models.Model], using: str | None = None) -> str:
    """Return the alias read-only work on ``model`` reads from.

    ``using`` when given, else ``KVSTATE_READ_ALIAS`` (a replica), else what the routers say.
    Only for reads that feed no write: a replica may lag behind the primary.
    """
    return using or settings.READ_ALIAS or router.db_for_read(model)
