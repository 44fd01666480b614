"""The workbench's Django app: its pages, templates and management commands."""

from __future__ import annotations

from django.apps import AppConfig


class DemoSiteConfig(AppConfig):
    name = "demo_site"
    verbose_name = "kvstate workbench"
