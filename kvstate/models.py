"""The five tables of Open edX's courseware state layer, under their Open edX names.

Each model's docstring carries Open edX's PII annotations (OEP-30: ``.. pii:``,
``.. pii_types:``, ``.. pii_retirement:``, or ``.. no_pii:``), which ``code_annotations``
collects. Every table but ``courseware_xmoduleuserstatesummaryfield`` holds rows of one
learner; ``kvstate.operations.erase_user`` deletes them all (connect
``kvstate.operations.retire_user_receiver`` to your user-retirement signal), and
``export_user`` returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self, TypeVar

from django.conf import settings
from django.db import models
from django.db.models import F, Func, Q, Value
from django.db.models.lookups import GreaterThan, LessThan
from opaque_keys.edx.django.models import (
    BlockTypeKeyField,
    LearningContextKeyField,
    UsageKeyField,
)

_M = TypeVar("_M", bound=models.Model)


class _Row(Func):
    """A SQL row value, ``(a, b, ...)``, compared column by column as a whole."""

    template = "(%(expressions)s)"
    output_field = models.Field()


class _KeysetQuerySet(models.QuerySet[_M]):
    """Pagination by keyset: each page starts after the last key of the previous one."""

    def after(self, order: Sequence[str], last: Sequence[Any]) -> Self:
        """Return the rows whose ``order`` columns sort after the values ``last`` (ascending).

        The condition is written twice, meaning the same: as a row comparison
        ``(a, b) > (x, y)``, which PostgreSQL turns into an index range, and as
        ``a > x OR (a = x AND b > y)``, which MySQL/MariaDB's range optimizer reads (it does not
        open a range for a row comparison). Each checks the other form as a cheap filter on
        the rows its range selected, so a page costs its own rows, not those of the pages
        before it. SQLite ranges on ``a`` only when ``b`` is the rowid, so there a page also
        skips the earlier rows that share its ``a``.
        """
        return self._beyond(order, last, "gt")

    def before(self, order: Sequence[str], last: Sequence[Any]) -> Self:
        """Return the rows whose ``order`` columns sort before ``last`` (descending keyset)."""
        return self._beyond(order, last, "lt")

    def _beyond(self, order: Sequence[str], last: Sequence[Any], lookup: str) -> Self:
        if len(order) != len(last):
            raise ValueError(f"keyset {list(last)!r} does not match the ordering {list(order)!r}")
        if len(order) == 1:
            return self.filter(**{f"{order[0]}__{lookup}": last[0]})
        expanded = Q(**{f"{order[-1]}__{lookup}": last[-1]})
        for name, value in zip(reversed(order[:-1]), reversed(last[:-1]), strict=True):
            expanded = Q(**{f"{name}__{lookup}": value}) | (Q(**{name: value}) & expanded)
        compare = GreaterThan if lookup == "gt" else LessThan
        row = compare(_Row(*(F(name) for name in order)), _Row(*map(Value, last)))
        return self.filter(row, expanded)


class StudentModuleQuerySet(_KeysetQuerySet["StudentModule"]):
    """Queries over learners' per-block state."""

    def for_user(self, user_id: int) -> StudentModuleQuerySet:
        """Return the rows of one learner."""
        return self.filter(student_id=user_id)


