"""Create the workbench's learners and staff user (``./demo serve`` runs it)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from demo_site.unit import LEARNERS, STAFF_PASSWORD, STAFF_USERNAME, seed_users


class Command(BaseCommand):
    help = "Create the workbench's learners (alice, bob, carol, dave) and its staff user."

    def handle(self, *args: Any, **options: Any) -> None:
        seed_users()
        self.stdout.write(f"Learners: {', '.join(LEARNERS)} (pick them on the page)")
        self.stdout.write(f"Staff and admin: {STAFF_USERNAME} / {STAFF_PASSWORD}")
