"""``manage.py kvstate_erase_user``: delete every row of a learner, in resumable batches."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from kvstate import operations
from kvstate.management.learner import LearnerCommand, batch_size, describe_counts


class Command(LearnerCommand):
    help = (
        "Delete every row kvstate holds for a learner (user_state and its history, "
        "preferences, user_info) in batches of --batch-size rows that commit one by one, "
        "printing progress per batch. An interrupted run can simply be run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--batch-size",
            type=batch_size,
            default=1000,
            help="Rows per batch and per statement (default: 1000).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Delete nothing; report what would be deleted."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_id, learner = self.learner(options)
        size: int = options["batch_size"]
        totals = operations.erase_user(user_id, batch_size=size, dry_run=True)
        total = sum(totals.values())
        if options["dry_run"]:
            self.stdout.write(
                f"Dry run: would delete {total} rows of learner {learner}: "
                f"{describe_counts(totals)}."
            )
            return
        self.stdout.write(
            f"Erasing learner {learner}: {total} rows ({describe_counts(totals)}), "
            f"batches of {size}."
        )
        deleted = dict.fromkeys(totals, 0)
        done = batches = 0
        started = time.monotonic()
        try:
            for batch in operations.erase_user_batches(user_id, batch_size=size):
                batches += 1
                done += batch.rows
                for table, count in batch.deleted.items():
                    deleted[table] += count
                if options["verbosity"] >= 1:
                    self.stdout.write(
                        f"batch {batches}: deleted {describe_counts(dict(batch.deleted))}; "
                        f"{_progress(done, total, time.monotonic() - started)}"
                    )
        except (KeyboardInterrupt, DatabaseError) as exc:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {exc!r}"
            raise CommandError(
                f"{why} after {batches} batches ({done} rows deleted: "
                f"{describe_counts(deleted)}). Every finished batch is committed; run the same "
                "command again to finish."
            ) from None
        elapsed = time.monotonic() - started
        rate = f", {done / elapsed:.0f} rows/s" if elapsed > 0 and done else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: deleted {done} rows of learner {learner} in {batches} batches, "
                f"{elapsed:.1f}s{rate} ({describe_counts(deleted)})."
            )
        )


def _progress(done: int, total: int, elapsed: float) -> str:
    """Return ``done`` of ``total`` rows as a share, with the rate and the time left."""
    # Rows the learner added since the count make done exceed total: never show over 100%.
    total = max(total, done)
    line = f"{done}/{total} rows ({100 * done // max(total, 1)}%)"
    if elapsed <= 0:
        return line
    rate = done / elapsed
    return f"{line}, {rate:.0f} rows/s, about {_duration((total - done) / rate)} left"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02}s" if minutes else f"{rest}s"
