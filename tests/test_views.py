"""The staff submission-history page: who may see it, what it shows, HTML and JSON, paging."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.test import TestCase, override_settings
from django.urls import reverse
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator

from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import StudentModuleFactory, UserFactory
from kvstate.views import HISTORY_PAGE_SIZE

COURSE = CourseLocator("kvstate", "Web", "2025")
PROBLEM = COURSE.make_usage_key("problem", "p1")
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def history_url(username: str, usage_key: Any, **query: str) -> str:
    url = reverse("kvstate:history", kwargs={"username": username, "usage_key": str(usage_key)})
    if query:
        url += "?" + "&".join(f"{name}={value}" for name, value in query.items())
    return url


def deny_everyone(request: Any, username: str, usage_key: UsageKey) -> bool:
    return False


def only_bob_sees_alice(request: Any, username: str, usage_key: UsageKey) -> bool:
    assert isinstance(usage_key, UsageKey)  # the hook gets the parsed key
    return request.user.username == "bob" and username == "alice"


class RefuseStudentModuleReads:
    """A read-replica router whose replica has no kvstate tables: any read sent there fails."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "student_module_history" if model is StudentModule else None


class HistoryPageTestCase(TestCase):
    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.alice = UserFactory(username="alice")
        self.bob = UserFactory(username="bob")
        self.staff = UserFactory(username="staff", is_staff=True)
        self.module = StudentModuleFactory(
            student=self.alice,
            module_state_key=PROBLEM,
            course_id=COURSE,
            state=json.dumps({"attempts": 2, "answer": "<b>42</b>"}),
            grade=1.0,
            max_grade=2.0,
        )

    def add_history(self, *states: tuple[dict[str, Any] | None, float | None]) -> None:
        """Add history entries, oldest first, one second apart."""
        for index, (state, grade) in enumerate(states):
            StudentModuleHistory.objects.create(
                student_module_id=self.module.pk,
                created=T0 + timedelta(seconds=index),
                state=None if state is None else json.dumps(state),
                grade=grade,
                max_grade=None if grade is None else 2.0,
            )

    def get(self, user: AbstractBaseUser | None, url: str) -> Any:
        if user is not None:
            self.client.force_login(user)
        return self.client.get(url)


class PermissionTests(HistoryPageTestCase):
    def test_anonymous_visitors_are_sent_to_login(self) -> None:
        url = history_url("alice", PROBLEM)
        for query in ("", "?format=json"):
            response = self.client.get(url + query)
            assert response.status_code == 302
            assert response["Location"].startswith("/accounts/login/?next=/kvstate/history/alice/")

    def test_the_learner_themself_and_staff_may_see_it(self) -> None:
        for user in (self.alice, self.staff):
            with self.subTest(user=user.username):
                assert self.get(user, history_url("alice", PROBLEM)).status_code == 200

    def test_another_learner_gets_403(self) -> None:
        response = self.get(self.bob, history_url("alice", PROBLEM))
        assert response.status_code == 403
        assert b"you may not see 'alice'" in response.content
        response = self.client.get(history_url("alice", PROBLEM, format="json"))
        assert response.status_code == 403
        assert response.json() == {"error": "you may not see 'alice''s submission history"}

    @override_settings(KVSTATE_HISTORY_PERMISSION="tests.test_views.only_bob_sees_alice")
    def test_the_permission_hook_replaces_the_default(self) -> None:
        assert self.get(self.bob, history_url("alice", PROBLEM)).status_code == 200
        assert self.get(self.staff, history_url("alice", PROBLEM)).status_code == 403
        assert self.get(self.alice, history_url("alice", PROBLEM)).status_code == 403

    @override_settings(KVSTATE_HISTORY_PERMISSION="tests.test_views.deny_everyone")
    def test_a_hook_cannot_let_anonymous_visitors_in(self) -> None:
        assert self.client.get(history_url("alice", PROBLEM)).status_code == 302

    def test_a_refused_learner_learns_nothing_about_other_users(self) -> None:
        # 403 whether or not the user exists, so the page does not reveal usernames.
        for username in ("alice", "nobody"):
            assert self.get(self.bob, history_url(username, PROBLEM)).status_code == 403


class NotFoundTests(HistoryPageTestCase):
    def test_unknown_user(self) -> None:
        response = self.get(self.staff, history_url("nobody", PROBLEM))
        assert response.status_code == 404
        assert response.content.decode() == "404 Not Found: there is no user named 'nobody'\n"
        response = self.client.get(history_url("nobody", PROBLEM, format="json"))
        assert response.json() == {"error": "there is no user named 'nobody'"}

    def test_unparsable_usage_key(self) -> None:
        response = self.get(self.staff, history_url("alice", "not-a-key"))
        assert response.status_code == 404
        assert b"'not-a-key' is not a usage key" in response.content

    def test_an_old_key_without_its_course_run(self) -> None:
        # "i4x://org/course/category/name" names the block in every run of an old course.
        response = self.get(self.staff, history_url("alice", "i4x://edX/Old/problem/p1"))
        assert response.status_code == 404
        assert b"has no course run, so it names no learner's row" in response.content

    def test_bad_format_and_cursor(self) -> None:
        self.client.force_login(self.staff)
        assert self.client.get(history_url("alice", PROBLEM, format="xml")).status_code == 400
        response = self.client.get(history_url("alice", PROBLEM, before="yesterday"))
        assert response.status_code == 400
        assert b"follow the page's 'next' link" in response.content

    def test_a_learner_without_state_for_the_block(self) -> None:
        other = COURSE.make_usage_key("problem", "untouched")
        response = self.get(self.staff, history_url("alice", other, format="json"))
        assert response.status_code == 200
        assert response.json() == {
            "username": "alice",
            "usage_key": str(other),
            "state": None,
            "grade": None,
            "max_grade": None,
            "history": [],
            "next": None,
        }
        assert (
            b"has no state for this block" in self.client.get(history_url("alice", other)).content
        )


