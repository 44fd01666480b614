"""The learner commands (SPEC §11): ``kvstate_reset_attempts``, ``kvstate_delete_state``,
``kvstate_export_user``, ``kvstate_erase_user``.

Each names the learner by username or ``--user-id``; an unknown user, an unparsable key or a
bad option ends it with a non-zero exit, a message naming the culprit, and no change; a dry
run changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.db import DatabaseError, connections
from django.test import TestCase, TransactionTestCase

from kvstate import operations
from kvstate.conf import HISTORY_ALIAS
from kvstate.management.commands.kvstate_erase_user import _duration
from kvstate.models import StudentModule
from kvstate.testing.factories import StudentInfoFactory, StudentPrefsFactory, UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.test_operations import COURSE, MODULES, OTHER_COURSE, failing_on, usage
from tests.underfire import snapshot

COMMANDS = (
    "kvstate_reset_attempts",
    "kvstate_delete_state",
    "kvstate_export_user",
    "kvstate_erase_user",
)
#: Arguments besides the learner that each command needs to run.
REQUIRED = {
    "kvstate_reset_attempts": ["--usage-key", str(usage("p1"))],
    "kvstate_delete_state": ["--usage-key", str(usage("p1"))],
    "kvstate_export_user": [],
    "kvstate_erase_user": [],
}


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


class CommandTestCase(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.other = UserFactory()
        self.name = self.user.username
        client = DjangoXBlockUserStateClient()
        with self.captureOnCommitCallbacks(using="default", execute=True):
            for user in (self.user, self.other):
                client.set_many(
                    user.username,
                    {
                        usage("p1"): {"attempts": 2, "answer": "a"},
                        usage("p2"): {"answer": "b"},
                        usage("p3", course=OTHER_COURSE): {"attempts": 1},
                    },
                )
        StudentPrefsFactory(student=self.user)
        StudentInfoFactory(student=self.user)

    def state(self, usage_key: Any, user: Any = None) -> Any:
        text = StudentModule.objects.get(student=user or self.user, module_state_key=usage_key)
        return json.loads(text.state)


class LearnerArgumentTests(CommandTestCase):
    def test_an_unknown_user_or_key_changes_nothing_and_names_the_culprit(self) -> None:
        cases: list[tuple[str, list[str], str]] = []
        for command in COMMANDS:
            cases += [
                (command, ["nobody", *REQUIRED[command]], "there is no user named 'nobody'"),
                (command, ["--user-id", "999999", *REQUIRED[command]], "no user with id 999999"),
                (
                    command,
                    [self.name, "--user-id", str(self.user.pk), *REQUIRED[command]],
                    "one of the two",
                ),
                (command, REQUIRED[command], "one of the two"),
                (command, ["--user-id", "x"], "invalid int value: 'x'"),
            ]
        bad_key = "block-v1:nope"
        long_key = str(usage("x" * 300))
        cases += [
            (
                "kvstate_reset_attempts",
                [self.name, "--usage-key", str(usage("p1")), "--usage-key", bad_key],
                f"'{bad_key}' is not a usage key",
            ),
            ("kvstate_reset_attempts", [self.name, "--usage-key", long_key], "longer than"),
            ("kvstate_reset_attempts", [self.name], "--usage-key"),
            (
                "kvstate_delete_state",
                [self.name, "--usage-key", str(usage("p1")), "--usage-key", "p2"],
                "'p2' is not a usage key",
            ),
            ("kvstate_delete_state", [self.name, "--course", "nope"], "'nope' is not a course key"),
            ("kvstate_delete_state", [self.name], "--usage-key --course"),
            (
                "kvstate_delete_state",
                [self.name, "--course", str(COURSE), "--usage-key", str(usage("p1"))],
                "not allowed with",
            ),
            (
                "kvstate_delete_state",
                [self.name, "--course", str(COURSE), "--batch-size", "0"],
                "'0' is not a whole number of rows from 1 to 10000",
            ),
            (
                "kvstate_erase_user",
                [self.name, "--batch-size", "10001"],
                "'10001' is not a whole number of rows from 1 to 10000",
            ),
        ]
        before = snapshot()
        for command, args, message in cases:
            with self.subTest(command=command, args=args), pytest.raises(CommandError) as error:
                run(command, *args)
            assert message in str(error.value)
        assert snapshot() == before

    def test_the_learner_by_username_or_by_id(self) -> None:
        by_name = run("kvstate_export_user", self.name)
        by_id = run("kvstate_export_user", "--user-id", str(self.user.pk))
        assert json.loads(by_name) == json.loads(by_id)
        assert json.loads(by_name)["user_id"] == self.user.pk


class ResetAttemptsCommandTests(CommandTestCase):
    def test_resets_the_blocks_given(self) -> None:
        output = run(
            "kvstate_reset_attempts",
            self.name,
            "--usage-key",
            str(usage("p1")),
            "--usage-key",
            str(usage("p2")),
        )
        assert f"{usage('p1')}: reset\n" in output
        assert f"{usage('p2')}: nothing to reset\n" in output
        assert f"Reset attempts in 1 of 2 blocks of learner '{self.name}'" in output
        assert self.state(usage("p1")) == {"attempts": 0, "answer": "a"}
        assert self.state(usage("p1"), self.other) == {"attempts": 2, "answer": "a"}

    def test_a_dry_run_changes_nothing(self) -> None:
        before = snapshot()
        output = run(
            "kvstate_reset_attempts", self.name, "--usage-key", str(usage("p1")), "--dry-run"
        )
        assert f"{usage('p1')}: would reset" in output
        assert "Dry run: would reset attempts in 1 of 1 blocks" in output
        assert snapshot() == before


class DeleteStateCommandTests(CommandTestCase):
    def test_deletes_the_blocks_given(self) -> None:
        output = run("kvstate_delete_state", self.name, "--usage-key", str(usage("p1")))
        assert "Deleted the state of 1 blocks of the 1 asked" in output
        assert self.state(usage("p1")) == {}
        assert self.state(usage("p2")) == {"answer": "b"}

    def test_deletes_a_course(self) -> None:
        output = run(
            "kvstate_delete_state", "--user-id", str(self.user.pk), "--course", str(COURSE)
        )
        assert f"Deleted the state of 2 blocks in {COURSE}" in output
        assert self.state(usage("p1")) == self.state(usage("p2")) == {}
        assert self.state(usage("p3", course=OTHER_COURSE)) == {"attempts": 1}
        assert self.state(usage("p1"), self.other) == {"attempts": 2, "answer": "a"}

    def test_a_dry_run_changes_nothing(self) -> None:
        before = snapshot()
        output = run("kvstate_delete_state", self.name, "--course", str(COURSE), "--dry-run")
        assert f"Dry run: would delete the state of 2 blocks in {COURSE}" in output
        output = run(
            "kvstate_delete_state", self.name, "--usage-key", str(usage("p1")), "--dry-run"
        )
        assert "Dry run: would delete the state of 1 blocks" in output
        assert snapshot() == before


class ExportUserCommandTests(CommandTestCase):
    def test_writes_the_export_as_json_to_stdout(self) -> None:
        output = run("kvstate_export_user", self.name)
        expected = json.loads(json.dumps(operations.export_user(self.user.pk)))
        assert json.loads(output) == expected
        assert output.isascii()  # lone surrogates and the like escaped
        assert len(expected["user_state"]) == 3

    def test_writes_to_a_file_only_its_owner_can_read(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "export.json"
            output = run("kvstate_export_user", self.name, "--output", str(path), "--indent", "0")
            assert f"Exported learner '{self.name}' (id {self.user.pk}) to {path}" in output
            assert "3 user_state rows, 3 history rows, 1 preferences, 1 user_info" in output
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            text = path.read_text()
            assert text.count("\n") == 1
            assert json.loads(text) == json.loads(run("kvstate_export_user", self.name))

    def test_an_unwritable_file_is_named(self) -> None:
        with pytest.raises(
            CommandError, match=re.escape("cannot write the export to '/nonexistent/x.json'")
        ):
            run("kvstate_export_user", self.name, "--output", "/nonexistent/x.json")


class EraseUserCommandTests(CommandTestCase):
    def test_erases_the_learner_with_progress_per_batch(self) -> None:
        before = snapshot()
        output = run("kvstate_erase_user", self.name, "--batch-size", "2")
        lines = output.splitlines()
        # 3 modules (all problems) and their 3 history rows, 1 preference, 1 user_info.
        assert lines[0] == (
            f"Erasing learner '{self.name}' (id {self.user.pk}): 8 rows (3 user_state, "
            "3 history, 1 preferences, 1 user_info), batches of 2."
        )
        progress = r", \d+ rows/s, about \d+\.\ds left"
        expected = [
            r"batch 1: deleted 2 user_state, 2 history; 4/8 rows \(50%\)",
            r"batch 2: deleted 1 user_state, 1 history; 6/8 rows \(75%\)",
            r"batch 3: deleted 1 preferences; 7/8 rows \(87%\)",
            r"batch 4: deleted 1 user_info; 8/8 rows \(100%\)",
        ]
        for line, pattern in zip(lines[1:5], expected, strict=True):
            assert re.fullmatch(pattern + progress, line), line
        assert re.fullmatch(
            rf"Done: deleted 8 rows of learner '{self.name}' \(id {self.user.pk}\) in 4 "
            r"batches, [\d.]+s(, \d+ rows/s)? \(3 user_state, 3 history, 1 preferences, "
            r"1 user_info\)\.",
            lines[5],
        )
        assert len(lines) == 6
        assert operations.erase_user(self.user.pk, dry_run=True) == dict.fromkeys(
            operations.TABLES, 0
        )
        assert StudentModule.objects.filter(student=self.other).count() == 3
        assert len(snapshot()["StudentModule"]) == len(before["StudentModule"]) - 3

    def test_time_left_reads_well(self) -> None:
        assert [_duration(s) for s in (0.04, 9.94, 10.4, 59.6, 61, 3725)] == [
            "0.0s",
            "9.9s",
            "10s",
            "1m 00s",
            "1m 01s",
            "62m 05s",
        ]

    def test_a_dry_run_changes_nothing(self) -> None:
        before = snapshot()
        output = run("kvstate_erase_user", self.name, "--dry-run")
        assert output == (
            f"Dry run: would delete 8 rows of learner '{self.name}' (id {self.user.pk}): "
            "3 user_state, 3 history, 1 preferences, 1 user_info.\n"
        )
        assert snapshot() == before


class InterruptedEraseCommandTests(TransactionTestCase):
    """Real commits: what a batch deleted stays deleted, and running again finishes."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        DjangoXBlockUserStateClient().set_many(
            self.user.username, {usage(f"p{n}"): {"n": n} for n in range(10)}
        )

    def test_an_interrupted_run_says_how_to_finish_and_a_rerun_does(self) -> None:
        for error, why in [
            (KeyboardInterrupt(), "interrupted"),
            (DatabaseError("gone away (injected)"), "stopped by DatabaseError"),
        ]:
            with (
                self.subTest(why),
                connections["default"].execute_wrapper(failing_on("DELETE", MODULES, 2, error)),
                pytest.raises(CommandError, match=rf"{why}.* after 1 batches .*run the same"),
            ):
                run("kvstate_erase_user", self.user.username, "--batch-size", "3")
            assert StudentModule.objects.filter(student=self.user).count() > 0
        output = run("kvstate_erase_user", self.user.username, "--batch-size", "3")
        assert "Done: deleted" in output
        assert not StudentModule.objects.filter(student=self.user).exists()

    def test_a_failing_command_exits_non_zero(self) -> None:
        for command in COMMANDS:
            stderr = StringIO()
            with (
                self.subTest(command),
                contextlib.redirect_stderr(stderr),
                pytest.raises(SystemExit) as exit_,
            ):
                ManagementUtility(["manage.py", command, "nobody", *REQUIRED[command]]).execute()
            assert exit_.value.code == 1
            assert "there is no user named 'nobody'" in stderr.getvalue()
