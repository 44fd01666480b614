"""Each kvstate system check fires in its situation and only there."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import SimpleTestCase, override_settings

from kvstate.conf import HISTORY_ALIAS
from kvstate.routers import StudentModuleHistoryRouter

ROUTER = "kvstate.routers.StudentModuleHistoryRouter"
OTHER_ROUTER = "tests.test_checks.OtherRouter"


class OtherRouter:
    """A router with no opinion on anything, standing in for a project's own routers."""


class SubRouter(StudentModuleHistoryRouter):
    """A project's own router built on kvstate's."""


class MigrateEverywhereRouter:
    """A router with an opinion on migrations only: everything migrates everywhere."""

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True


#: An ordinary read/write split: reads to a replica, writes to the primary.
SPLIT_ROUTER = "tests.cluster.ReadReplicaRouter"


def kvstate_check_ids() -> list[str]:
    """Return the ids of kvstate's messages from a full check run, in order."""
    return [m.id for m in run_checks() if m.id and m.id.startswith("kvstate.")]


@contextmanager
def without_history_alias() -> Iterator[None]:
    """Act as if ``DATABASES`` had no history alias.

    Django warns that overriding DATABASES "can lead to unexpected behavior": open connections
    keep their settings. Nothing here connects; the checks and the router only read the setting.
    """
    databases = {k: v for k, v in settings.DATABASES.items() if k != HISTORY_ALIAS}
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Overriding setting DATABASES", category=UserWarning
        )
        with override_settings(DATABASES=databases):
            yield


class HistoryRoutingChecksTests(SimpleTestCase):
    def test_shipped_settings_are_clean(self) -> None:
        assert kvstate_check_ids() == []

    @override_settings(DATABASE_ROUTERS=[])
    def test_e001_history_alias_without_router(self) -> None:
        assert kvstate_check_ids() == ["kvstate.E001"]

    @override_settings(DATABASE_ROUTERS=[OTHER_ROUTER])
    def test_e001_with_only_other_routers(self) -> None:
        assert kvstate_check_ids() == ["kvstate.E001"]

    def test_e002_router_without_history_alias(self) -> None:
        with without_history_alias():
            assert kvstate_check_ids() == ["kvstate.E002"]

    def test_neither_alias_nor_router_is_clean(self) -> None:
        # History simply stays on 'default'.
        with without_history_alias(), override_settings(DATABASE_ROUTERS=[]):
            assert kvstate_check_ids() == []

    def test_router_given_as_path_or_instance_counts(self) -> None:
        # Django takes a non-string DATABASE_ROUTERS entry as the router object itself, so an
        # instance (not a bare class) is the other supported form; a subclass counts too.
        for router in (
            ROUTER,
            "tests.test_checks.SubRouter",
            SubRouter(),
            StudentModuleHistoryRouter(),
        ):
            with self.subTest(router=router), override_settings(DATABASE_ROUTERS=[router]):
                assert kvstate_check_ids() == []

    @override_settings(DATABASE_ROUTERS=[OTHER_ROUTER, ROUTER])
    def test_router_among_others_counts(self) -> None:
        assert kvstate_check_ids() == []


def kvstate_messages() -> list[str]:
    """Return kvstate's check messages with their hints."""
    return [f"{m.msg} {m.hint}" for m in run_checks() if m.id and m.id.startswith("kvstate.")]


class RouterOrderChecksTests(SimpleTestCase):
    """E005: history must route read, write and migrate to its alias, whatever router answers."""

    @override_settings(DATABASE_ROUTERS=[SPLIT_ROUTER, ROUTER])
    def test_e005_split_router_listed_first(self) -> None:
        assert kvstate_check_ids() == ["kvstate.E005"]
        [message] = kvstate_messages()
        # Names what went wrong, the router that answered, and the fix.
        assert "reads to 'replica'" in message
        assert "writes to 'default'" in message
        assert SPLIT_ROUTER in message
        assert f"List {ROUTER!r} first in DATABASE_ROUTERS" in message

    @override_settings(DATABASE_ROUTERS=[ROUTER, SPLIT_ROUTER])
    def test_kvstate_router_listed_first_is_clean(self) -> None:
        assert kvstate_check_ids() == []

    @override_settings(
        DATABASE_ROUTERS=["tests.test_checks.MigrateEverywhereRouter", ROUTER, SPLIT_ROUTER]
    )
    def test_e005_a_router_that_only_claims_migrations(self) -> None:
        # Reads and writes reach kvstate's router; migrations of history on the history alias
        # are still allowed, but so they are on 'default': only the history alias may have it.
        assert kvstate_check_ids() == ["kvstate.E005"]
        [message] = kvstate_messages()
        assert "migrations to 'default'" in message
        assert "tests.test_checks.MigrateEverywhereRouter" in message

    def test_no_history_alias_no_e005(self) -> None:
        with without_history_alias(), override_settings(DATABASE_ROUTERS=[SPLIT_ROUTER]):
            assert kvstate_check_ids() == []