class ContentTests(HistoryPageTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_history(
            ({"attempts": 1}, None),
            ({"attempts": 1, "answer": "41"}, 0.0),
            ({"attempts": 2, "answer": "<b>42</b>"}, 1.0),
            (None, 1.0),
        )

    def test_json(self) -> None:
        response = self.get(self.alice, history_url("alice", PROBLEM, format="json"))
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        assert response.json() == {
            "username": "alice",
            "usage_key": str(PROBLEM),
            "state": {"attempts": 2, "answer": "<b>42</b>"},
            "grade": 1.0,
            "max_grade": 2.0,
            "history": [
                {"created": "2025-03-01T12:00:03.123456+00:00", "state": None, "grade": 1.0,
                 "max_grade": 2.0},
                {"created": "2025-03-01T12:00:02.123456+00:00",
                 "state": {"attempts": 2, "answer": "<b>42</b>"}, "grade": 1.0, "max_grade": 2.0},
                {"created": "2025-03-01T12:00:01.123456+00:00",
                 "state": {"attempts": 1, "answer": "41"}, "grade": 0.0, "max_grade": 2.0},
                {"created": "2025-03-01T12:00:00.123456+00:00", "state": {"attempts": 1},
                 "grade": None, "max_grade": None},
            ],
            "next": None,
        }  # fmt: skip

    def test_html_shows_state_and_changes_newest_first_escaped(self) -> None:
        html = self.get(self.staff, history_url("alice", PROBLEM)).content.decode()

        assert "Grade: 1.0 / 2.0" in html
        # Pretty, sorted, escaped JSON: the learner's markup is shown, never rendered.
        assert (
            "&quot;answer&quot;: &quot;&lt;b&gt;42&lt;/b&gt;&quot;,\n  &quot;attempts&quot;: 2"
            in html
        )
        assert "<b>42</b>" not in html
        changes = [
            "- answer (was &quot;&lt;b&gt;42&lt;/b&gt;&quot;)",
            "- attempts (was 2)",
            "~ answer: &quot;41&quot; → &quot;&lt;b&gt;42&lt;/b&gt;&quot;",
            "~ attempts: 1 → 2",
            "grade: 0.0 → 1.0",
            "+ answer = &quot;41&quot;",
            "grade: null → 0.0",
            "max_grade: null → 2.0",
            "+ attempts = 1",
        ]
        positions = [html.index(change) for change in changes]
        assert positions == sorted(positions), "newest entry first, its changes in order"
        assert html.index("2025-03-01 12:00:03.123456") < html.index("2025-03-01 12:00:00.123456")

    @override_settings(DATABASE_ROUTERS=["tests.test_views.RefuseStudentModuleReads",
                                         "kvstate.routers.StudentModuleHistoryRouter"])  # fmt: skip
    def test_the_module_is_read_from_its_write_alias(self) -> None:
        response = self.get(self.staff, history_url("alice", PROBLEM, format="json"))
        assert response.json()["state"] == {"attempts": 2, "answer": "<b>42</b>"}
        assert len(response.json()["history"]) == 4


class PagingTests(HistoryPageTestCase):
    ENTRIES = 2 * HISTORY_PAGE_SIZE + 10

    def setUp(self) -> None:
        super().setUp()
        self.add_history(*(({"attempts": n}, None) for n in range(self.ENTRIES)))
        self.client.force_login(self.staff)

    def test_pages_cover_the_history_newest_first_at_a_fixed_cost(self) -> None:
        url: str | None = history_url("alice", PROBLEM, format="json")
        seen: list[int] = []
        pages = 0
        while url is not None:
            # default: the session and the signed-in user (auth middleware), the learner's
            # id by username, their module. History alias: one page (+1 row to look ahead).
            with (
                self.assertNumQueries(4, using="default"),
                self.assertNumQueries(1, using="student_module_history"),
            ):
                page = self.client.get(url).json()
            seen += [entry["state"]["attempts"] for entry in page["history"]]
            url = page["next"]
            pages += 1
        assert pages == 3
        assert seen == list(reversed(range(self.ENTRIES)))

    def test_html_pages_link_to_older_entries_with_changes_across_the_boundary(self) -> None:
        with (
            self.assertNumQueries(4, using="default"),
            self.assertNumQueries(1, using="student_module_history"),
        ):
            first = self.client.get(history_url("alice", PROBLEM)).content.decode()
        oldest_on_first_page = self.ENTRIES - HISTORY_PAGE_SIZE
        # The last entry of the page is compared with the first of the next page.
        assert f"~ attempts: {oldest_on_first_page - 1} → {oldest_on_first_page}" in first
        assert first.count('<li class="entry">') == HISTORY_PAGE_SIZE
        next_url = first.split('class="next" href="')[1].split('"')[0].replace("&amp;", "&")
        second = self.client.get(next_url).content.decode()
        assert "(older entries)" in second
        assert f"~ attempts: {oldest_on_first_page - 2} → {oldest_on_first_page - 1}" in second
