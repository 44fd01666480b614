"""Conflicts (deadlocks, serialization and Galera certification failures) are retried with
exponential backoff and full jitter, ``KVSTATE_CONFLICT_RETRIES`` times at most.

Deadlocks are injected with ``connection.execute_wrapper`` as the driver reports them (MariaDB
error 1213, which is also how Galera reports a lost certification; PostgreSQL 40P01). SQLite
reports a busy database instead, which kvstate never retries: its own busy timeout waits.
"""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError, connection
from django.test import SimpleTestCase, TransactionTestCase, override_settings

from kvstate import storage
from kvstate.conf import DEFAULT_CONFLICT_RETRIES, settings
from kvstate.models import StudentModule
from kvstate.testing.factories import StudentModuleFactory, UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient
from tests.blocks import usage
from tests.test_faults import deadlock
from tests.test_model_data_faults import failing

UPDATE = r"^UPDATE .courseware_studentmodule"


class ConflictRetriesTests(TransactionTestCase):
    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"a": 0}')
        self.client = DjangoXBlockUserStateClient(self.user)
        storage.stats.reset()

    def write_with_deadlocks(self, times: int) -> list[str]:
        with failing(UPDATE, times=times, error=deadlock()) as failed:
            self.client.set(self.user.username, usage(), {"a": times})
        return failed

    def stored(self) -> dict[str, int]:
        return json.loads(StudentModule.objects.get().state)  # type: ignore[no-any-return]

    def test_the_default_budget(self) -> None:
        assert settings.CONFLICT_RETRIES == DEFAULT_CONFLICT_RETRIES == 50

    @override_settings(KVSTATE_CONFLICT_RETRIES=3)
    def test_a_write_is_retried_up_to_the_budget(self) -> None:
        if connection.vendor == "sqlite":
            with pytest.raises(OperationalError):
                self.write_with_deadlocks(1)
            assert storage.stats.transactions_retried == 0
            return
        # Three conflicts, three retries: the fourth attempt lands.
        assert len(self.write_with_deadlocks(3)) == 3
        assert self.stored() == {"a": 3}
        assert storage.stats.transactions_retried == 3
        assert storage.stats.most_retries == 3

    @override_settings(KVSTATE_CONFLICT_RETRIES=3)
    def test_past_the_budget_the_conflict_reaches_the_caller(self) -> None:
        with pytest.raises(OperationalError) as info:
            self.write_with_deadlocks(4 if connection.vendor != "sqlite" else 1)
        assert info.value.__cause__ is not None
        assert self.stored() == {"a": 0}

    @override_settings(KVSTATE_CONFLICT_RETRIES=0)
    def test_zero_retries_lets_the_first_conflict_through(self) -> None:
        with pytest.raises(OperationalError):
            self.write_with_deadlocks(1)
        assert storage.stats.transactions_retried == 0
        assert self.stored() == {"a": 0}


class BackoffTests(SimpleTestCase):
    def test_full_jitter_under_a_doubling_ceiling(self) -> None:
        base, cap = storage.CONFLICT_PAUSE_BASE, storage.CONFLICT_PAUSE_CAP
        for retry in (1, 2, 3, 6, 10, 30, 1000):
            ceiling = min(cap, base * 2 ** (retry - 1))
            pauses = [storage.conflict_pause(retry) for _ in range(2000)]
            with self.subTest(retry=retry):
                assert all(0 <= pause <= ceiling for pause in pauses)
                # Spread over the whole range (full jitter), not bunched at the ceiling.
                assert min(pauses) < 0.1 * ceiling
                assert max(pauses) > 0.9 * ceiling

    def test_worst_case_wait_with_the_default_budget(self) -> None:
        # The figure the README gives: every pause at its ceiling, 50 retries.
        worst = sum(
            min(storage.CONFLICT_PAUSE_CAP, storage.CONFLICT_PAUSE_BASE * 2 ** (n - 1))
            for n in range(1, DEFAULT_CONFLICT_RETRIES + 1)
        )
        assert round(worst, 3) == 11.315