class StudentModule(models.Model):
    """One learner's ``user_state`` for one block: a JSON object of field name to value.

    .. pii: ``state`` holds what the block stored for the learner (answers and submissions,
       which can be free text they typed; progress); ``student_id`` ties it to the user.
       Deleted by ``kvstate.operations.erase_user``, e.g. on retirement.
    .. pii_types: id, other
    .. pii_retirement: local_api
    """

    MODULE_TYPE_MAX_LENGTH = 32
    KEY_MAX_LENGTH = 255

    id = models.BigAutoField(primary_key=True)
    module_type = models.CharField(
        max_length=MODULE_TYPE_MAX_LENGTH,
        default="problem",
        help_text="Block type of the usage (the usage key's block_type).",
    )
    module_state_key = UsageKeyField(  # type: ignore[no-untyped-call]
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
    course_id = LearningContextKeyField(  # type: ignore[no-untyped-call]
        max_length=KEY_MAX_LENGTH,
        case_sensitive=True,
        help_text="Learning context (course or library) of the block.",
    )
    # NULL and '' differ here (SPEC §3), and Open edX's column is NULL-able.
    state = models.TextField(  # noqa: DJ001
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
            # The trailing id lets a keyset page (iter_all_for_block: module_id = %s AND
            # id > %s ORDER BY id) read the index in order and stop at the page size, on
            # PostgreSQL too (InnoDB appends the primary key to every secondary index anyway).
            models.Index(fields=["module_state_key", "id"], name="courseware_sm_module_id"),
            # Likewise for iter_all_for_course: course_id = %s [AND module_type = %s], pages
            # ordered by (module_type, id) or, with a block type, by id.
            models.Index(
                fields=["course_id", "module_type", "id"], name="courseware_sm_course_type"
            ),
            models.Index(fields=["grade"], name="courseware_sm_grade"),
            models.Index(fields=["created"], name="courseware_sm_created"),
            models.Index(fields=["modified"], name="courseware_sm_modified"),
        ]

    def __str__(self) -> str:
        return f"StudentModule<{self.student_id}, {self.module_state_key}>"


class StudentModuleHistoryQuerySet(_KeysetQuerySet["StudentModuleHistory"]):
    """Queries over state history."""

    def for_module(self, student_module_id: int) -> StudentModuleHistoryQuerySet:
        """Return one module's history, newest first."""
        return self.filter(student_module_id=student_module_id).order_by("-created", "-id")


class StudentModuleHistory(models.Model):
    """A snapshot of a ``StudentModule`` after one write call.

    Lives on the ``student_module_history`` database alias when it is configured.

    .. pii: ``state`` holds the learner's answers at that time; ``student_module_id`` ties it
       to the learner's module. Deleted by ``kvstate.operations.erase_user`` (before the
       module itself), e.g. on retirement.
    .. pii_types: other
    .. pii_retirement: local_api
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
    # Open edX's columns are NULL-able; kvstate shares the table.
    version = models.CharField(  # noqa: DJ001
        max_length=255, null=True, blank=True, help_text="Optional version label."
    )
    created = models.DateTimeField(help_text="The module's 'modified' at the time of the write.")
    state = models.TextField(  # noqa: DJ001
        null=True, blank=True, help_text="The module's full state then (NULL: never stored)."
    )
    grade = models.FloatField(null=True, blank=True, help_text="The module's grade then.")
    max_grade = models.FloatField(null=True, blank=True, help_text="The module's max_grade then.")

    objects = StudentModuleHistoryQuerySet.as_manager()

    class Meta:
        db_table = "coursewarehistoryextended_studentmodulehistoryextended"
        indexes = [
            # get_history (newest first) and pruning's "newest K per module".
            models.Index(fields=["student_module", "created"], name="smhe_module_created"),
            # Pruning walks rows older than a cutoff in (created, id) keyset pages.
            models.Index(fields=["created", "id"], name="smhe_created"),
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

    .. no_pii: Keyed by block only, with no learner column: what a block keeps here is
       shared by every learner (a poll's tally), so erasing a learner leaves it.
    """

    id = models.BigAutoField(primary_key=True)
    usage_id = UsageKeyField(  # type: ignore[no-untyped-call]
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

    .. pii: ``value`` holds a preference the learner set for blocks of a type (a video's
       speed, a language); ``student_id`` ties it to the user. Deleted by
       ``kvstate.operations.erase_user``, e.g. on retirement.
    .. pii_types: id, other
    .. pii_retirement: local_api
    """

    BLOCK_TYPE_MAX_LENGTH = 64

    id = models.BigAutoField(primary_key=True)
    module_type = BlockTypeKeyField(  # type: ignore[no-untyped-call]
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

    .. pii: ``value`` holds what blocks keep about the learner across all blocks;
       ``student_id`` ties it to the user. Deleted by ``kvstate.operations.erase_user``,
       e.g. on retirement.
    .. pii_types: id, other
    .. pii_retirement: local_api
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
