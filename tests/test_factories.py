"""The shipped factories make valid rows, and names and keys are stored and compared exactly.

Exactness matters on every backend: MySQL/MariaDB's default collations fold case, accents and
trailing spaces, so ``'B'``, ``'b'``, ``'é'`` and ``'b '`` would be one row there (kvstate's
migration gives those columns a binary NO PAD collation).
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.test import TestCase
from opaque_keys.edx.asides import AsideUsageKeyV1, AsideUsageKeyV2
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator, LibraryLocatorV2, LibraryUsageLocatorV2

from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import (
    BLOCK_TYPE_KEY,
    COURSE_KEY,
    USAGE_KEY,
    StudentInfoFactory,
    StudentModuleFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)

# Strings that differ only by case, accent or a trailing space. Keys cannot hold spaces.
LOOK_ALIKE_NAMES = ("B", "b", "b ", "e", "é", "E", "É")
LOOK_ALIKE_IDS = ("B", "b", "e", "é", "E", "É")

ASIDE_TYPE = "Mock_Aside"


def _usage(block_id: str, course: CourseLocator = COURSE_KEY) -> UsageKey:
    return course.make_usage_key("problem", block_id)


class FactoryDefaultsTests(TestCase):
    def test_user_factory(self) -> None:
        first, second = UserFactory(), UserFactory()
        first.full_clean()
        assert first.username != second.username
        assert first.email == f"{first.username}@example.com"
        assert not first.has_usable_password()
        assert get_user_model().objects.count() == 2

    def test_user_factory_gets_an_existing_username(self) -> None:
        user = UserFactory(username="learner")
        assert UserFactory(username="learner").pk == user.pk

    def test_student_module_factory(self) -> None:
        module = StudentModuleFactory()
        module.full_clean()
        module = StudentModule.objects.get(pk=module.pk)
        assert module.module_type == "problem"
        assert module.module_state_key == USAGE_KEY
        assert (
            str(module.module_state_key)
            == "block-v1:edX+DemoX+Demo_2014+type@problem+block@problem_1"
        )
        assert module.course_id == COURSE_KEY
        assert module.state is None
        assert module.grade is None
        assert module.max_grade is None
        assert module.done == "na"
        assert module.created is not None
        assert module.modified is not None

    def test_student_module_factory_follows_the_usage_key(self) -> None:
        other_course = CourseLocator("edX", "Other", "2025")
        key = other_course.make_usage_key("html", "intro")
        module = StudentModuleFactory(module_state_key=key)
        module.full_clean()
        assert (module.module_type, module.course_id) == ("html", other_course)

    def test_student_module_factory_gets_the_existing_row(self) -> None:
        user = UserFactory()
        module = StudentModuleFactory(student=user, state='{"a": 1}')
        again = StudentModuleFactory(student=user)
        assert again.pk == module.pk
        assert StudentModule.objects.count() == 1

    def test_user_state_summary_factory(self) -> None:
        row = UserStateSummaryFactory()
        row.full_clean()
        row = XModuleUserStateSummaryField.objects.get(pk=row.pk)
        assert row.usage_id == USAGE_KEY
        assert row.field_name == "existing_field"
        assert json.loads(row.value) == "old_value"
        assert UserStateSummaryFactory().pk == row.pk

    def test_student_prefs_factory(self) -> None:
        row = StudentPrefsFactory()
        row.full_clean()
        row = XModuleStudentPrefsField.objects.get(pk=row.pk)
        assert row.module_type == BlockTypeKeyV1("xblock.v1", "mock_problem")
        assert row.module_type == BLOCK_TYPE_KEY
        assert row.field_name == "existing_field"
        assert json.loads(row.value) == "old_value"
        assert StudentPrefsFactory(student=row.student).pk == row.pk

    def test_student_info_factory(self) -> None:
        row = StudentInfoFactory()
        row.full_clean()
        row = XModuleStudentInfoField.objects.get(pk=row.pk)
        assert row.field_name == "existing_field"
        assert json.loads(row.value) == "old_value"
        assert StudentInfoFactory(student=row.student).pk == row.pk
        assert XModuleStudentInfoField.objects.count() == 1


class KeyRoundTripTests(TestCase):
    """Keys come back from the database as the same class, value and spelling."""

    def _usage_keys(self) -> list[UsageKey]:
        usage = _usage("Problem_One")
        library = LibraryLocatorV2("edX", "Mixed_Case_Lib")
        return [
            usage,
            AsideUsageKeyV1(usage, ASIDE_TYPE),
            AsideUsageKeyV2(usage, ASIDE_TYPE),
            LibraryUsageLocatorV2(library, "problem", "Lib_Problem"),
        ]

    def test_usage_and_context_keys_in_student_module(self) -> None:
        user = UserFactory()
        for key in self._usage_keys():
            with self.subTest(key=str(key)):
                StudentModuleFactory(student=user, module_state_key=key)
                row = StudentModule.objects.get(module_state_key=key)
                assert type(row.module_state_key) is type(key)
                assert row.module_state_key == key
                assert str(row.module_state_key) == str(key)
                assert row.course_id == key.context_key
                assert str(row.course_id) == str(key.context_key)
                assert row.module_type == key.block_type

    def test_usage_keys_in_user_state_summary(self) -> None:
        for key in self._usage_keys():
            with self.subTest(key=str(key)):
                UserStateSummaryFactory(usage_id=key)
                row = XModuleUserStateSummaryField.objects.get(usage_id=key)
                assert type(row.usage_id) is type(key)
                assert str(row.usage_id) == str(key)

    def test_block_type_keys_in_preferences(self) -> None:
        user = UserFactory()
        # XBlock's family serialises as the bare type, as Open edX stores it.
        stored = {
            BlockTypeKeyV1("xblock.v1", "Mock_Problem"): "Mock_Problem",
            BlockTypeKeyV1("xblock_asides.v1", "Mock_Problem"): (
                "block-type-v1:xblock_asides.v1:Mock_Problem"
            ),
        }
        for key, text in stored.items():
            with self.subTest(key=str(key)):
                StudentPrefsFactory(student=user, module_type=key)
                row = XModuleStudentPrefsField.objects.get(student=user, module_type=key)
                assert row.module_type == key
                assert (row.module_type.block_family, row.module_type.block_type) == (
                    key.block_family,
                    "Mock_Problem",
                )
                raw = XModuleStudentPrefsField.objects.filter(pk=row.pk).values_list(
                    "module_type", flat=True
                )
                assert str(raw.get()) == text
        # Same type and field name in two families are two rows (an aside must not collide).
        assert XModuleStudentPrefsField.objects.filter(student=user).count() == 2


class ExactComparisonTests(TestCase):
    """Look-alike names and keys are distinct rows, and lookups match them exactly."""

    def assert_exact(self, queryset, column: str, values) -> None:
        # Every look-alike made its own row ...
        assert sorted(queryset.values_list(column, flat=True), key=str) == sorted(values, key=str)
        # ... and an equality lookup finds exactly one, spelled exactly as asked.
        for value in values:
            matches = list(queryset.filter(**{column: value}).values_list(column, flat=True))
            assert matches == [value], (value, matches)
            in_matches = list(
                queryset.filter(**{f"{column}__in": [value]}).values_list(column, flat=True)
            )
            assert in_matches == [value], (value, in_matches)

    def test_user_state_summary_field_names(self) -> None:
        for name in LOOK_ALIKE_NAMES:
            UserStateSummaryFactory(field_name=name, value=json.dumps(name))
        self.assert_exact(
            XModuleUserStateSummaryField.objects.all(), "field_name", LOOK_ALIKE_NAMES
        )
        for name in LOOK_ALIKE_NAMES:
            row = XModuleUserStateSummaryField.objects.get(usage_id=USAGE_KEY, field_name=name)
            assert json.loads(row.value) == name

    def test_preferences_field_names(self) -> None:
        user = UserFactory()
        for name in LOOK_ALIKE_NAMES:
            StudentPrefsFactory(student=user, field_name=name)
        self.assert_exact(XModuleStudentPrefsField.objects.all(), "field_name", LOOK_ALIKE_NAMES)

    def test_user_info_field_names(self) -> None:
        user = UserFactory()
        for name in LOOK_ALIKE_NAMES:
            StudentInfoFactory(student=user, field_name=name)
        self.assert_exact(XModuleStudentInfoField.objects.all(), "field_name", LOOK_ALIKE_NAMES)

    def test_student_module_types(self) -> None:
        user = UserFactory()
        for i, module_type in enumerate(LOOK_ALIKE_NAMES):
            StudentModuleFactory(
                student=user, module_state_key=_usage(f"p{i}"), module_type=module_type
            )
        self.assert_exact(StudentModule.objects.all(), "module_type", LOOK_ALIKE_NAMES)

    def test_usage_keys(self) -> None:
        user = UserFactory()
        keys = [_usage(block_id) for block_id in LOOK_ALIKE_IDS]
        keys += [AsideUsageKeyV2(_usage("b"), aside) for aside in LOOK_ALIKE_IDS]
        for key in keys:
            StudentModuleFactory(student=user, module_state_key=key)
            UserStateSummaryFactory(usage_id=key)
        self.assert_exact(StudentModule.objects.all(), "module_state_key", keys)
        self.assert_exact(XModuleUserStateSummaryField.objects.all(), "usage_id", keys)

    def test_course_keys(self) -> None:
        user = UserFactory()
        courses = [
            CourseLocator("edX", "DemoX", "Demo_2014"),
            CourseLocator("edx", "demox", "demo_2014"),
            CourseLocator("EDX", "DEMOX", "DEMO_2014"),
            CourseLocator("edX", "DémoX", "Demo_2014"),
        ]
        for course in courses:
            StudentModuleFactory(student=user, module_state_key=_usage("b", course))
        self.assert_exact(StudentModule.objects.all(), "course_id", courses)

    def test_preferences_block_types(self) -> None:
        user = UserFactory()
        keys = [BlockTypeKeyV1("xblock.v1", t) for t in LOOK_ALIKE_IDS]
        keys += [BlockTypeKeyV1("xblock_asides.v1", t) for t in LOOK_ALIKE_IDS]
        for key in keys:
            StudentPrefsFactory(student=user, module_type=key)
        self.assert_exact(XModuleStudentPrefsField.objects.all(), "module_type", keys)

    def test_exact_duplicates_are_still_rejected(self) -> None:
        # The look-alikes above are distinct rows because the columns compare exactly, not
        # because the unique constraints are missing.
        user = UserFactory()
        row = StudentInfoFactory(student=user, field_name="b ")
        summary = UserStateSummaryFactory(field_name="É")
        prefs = StudentPrefsFactory(student=user, field_name="B")
        module = StudentModuleFactory(student=user, module_state_key=_usage("é"))
        duplicates = [
            lambda: XModuleStudentInfoField.objects.create(student=user, field_name=row.field_name),
            lambda: XModuleUserStateSummaryField.objects.create(
                usage_id=summary.usage_id, field_name=summary.field_name
            ),
            lambda: XModuleStudentPrefsField.objects.create(
                student=user, module_type=prefs.module_type, field_name=prefs.field_name
            ),
            lambda: StudentModule.objects.create(
                student=user, module_state_key=module.module_state_key, course_id=module.course_id
            ),
        ]
        for create in duplicates:
            with self.assertRaises(IntegrityError), transaction.atomic():
                create()
