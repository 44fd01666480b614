"""What the ``kvstate_*`` learner commands share: naming the learner, reading keys, batch sizes.

Everything an operator types is checked before the first change, and a mistake ends the
command with a ``CommandError`` (a non-zero exit) that names it.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from opaque_keys import InvalidKeyError
from opaque_keys.edx.keys import LearningContextKey, UsageKey

from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.operations import MAX_BATCH_SIZE
from kvstate.storage import Target

#: How the commands name kvstate's tables.
TABLE_LABELS = {
    StudentModule._meta.db_table: "user_state",
    StudentModuleHistory._meta.db_table: "history",
    XModuleUserStateSummaryField._meta.db_table: "user_state_summary",
    XModuleStudentPrefsField._meta.db_table: "preferences",
    XModuleStudentInfoField._meta.db_table: "user_info",
}


class LearnerCommand(BaseCommand):
    """A command about one learner, named by username (positional) or ``--user-id``."""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "username", nargs="?", help="The learner's username (or give --user-id instead)."
        )
        parser.add_argument(
            "--user-id", type=int, help="The learner's user id, instead of a username."
        )

    def learner(self, options: dict[str, Any]) -> tuple[int, str]:
        """Return the learner's id and how messages name them; ``CommandError`` if none."""
        username, user_id = options["username"], options["user_id"]
        if (username is None) == (user_id is None):
            raise CommandError("name the learner by username or by --user-id (one of the two)")
        user_model = get_user_model()
        users = user_model._default_manager.all()
        if user_id is not None:
            found = users.filter(pk=user_id).values_list(user_model.USERNAME_FIELD).first()
            if found is None:
                raise CommandError(f"there is no user with id {user_id}; nothing was changed")
            return user_id, f"{found[0]!r} (id {user_id})"
        row = users.filter(**{user_model.USERNAME_FIELD: username}).values_list("pk").first()
        if row is None:
            raise CommandError(f"there is no user named {username!r}; nothing was changed")
        return int(row[0]), f"{username!r} (id {row[0]})"


def usage_key(text: str) -> UsageKey:
    """Return the usage key ``text`` names, or raise ``CommandError`` saying what is wrong."""
    try:
        key = UsageKey.from_string(text)
    except InvalidKeyError:
        raise CommandError(
            f"{text!r} is not a usage key (for example "
            "block-v1:edX+DemoX+2014+type@problem+block@p1); nothing was changed"
        ) from None
    try:
        Target.of(key).check()
    except ValueError as exc:
        raise CommandError(f"{exc}; nothing was changed") from None
    return key


def course_key(text: str) -> LearningContextKey:
    """Return the course (or library) key ``text`` names, or raise ``CommandError``."""
    try:
        return LearningContextKey.from_string(text)
    except InvalidKeyError:
        raise CommandError(
            f"{text!r} is not a course key (for example course-v1:edX+DemoX+2014); "
            "nothing was changed"
        ) from None


def batch_size(text: str) -> int:
    """Parse ``--batch-size`` (an argparse ``type``)."""
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of rows from 1 to {MAX_BATCH_SIZE}"
        )
    return size


def describe_counts(counts: dict[str, int]) -> str:
    """Return ``counts`` per table as the commands print them (tables with rows only)."""
    shown = [f"{count} {TABLE_LABELS[table]}" for table, count in counts.items() if count]
    return ", ".join(shown) or "no rows"
