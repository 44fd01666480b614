"""The unit of real XBlocks the workbench serves and the scripted demo replays.

Authored content (what a course author wrote: questions, settings) lives here, in memory; the
learners' state of the same blocks lives in kvstate. The workbench and the scripted demo use
the same blocks in two courses, so a demo run never touches what workbench visitors did.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from opaque_keys.edx.keys import CourseKey, UsageKey

from kvstate.testing.runtime import AuthoredContent

#: The learners the workbench's picker offers (no passwords: picking one signs in).
LEARNERS = ("alice", "bob", "carol", "dave")
#: The staff user of the workbench and its admin.
STAFF_USERNAME = "staff"
STAFF_PASSWORD = "kvstate-staff"


@dataclass(frozen=True)
class Unit:
    """Five blocks of one course: two polls, a survey, thumbs and done."""

    course: CourseKey
    poll: UsageKey
    open_poll: UsageKey
    survey: UsageKey
    thumbs: UsageKey
    done: UsageKey

    @classmethod
    def in_course(cls, course: str) -> Unit:
        key = CourseKey.from_string(course)
        return cls(
            key,
            key.make_usage_key("poll", "favourite_colour"),
            key.make_usage_key("poll", "best_snack"),
            key.make_usage_key("survey", "course_feedback"),
            key.make_usage_key("thumbs", "lecture_1"),
            key.make_usage_key("done", "reading_1"),
        )

    @property
    def blocks(self) -> tuple[UsageKey, ...]:
        return (self.poll, self.open_poll, self.survey, self.thumbs, self.done)

    def authored_content(self) -> AuthoredContent:
        """Return what the course's author wrote for the five blocks."""
        content = AuthoredContent()
        content.add(self.poll, question="Which colour do you like best?")
        content.add(self.open_poll, question="Best snack?", private_results=True, max_submissions=2)
        content.add(self.survey)
        content.add(self.thumbs)
        content.add(self.done)
        return content


DEMO_UNIT = Unit.in_course("course-v1:kvstate+Demo+2025")
WORKBENCH_UNIT = Unit.in_course("course-v1:kvstate+Workbench+2025")

#: What the workbench page calls each block.
TITLES = {
    "favourite_colour": "Poll: a favourite colour (results shared by all learners)",
    "best_snack": "Poll: best snack (private results, up to two votes)",
    "course_feedback": "Survey: course feedback",
    "lecture_1": "Thumbs: rate the lecture (counts shared by all learners)",
    "reading_1": "Done: mark the reading as done (sets a grade)",
}


def seed_users() -> AbstractBaseUser:
    """Create the workbench's learners and staff user if missing; return the staff user."""
    users = get_user_model()._default_manager
    for name in LEARNERS:
        learner, created = users.get_or_create(
            username=name, defaults={"email": f"{name}@example.com"}
        )
        if created:
            learner.set_unusable_password()  # picked on the page, never signed in with
            learner.save()
    staff, created = users.get_or_create(
        username=STAFF_USERNAME,
        defaults={"email": "staff@example.com", "is_staff": True, "is_superuser": True},
    )
    if created or not staff.check_password(STAFF_PASSWORD):
        staff.set_password(STAFF_PASSWORD)
        staff.is_staff = staff.is_superuser = True
        staff.save()
    return staff
