"""factory_boy factories for kvstate's models, for kvstate's tests and downstream test suites.

Defaults mirror Open edX's courseware factories: a ``problem`` block in the demo course, a
per-field row named ``existing_field`` holding the JSON string ``"old_value"``.
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import AbstractBaseUser
from factory.declarations import LazyAttribute, LazyFunction, Sequence, SubFactory
from factory.django import DjangoModelFactory
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.keys import CourseKey, UsageKey
from opaque_keys.edx.locator import CourseLocator

from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)

#: The course every factory places its rows in unless told otherwise.
COURSE_KEY: CourseKey = CourseLocator("edX", "DemoX", "Demo_2014")

#: The block that ``StudentModuleFactory`` and ``UserStateSummaryFactory`` use by default.
USAGE_KEY: UsageKey = COURSE_KEY.make_usage_key("problem", "problem_1")

# (opaque-keys declares BlockTypeKeyV1's fields abstract and sets them in __init__.)
#: The preferences block type ``StudentPrefsFactory`` uses by default.
BLOCK_TYPE_KEY = BlockTypeKeyV1("xblock.v1", "mock_problem")  # type: ignore[abstract]

#: The field name the per-field factories use by default.
FIELD_NAME = "existing_field"

#: The JSON text the per-field factories store by default.
OLD_VALUE = json.dumps("old_value")


class UserFactory(DjangoModelFactory[AbstractBaseUser]):
    """Create a user of ``AUTH_USER_MODEL`` (``robot0``, ``robot1``, ...) without a password.

    The password is unusable on purpose: hashing one costs a large share of a test's time, and
    nothing in kvstate logs users in.
    """

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = Sequence(lambda n: f"robot{n}")
    email = LazyAttribute(lambda user: f"{user.username}@example.com")
    password = LazyFunction(lambda: make_password(None))


class StudentModuleFactory(DjangoModelFactory[StudentModule]):
    """Create one learner's ``user_state`` row for a ``problem`` block (state NULL by default)."""

    class Meta:
        model = StudentModule
        django_get_or_create = ("student", "module_state_key", "course_id")

    module_type = LazyAttribute(lambda row: row.module_state_key.block_type)
    module_state_key = USAGE_KEY
    course_id = LazyAttribute(lambda row: row.module_state_key.context_key)
    student = SubFactory(UserFactory)
    state = None
    grade = None
    max_grade = None


class UserStateSummaryFactory(DjangoModelFactory[XModuleUserStateSummaryField]):
    """Create a ``user_state_summary`` row: one field of one block, shared by all learners."""

    class Meta:
        model = XModuleUserStateSummaryField
        django_get_or_create = ("usage_id", "field_name")

    usage_id = USAGE_KEY
    field_name = FIELD_NAME
    value = OLD_VALUE


class StudentPrefsFactory(DjangoModelFactory[XModuleStudentPrefsField]):
    """Create a ``preferences`` row: one field of one learner for one block type."""

    class Meta:
        model = XModuleStudentPrefsField
        django_get_or_create = ("student", "module_type", "field_name")

    module_type = BLOCK_TYPE_KEY
    student = SubFactory(UserFactory)
    field_name = FIELD_NAME
    value = OLD_VALUE


class StudentInfoFactory(DjangoModelFactory[XModuleStudentInfoField]):
    """Create a ``user_info`` row: one field of one learner, across all blocks."""

    class Meta:
        model = XModuleStudentInfoField
        django_get_or_create = ("student", "field_name")

    student = SubFactory(UserFactory)
    field_name = FIELD_NAME
    value = OLD_VALUE
