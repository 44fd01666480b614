"""Show kvstate at work: learners use real XBlocks, request by request.

``python manage.py kvstate_demo`` migrates every configured database alias (unless
``--no-migrate``), replays a short course session of four learners, an anonymous visitor and an
author previewing in a studio, then prints what each request cost in SQL statements per alias,
what was stored per learner and what all learners share. It checks its own results and fails
(non-zero exit) if any stored value, tally or statement count is not what it should be.

Part of the workbench project (``demo_site``), not of the reusable app: ``./demo`` runs it with
the workbench's settings. Needs the demo XBlocks: ``pip install "kvstate[demo]"`` (xblock-poll,
xblock-sdk, done-xblock). Each run first deletes the data of previous runs (the demo course,
the ``demo-*`` learners); the workbench's own course and learners are not touched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.test.utils import CaptureQueriesContext
from opaque_keys.edx.keys import UsageKey

from demo_site.unit import DEMO_UNIT
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)

COURSE = DEMO_UNIT.course
POLL, OPEN_POLL, SURVEY, THUMBS, DONE = UNIT = DEMO_UNIT.blocks

LEARNERS = ("alice", "bob", "carol", "dave")
ANONYMOUS = "anonymous"
AUTHOR = "author"  # a real user previewing in a studio: ephemeral mode
USERNAME_PREFIX = "demo-"

_TABLES = (
    StudentModule,
    StudentModuleHistory,
    XModuleUserStateSummaryField,
    XModuleStudentPrefsField,
    XModuleStudentInfoField,
)


@dataclass(frozen=True)
class Step:
    """One simulated request: ``who`` calls ``handler`` of ``block`` with JSON ``data``.

    ``handler=None`` is a page view: the learner opens the unit and every block reads its state.
    """

    who: str
    block: UsageKey | None
    handler: str | None = None
    data: Any = None
    expect: Callable[[Any], bool] = field(default=lambda reply: True, compare=False)

    @property
    def ephemeral(self) -> bool:
        return self.who == AUTHOR

    @property
    def persistent(self) -> bool:
        return self.who in LEARNERS

    @property
    def label(self) -> str:
        if self.block is None:
            return "open the unit (5 blocks)"
        return f"{self.block.block_type}/{self.block.block_id} {self.handler}"


def _ok(reply: Any) -> bool:
    return bool(reply.get("success"))


def _refused(reply: Any) -> bool:
    return reply.get("success") is False


SURVEY_ANSWERS = {
    "alice": {"enjoy": "Y", "recommend": "Y", "learn": "M"},
    "bob": {"enjoy": "Y", "recommend": "N", "learn": "Y"},
    "carol": {"enjoy": "M", "recommend": "Y", "learn": "Y"},
}


def _unit_view(**changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return what a learner's page view shows: the defaults, then ``changes`` by block id."""
    view: dict[str, dict[str, Any]] = {
        POLL.block_id: {"choice": None},
        OPEN_POLL.block_id: {"choice": None},
        SURVEY.block_id: {"choices": {}},
        THUMBS.block_id: {"voted": False},
        DONE.block_id: {"done": False},
    }
    for block_id, fields in changes.items():
        view[block_id] = {**view[block_id], **fields}
    return view


