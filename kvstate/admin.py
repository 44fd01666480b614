"""The Django admin for kvstate's five tables, safe on tables of hundreds of millions of rows.

Registered only when ``django.contrib.admin`` is installed. The rules, and why:

- **No count of the table.** A change list never runs ``COUNT(*)`` over a table: the full
  count is off (``show_full_result_count = False``) and :class:`BoundedPaginator` counts at
  most :data:`COUNT_LIMIT` rows (``COUNT(*)`` over a ``LIMIT`` subquery), so a page costs the
  same statements, and a bounded amount of work, whatever the table holds.
- **Exact searches only.** A search term is parsed as a usage key, a course (learning
  context) key or a username and compared exactly, through an index: never ``LIKE`` (or
  ``icontains``) on keys or on ``state``. No date hierarchy, no list filters, sorting only by
  ``id``; the big ``state``/``value`` columns are not read for the list.
- **Learner data is read-only.** No add, change or delete through forms; state is shown as
  formatted JSON. Resets and deletions happen only through the actions, which call
  :mod:`kvstate.operations` (so they go through kvstate's lossless writes and leave history)
  on at most one page of selected rows, after a confirmation page.
- **History comes from the history alias**, newest first and bounded.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from opaque_keys import InvalidKeyError
from opaque_keys.edx.keys import LearningContextKey, UsageKey

from kvstate import history, operations, storage
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.validation import lacks_run

#: The most rows a change list counts; past it the list says "more than" and shows the first
#: ``COUNT_LIMIT`` rows' pages. Narrow it down with a search.
COUNT_LIMIT = 1000

#: History entries shown on a module's page (the history view pages through the rest).
HISTORY_SHOWN = 20


class BoundedPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that counts at most :data:`COUNT_LIMIT` rows, in one bounded statement."""

    limit = COUNT_LIMIT

    @cached_property
    def _counted(self) -> int:
        rows: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        # COUNT(*) over a LIMIT subquery: stops after limit + 1 rows, however large the table.
        return rows.order_by()[: self.limit + 1].count()

    @property
    def count(self) -> int:
        """Return the number of rows, or ``limit`` when there are more."""
        return min(self._counted, self.limit)

    @property
    def truncated(self) -> bool:
        """Whether there are more rows than ``limit`` (the pages show the first ``limit``)."""
        return self._counted > self.limit


class _BoundedChangeList(ChangeList):
    """A change list ordered by id only, that does not read the (maybe huge) JSON columns."""

    def get_ordering(self, request: HttpRequest, queryset: QuerySet[Any]) -> list[Any]:
        # Ignore ?o=: ORDER BY an unindexed column with LIMIT sorts the whole table.
        return ["-pk"]

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*self.model_admin.deferred_in_list)  # type: ignore[attr-defined]


class LearnerDataAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only, bounded admin for one kvstate table (see the module's docstring)."""

    actions: Any = ()
    paginator = BoundedPaginator
    show_full_result_count = False
    list_per_page = 50
    list_max_show_all = 200
    sortable_by = ()
    ordering = ("-id",)
    date_hierarchy = None
    list_filter = ()
    #: Columns not read for the change list.
    deferred_in_list: tuple[str, ...] = ()
    #: Shown under the search box: what a search term may be (see :meth:`search`).
    search_help_text = ""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _BoundedChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Filter by the exact key or username ``search_term`` names; never ``LIKE``."""
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = self.search(term)
        return (queryset.filter(condition) if condition is not None else queryset.none()), False

    def search(self, term: str) -> Q | None:
        """Return the condition ``term`` stands for, or ``None`` when it names nothing here."""
        raise NotImplementedError

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Whether the user may reset or delete learners' state (the actions, not forms)."""
        return bool(request.user.has_perm("kvstate.change_studentmodule"))

    def has_erase_permission(self, request: HttpRequest) -> bool:
        """Whether the user may erase learners' data."""
        return bool(request.user.has_perm("kvstate.delete_studentmodule"))

    @admin.display(description="value")
    def formatted_value(self, obj: Any) -> SafeString:
        """The per-field value as indented JSON, escaped."""
        return _json_block(obj.value)


# Actions -----------------------------------------------------------------------------------


def _confirmed_rows(
    modeladmin: LearnerDataAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    what: str,
    details: Any = None,
) -> list[Any] | HttpResponse | None:
    """Return the selected rows once confirmed; else a confirmation page (or None: refused).

    At most one page of rows: "select all" over a huge table would make one click rewrite
    millions of rows, so it is refused with a message.
    """
    limit = modeladmin.list_per_page
    rows = list(queryset.select_related("student").order_by("pk")[: limit + 1])
    if len(rows) > limit:
        modeladmin.message_user(
            request,
            f"Select at most {limit} rows (one page) to {what}; more than that were selected.",
            messages.ERROR,
        )
        return None
    if request.POST.get("confirmed") == "yes":
        return rows
    action = request.POST.get("action", "")
    return TemplateResponse(
        request,
        "admin/kvstate/confirm_operation.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": f"Are you sure you want to {what}?",
            "what": what,
            "opts": modeladmin.model._meta,
            "rows": rows,
            "details": details(rows) if details else None,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        },
    )


