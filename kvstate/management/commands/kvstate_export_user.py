"""``manage.py kvstate_export_user``: everything kvstate holds about a learner, as JSON."""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.management.base import CommandError, CommandParser

from kvstate import operations
from kvstate.management.learner import LearnerCommand


class Command(LearnerCommand):
    help = (
        "Write everything kvstate holds about a learner as JSON: user_state rows with their "
        "history, preferences and user_info, values exactly as stored. Summary fields are "
        "shared by all learners and not included."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--output",
            metavar="FILE",
            help="Write to FILE (created readable by its owner only) instead of stdout.",
        )
        parser.add_argument(
            "--indent",
            type=int,
            default=2,
            help="Spaces per indentation level; 0 for one line (default: 2).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_id, learner = self.learner(options)
        exported = operations.export_user(user_id)
        # ensure_ascii (the default) escapes lone surrogates, which UTF-8 cannot carry.
        text = json.dumps(exported, indent=options["indent"] or None) + "\n"
        path = options["output"]
        if path is None:
            self.stdout.write(text, ending="")
            return
        try:
            # It holds personal data: readable by its owner only, from the first byte.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as output:
                output.write(text)
        except OSError as exc:
            raise CommandError(f"cannot write the export to {path!r}: {exc.strerror}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Exported learner {learner} to {path}: {len(exported['user_state'])} "
                f"user_state rows, {sum(len(r['history']) for r in exported['user_state'])} "
                f"history rows, {len(exported['preferences'])} preferences, "
                f"{len(exported['user_info'])} user_info."
            )
        )
