"""Click through a served workbench in headless Chromium and save the README's screenshots.

    ./demo serve 8000 &        # a fresh workbench (KVSTATE_DEMO_DB_DIR=<empty folder>)
    python manage.py workbench_screenshots --url http://127.0.0.1:8000 --out docs/images

Learners vote in the poll (alice twice in the open poll), answer the survey, rate the lecture
and mark the reading done; then staff open alice's history and the admin. Writes
``workbench.png``, ``history.png`` and ``admin.png``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from demo_site import browser
from demo_site.unit import STAFF_PASSWORD, STAFF_USERNAME, WORKBENCH_UNIT


class Command(BaseCommand):
    help = "Use a served workbench in headless Chromium and save screenshots of its pages."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the workbench")
        parser.add_argument("--out", default="docs/images", help="folder for the PNG files")

    def handle(self, *args: Any, **options: Any) -> None:
        if browser.missing():
            raise CommandError(
                f"{browser.missing()} missing: apt-get install chromium chromium-driver"
            )
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.expected_conditions import staleness_of
        from selenium.webdriver.support.ui import WebDriverWait

        base = options["url"].rstrip("/")
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="kvstate-chromium-") as profile:
            driver: Any = browser.start_chromium(profile, width=1100, height=2200)
            wait = WebDriverWait(driver, 15)

            def settled() -> None:
                wait.until(
                    lambda d: d.execute_script(
                        "return document.readyState === 'complete' && jQuery.active === 0"
                    )
                )

            def as_learner(name: str) -> None:
                driver.get(base + "/")
                button = driver.find_element(By.ID, f"as-{name}")
                button.click()
                wait.until(staleness_of(button))  # the picker posts, then redirects
                wait.until(
                    lambda d: (
                        d.find_element(By.ID, "current-learner").get_attribute("data-learner")
                        == name
                    )
                )
                settled()

            def vote(block_id: str, choice: str) -> None:
                block = driver.find_element(By.ID, f"block-{block_id}")
                answers = block.find_elements(By.CSS_SELECTOR, f"input[value='{choice}']")
                if not answers:
                    raise CommandError(
                        "the learners have voted already: serve a fresh workbench "
                        "(KVSTATE_DEMO_DB_DIR=<an empty folder> ./demo serve)"
                    )
                answers[0].click()
                block.find_element(By.CSS_SELECTOR, "button.submit").click()
                settled()

            def shoot(name: str) -> None:
                time.sleep(1)  # let the blocks' CSS transitions finish
                # The whole page, no more: the window as tall as the document (measured in a
                # short window, since a page is at least as tall as its window).
                driver.set_window_size(1100, 600)
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(1100, height + 140)  # + the browser's own bars
                driver.save_screenshot(str(out / name))
                driver.set_window_size(1100, 2200)
                self.stdout.write(f"saved {out / name}")

            try:
                for name, choice in (("bob", "B"), ("carol", "R"), ("alice", "R")):
                    as_learner(name)
                    vote("favourite_colour", choice)
                    driver.find_element(By.CSS_SELECTOR, "#block-lecture_1 .upvote").click()
                    settled()
                vote("best_snack", "G")
                as_learner("alice")
                vote("best_snack", "R")  # the open poll allows a second vote
                survey = driver.find_element(By.ID, "block-course_feedback")
                for row, answer in zip(
                    survey.find_elements(By.CSS_SELECTOR, "tr.survey-row"), (0, 0, 2), strict=True
                ):
                    row.find_elements(By.CSS_SELECTOR, "input[type=radio]")[answer].click()
                survey.find_element(By.CSS_SELECTOR, "button.submit").click()
                settled()
                driver.find_element(By.CSS_SELECTOR, "#block-reading_1 label").click()
                settled()
                driver.refresh()
                settled()
                shoot("workbench.png")

                history = reverse(
                    "kvstate:history",
                    kwargs={"username": "alice", "usage_key": WORKBENCH_UNIT.open_poll},
                )
                driver.delete_all_cookies()
                driver.get(base + history)
                driver.find_element(By.ID, "id_username").send_keys(STAFF_USERNAME)
                driver.find_element(By.ID, "id_password").send_keys(STAFF_PASSWORD)
                driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
                wait.until(lambda d: d.current_url.endswith(history))
                shoot("history.png")

                driver.get(base + reverse("admin:kvstate_studentmodule_changelist"))
                shoot("admin.png")
            finally:
                driver.quit()
