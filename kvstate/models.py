"""The five tables of Open edX's courseware state layer, under their Open edX names.

Each model's docstring carries Open edX's PII annotations (OEP-30: ``.. pii:``,
``.. pii_types:``, ``.. pii_retirement:``, or ``.. no_pii:``), which ``code_annotations``
collects. Every table but ``courseware_xmoduleuserstatesummaryfield`` holds rows of one
learner; ``kvstate.operations.erase_user`` deletes them all (connect
``kvstate.operations.retire_user_receiver`` to your user-retirement signal), and
``export_user`` returns them.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

from django.conf import settings
from django.db import connections, models, router
from django.db.models import F, Func, Q, Value
from django.db.models.lookups import GreaterThan, LessThan
from opaque_keys.edx.django.models import (
    BlockTypeKeyField,
    LearningContextKeyField,
    UsageKeyField,
)

from kvstate import conf, sql
from kvstate.routers import read_alias

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from opaque_keys.edx.keys import LearningContextKey, UsageKey

_M = TypeVar("_M", bound=models.Model)


class _Row(Func):
    """A SQL row value, ``(a, b, ...)``, compared column by column as a whole."""

    template = "(%(expressions)s)"
    output_field = models.Field()


class _ChunkingQuerySet(models.QuerySet[_M]):
    """Open edX's ``chunked_filter``: an ``__in`` filter split into chunks, one query each."""

    def chunked_filter(
        self, chunk_field: str, items: Iterable[Any], chunk_size: int = 500, **filters: Any
    ) -> Iterator[_M]:
        """Yield the rows whose ``chunk_field`` (an ``__in`` lookup) is among ``items``.

        ``items`` go ``chunk_size`` at a time, each chunk in one query with ``filters``; the
        queries run as the rows are read.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: a chunk needs at least one item")
        values = list(items)
        return itertools.chain.from_iterable(
            self.filter(**{chunk_field: values[start : start + chunk_size]}, **filters)
            for start in range(0, len(values), chunk_size)
        )


class _KeysetQuerySet(_ChunkingQuerySet[_M]):
    """Pagination by keyset: each page starts after the last key of the previous one."""

    def after(self, order: Sequence[str], last: Sequence[Any]) -> Self:
        """Return the rows whose ``order`` columns sort after the values ``last`` (ascending).

        PostgreSQL gets a row comparison ``(a, b) > (x, y)``, which it turns into one index
        range read in order. Elsewhere the condition is written twice, meaning the same: as
        the row comparison and as ``a > x OR (a = x AND b > y)``, which MySQL/MariaDB's range
        optimizer reads (it does not open a range for a row comparison); each checks the other
        form as a cheap filter on the rows its range selected, so a page costs its own rows,
        not those of the pages before it. (Given both forms, PostgreSQL may OR two bitmap
        scans of what remains of the course and sort it: every page then reads all the rows
        after it.) SQLite ranges on ``a`` only when ``b`` is the rowid, so there a page also
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
        if sql.ranges_row_comparisons(connections[self.db]):
            return self.filter(row)
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
    #: Values of ``done``, as Open edX has them.
    DONE_TYPES = (
        ("na", "NOT_APPLICABLE"),
        ("f", "FINISHED"),
        ("i", "INCOMPLETE"),
    )

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
        choices=DONE_TYPES,
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
            # Open edX's, for per-problem grade distributions (instructor dashboards).
            models.Index(fields=["module_state_key", "grade", "student"], name="courseware_stats"),
            models.Index(fields=["created"], name="courseware_sm_created"),
            models.Index(fields=["modified"], name="courseware_sm_modified"),
        ]

    def __str__(self) -> str:
        return f"StudentModule<{self.student_id}, {self.module_state_key}>"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save the row; for recorded block types a ``post_save`` receiver records history.

        When history shares this row's database the save and its history row commit or roll
        back together, as a kvstate write does; on its own database history follows the commit.
        """
        from kvstate import history  # history imports this module

        with history.saving(self, kwargs.get("using")):
            super().save(*args, **kwargs)

    # Open edX's helpers, under Open edX's names and signatures.

    @classmethod
    def get_state_by_params(
        cls,
        course_id: LearningContextKey,
        module_state_keys: Iterable[UsageKey],
        student_id: int | None = None,
    ) -> StudentModuleQuerySet:
        """Return the rows of ``module_state_keys`` in ``course_id`` (of one learner, if given)."""
        rows = cls.objects.filter(course_id=course_id, module_state_key__in=module_state_keys)
        return rows.filter(student_id=student_id) if student_id else rows

    @classmethod
    def save_state(
        cls,
        student: AbstractBaseUser | AnonymousUser,
        course_id: LearningContextKey,
        module_state_key: UsageKey,
        defaults: Mapping[str, Any],
    ) -> None:
        """Create or update ``student``'s row for a block, setting ``defaults``; as Open edX.

        Does nothing for anonymous users. A new row's ``module_type`` is the block type unless
        ``defaults`` says otherwise. Callers creating the row at once never get an
        ``IntegrityError``: the one that loses the race updates the winner's row (Django's
        ``update_or_create`` reads it back, locked), and a deadlock is retried when the call
        owns its transaction. Each call saves once, so it leaves one history row.
        """
        if not student.is_authenticated:
            return
        from kvstate import storage  # storage imports this module

        using = router.db_for_write(cls)

        def save() -> None:
            with sql.read_then_write(connections[using], cls._meta.db_table):
                cls.objects.using(using).update_or_create(
                    student_id=student.pk,
                    course_id=course_id,
                    module_state_key=module_state_key,
                    defaults=defaults,
                    create_defaults={"module_type": str(module_state_key.block_type), **defaults},
                )

        if connections[using].in_atomic_block:
            save()  # a deadlock has rolled back the caller's whole transaction: theirs to retry
        else:
            storage.retrying_conflicts(using, save)

    @classmethod
    def all_submitted_problems_read_only(
        cls, course_id: LearningContextKey, using: str | None = None
    ) -> StudentModuleQuerySet:
        """Return the course's problems that have a grade, for reports.

        Read from ``using``, else ``KVSTATE_READ_ALIAS`` (a replica; Open edX uses an alias
        named ``read_replica``), else where the routers send reads.
        """
        rows = cls.objects.using(read_alias(cls, using))
        return rows.filter(course_id=course_id, module_type="problem", grade__isnull=False)


class _EveryBlockType(Container[str]):
    """Every block type: what ``KVSTATE_HISTORY_BLOCK_TYPES = "__all__"`` reads as.

    It answers ``in`` for any block type; it cannot be listed.
    """

    def __contains__(self, block_type: object) -> bool:
        return isinstance(block_type, str)

    def __repr__(self) -> str:
        return "EVERY_BLOCK_TYPE"


#: ``StudentModuleHistory.HISTORY_SAVING_TYPES`` when every block type is recorded.
EVERY_BLOCK_TYPE = _EveryBlockType()


class _ConfiguredBlockTypes:
    """``HISTORY_SAVING_TYPES``: the block types ``KVSTATE_HISTORY_BLOCK_TYPES`` names, live."""

    def __get__(self, instance: object, owner: type | None = None) -> Container[str]:
        block_types = conf.settings.HISTORY_BLOCK_TYPES
        return EVERY_BLOCK_TYPE if block_types is None else block_types


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

    #: Block types whose writes leave history, Open edX's name for ``KVSTATE_HISTORY_BLOCK_TYPES``
    #: (read live): a frozenset, or ``EVERY_BLOCK_TYPE`` for ``"__all__"``.
    HISTORY_SAVING_TYPES = _ConfiguredBlockTypes()

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

    @property
    def csm(self) -> StudentModule:
        """Return the module this entry is of, read from the module's own database."""
        return StudentModule.objects.get(pk=self.student_module_id)

    @staticmethod
    def get_history(student_modules: Iterable[StudentModule]) -> list[StudentModuleHistory]:
        """Return the history of ``student_modules``, newest first, in one statement."""
        ids = [module.pk for module in student_modules]
        if not ids:
            return []
        rows = StudentModuleHistory.objects.filter(student_module_id__in=ids)
        return list(rows.order_by("-created", "-id"))


class _PerFieldBase(models.Model):
    """Columns shared by the per-field tables: one row per (owner, field)."""

    FIELD_NAME_MAX_LENGTH = 64

    field_name = models.CharField(
        max_length=FIELD_NAME_MAX_LENGTH, help_text="Name of the XBlock field."
    )
    value = models.TextField(default="null", help_text="The field's value as JSON text.")
    created = models.DateTimeField(auto_now_add=True, help_text="When the row was created.")
    modified = models.DateTimeField(auto_now=True, help_text="When the row was last written.")

    objects = _ChunkingQuerySet.as_manager()

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
