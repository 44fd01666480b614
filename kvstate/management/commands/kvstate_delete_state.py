"""``manage.py kvstate_delete_state``: delete a learner's state of some blocks or a course."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from kvstate import operations
from kvstate.management.learner import LearnerCommand, batch_size, course_key, usage_key


class Command(LearnerCommand):
    help = (
        "Delete a learner's state of the blocks given, or of every block of a course: the "
        "state becomes {} (history records it); grades stay. Course deletions go in batches "
        "that commit one by one: an interrupted run can simply be run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--usage-key",
            action="append",
            dest="usage_keys",
            metavar="USAGE_KEY",
            help="A block whose state to delete (repeat for several).",
        )
        which.add_argument(
            "--course", metavar="COURSE_KEY", help="Delete the state of every block of this course."
        )
        parser.add_argument(
            "--batch-size",
            type=batch_size,
            default=1000,
            help="Rows per batch with --course (default: 1000).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Change nothing; report what would change."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_id, learner = self.learner(options)
        dry_run: bool = options["dry_run"]
        if options["course"] is not None:
            course = course_key(options["course"])
            deleted = operations.delete_course_state(
                user_id, course, batch_size=options["batch_size"], dry_run=dry_run
            )
            where = f"in {course}"
        else:
            keys = [usage_key(text) for text in options["usage_keys"]]
            deleted = operations.delete_state(user_id, keys, dry_run=dry_run)
            where = f"of the {len(set(keys))} asked"
        verb = "Dry run: would delete" if dry_run else "Deleted"
        self.stdout.write(
            self.style.SUCCESS(f"{verb} the state of {deleted} blocks {where}, learner {learner}.")
        )