STEPS: tuple[Step, ...] = (
    Step("alice", None, expect=lambda view: view == _unit_view()),
    Step("alice", POLL, "vote", {"choice": "R"}, _ok),
    Step("bob", POLL, "vote", {"choice": "B"}, _ok),
    Step("carol", POLL, "vote", {"choice": "R"}, _ok),
    Step("alice", POLL, "vote", {"choice": "G"}, _refused),
    Step("alice", SURVEY, "vote", SURVEY_ANSWERS["alice"], _ok),
    Step("bob", SURVEY, "vote", SURVEY_ANSWERS["bob"], _ok),
    Step("carol", SURVEY, "vote", SURVEY_ANSWERS["carol"], _ok),
    Step("alice", THUMBS, "vote", {"voteType": "up"}, lambda r: r == {"up": 1, "down": 0}),
    Step("bob", THUMBS, "vote", {"voteType": "up"}, lambda r: r == {"up": 2, "down": 0}),
    Step("carol", THUMBS, "vote", {"voteType": "down"}, lambda r: r == {"up": 2, "down": 1}),
    Step("dave", THUMBS, "vote", {"voteType": "up"}, lambda r: r == {"up": 3, "down": 1}),
    Step("alice", DONE, "toggle_button", {"done": True}, lambda r: r == {"state": True}),
    Step("bob", DONE, "toggle_button", {"done": True}, lambda r: r == {"state": True}),
    Step("bob", DONE, "toggle_button", {"done": False}, lambda r: r == {"state": False}),
    Step("dave", OPEN_POLL, "vote", {"choice": "R"}, _ok),
    Step("dave", OPEN_POLL, "vote", {"choice": "G"}, _ok),
    Step("dave", OPEN_POLL, "vote", {"choice": "B"}, _refused),
    Step(ANONYMOUS, POLL, "vote", {"choice": "O"}, _ok),
    Step(ANONYMOUS, THUMBS, "vote", {"voteType": "down"}, lambda r: r == {"up": 0, "down": 1}),
    Step(AUTHOR, POLL, "vote", {"choice": "G"}, _ok),
    Step(AUTHOR, DONE, "toggle_button", {"done": True}, lambda r: r == {"state": True}),
    Step(
        "alice",
        None,
        expect=lambda view: (
            view
            == _unit_view(
                favourite_colour={"choice": "R"},
                course_feedback={"choices": SURVEY_ANSWERS["alice"]},
                lecture_1={"voted": True},
                reading_1={"done": True},
            )
        ),
    ),
    Step(
        "dave",
        None,
        expect=lambda view: (
            view == _unit_view(best_snack={"choice": "G"}, lecture_1={"voted": True})
        ),
    ),
)

#: What the database must hold afterwards: (learner, block) -> (state, grade).
EXPECTED_MODULES: dict[tuple[str, UsageKey], tuple[dict[str, Any], float | None]] = {
    ("alice", POLL): ({"choice": "R", "submissions_count": 1}, None),
    ("bob", POLL): ({"choice": "B", "submissions_count": 1}, None),
    ("carol", POLL): ({"choice": "R", "submissions_count": 1}, None),
    **{
        (name, SURVEY): ({"choices": answers, "submissions_count": 1}, None)
        for name, answers in SURVEY_ANSWERS.items()
    },
    **{(name, THUMBS): ({"voted": True}, None) for name in LEARNERS},
    ("alice", DONE): ({"done": True}, 1.0),
    ("bob", DONE): ({"done": False}, 0.0),
    ("dave", OPEN_POLL): ({"choice": "G", "submissions_count": 2}, None),
}

#: What every learner shares afterwards: (block, field) -> value.
EXPECTED_SUMMARY: dict[tuple[UsageKey, str], Any] = {
    (POLL, "tally"): {"R": 2, "B": 1, "G": 0, "O": 0},
    (OPEN_POLL, "tally"): {"R": 0, "B": 0, "G": 1, "O": 0},
    (SURVEY, "tally"): {
        "enjoy": {"Y": 2, "N": 0, "M": 1},
        "recommend": {"Y": 2, "N": 1, "M": 0},
        "learn": {"Y": 2, "N": 0, "M": 1},
    },
    (THUMBS, "upvotes"): 3,
    (THUMBS, "downvotes"): 1,
}


@dataclass
class _Outcome:
    number: int
    step: Step
    reply: Any
    statements: dict[str, list[str]]
    rows_changed: bool


