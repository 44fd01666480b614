"""The five tables of Open edX's courseware state layer, under their Open edX names.

PII: every table but ``courseware_xmoduleuserstatesummaryfield`` is keyed by a learner, and
``state``/``value`` hold whatever the XBlock stored for that learner (answers, submissions).
Retire a learner by deleting their ``StudentModule`` rows (history follows) and their
preferences and user_info rows.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from opaque_keys.edx.django.models import (
    BlockTypeKeyField,
    LearningContextKeyField,
    UsageKeyField,
)


class StudentModuleQuerySet(models.QuerySet["StudentModule"]):
    """Queries over learners' per-block state."""

    def for_user(self, user_id: int) -> StudentModuleQuerySet:
        """Return the rows of one learner."""
        return self.filter(student_id=user_id)


class StudentModule(models.Model):
    """One learner's ``user_state`` for one block: a JSON object of field name to value.

    PII: ``state`` holds the learner's answers and progress.
    """

    MODULE_TYPE_MAX_LENGTH = 32
    KEY_MAX_LENGTH = 255

    id = models.BigAutoField(primary_key=True)
    module_type = models.CharField(
        max_length=MODULE_TYPE_MAX_LENGTH,
        default="problem",
        help_text="Block type of the usage (the usage key's block_type).",
    )
    module_state_key = UsageKeyField(
        max_length=KEY_MAX_LENGTH,
        db_column="module_id",
        case_sensitive=True,
        help_text="Usage key of the block this state belongs to.",
    )
    student = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,
        help_text="The learner. No database constraint, as in Open edX.",
    )
    course_id = LearningContextKeyField(
        max_length=KEY_MAX_LENGTH,
        case_sensitive=True,
        help_text="Learning context (course or library) of the block.",
    )
    state = models.TextField(
        null=True,
        blank=True,
        help_text=(
            "JSON object of the block's user_state fields. NULL: never stored (e.g. a row made "
            "by set_score); '{}': stored, then deleted."
        ),
    )
    grade = models.FloatField(null=True, blank=True, help_text="Raw earned score, if graded.")
    max_grade = models.FloatField(null=True, blank=True, help_text="Raw possible score.")
    done = models.CharField(
        max_length=8,
        default="na",
        help_text="Legacy completion flag kept for schema compatibility ('na' by default).",
    )
    created = models.DateTimeField(auto_now_add=True, help_text="When the row was created.")
    modified = models.DateTimeField(auto_now=True, help_text="When the row was last written.")

    objects = StudentModuleQuerySet.as_manager()

    class Meta:
        db_table = "courseware_studentmodule"
        constraints = [
            models.UniqueConstraint(
                fields=["student", "module_state_key", "course_id"],
                name="courseware_studentmodule_student_module_course_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["module_type"], name="courseware_sm_module_type"),
            models.Index(fields=["module_state_key"], name="courseware_sm_module_id"),
            models.Index(fields=["course_id", "module_type"], name="courseware_sm_course_type"),
            models.Index(fields=["grade"], name="courseware_sm_grade"),
            models.Index(fields=["created"], name="courseware_sm_created"),
            models.Index(fields=["modified"], name="courseware_sm_modified"),
        ]

    def __str__(self) -> str:
        return f"StudentModule<{self.student_id}, {self.module_state_key}>"


class StudentModuleHistoryQuerySet(models.QuerySet["StudentModuleHistory"]):
    """Queries over state history."""

    def for_module(self, student_module_id: int) -> StudentModuleHistoryQuerySet:
        """Return one module's history, newest first."""
        return self.filter(student_module_id=student_module_id).order_by("-created", "-id")


class StudentModuleHistory(models.Model):
    """A snapshot of a ``StudentModule`` after one write call.

    Lives on the ``student_module_history`` database alias when it is configured.
    PII: ``state`` holds the learner's answers at that time.
    """

    id = models.BigAutoField(primary_key=True)
    student_module = models.ForeignKey(
        StudentModule,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
        help_text="The module this snapshot is of (may live on another database).",
    )
    version = models.CharField(
        max_length=255, null=True, blank=True, help_text="Optional version label."
    )
    created = models.DateTimeField(help_text="The module's 'modified' at the time of the write.")
    state = models.TextField(null=True, blank=True, help_text="The module's full state then.")
    grade = models.FloatField(null=True, blank=True, help_text="The module's grade then.")
    max_grade = models.FloatField(null=True, blank=True, help_text="The module's max_grade then.")

    objects = StudentModuleHistoryQuerySet.as_manager()

    class Meta:
        db_table = "coursewarehistoryextended_studentmodulehistoryextended"
        indexes = [
            models.Index(fields=["student_module", "created"], name="smhe_module_created"),
            models.Index(fields=["created"], name="smhe_created"),
            models.Index(fields=["version"], name="smhe_version"),
        ]

    def __str__(self) -> str:
        return f"StudentModuleHistory<{self.student_module_id}, {self.created}>"


class _PerFieldBase(models.Model):
    """Columns shared by the per-field tables: one row per (owner, field)."""

    FIELD_NAME_MAX_LENGTH = 64

    field_name = models.CharField(
        max_length=FIELD_NAME_MAX_LENGTH, help_text="Name of the XBlock field."
    )
    value = models.TextField(default="null", help_text="The field's value as JSON text.")
    created = models.DateTimeField(auto_now_add=True, help_text="When the row was created.")
    modified = models.DateTimeField(auto_now=True, help_text="When the row was last written.")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{type(self).__name__}<{self.field_name}>"


class XModuleUserStateSummaryField(_PerFieldBase):
    """A ``user_state_summary`` field of one block, shared by all learners.

    PII: none by design, though a block may aggregate learner input here.
    """

    id = models.BigAutoField(primary_key=True)
    usage_id = UsageKeyField(
        max_length=255, case_sensitive=True, help_text="Usage key of the block."
    )

    class Meta:
        db_table = "courseware_xmoduleuserstatesummaryfield"
        constraints = [
            models.UniqueConstraint(
                fields=["usage_id", "field_name"],
                name="courseware_xmoduleuserstatesummaryfield_usage_field_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["field_name"], name="courseware_ussf_field_name"),
            models.Index(fields=["created"], name="courseware_ussf_created"),
            models.Index(fields=["modified"], name="courseware_ussf_modified"),
        ]


class XModuleStudentPrefsField(_PerFieldBase):
    """A ``preferences`` field of one learner for one block type (block family included).

    PII: the learner's preferences.
    """

    BLOCK_TYPE_MAX_LENGTH = 64

    id = models.BigAutoField(primary_key=True)
    module_type = BlockTypeKeyField(
        max_length=BLOCK_TYPE_MAX_LENGTH,
        db_column="module_type",
        case_sensitive=True,
        help_text="Block type key (family and type) the preference applies to.",
    )
    student = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,
        help_text="The learner.",
    )

    class Meta:
        db_table = "courseware_xmodulestudentprefsfield"
        constraints = [
            models.UniqueConstraint(
                fields=["student", "module_type", "field_name"],
                name="courseware_xmodulestudentprefsfield_student_type_field_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["module_type"], name="courseware_prefs_module_type"),
            models.Index(fields=["field_name"], name="courseware_prefs_field_name"),
            models.Index(fields=["created"], name="courseware_prefs_created"),
            models.Index(fields=["modified"], name="courseware_prefs_modified"),
        ]


class XModuleStudentInfoField(_PerFieldBase):
    """A ``user_info`` field of one learner, across all blocks.

    PII: information about the learner.
    """

    id = models.BigAutoField(primary_key=True)
    student = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,
        help_text="The learner.",
    )

    class Meta:
        db_table = "courseware_xmodulestudentinfofield"
        constraints = [
            models.UniqueConstraint(
                fields=["student", "field_name"],
                name="courseware_xmodulestudentinfofield_student_field_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["field_name"], name="courseware_info_field_name"),
            models.Index(fields=["created"], name="courseware_info_created"),
            models.Index(fields=["modified"], name="courseware_info_modified"),
        ]


PER_FIELD_MODELS: tuple[type[Any], ...] = (
    XModuleUserStateSummaryField,
    XModuleStudentPrefsField,
    XModuleStudentInfoField,
)
