"""Django app configuration for kvstate."""

from __future__ import annotations

from django.apps import AppConfig


class KvstateConfig(AppConfig):
    """Register system checks and signal receivers."""

    name = "kvstate"
    verbose_name = "XBlock learner state"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from kvstate import checks, history

        checks.register()
        history.connect_signals()
