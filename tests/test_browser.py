"""The workbench in headless Chromium: real XBlocks, their own JavaScript, kvstate underneath.

Runs on every backend when Debian's ``chromium`` and ``chromium-driver`` are installed
(``/usr/bin/chromium``, ``/usr/bin/chromedriver``; selenium's own driver download cannot reach
the internet). Without them the tests skip, unless ``KVSTATE_REQUIRE_BROWSER=1`` (CI sets it),
when they fail.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from typing import Any, ClassVar

from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.core.cache import caches
from django.test import override_settings
from django.urls import reverse
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from demo_site import browser
from demo_site.unit import STAFF_PASSWORD, STAFF_USERNAME, WORKBENCH_UNIT, seed_users
from kvstate.models import StudentModule

REQUIRED = os.environ.get("KVSTATE_REQUIRE_BROWSER") == "1"
MISSING = browser.missing()
POLL = WORKBENCH_UNIT.poll


@unittest.skipIf(
    bool(MISSING) and not REQUIRED,
    f"{' and '.join(MISSING)} missing: apt-get install chromium chromium-driver "
    "(KVSTATE_REQUIRE_BROWSER=1 turns this skip into a failure)",
)
@override_settings(
    ROOT_URLCONF="demo_site.urls",
    KVSTATE_ANONYMOUS_CACHE="default",
    KVSTATE_HISTORY_BLOCK_TYPES="__all__",
    LOGIN_URL="/admin/login/",
)
class WorkbenchBrowserTests(StaticLiveServerTestCase):
    """A learner, another learner, an anonymous visitor and staff, in one browser."""

    databases = {"default", "student_module_history"}
    host = "127.0.0.1"
    driver: ClassVar[webdriver.Chrome]
    profile: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.profile = tempfile.TemporaryDirectory(prefix="kvstate-chromium-")
        try:
            cls.driver = browser.start_chromium(cls.profile.name)  # type: ignore[assignment]
        except Exception:
            cls.profile.cleanup()
            super().tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.driver.quit()
        cls.profile.cleanup()
        super().tearDownClass()

    def setUp(self) -> None:
        seed_users()
        caches["default"].clear()
        self.driver.get(self.live_server_url + "/")
        self.driver.delete_all_cookies()
        # Blocks re-render parts of themselves (a poll swaps its form for its results).
        self.wait = WebDriverWait(
            self.driver,
            15,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        )

    # Acting in the page

    def open_unit(self, learner: str) -> None:
        """Open the unit as ``learner`` (picked in the learner picker) or ``anonymous``."""
        self.driver.get(self.live_server_url + "/")
        # The picker posts and redirects: wait for a new document, whoever the old one showed.
        # The old one is marked; mid-navigation the driver may fail to reach either document
        # (an element's staleness check then errors instead of answering), so retry until the
        # page without the mark answers.
        self.driver.execute_script("window.kvstateLeaving = true")
        self.driver.find_element(By.ID, f"as-{learner}").click()
        WebDriverWait(self.driver, 15, ignored_exceptions=(WebDriverException,)).until(
            lambda driver: driver.execute_script("return window.kvstateLeaving === undefined")
        )
        try:
            self.wait.until(lambda driver: self.current_learner() == learner)
        except TimeoutException:
            # Say what the browser shows instead (an error page, another learner's unit).
            page = self.driver.find_element(By.TAG_NAME, "body").text[:500]
            raise AssertionError(
                f"picked {learner!r}, the page at {self.driver.current_url} shows: {page!r}"
            ) from None
        self.wait_for_blocks()

    def current_learner(self) -> str:
        return str(self.driver.find_element(By.ID, "current-learner").get_attribute("data-learner"))

    def wait_for_blocks(self) -> None:
        """Wait until the page has loaded and the blocks' JavaScript has heard back.

        The blocks start their requests when the document is ready (jQuery counts them in
        ``jQuery.active``), so a complete document with none in flight has settled.
        """
        self.wait.until(
            lambda driver: driver.execute_script(
                "return document.readyState === 'complete' && window.jQuery !== undefined"
                " && jQuery.active === 0"
            )
        )

    def reload(self) -> None:
        self.driver.refresh()
        self.wait_for_blocks()

    def block(self, block_id: str) -> WebElement:
        return self.driver.find_element(By.ID, f"block-{block_id}")

    def poll(self) -> WebElement:
        return self.block(POLL.block_id)

    def vote(self, choice: str) -> None:
        """Vote in the poll and wait for its results."""
        self.poll().find_element(By.CSS_SELECTOR, f"input[value='{choice}']").click()
        self.poll().find_element(By.CSS_SELECTOR, "button.submit").click()
        self.results()

    def results(self) -> dict[str, Any]:
        """Return the poll's results once it shows them: respondents, percentages, the vote."""
        # The poll fetches and renders its results in steps: read them once they are there.
        results: dict[str, Any] = self.wait.until(lambda driver: self.read_results())
        self.wait_for_blocks()
        return results

    def read_results(self) -> dict[str, Any] | None:
        if "Results gathered" not in self.poll().text:
            return None
        rows = self.poll().find_elements(By.CSS_SELECTOR, "li.poll-result")
        return {
            "footnote": self.poll().find_element(By.CLASS_NAME, "poll-footnote").text,
            "percent": {
                row.find_element(By.CLASS_NAME, "poll-answer-label").text: row.find_element(
                    By.CLASS_NAME, "poll-percent-display"
                ).text
                for row in rows
            },
            "mine": [
                row.find_element(By.CLASS_NAME, "poll-answer-label").text
                for row in rows
                if row.find_element(By.TAG_NAME, "input").is_selected()
            ],
        }

    # The cases

    def test_a_learner_votes_reloads_and_still_sees_the_vote(self) -> None:
        self.open_unit("alice")
        self.vote("R")
        self.reload()
        assert self.results() == {
            "footnote": "Results gathered from 1 respondent.",
            "percent": {"Red": "100%", "Blue": "0%", "Green": "0%", "Other": "0%"},
            "mine": ["Red"],
        }
        module = StudentModule.objects.get(student__username="alice", module_state_key=POLL)
        assert '"choice": "R"' in (module.state or "")

    def test_another_learner_sees_the_shared_tally(self) -> None:
        self.open_unit("alice")
        self.vote("R")
        self.open_unit("bob")
        assert "Results gathered" not in self.poll().text  # bob has not voted yet
        self.vote("B")
        assert self.results() == {
            "footnote": "Results gathered from 2 respondents.",
            "percent": {"Red": "50%", "Blue": "50%", "Green": "0%", "Other": "0%"},
            "mine": ["Blue"],
        }

    def test_an_anonymous_visitor_votes_reloads_and_still_sees_it(self) -> None:
        self.open_unit("anonymous")
        self.vote("G")
        self.reload()
        assert self.results()["mine"] == ["Green"]
        # Kept in the visitor's session (the cache), never in the database.
        assert not StudentModule.objects.exists()
        self.driver.delete_all_cookies()  # another visitor
        self.reload()
        assert "Results gathered" not in self.poll().text

    def test_every_block_keeps_its_state_across_a_reload(self) -> None:
        self.open_unit("carol")
        self.vote("O")
        survey = self.block("course_feedback")
        for question in survey.find_elements(By.CSS_SELECTOR, "tr.survey-row"):
            question.find_elements(By.CSS_SELECTOR, "input[type=radio]")[0].click()
        survey.find_element(By.CSS_SELECTOR, "button.submit").click()
        self.wait.until(lambda driver: "Results gathered" in self.block("course_feedback").text)
        self.block("lecture_1").find_element(By.CLASS_NAME, "upvote").click()
        self.wait.until(lambda driver: self.upvotes() == "1")
        self.block("reading_1").find_element(
            By.CSS_SELECTOR, "label.done_onoffswitch-label"
        ).click()
        self.wait.until(lambda driver: self.done_grade() == 1.0)

        self.reload()

        assert self.results()["mine"] == ["Other"]
        self.wait.until(
            lambda driver: (
                "Results gathered from 1 respondent" in self.block("course_feedback").text
            )
        )
        assert self.upvotes() == "1"
        assert self.done_grade() == 1.0
        states = {
            module.module_state_key.block_id: module.state
            for module in StudentModule.objects.filter(student__username="carol")
        }
        assert set(states) == {"favourite_colour", "course_feedback", "lecture_1", "reading_1"}

    def upvotes(self) -> str:
        return self.block("lecture_1").find_element(By.CSS_SELECTOR, ".upvote .count").text

    def done_grade(self) -> float | None:
        module = StudentModule.objects.filter(
            student__username="carol", module_state_key=WORKBENCH_UNIT.done
        ).first()
        return None if module is None else module.grade

    def test_staff_open_the_history_page_and_see_the_entry(self) -> None:
        self.open_unit("alice")
        self.vote("B")
        history = reverse("kvstate:history", kwargs={"username": "alice", "usage_key": POLL})

        self.driver.delete_all_cookies()
        self.driver.get(self.live_server_url + history)  # anonymous: sent to the login page
        self.driver.find_element(By.ID, "id_username").send_keys(STAFF_USERNAME)
        self.driver.find_element(By.ID, "id_password").send_keys(STAFF_PASSWORD)
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        self.wait.until(lambda driver: driver.current_url.endswith(history))

        page = self.driver.find_element(By.TAG_NAME, "body").text
        assert "Submission history of alice" in page
        assert '+ choice = "B"' in page
        assert '"choice": "B"' in self.driver.find_element(By.CLASS_NAME, "state").text
        # The workbench shows staff a history link per learner and block.
        self.driver.get(self.live_server_url + "/")
        self.wait_for_blocks()
        links = self.poll().find_elements(By.CLASS_NAME, "history-link")
        assert [link.text for link in links] == ["alice", "bob", "carol", "dave"]
        links[0].click()
        self.wait.until(lambda driver: driver.current_url.endswith(history))

    def test_a_learner_opening_another_learners_history_gets_403(self) -> None:
        self.open_unit("bob")
        other = reverse("kvstate:history", kwargs={"username": "alice", "usage_key": POLL})
        self.driver.get(self.live_server_url + other)
        assert self.driver.find_element(By.TAG_NAME, "body").text.startswith(
            "403 Forbidden: you may not see 'alice''s submission history"
        )
        own = reverse("kvstate:history", kwargs={"username": "bob", "usage_key": POLL})
        self.driver.get(self.live_server_url + own)
        assert "Submission history of bob" in self.driver.find_element(By.TAG_NAME, "h1").text
