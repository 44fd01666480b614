"""The admin: bounded change lists, exact searches, read-only learner data, history, actions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from django.db import connections
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.locator import CourseLocator

from kvstate.admin import COUNT_LIMIT, HISTORY_SHOWN
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import UserFactory

COURSE = CourseLocator("kvstate", "Admin", "2025")
OTHER_COURSE = CourseLocator("kvstate", "Other", "2025")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ALIASES = ("default", "student_module_history")
MODELS = (
    StudentModule,
    StudentModuleHistory,
    XModuleUserStateSummaryField,
    XModuleStudentPrefsField,
    XModuleStudentInfoField,
)


def changelist(model: Any) -> str:
    return reverse(f"admin:kvstate_{model._meta.model_name}_changelist")


class AdminTestCase(TestCase):
    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.admin_user = UserFactory(username="admin", is_staff=True, is_superuser=True)
        self.alice = UserFactory(username="alice")
        self.bob = UserFactory(username="bob")
        self.client.force_login(self.admin_user)

    def make_rows(self, model: Any, count: int, start: int = 0) -> None:
        """Create ``count`` rows of ``model`` (alice's; the history of one module)."""
        if model is StudentModule:
            rows: list[Any] = [
                StudentModule(
                    student=self.alice,
                    module_state_key=COURSE.make_usage_key("problem", f"p{i}"),
                    course_id=COURSE,
                    module_type="problem",
                    state=json.dumps({"attempts": i}),
                )
                for i in range(start, start + count)
            ]
        elif model is StudentModuleHistory:
            rows = [
                StudentModuleHistory(
                    student_module_id=1, created=T0 + timedelta(seconds=i), state="{}"
                )
                for i in range(start, start + count)
            ]
        elif model is XModuleUserStateSummaryField:
            usage = COURSE.make_usage_key("poll", "p")
            rows = [model(usage_id=usage, field_name=f"f{i}") for i in range(start, start + count)]
        elif model is XModuleStudentPrefsField:
            block_type = BlockTypeKeyV1("xblock.v1", "poll")
            rows = [
                model(student=self.alice, module_type=block_type, field_name=f"f{i}")
                for i in range(start, start + count)
            ]
        else:
            rows = [
                model(student=self.alice, field_name=f"f{i}") for i in range(start, start + count)
            ]
        model.objects.bulk_create(rows, batch_size=1000)

    def get_counting(self, url: str) -> tuple[Any, dict[str, list[str]]]:
        """GET ``url``; return the response and the SQL run on each alias."""
        contexts = {alias: CaptureQueriesContext(connections[alias]) for alias in ALIASES}
        for context in contexts.values():
            context.__enter__()
        try:
            response = self.client.get(url)
        finally:
            for context in contexts.values():
                context.__exit__(None, None, None)
        return response, {
            alias: [q["sql"] for q in context.captured_queries]
            for alias, context in contexts.items()
        }


class ChangeListCostTests(AdminTestCase):
    """A change list costs the same statements with 10 rows and with 10,000."""

    # default: the session and the signed-in user (auth middleware), then on the model's
    # alias one bounded count (COUNT over a LIMIT subquery) and one page of rows.
    EXPECTED = {
        StudentModule: {"default": 4, "student_module_history": 0},
        StudentModuleHistory: {"default": 2, "student_module_history": 2},
        XModuleUserStateSummaryField: {"default": 4, "student_module_history": 0},
        XModuleStudentPrefsField: {"default": 4, "student_module_history": 0},
        XModuleStudentInfoField: {"default": 4, "student_module_history": 0},
    }

    def check_cost(self, model: Any) -> None:
        self.make_rows(model, 10)
        response, small = self.get_counting(changelist(model))
        assert response.status_code == 200
        assert f"10 {model._meta.verbose_name_plural}" in response.content.decode()
        self.make_rows(model, 9_990, start=10)
        response, large = self.get_counting(changelist(model))
        assert response.status_code == 200
        counts = {alias: len(statements) for alias, statements in small.items()}
        assert counts == self.EXPECTED[model], small
        assert {alias: len(s) for alias, s in large.items()} == counts, large
        html = response.content.decode()
        assert f"More than {COUNT_LIMIT} " in html
        assert len(response.context["cl"].result_list) == 50  # one page
        # Every count is over a LIMIT subquery: never the whole table.
        for statement in large[model.objects.db]:
            if "COUNT(" in statement.upper():
                assert "LIMIT" in statement.upper(), statement

    def test_student_module(self) -> None:
        self.check_cost(StudentModule)

    def test_history(self) -> None:
        self.check_cost(StudentModuleHistory)

    def test_user_state_summary(self) -> None:
        self.check_cost(XModuleUserStateSummaryField)

    def test_preferences(self) -> None:
        self.check_cost(XModuleStudentPrefsField)

    def test_user_info(self) -> None:
        self.check_cost(XModuleStudentInfoField)

    def test_pages_past_the_counted_rows_are_refused(self) -> None:
        self.make_rows(XModuleStudentInfoField, COUNT_LIMIT + 10)
        last_page = COUNT_LIMIT // 50  # pages are numbered from 1
        assert (
            self.client.get(changelist(XModuleStudentInfoField) + f"?p={last_page}").status_code
            == 200
        )
        response = self.client.get(changelist(XModuleStudentInfoField) + f"?p={last_page + 1}")
        assert response.status_code == 302  # Django's "invalid lookup" redirect (?e=1)

    def test_sorting_by_a_column_is_ignored(self) -> None:
        self.make_rows(StudentModule, 3)
        response, statements = self.get_counting(changelist(StudentModule) + "?o=6")
        assert response.status_code == 200
        page_query = statements["default"][-1]
        assert "ORDER BY" in page_query
        assert "grade" not in page_query.split("ORDER BY")[1]

    def test_the_big_columns_are_not_read_for_the_list(self) -> None:
        self.make_rows(StudentModule, 3)
        _response, statements = self.get_counting(changelist(StudentModule))
        page_query = statements["default"][-1]
        assert '"state"' not in page_query, page_query
        assert "`state`" not in page_query, page_query


class SearchTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.p1 = COURSE.make_usage_key("problem", "p1")
        self.other = OTHER_COURSE.make_usage_key("problem", "p1")
        for user, key in ((self.alice, self.p1), (self.bob, self.p1), (self.alice, self.other)):
            StudentModule.objects.create(
                student=user, module_state_key=key, course_id=key.context_key, state="{}"
            )

    def search(self, term: str) -> tuple[set[tuple[str, str]], list[str]]:
        response, statements = self.get_counting(changelist(StudentModule) + "?q=" + quote(term))
        assert response.status_code == 200
        found = {
            (module.student.username, str(module.module_state_key))
            for module in response.context["cl"].result_list
        }
        return found, statements["default"]

    def test_exact_usage_key_course_key_and_username(self) -> None:
        assert self.search(str(self.p1))[0] == {("alice", str(self.p1)), ("bob", str(self.p1))}
        assert self.search(str(OTHER_COURSE))[0] == {("alice", str(self.other))}
        assert self.search("bob")[0] == {("bob", str(self.p1))}
        # (No case test: usernames compare with the user table's collation, which on
        # MySQL/MariaDB usually folds case, as Django's own login does.)
        assert self.search("ali")[0] == set()
        assert self.search(str(self.p1)[:-1])[0] == set()

    def test_never_like(self) -> None:
        for term in (str(self.p1), str(COURSE), "alice", "%", "p1"):
            _found, statements = self.search(term)
            for statement in statements:
                assert " LIKE " not in statement.upper(), statement
                assert "UPPER(" not in statement.upper(), statement

    def test_history_by_module_id_usage_key_or_username(self) -> None:
        module = StudentModule.objects.get(student=self.bob)
        StudentModuleHistory.objects.create(student_module_id=module.pk, created=T0, state="{}")
        StudentModuleHistory.objects.create(student_module_id=module.pk + 100, created=T0)
        url = changelist(StudentModuleHistory) + "?q="
        for term in (str(module.pk), "bob"):
            response = self.client.get(url + term)
            assert [e.student_module_id for e in response.context["cl"].result_list] == [module.pk]
        assert list(self.client.get(url + "carol").context["cl"].result_list) == []

    def test_summary_searches_by_usage_key_only(self) -> None:
        XModuleUserStateSummaryField.objects.create(usage_id=self.p1, field_name="tally")
        url = changelist(XModuleUserStateSummaryField) + "?q="
        assert len(self.client.get(url + quote(str(self.p1))).context["cl"].result_list) == 1
        assert len(self.client.get(url + "tally").context["cl"].result_list) == 0


class ReadOnlyTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.module = StudentModule.objects.create(
            student=self.alice,
            module_state_key=COURSE.make_usage_key("problem", "p1"),
            course_id=COURSE,
            state=json.dumps({"answer": "<script>alert(1)</script>", "attempts": 1}),
            grade=1.0,
            max_grade=2.0,
        )

    def test_no_add_change_or_delete(self) -> None:
        for model in MODELS:
            name = model._meta.model_name
            with self.subTest(model=name):
                assert self.client.get(reverse(f"admin:kvstate_{name}_add")).status_code == 403
        change = reverse("admin:kvstate_studentmodule_change", args=[self.module.pk])
        delete = reverse("admin:kvstate_studentmodule_delete", args=[self.module.pk])
        assert self.client.post(change, {"state": "{}"}).status_code == 403
        assert self.client.get(delete).status_code == 403
        self.module.refresh_from_db()
        assert json.loads(self.module.state)["attempts"] == 1

    def test_state_is_formatted_json_escaped(self) -> None:
        html = self.client.get(
            reverse("admin:kvstate_studentmodule_change", args=[self.module.pk])
        ).content.decode()
        assert "&quot;answer&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;," in html
        assert "<script>alert(1)</script>" not in html

    def test_module_page_shows_its_newest_history_from_the_history_alias(self) -> None:
        StudentModuleHistory.objects.bulk_create(
            StudentModuleHistory(
                student_module_id=self.module.pk,
                created=T0 + timedelta(seconds=i),
                state=json.dumps({"attempts": i}),
            )
            for i in range(HISTORY_SHOWN + 5)
        )
        url = reverse("admin:kvstate_studentmodule_change", args=[self.module.pk])
        response, statements = self.get_counting(url)
        html = response.content.decode()
        # One statement on the history alias: the newest entries (+1 to look ahead).
        assert len(statements["student_module_history"]) == 1
        shown = [int(part.split("\n")[0]) for part in html.split("&quot;attempts&quot;: ")[2:]]
        newest = HISTORY_SHOWN + 4
        assert shown == list(range(newest, newest - HISTORY_SHOWN, -1))
        history_page = reverse(
            "kvstate:history",
            kwargs={"username": "alice", "usage_key": str(self.module.module_state_key)},
        )
        assert f'href="{history_page}"' in html

    def test_a_row_of_an_old_course_has_no_history_page_link(self) -> None:
        from opaque_keys.edx.keys import CourseKey, UsageKey

        course = CourseKey.from_string("edX/Old/2012")
        old = StudentModule.objects.create(
            student=self.alice,
            module_state_key=UsageKey.from_string("i4x://edX/Old/problem/p1").map_into_course(
                course
            ),
            course_id=course,
            state="{}",
        )
        response = self.client.get(reverse("admin:kvstate_studentmodule_change", args=[old.pk]))
        assert response.status_code == 200
        assert "submission history page" not in response.content.decode()
        assert "all entries in the history table" in response.content.decode()

    def test_per_field_values_are_formatted_json(self) -> None:
        row = XModuleStudentInfoField.objects.create(
            student=self.alice, field_name="tz", value=json.dumps({"zone": "<UTC>"})
        )
        html = self.client.get(
            reverse("admin:kvstate_xmodulestudentinfofield_change", args=[row.pk])
        ).content.decode()
        assert "&quot;zone&quot;: &quot;&lt;UTC&gt;&quot;" in html


class ActionTests(AdminTestCase):
    """Resets, deletions and erasure go through kvstate.operations, after a confirmation."""

    def setUp(self) -> None:
        super().setUp()
        self.p1 = COURSE.make_usage_key("problem", "p1")
        self.p2 = COURSE.make_usage_key("problem", "p2")
        self.modules = {
            (user.username, key.block_id): StudentModule.objects.create(
                student=user,
                module_state_key=key,
                course_id=COURSE,
                state=json.dumps({"attempts": 3, "answer": key.block_id}),
                grade=1.0,
                max_grade=2.0,
            )
            for user in (self.alice, self.bob)
            for key in (self.p1, self.p2)
        }
        XModuleStudentInfoField.objects.create(student=self.alice, field_name="tz", value='"UTC"')

    def act(self, action: str, modules: list[StudentModule], **extra: str) -> Any:
        data = {"action": action, "_selected_action": [m.pk for m in modules], **extra}
        with self.captureOnCommitCallbacks(using="default", execute=True):
            return self.client.post(changelist(StudentModule), data, follow=True)

    def state(self, username: str, block_id: str) -> Any:
        module = StudentModule.objects.get(pk=self.modules[username, block_id].pk)
        return json.loads(module.state), module.grade

    def test_reset_attempts_asks_first_then_keeps_other_fields(self) -> None:
        chosen = [self.modules["alice", "p1"], self.modules["bob", "p2"]]
        page = self.act("reset_attempts", chosen)
        assert "Are you sure you want to reset attempts of these modules?" in page.content.decode()
        assert self.state("alice", "p1") == ({"attempts": 3, "answer": "p1"}, 1.0)

        done = self.act("reset_attempts", chosen, confirmed="yes")

        assert "Reset attempts in 2 of 2 selected modules." in done.content.decode()
        assert self.state("alice", "p1") == ({"attempts": 0, "answer": "p1"}, 1.0)
        assert self.state("bob", "p2") == ({"attempts": 0, "answer": "p2"}, 1.0)
        assert self.state("alice", "p2") == ({"attempts": 3, "answer": "p2"}, 1.0)
        # Written by kvstate's engine: one history row for each reset module.
        history = StudentModuleHistory.objects.filter(student_module_id__in=[m.pk for m in chosen])
        assert sorted(json.loads(h.state)["attempts"] for h in history) == [0, 0]

    def test_delete_state(self) -> None:
        chosen = [self.modules["alice", "p1"], self.modules["alice", "p2"]]
        done = self.act("delete_state", chosen, confirmed="yes")
        assert "Deleted the state of 2 of 2 selected modules" in done.content.decode()
        assert self.state("alice", "p1") == ({}, 1.0)
        assert self.state("alice", "p2") == ({}, 1.0)
        assert self.state("bob", "p1") == ({"attempts": 3, "answer": "p1"}, 1.0)

    def test_erase_learners_shows_what_goes_then_erases_everything(self) -> None:
        StudentModuleHistory.objects.create(
            student_module_id=self.modules["alice", "p1"].pk, created=T0, state="{}"
        )
        chosen = [self.modules["alice", "p1"]]
        page = self.act("erase_learners", chosen).content.decode()
        assert "alice: 2 in courseware_studentmodule, 1 in coursewarehistory" in page

        done = self.act("erase_learners", chosen, confirmed="yes").content.decode()

        assert "Erased alice: 2 from courseware_studentmodule" in done
        assert not StudentModule.objects.filter(student=self.alice).exists()
        assert not XModuleStudentInfoField.objects.filter(student=self.alice).exists()
        assert not StudentModuleHistory.objects.exists()
        assert StudentModule.objects.filter(student=self.bob).count() == 2

    def test_more_than_a_page_is_refused(self) -> None:
        self.make_rows(StudentModule, 60, start=10)
        data = {"action": "delete_state", "select_across": "1", "index": "0", "confirmed": "yes"}
        data["_selected_action"] = [str(StudentModule.objects.first().pk)]  # type: ignore[union-attr]
        page = self.client.post(changelist(StudentModule), data, follow=True).content.decode()
        assert "Select at most 50 rows (one page) to delete the state" in page
        assert self.state("alice", "p1") == ({"attempts": 3, "answer": "p1"}, 1.0)

    def test_staff_without_permissions_get_no_actions(self) -> None:
        from django.contrib.auth.models import Permission

        viewer = UserFactory(username="viewer", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_studentmodule"))
        self.client.force_login(viewer)
        response = self.client.get(changelist(StudentModule))
        assert response.status_code == 200
        assert response.context["action_form"] is None
        denied = self.act("delete_state", [self.modules["alice", "p1"]], confirmed="yes")
        assert denied.status_code == 200
        assert self.state("alice", "p1") == ({"attempts": 3, "answer": "p1"}, 1.0)

    def test_delete_selected_is_not_offered(self) -> None:
        choices = dict(
            self.client.get(changelist(StudentModule)).context["action_form"]
            .fields["action"].choices
        )  # fmt: skip
        assert set(choices) == {"", "reset_attempts", "delete_state", "erase_learners"}
        info_choices = self.client.get(changelist(XModuleStudentInfoField)).context["action_form"]
        assert set(dict(info_choices.fields["action"].choices)) == {"", "erase_learners"}


class SearchFormTests(AdminTestCase):
    def test_a_search_past_the_limit_says_more_than(self) -> None:
        self.make_rows(StudentModule, COUNT_LIMIT + 1)
        html = self.client.get(changelist(StudentModule) + "?q=alice").content.decode()
        assert f"more than {COUNT_LIMIT} results" in html
        html = self.client.get(changelist(StudentModule) + "?q=bob").content.decode()
        assert "0 results" in html
        assert "more than" not in html
