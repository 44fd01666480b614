"""The workbench project (demo_site) through Django's test client, and its scripted demo."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.management import call_command
from django.test import TestCase, override_settings
from django.urls import reverse

from demo_site.unit import LEARNERS, STAFF_PASSWORD, STAFF_USERNAME, WORKBENCH_UNIT, seed_users
from kvstate.models import StudentModule, XModuleUserStateSummaryField

POLL = WORKBENCH_UNIT.poll


class ScriptedDemoTests(TestCase):
    databases = {"default", "student_module_history"}

    def test_the_demo_runs_and_checks_itself(self) -> None:
        out = StringIO()
        call_command("kvstate_demo", "--no-migrate", stdout=out)
        assert "All checks passed: 24 requests, 13 learner rows, 5 shared values" in out.getvalue()

    def test_the_demo_is_not_a_command_of_the_reusable_app(self) -> None:
        from django.core.management import get_commands

        assert get_commands()["kvstate_demo"] == "demo_site"
        assert get_commands()["kvstate_prune_history"] == "kvstate"


class SeedTests(TestCase):
    def test_seed_creates_learners_and_a_staff_user_once(self) -> None:
        out = StringIO()
        call_command("workbench_seed", stdout=out)
        call_command("workbench_seed", stdout=StringIO())
        users = get_user_model().objects
        assert sorted(users.values_list("username", flat=True)) == sorted(
            [*LEARNERS, STAFF_USERNAME]
        )
        staff = users.get(username=STAFF_USERNAME)
        assert staff.is_staff
        assert staff.is_superuser
        assert staff.check_password(STAFF_PASSWORD)
        assert not users.get(username="alice").has_usable_password()
        assert f"{STAFF_USERNAME} / {STAFF_PASSWORD}" in out.getvalue()


@override_settings(
    ROOT_URLCONF="demo_site.urls",
    KVSTATE_ANONYMOUS_CACHE="default",
    KVSTATE_HISTORY_BLOCK_TYPES="__all__",
)
class WorkbenchPageTests(TestCase):
    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        seed_users()
        caches["default"].clear()

    def as_learner(self, name: str) -> Any:
        return self.client.post(reverse("demo_site:choose_learner"), {"learner": name})

    def vote(self, choice: str) -> Any:
        url = reverse("demo_site:handler", kwargs={"usage_key": str(POLL), "handler": "vote"})
        with self.captureOnCommitCallbacks(using="default", execute=True):
            response = self.client.post(
                url + "?student=", json.dumps({"choice": choice}), content_type="application/json"
            )
        assert response.status_code == 200, response.content
        return response.json()

    def test_the_unit_renders_every_block_with_its_javascript(self) -> None:
        response = self.client.get("/")
        html = response.content.decode()
        assert response.status_code == 200
        for init in ("PollBlock", "SurveyBlock", "ThumbsBlock", "DoneXBlock"):
            assert f"data-init='{init}'" in html
        assert "/static/workbench/js/vendor/jquery.min.js" in html
        assert html.count("/static/workbench/js/runtime/1.js") == 1  # once, not per block
        assert "/resource/poll/public/js/vendor/handlebars.js" in html
        assert 'id="current-learner" data-learner="anonymous"' in html
        assert "csrftoken" in response.cookies

    def test_a_learners_page_costs_a_fixed_number_of_statements(self) -> None:
        self.as_learner("alice")
        self.vote("R")
        with self.captureOnCommitCallbacks(using="default", execute=True):
            # The survey block saves a "choices": null state the first time it is shown.
            self.client.get("/")
        # default: the session and the user (auth middleware), then one prefetch for the
        # scopes the five blocks have fields in (user_state, user_state_summary: one UNION ALL);
        # the history alias is not read to show a page.
        with (
            self.assertNumQueries(3, using="default"),
            self.assertNumQueries(0, using="student_module_history"),
        ):
            html = self.client.get("/").content.decode()
        assert "Results" in html  # the poll shows alice her vote's results

    def test_the_picker_signs_learners_in_and_out(self) -> None:
        assert self.as_learner("bob").status_code == 302
        assert 'data-learner="bob"' in self.client.get("/").content.decode()
        self.as_learner("anonymous")
        assert 'data-learner="anonymous"' in self.client.get("/").content.decode()
        response = self.as_learner("mallory")
        assert response.status_code == 400
        assert b"pick one of the workbench's learners" in response.content

    def test_handlers_write_the_learners_state_through_kvstate(self) -> None:
        self.as_learner("alice")
        assert self.vote("R")["success"]
        module = StudentModule.objects.get(student__username="alice", module_state_key=POLL)
        assert json.loads(module.state or "") == {"choice": "R", "submissions_count": 1}
        tally = XModuleUserStateSummaryField.objects.get(usage_id=POLL, field_name="tally")
        assert json.loads(tally.value)["R"] == 1

    def test_anonymous_votes_stay_in_the_cache(self) -> None:
        assert self.vote("B")["success"]
        assert not StudentModule.objects.exists()
        assert not XModuleUserStateSummaryField.objects.exists()
        assert self.vote("B")["success"] is False  # already voted: the vote was kept

    def test_unknown_blocks_handlers_and_resources_are_404(self) -> None:
        for url in (
            reverse("demo_site:handler", kwargs={"usage_key": "nonsense", "handler": "vote"}),
            reverse(
                "demo_site:handler",
                kwargs={
                    "usage_key": str(WORKBENCH_UNIT.course.make_usage_key("poll", "x")),
                    "handler": "vote",
                },
            ),
            reverse("demo_site:handler", kwargs={"usage_key": str(POLL), "handler": "nope"}),
            reverse("demo_site:resource", kwargs={"block_type": "nope", "uri": "public/a.js"}),
            reverse("demo_site:resource", kwargs={"block_type": "poll", "uri": "poll.py"}),
            reverse(
                "demo_site:resource", kwargs={"block_type": "poll", "uri": "public/../poll.py"}
            ),
        ):
            with self.subTest(url=url):
                assert (
                    self.client.post(url, "{}", content_type="application/json").status_code == 404
                )

    def test_block_resources_are_served(self) -> None:
        url = reverse(
            "demo_site:resource",
            kwargs={"block_type": "poll", "uri": "public/js/vendor/handlebars.js"},
        )
        response = self.client.get(url)
        assert response.status_code == 200
        assert response["Content-Type"] in ("text/javascript", "application/javascript")
        assert b"Handlebars" in b"".join(response.streaming_content)  # type: ignore[arg-type]

    def test_staff_get_history_links_learners_do_not(self) -> None:
        self.as_learner("alice")
        assert b'class="history-link"' not in self.client.get("/").content
        self.as_learner(STAFF_USERNAME)
        html = self.client.get("/").content.decode()
        link = reverse("kvstate:history", kwargs={"username": "alice", "usage_key": POLL})
        assert f'href="{link}"' in html
        assert html.count('class="history-link"') == len(LEARNERS) * len(WORKBENCH_UNIT.blocks)