class Command(BaseCommand):
    help = (
        "Simulate learners using real XBlocks (poll, survey, thumbs, done) through kvstate; "
        "print statements per request and the stored state; fail if anything is wrong."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-migrate",
            action="store_true",
            help="Do not run 'migrate' on every database alias first.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        self.verbosity: int = options["verbosity"]
        self.aliases = list(connections)
        if not options["no_migrate"]:
            for alias in self.aliases:
                call_command("migrate", database=alias, verbosity=0, interactive=False)
        runtime_module = _import_runtime()
        content = DEMO_UNIT.authored_content()
        users = self._reset()

        outcomes = [
            self._run(number, step, content, users, runtime_module.new_request)
            for number, step in enumerate(STEPS, start=1)
        ]

        self._print_requests(outcomes)
        stored = self._stored_modules()
        summary = self._stored_summary()
        self._print_stored(stored, summary)
        failures = self._check(outcomes, stored, summary)
        elapsed = time.perf_counter() - started
        if failures:
            for failure in failures:
                self.stderr.write(self.style.ERROR(f"FAIL {failure}"))
            raise CommandError(f"{len(failures)} check(s) failed ({elapsed:.1f}s)")
        self.stdout.write(
            self.style.SUCCESS(
                f"\nAll checks passed: {len(STEPS)} requests, "
                f"{len(EXPECTED_MODULES)} learner rows, {len(EXPECTED_SUMMARY)} shared values "
                f"({elapsed:.1f}s)."
            )
        )

    # Setting up

    def _reset(self) -> dict[str, AbstractBaseUser | AnonymousUser]:
        """Delete what earlier runs stored; return the demo's users by name."""
        user_model = get_user_model()
        users: dict[str, AbstractBaseUser | AnonymousUser] = {
            name: user_model.objects.get_or_create(username=f"{USERNAME_PREFIX}{name}")[0]
            for name in (*LEARNERS, AUTHOR)
        }
        module_ids = list(
            StudentModule.objects.filter(course_id=COURSE).values_list("id", flat=True)
        )
        StudentModuleHistory.objects.filter(student_module_id__in=module_ids).delete()
        StudentModule.objects.filter(id__in=module_ids).delete()
        XModuleUserStateSummaryField.objects.filter(usage_id__in=UNIT).delete()
        user_ids = [user.pk for user in users.values()]
        XModuleStudentPrefsField.objects.filter(student_id__in=user_ids).delete()
        XModuleStudentInfoField.objects.filter(student_id__in=user_ids).delete()
        users[ANONYMOUS] = AnonymousUser()
        return users

    # Running

    def _run(
        self,
        number: int,
        step: Step,
        content: Any,
        users: dict[str, AbstractBaseUser | AnonymousUser],
        new_request: Callable[..., Any],
    ) -> _Outcome:
        rows_before = _row_counts()
        with self._capture() as captured:
            runtime = new_request(content, users[step.who], ephemeral=step.ephemeral)
            if step.block is None:
                blocks = [runtime.get_block(usage_key) for usage_key in UNIT]
                runtime.student_data.prefetch(blocks)
                reply: Any = {
                    block.scope_ids.usage_id.block_id: _visible_state(block) for block in blocks
                }
            else:
                block = runtime.get_block(step.block)
                reply = runtime.call_json_handler(block, step.handler, step.data)
        statements = {
            alias: [q["sql"] for q in context.captured_queries]
            for alias, context in captured.items()
        }
        return _Outcome(number, step, reply, statements, _row_counts() != rows_before)

    @contextmanager
    def _capture(self) -> Iterator[dict[str, CaptureQueriesContext]]:
        with ExitStack() as stack:
            yield {
                alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
                for alias in self.aliases
            }

    # Reading back

    def _stored_modules(self) -> dict[tuple[str, UsageKey], tuple[dict[str, Any], float | None]]:
        names = {
            user.pk: user.username.removeprefix(USERNAME_PREFIX)
            for user in get_user_model().objects.filter(username__startswith=USERNAME_PREFIX)
        }
        return {
            (names.get(module.student_id, str(module.student_id)), module.module_state_key): (
                json.loads(module.state) if module.state else {},
                module.grade,
            )
            for module in StudentModule.objects.filter(course_id=COURSE)
        }

    def _stored_summary(self) -> dict[tuple[UsageKey, str], Any]:
        return {
            (row.usage_id, row.field_name): json.loads(row.value)
            for row in XModuleUserStateSummaryField.objects.filter(usage_id__in=UNIT)
        }

    # Printing

    def _print_requests(self, outcomes: Sequence[_Outcome]) -> None:
        self._heading(f"Requests (SQL statements per database alias) - course {COURSE}")
        rows = []
        for outcome in outcomes:
            step = outcome.step
            who = f"{step.who} (preview)" if step.ephemeral else step.who
            rows.append(
                [
                    str(outcome.number),
                    who,
                    step.label,
                    _summarise(outcome.reply),
                    *(str(len(outcome.statements[alias])) for alias in self.aliases),
                ]
            )
        totals = [str(sum(len(o.statements[alias]) for o in outcomes)) for alias in self.aliases]
        rows.append(["", "", "total", "", *totals])
        self._table(["#", "who", "request", "reply", *self.aliases], rows, right=3)
        if self.verbosity >= 2:
            for outcome in outcomes:
                for alias in self.aliases:
                    for sql in outcome.statements[alias]:
                        self.stdout.write(f"  [{outcome.number} {alias}] {sql}")

    def _print_stored(
        self,
        stored: dict[tuple[str, UsageKey], tuple[dict[str, Any], float | None]],
        summary: dict[tuple[UsageKey, str], Any],
    ) -> None:
        self._heading("Stored per learner (courseware_studentmodule)")
        rows = [
            [name, f"{key.block_type}/{key.block_id}", json.dumps(state), _grade(grade)]
            for (name, key), (state, grade) in sorted(
                stored.items(), key=lambda item: (item[0][0], str(item[0][1]))
            )
        ]
        self._table(["learner", "block", "state", "grade"], rows)
        self._heading("Shared by all learners (courseware_xmoduleuserstatesummaryfield)")
        rows = [
            [f"{key.block_type}/{key.block_id}", name, json.dumps(value)]
            for (key, name), value in sorted(summary.items(), key=lambda item: str(item[0]))
        ]
        self._table(["block", "field", "value"], rows)

    def _heading(self, text: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(text))

    def _table(self, headers: list[str], rows: list[list[str]], right: int | None = None) -> None:
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

        def line(cells: list[str]) -> str:
            return "  ".join(
                cell.rjust(width) if right is not None and i >= right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        self.stdout.write(line(headers))
        self.stdout.write(line(["-" * width for width in widths]))
        for row in rows:
            self.stdout.write(line(row))

    # Checking

    def _check(
        self,
        outcomes: Sequence[_Outcome],
        stored: dict[tuple[str, UsageKey], tuple[dict[str, Any], float | None]],
        summary: dict[tuple[UsageKey, str], Any],
    ) -> list[str]:
        failures = []
        for outcome in outcomes:
            step = outcome.step
            where = f"request {outcome.number} ({step.who}: {step.label})"
            if not step.expect(outcome.reply):
                failures.append(f"{where}: unexpected reply {outcome.reply!r}")
            if not step.persistent:
                if any(outcome.statements.values()):
                    failures.append(f"{where}: ran SQL {outcome.statements!r}")
                if outcome.rows_changed:
                    failures.append(f"{where}: changed rows in the database")
        for key in sorted(set(stored) | set(EXPECTED_MODULES), key=str):
            if stored.get(key) != EXPECTED_MODULES.get(key):
                failures.append(
                    f"stored {key}: {stored.get(key)!r}, expected {EXPECTED_MODULES.get(key)!r}"
                )
        for summary_key in sorted(set(summary) | set(EXPECTED_SUMMARY), key=str):
            if summary.get(summary_key) != EXPECTED_SUMMARY.get(summary_key):
                failures.append(
                    f"shared {summary_key}: {summary.get(summary_key)!r}, "
                    f"expected {EXPECTED_SUMMARY.get(summary_key)!r}"
                )
        return failures


def _import_runtime() -> Any:
    """Import the demo runtime, which loads the demo XBlocks, or explain what is missing."""
    from xblock.core import XBlock
    from xblock.plugin import PluginMissingError

    missing = []
    for block_type in {key.block_type for key in UNIT}:
        try:
            XBlock.load_class(block_type)
        except PluginMissingError:
            missing.append(block_type)
    if missing:
        raise CommandError(
            f"XBlock type(s) {sorted(missing)} are not installed; "
            'install the demo blocks with: pip install "kvstate[demo]"'
        )
    from kvstate.testing import runtime

    return runtime


def _visible_state(block: Any) -> dict[str, Any]:
    """Return the user-scope fields a block shows its learner (explicitly set ones)."""
    return {
        name: getattr(block, name)
        for name in ("choice", "choices", "voted", "done")
        if name in block.fields
    }


def _summarise(reply: Any) -> str:
    if isinstance(reply, dict) and "success" in reply:
        if reply["success"]:
            return "ok"
        return _shorten("refused: " + "; ".join(reply.get("errors", [])))
    if isinstance(reply, dict) and all(isinstance(v, dict) for v in reply.values()):
        shown = [
            f"{name}={json.dumps(value)}"
            for fields in reply.values()
            for name, value in fields.items()
            if value not in (None, {}, False)
        ]
        return _shorten("sees " + (", ".join(shown) or "nothing yet"))
    return _shorten(json.dumps(reply))


def _shorten(text: str, width: int = 58) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _grade(grade: float | None) -> str:
    return "" if grade is None else f"{grade:g}"


def _row_counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in _TABLES)
