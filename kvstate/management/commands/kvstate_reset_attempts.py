"""``manage.py kvstate_reset_attempts``: set a learner's attempts to 0 in some blocks."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from kvstate import operations
from kvstate.management.learner import LearnerCommand, usage_key


class Command(LearnerCommand):
    help = (
        "Set a learner's 'attempts' to 0 in the state of each block given, keeping every other "
        "field. Blocks without attempts are left alone. A submission racing the reset keeps "
        "its fields."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--usage-key",
            action="append",
            required=True,
            dest="usage_keys",
            metavar="USAGE_KEY",
            help="A block whose attempts to reset (repeat for several).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Change nothing; report what would change."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_id, learner = self.learner(options)
        keys = [usage_key(text) for text in options["usage_keys"]]
        dry_run: bool = options["dry_run"]
        reset = 0
        for key in dict.fromkeys(keys):
            changed = operations.reset_attempts(user_id, key, dry_run=dry_run)
            reset += changed
            outcome = ("would reset" if dry_run else "reset") if changed else "nothing to reset"
            self.stdout.write(f"{key}: {outcome}")
        verb = "Dry run: would reset" if dry_run else "Reset"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} attempts in {reset} of {len(set(keys))} blocks of learner {learner}."
            )
        )
