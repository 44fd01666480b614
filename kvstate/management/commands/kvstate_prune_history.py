"""``manage.py kvstate_prune_history``: delete old StudentModule history in bounded batches."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from kvstate import history
from kvstate.models import StudentModuleHistory

T = TypeVar("T", int, float)


def _number(convert: Callable[[str], T], minimum: T, what: str) -> Callable[[str], T]:
    """Return an argparse ``type`` accepting ``what`` (at least ``minimum``), else saying so."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not value >= minimum:  # "not >=" also refuses NaN
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "Delete StudentModule history rows older than --days days, optionally keeping the "
        "newest --keep rows of each module, in batches of --batch-size rows. Each batch "
        "commits on its own: an interrupted run can simply be run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=_number(int, 0, "a whole number of days, 0 or more"),
            required=True,
            help="Delete rows created more than this many days ago (a whole number, 0 or more).",
        )
        parser.add_argument(
            "--keep",
            type=_number(int, 0, "a whole number of rows, 0 or more"),
            default=0,
            help="Keep the newest KEEP rows of each module, however old (default: 0).",
        )
        parser.add_argument(
            "--batch-size",
            type=_number(int, 1, "a whole number of rows, 1 or more"),
            default=1000,
            help="Rows examined, and so at most deleted, per batch (default: 1000).",
        )
        parser.add_argument(
            "--pause",
            type=_number(float, 0.0, "a number of seconds, 0 or more"),
            default=0.0,
            help="Seconds to sleep between batches, to leave the database room (default: 0).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Delete nothing; report what would be deleted.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days: int = options["days"]
        keep: int = options["keep"]
        pause: float = options["pause"]
        dry_run: bool = options["dry_run"]
        using = history.alias()
        cutoff = timezone.now() - timedelta(days=days)
        verb = "would delete" if dry_run else "deleted"

        older = StudentModuleHistory.objects.using(using).filter(created__lt=cutoff).count()
        kept = f", keeping the newest {keep} of each module" if keep else ""
        self.stdout.write(
            f"{'Dry run: ' if dry_run else ''}history on database {using!r}: {older} rows "
            f"created before {cutoff.isoformat()}{kept}; batches of {options['batch_size']}."
        )
        examined = deleted = batches = 0
        started = time.monotonic()
        try:
            for batch in history.prune(
                cutoff, keep=keep, batch_size=options["batch_size"], dry_run=dry_run, using=using
            ):
                batches += 1
                examined += batch.examined
                deleted += batch.deleted
                if options["verbosity"] >= 1:
                    self.stdout.write(
                        f"batch {batches}: {verb} {batch.deleted} of {batch.examined} rows "
                        f"({examined}/{older} examined, {deleted} {verb})"
                    )
                if pause and batch.examined == options["batch_size"]:
                    time.sleep(pause)
        except KeyboardInterrupt:
            raise CommandError(
                f"interrupted after {batches} batches ({deleted} rows {verb}). Every finished "
                "batch is committed; run the same command again to carry on."
            ) from None
        elapsed = time.monotonic() - started
        rate = f" ({deleted / elapsed:.0f} rows/s)" if elapsed > 0 and not dry_run else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {verb} {deleted} rows in {batches} batches, {elapsed:.1f}s{rate}."
            )
        )
