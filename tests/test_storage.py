"""``kvstate.storage``'s reading side, where the public APIs do not reach it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connections, transaction
from django.test import TransactionTestCase
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.keys import CourseKey, UsageKey

from kvstate import storage
from kvstate.models import StudentModule, XModuleStudentPrefsField

COURSE = CourseKey.from_string("course-v1:kvstate+Storage+run")
OTHER_RUN = CourseKey.from_string("course-v1:kvstate+Storage+other")


class TestFetchModules(TransactionTestCase):
    """``fetch_modules``: the rows of a learner's blocks, each matched to its own run."""

    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.user = get_user_model()._default_manager.create(username="reader")
        self.usage = COURSE.make_usage_key("problem", "p1")
        self.row = StudentModule.objects.create(
            student=self.user, course_id=COURSE, module_state_key=self.usage, state='{"a": 1}'
        )

    def test_reads_the_row_of_each_target_and_nothing_else(self) -> None:
        # The same block id in another run, and another learner's row of the block: not it.
        StudentModule.objects.create(
            student=self.user,
            course_id=OTHER_RUN,
            module_state_key=OTHER_RUN.make_usage_key("problem", "p1"),
            state='{"b": 2}',
        )
        other = get_user_model()._default_manager.create(username="other")
        StudentModule.objects.create(
            student=other, course_id=COURSE, module_state_key=self.usage, state='{"c": 3}'
        )
        target = storage.Target.of(self.usage)
        missing = storage.Target.of(COURSE.make_usage_key("problem", "p2"))
        found = storage.fetch_modules("default", self.user.pk, [target, missing])
        assert list(found) == [target]
        row = found[target]
        assert (row.id, row.state, row.modified) == (self.row.id, {"a": 1}, self.row.modified)

    @pytest.mark.skipif(
        not connections["default"].features.has_select_for_update_nowait,
        reason="the database has no row locks to test",
    )
    def test_lock_holds_the_rows_until_the_transaction_ends(self) -> None:
        target = storage.Target.of(self.usage)
        errors: list[BaseException] = []

        def try_to_lock() -> None:
            try:
                with transaction.atomic():
                    rows = StudentModule.objects.select_for_update(nowait=True)
                    list(rows.filter(pk=self.row.pk))
            except DatabaseError as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        with transaction.atomic():
            assert storage.fetch_modules("default", self.user.pk, [target], lock=True)
            other = threading.Thread(target=try_to_lock)
            other.start()
            other.join()
        assert len(errors) == 1
        try_to_lock()  # released at the end of the transaction
        assert len(errors) == 1


def test_targets_are_equal_when_they_name_the_same_row() -> None:
    # A branch or version in the key is not stored: both keys name one row, so one target.
    usage = COURSE.make_usage_key("problem", "p1")
    on_branch = COURSE.for_branch("draft").make_usage_key("problem", "p1")
    assert usage != on_branch
    same, other = storage.Target.of(on_branch), storage.Target.of(usage)
    assert (same, hash(same), same.stored) == (other, hash(other), other.stored)
    assert storage.Target.of(COURSE.make_usage_key("problem", "p2")) != same
    assert storage.Target(usage, OTHER_RUN) != same
    assert {same: 1}[other] == 1


KEYS_AS_STORED = [
    COURSE,
    COURSE.make_usage_key("problem", "p1"),
    COURSE.for_branch("draft"),
    COURSE.for_branch("draft").make_usage_key("problem", "p1"),
    CourseKey.from_string("course-v1:Org+Course+Run+version@519665f6223ebd6980884f2b"),
    CourseKey.from_string(
        "course-v1:Org+Course+Run+branch@published+version@519665f6223ebd6980884f2b"
    ).make_usage_key("html", "h1"),
    CourseKey.from_string("Org/Old/Run"),
    CourseKey.from_string("Org/Old/Run").make_usage_key("video", "v1"),
    UsageKey.from_string("i4x://Org/Old/problem/p1"),
    CourseKey.from_string("library-v1:Org+Lib"),
    CourseKey.from_string("library-v1:Org+Lib+branch@library").make_usage_key("problem", "p1"),
    UsageKey.from_string("lb:Org:lib2:problem:p1"),
    BlockTypeKeyV1("xblock.v1", "problem"),
]


@pytest.mark.parametrize("key", KEYS_AS_STORED, ids=str)
def test_a_key_is_stored_as_opaque_keys_field_stores_it(key: Any) -> None:
    # The model fields' own conversion strips branch and version by building a copy of the
    # key; stored_key must give the same text, keys without either included.
    field: Any = (
        StudentModule._meta.get_field("module_state_key")
        if isinstance(key, UsageKey)
        else XModuleStudentPrefsField._meta.get_field("module_type")
        if isinstance(key, BlockTypeKeyV1)
        else StudentModule._meta.get_field("course_id")
    )
    assert storage.stored_key(key) == str(field.get_prep_value(key))