class ValueSettingsChecksTests(SimpleTestCase):
    def test_e003_bad_history_block_types(self) -> None:
        # A bare string would be taken as a set of one-letter block types.
        for value in ("problem", b"problem", 5, ["problem", 1], [None], "all"):
            with self.subTest(value=value), override_settings(KVSTATE_HISTORY_BLOCK_TYPES=value):
                assert kvstate_check_ids() == ["kvstate.E003"]

    def test_good_history_block_types(self) -> None:
        for value in (["problem"], ("problem", "html"), {"problem"}, frozenset(), [], "__all__"):
            with self.subTest(value=value), override_settings(KVSTATE_HISTORY_BLOCK_TYPES=value):
                assert kvstate_check_ids() == []

    def test_e004_bad_max_value_bytes(self) -> None:
        for value in (0, -1, True, False, 1.5, "2MB", [1024]):
            with self.subTest(value=value), override_settings(KVSTATE_MAX_VALUE_BYTES=value):
                assert kvstate_check_ids() == ["kvstate.E004"]

    def test_good_max_value_bytes(self) -> None:
        for value in (None, 1, 2 * 1024 * 1024, 10**12):
            with self.subTest(value=value), override_settings(KVSTATE_MAX_VALUE_BYTES=value):
                assert kvstate_check_ids() == []

    def test_e006_read_alias_names_no_database(self) -> None:
        for value in ("replica", "", 5, ["default"]):
            with self.subTest(value=value), override_settings(KVSTATE_READ_ALIAS=value):
                assert kvstate_check_ids() == ["kvstate.E006"]

    def test_good_read_alias(self) -> None:
        for value in (None, "default", HISTORY_ALIAS):
            with self.subTest(value=value), override_settings(KVSTATE_READ_ALIAS=value):
                assert kvstate_check_ids() == []

    def test_e007_bad_conflict_retries(self) -> None:
        for value in (-1, 1.5, "30", True, None, [3]):
            with self.subTest(value=value), override_settings(KVSTATE_CONFLICT_RETRIES=value):
                assert kvstate_check_ids() == ["kvstate.E007"]

    def test_good_conflict_retries(self) -> None:
        for value in (0, 1, 30, 1000):
            with self.subTest(value=value), override_settings(KVSTATE_CONFLICT_RETRIES=value):
                assert kvstate_check_ids() == []

    def test_e010_bad_user_state_batch_size(self) -> None:
        # Open edX's setting; kvstate pages iterations by it.
        for value in (0, -5, True, 2.5, "100"):
            with self.subTest(value=value), override_settings(USER_STATE_BATCH_SIZE=value):
                assert kvstate_check_ids() == ["kvstate.E010"]

    def test_good_user_state_batch_size(self) -> None:
        for value in (None, 1, 100, 10_000):  # None: not set
            with self.subTest(value=value), override_settings(USER_STATE_BATCH_SIZE=value):
                assert kvstate_check_ids() == []

    @override_settings(
        DATABASE_ROUTERS=[],
        KVSTATE_HISTORY_BLOCK_TYPES="problem",
        KVSTATE_MAX_VALUE_BYTES=0,
        KVSTATE_READ_ALIAS="nowhere",
        KVSTATE_CONFLICT_RETRIES=-1,
    )
    def test_every_problem_is_reported_at_once(self) -> None:
        assert sorted(kvstate_check_ids()) == [
            "kvstate.E001",
            "kvstate.E003",
            "kvstate.E004",
            "kvstate.E006",
            "kvstate.E007",
        ]


def permit_everyone(request: object, username: str, usage_key: object) -> bool:
    """A history permission hook for the checks to import."""
    return True


NOT_CALLABLE = "a string, not a function"


class WebSettingsChecksTests(SimpleTestCase):
    def test_e008_history_permission_that_does_not_import(self) -> None:
        for value in (
            "tests.test_checks.no_such_function",
            "tests.no_such_module.permit",
            "permit_everyone",  # not a dotted path
            "",
            42,
            permit_everyone,  # the function itself, not its path
        ):
            with (
                self.subTest(value=value),
                override_settings(KVSTATE_HISTORY_PERMISSION=value),
            ):
                assert kvstate_check_ids() == ["kvstate.E008"]

    @override_settings(KVSTATE_HISTORY_PERMISSION="tests.test_checks.NOT_CALLABLE")
    def test_e008_history_permission_that_is_not_callable(self) -> None:
        messages = [m for m in run_checks() if m.id == "kvstate.E008"]
        assert len(messages) == 1
        assert "not callable" in messages[0].msg

    def test_good_history_permission(self) -> None:
        for value in (None, "tests.test_checks.permit_everyone"):
            with self.subTest(value=value), override_settings(KVSTATE_HISTORY_PERMISSION=value):
                assert kvstate_check_ids() == []

    def test_e009_anonymous_cache_that_names_no_cache(self) -> None:
        for value in ("no-such-cache", "", 1, ["default"]):
            with self.subTest(value=value), override_settings(KVSTATE_ANONYMOUS_CACHE=value):
                assert kvstate_check_ids() == ["kvstate.E009"]

    def test_good_anonymous_cache(self) -> None:
        for value in (None, "default"):
            with self.subTest(value=value), override_settings(KVSTATE_ANONYMOUS_CACHE=value):
                assert kvstate_check_ids() == []


class CheckCommandTests(SimpleTestCase):
    def test_check_command_is_clean_with_the_shipped_settings(self) -> None:
        out = StringIO()
        call_command("check", stdout=out)
        assert "System check identified no issues" in out.getvalue()

    @override_settings(KVSTATE_MAX_VALUE_BYTES=-1)
    def test_check_command_fails_on_an_error(self) -> None:
        from django.core.management.base import SystemCheckError

        with self.assertRaisesMessage(SystemCheckError, "kvstate.E004"):
            call_command("check", stdout=StringIO())