def _usage_key(module: StudentModule) -> UsageKey:
    # Rows store keys without course run details (old deprecated keys): put them back.
    key: UsageKey = module.module_state_key.map_into_course(module.course_id)
    return key


@admin.action(description="Reset attempts of the selected modules", permissions=["operate"])
def reset_attempts(
    modeladmin: LearnerDataAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> HttpResponse | None:
    """Set ``attempts`` to 0 in each selected module (kvstate.operations.reset_attempts)."""
    rows = _confirmed_rows(modeladmin, request, queryset, "reset attempts of these modules")
    if not isinstance(rows, list):
        return rows
    changed = sum(operations.reset_attempts(row.student_id, _usage_key(row)) for row in rows)
    modeladmin.message_user(
        request,
        f"Reset attempts in {changed} of {len(rows)} selected modules"
        + ("" if changed == len(rows) else " (the others have no attempts, or 0)")
        + ".",
        messages.SUCCESS,
    )
    return None


@admin.action(description="Delete the state of the selected modules", permissions=["operate"])
def delete_state(
    modeladmin: LearnerDataAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> HttpResponse | None:
    """Empty each selected module's state (kvstate.operations.delete_state), per learner."""
    rows = _confirmed_rows(modeladmin, request, queryset, "delete the state of these modules")
    if not isinstance(rows, list):
        return rows
    keys_by_learner: dict[int, list[UsageKey]] = {}
    for row in rows:
        keys_by_learner.setdefault(row.student_id, []).append(_usage_key(row))
    deleted = sum(
        operations.delete_state(student_id, keys) for student_id, keys in keys_by_learner.items()
    )
    modeladmin.message_user(
        request,
        f"Deleted the state of {deleted} of {len(rows)} selected modules"
        + ("" if deleted == len(rows) else " (the others had none)")
        + "; grades and history stay.",
        messages.SUCCESS,
    )
    return None


def _erasure_preview(rows: list[Any]) -> list[tuple[str, dict[str, int]]]:
    learners = {row.student_id: row.student for row in rows}
    return [
        (user.get_username(), operations.erase_user(user_id, dry_run=True))
        for user_id, user in learners.items()
    ]


@admin.action(
    description="Erase the selected rows' learners (all their kvstate data)",
    permissions=["erase"],
)
def erase_learners(
    modeladmin: LearnerDataAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> HttpResponse | None:
    """Delete every row of each selected row's learner (kvstate.operations.erase_user)."""
    rows = _confirmed_rows(
        modeladmin,
        request,
        queryset,
        "erase all kvstate data of these learners",
        details=_erasure_preview,
    )
    if not isinstance(rows, list):
        return rows
    learners = {row.student_id: row.student.get_username() for row in rows}
    for user_id, username in learners.items():
        counts = operations.erase_user(user_id)
        summary = ", ".join(f"{count} from {table}" for table, count in counts.items() if count)
        modeladmin.message_user(
            request, f"Erased {username}: {summary or 'nothing left to delete'}.", messages.SUCCESS
        )
    return None


class StudentModuleAdmin(LearnerDataAdmin):
    list_display = (
        "id",
        "student",
        "module_state_key",
        "module_type",
        "grade",
        "max_grade",
        "modified",
    )
    list_select_related = ("student",)
    list_display_links = ("id", "module_state_key")
    search_fields = ("module_state_key",)  # shows the search box; get_search_results decides
    search_help_text = "Exact usage key, course key or username."
    deferred_in_list = ("state",)
    fields = (
        "student",
        "module_state_key",
        "course_id",
        "module_type",
        "grade",
        "max_grade",
        "done",
        "created",
        "modified",
        "formatted_state",
        "recent_history",
    )
    readonly_fields = ("formatted_state", "recent_history")
    actions = (reset_attempts, delete_state, erase_learners)

    def search(self, term: str) -> Q | None:
        return _module_condition(term)

    @admin.display(description="state")
    def formatted_state(self, module: StudentModule) -> SafeString:
        """The state as indented JSON, escaped (NULL: never stored; {}: deleted)."""
        return _json_block(module.state)

    @admin.display(description=f"history (newest {HISTORY_SHOWN})")
    def recent_history(self, module: StudentModule) -> SafeString:
        """The newest entries of the module's history, read from the history alias."""
        entries = history.page_for_module(module.pk, HISTORY_SHOWN)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (entry.created.isoformat(), entry.grade, entry.max_grade, _json_block(entry.state))
                for entry in entries[:HISTORY_SHOWN]
            ),
        )
        links = [
            format_html(
                '<a href="{}?q={}">all entries in the history table</a>',
                reverse("admin:kvstate_studentmodulehistory_changelist"),
                module.pk,
            )
        ]
        page = _history_page_url(module)
        if page is not None:
            links.insert(0, format_html('<a href="{}">submission history page</a>', page))
        table = (
            format_html(
                "<table><thead><tr><th>created</th><th>grade</th><th>max_grade</th>"
                "<th>state</th></tr></thead><tbody>{}</tbody></table>",
                rows,
            )
            if entries
            else format_html("<p>{}</p>", "No history rows.")
        )
        return format_html(
            "{}<p>{}</p>", table, format_html_join(" · ", "{}", ((link,) for link in links))
        )


class StudentModuleHistoryAdmin(LearnerDataAdmin):
    list_display = ("id", "student_module_id", "created", "grade", "max_grade", "version")
    search_fields = ("student_module_id",)
    search_help_text = "A StudentModule id, or a usage key, course key or username."
    deferred_in_list = ("state",)
    fields = ("student_module_id", "version", "created", "grade", "max_grade", "formatted_state")
    readonly_fields = ("student_module_id", "formatted_state")

    def search(self, term: str) -> Q | None:
        if term.isdigit():
            return Q(student_module_id=int(term))
        # The modules live on the state's alias (maybe another database): find their ids
        # there, at most a count limit's worth, and filter history by them.
        module_ids = list(
            StudentModule.objects.using(storage.state_alias())
            .filter(_module_condition(term))
            .order_by("-id")
            .values_list("id", flat=True)[:COUNT_LIMIT]
        )
        return Q(student_module_id__in=module_ids)

    @admin.display(description="state")
    def formatted_state(self, entry: StudentModuleHistory) -> SafeString:
        return _json_block(entry.state)


class XModuleUserStateSummaryFieldAdmin(LearnerDataAdmin):
    list_display = ("id", "usage_id", "field_name", "modified")
    search_fields = ("usage_id",)
    search_help_text = "Exact usage key."
    deferred_in_list = ("value",)
    fields = ("usage_id", "field_name", "created", "modified", "formatted_value")
    readonly_fields = ("formatted_value",)

    def search(self, term: str) -> Q | None:
        usage_key = _parse(UsageKey, term)
        return None if usage_key is None else Q(usage_id=usage_key)


class XModuleStudentPrefsFieldAdmin(LearnerDataAdmin):
    list_display = ("id", "student", "module_type", "field_name", "modified")
    list_select_related = ("student",)
    search_fields = ("student__username",)
    search_help_text = "Exact username."
    deferred_in_list = ("value",)
    fields = ("student", "module_type", "field_name", "created", "modified", "formatted_value")
    readonly_fields = ("formatted_value",)
    actions = (erase_learners,)

    def search(self, term: str) -> Q | None:
        return _username(term)


class XModuleStudentInfoFieldAdmin(LearnerDataAdmin):
    list_display = ("id", "student", "field_name", "modified")
    list_select_related = ("student",)
    search_fields = ("student__username",)
    search_help_text = "Exact username."
    deferred_in_list = ("value",)
    fields = ("student", "field_name", "created", "modified", "formatted_value")
    readonly_fields = ("formatted_value",)
    actions = (erase_learners,)

    def search(self, term: str) -> Q | None:
        return _username(term)


def _module_condition(term: str) -> Q:
    """Return the StudentModule rows ``term`` names: a usage key, a course key or a username."""
    usage_key = _parse(UsageKey, term)
    if usage_key is not None:
        return Q(module_state_key=usage_key, course_id=usage_key.context_key)
    context_key = _parse(LearningContextKey, term)
    if context_key is not None:
        return Q(course_id=context_key)
    return _username(term)


def _parse(key_class: Any, term: str) -> Any:
    try:
        return key_class.from_string(term)
    except InvalidKeyError:
        return None


def _username(term: str) -> Q:
    return Q(**{f"student__{get_user_model().USERNAME_FIELD}": term})


def _json_block(text: str | None) -> SafeString:
    """Return stored JSON text as an indented, escaped ``<pre>`` block."""
    if text is None:
        return format_html("<pre>{}</pre>", "NULL (never stored)")
    try:
        shown = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        shown = text  # not JSON: show the text as stored
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', shown)


def _history_page_url(module: StudentModule) -> str | None:
    """Return the module's submission-history page, when the project includes kvstate.urls.

    None for a row of an old course whose key does not name its run (the page's URL cannot).
    """
    if lacks_run(UsageKey.from_string(str(_usage_key(module)))):
        return None
    try:
        return reverse(
            "kvstate:history",
            kwargs={
                "username": module.student.get_username(),
                "usage_key": str(module.module_state_key.map_into_course(module.course_id)),
            },
        )
    except NoReverseMatch:
        return None


if apps.is_installed("django.contrib.admin"):
    admin.site.register(StudentModule, StudentModuleAdmin)
    admin.site.register(StudentModuleHistory, StudentModuleHistoryAdmin)
    admin.site.register(XModuleUserStateSummaryField, XModuleUserStateSummaryFieldAdmin)
    admin.site.register(XModuleStudentPrefsField, XModuleStudentPrefsFieldAdmin)
    admin.site.register(XModuleStudentInfoField, XModuleStudentInfoFieldAdmin)
