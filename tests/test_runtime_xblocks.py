"""Real XBlocks from PyPI keep learner state in kvstate, one simulated request at a time.

Blocks: xblock-poll's ``poll`` and ``survey`` (user_state + a shared tally in
user_state_summary), xblock-sdk's ``thumbs`` (a user_state flag + shared counters) and
``allscopes_demo`` (a field in every scope), and done-xblock's ``done`` (user_state + a grade
event). Each request is a fresh runtime, fresh block instances and a fresh
``StudentDataProvider`` over the same database, so nothing but kvstate carries state between
requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.signed_cookies import SessionStore
from django.core.cache import caches
from django.db import connections
from django.test import RequestFactory, TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from opaque_keys.edx.block_types import BlockTypeKeyV1
from opaque_keys.edx.locator import CourseLocator

from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.runtime import (
    VISITOR_SESSION_KEY,
    EphemeralKeyValueStore,
    StudentDataProvider,
    visitor_id,
)
from kvstate.testing.factories import UserFactory
from kvstate.testing.runtime import AuthoredContent, MinimalRuntime, new_request

COURSE = CourseLocator("kvstate", "XBlocks", "2025")
OTHER_COURSE = CourseLocator("kvstate", "Other", "2025")

POLL = COURSE.make_usage_key("poll", "favourite_colour")
OPEN_POLL = COURSE.make_usage_key("poll", "changeable")  # private results: votes may change
SURVEY = COURSE.make_usage_key("survey", "course_feedback")
THUMBS = COURSE.make_usage_key("thumbs", "lecture_1")
DONE = COURSE.make_usage_key("done", "reading_1")
ALL_SCOPES = COURSE.make_usage_key("allscopes_demo", "scopes_1")
ALL_SCOPES_2 = COURSE.make_usage_key("allscopes_demo", "scopes_2")
OTHER_POLL = OTHER_COURSE.make_usage_key("poll", "elsewhere")

EMPTY_TALLY = {"R": 0, "B": 0, "G": 0, "O": 0}
ALIASES = ("default", "student_module_history")


def build_content() -> AuthoredContent:
    """Return the course as authors wrote it (the same for every request)."""
    content = AuthoredContent()
    content.add(POLL, question="Which colour?")
    content.add(
        OPEN_POLL, question="Which colour, really?", private_results=True, max_submissions=2
    )
    content.add(SURVEY)
    content.add(THUMBS)
    content.add(DONE, align="right")
    content.add(ALL_SCOPES)
    content.add(ALL_SCOPES_2)
    content.add(OTHER_POLL)
    return content


def row_counts() -> dict[str, int]:
    """Return the number of rows in each kvstate table (history on its own alias)."""
    return {
        model.__name__: model.objects.count()
        for model in (
            StudentModule,
            StudentModuleHistory,
            XModuleUserStateSummaryField,
            XModuleStudentPrefsField,
            XModuleStudentInfoField,
        )
    }


class XBlockRequestsTestCase(TestCase):
    """Helpers to run one request of one user against one block."""

    databases = {"default", "student_module_history"}

    def setUp(self) -> None:
        self.content = build_content()
        self.alice = UserFactory(username="alice")
        self.bob = UserFactory(username="bob")
        self.carol = UserFactory(username="carol")

    def post(self, user: Any, usage_key: Any, handler: str, data: Any, **kwargs: Any) -> Any:
        """Run one request: POST ``data`` to ``handler`` of a fresh block in a fresh runtime."""
        runtime = new_request(self.content, user, **kwargs)
        return runtime.call_json_handler(runtime.get_block(usage_key), handler, data)

    def view_state(self, user: Any, usage_key: Any, **kwargs: Any) -> Any:
        """Run one request reading the user state a poll or survey shows to its learner."""
        runtime = new_request(self.content, user, **kwargs)
        return runtime.call_get_handler(runtime.get_block(usage_key), "student_view_user_state")

    def fresh_block(self, user: Any, usage_key: Any, **kwargs: Any) -> Any:
        """Return ``usage_key``'s block as a new request of ``user`` would load it."""
        return new_request(self.content, user, **kwargs).get_block(usage_key)

    def stored_state(self, user: Any, usage_key: Any) -> dict[str, Any]:
        """Return the user_state row of ``user`` for ``usage_key``, parsed."""
        module = StudentModule.objects.get(student=user, module_state_key=usage_key)
        assert module.course_id == usage_key.context_key
        assert module.module_type == usage_key.block_type
        return json.loads(module.state or "null")

    def stored_summary(self, usage_key: Any, field_name: str) -> Any:
        """Return a user_state_summary value as stored, parsed."""
        row = XModuleUserStateSummaryField.objects.get(usage_id=usage_key, field_name=field_name)
        return json.loads(row.value)


class PollTests(XBlockRequestsTestCase):
    """xblock-poll's PollBlock: a learner's choice in user_state, the tally shared."""

    def test_each_learner_sees_their_own_choice_and_the_shared_tally(self) -> None:
        for user, choice in ((self.alice, "R"), (self.bob, "B"), (self.carol, "R")):
            reply = self.post(user, POLL, "vote", {"choice": choice})
            assert reply["success"], reply

        tally = {**EMPTY_TALLY, "R": 2, "B": 1}
        for user, choice in ((self.alice, "R"), (self.bob, "B"), (self.carol, "R")):
            assert self.view_state(user, POLL) == {
                "choice": choice,
                "tally": tally,
                "submissions_count": 1,
            }
            assert self.stored_state(user, POLL) == {"choice": choice, "submissions_count": 1}
        assert self.stored_summary(POLL, "tally") == tally

    def test_a_learner_who_has_not_voted_sees_the_tally_and_stores_nothing(self) -> None:
        self.post(self.alice, POLL, "vote", {"choice": "G"})

        assert self.view_state(self.bob, POLL) == {
            "choice": None,
            "tally": {**EMPTY_TALLY, "G": 1},
            "submissions_count": 0,
        }
        assert not StudentModule.objects.filter(student=self.bob).exists()

    def test_a_second_vote_is_refused_and_changes_nothing(self) -> None:
        self.post(self.alice, POLL, "vote", {"choice": "R"})

        reply = self.post(self.alice, POLL, "vote", {"choice": "B"})

        assert reply["success"] is False
        assert reply["errors"] == ["You have already voted in this poll."]
        assert self.stored_state(self.alice, POLL) == {"choice": "R", "submissions_count": 1}
        assert self.stored_summary(POLL, "tally") == {**EMPTY_TALLY, "R": 1}

    def test_a_changed_vote_moves_the_tally(self) -> None:
        self.post(self.alice, OPEN_POLL, "vote", {"choice": "R"})
        self.post(self.bob, OPEN_POLL, "vote", {"choice": "R"})

        reply = self.post(self.alice, OPEN_POLL, "vote", {"choice": "G"})
        assert reply["success"], reply
        assert reply["can_vote"] is False  # max_submissions=2 reached

        refused = self.post(self.alice, OPEN_POLL, "vote", {"choice": "B"})
        assert refused["success"] is False
        assert self.stored_state(self.alice, OPEN_POLL) == {"choice": "G", "submissions_count": 2}
        assert self.stored_summary(OPEN_POLL, "tally") == {**EMPTY_TALLY, "R": 1, "G": 1}

    def test_polls_of_different_blocks_and_courses_do_not_mix(self) -> None:
        self.post(self.alice, POLL, "vote", {"choice": "R"})
        self.post(self.alice, OTHER_POLL, "vote", {"choice": "B"})

        assert self.view_state(self.alice, POLL)["choice"] == "R"
        assert self.view_state(self.alice, OTHER_POLL)["choice"] == "B"
        assert self.stored_summary(OTHER_POLL, "tally") == {**EMPTY_TALLY, "B": 1}
        assert StudentModule.objects.get(module_state_key=OTHER_POLL).course_id == OTHER_COURSE


class SurveyTests(XBlockRequestsTestCase):
    """xblock-poll's SurveyBlock: a dict of answers per learner, a nested tally shared."""

    def test_answers_and_nested_tally(self) -> None:
        answers = {
            self.alice: {"enjoy": "Y", "recommend": "Y", "learn": "M"},
            self.bob: {"enjoy": "Y", "recommend": "N", "learn": "Y"},
        }
        for user, choices in answers.items():
            reply = self.post(user, SURVEY, "vote", choices)
            assert reply["success"], reply

        tally = {
            "enjoy": {"Y": 2, "N": 0, "M": 0},
            "recommend": {"Y": 1, "N": 1, "M": 0},
            "learn": {"Y": 1, "N": 0, "M": 1},
        }
        for user, choices in answers.items():
            assert self.view_state(user, SURVEY) == {
                "choices": choices,
                "tally": tally,
                "submissions_count": 1,
            }
            assert self.stored_state(user, SURVEY) == {"choices": choices, "submissions_count": 1}
        assert self.stored_summary(SURVEY, "tally") == tally

    def test_an_incomplete_survey_records_no_answer(self) -> None:
        reply = self.post(self.alice, SURVEY, "vote", {"enjoy": "Y"})

        assert reply["success"] is False
        # SurveyBlock resets a learner without valid answers: it stores choices=None (a JSON
        # null, which is a value) and submissions_count=0, and leaves the tally alone.
        assert self.stored_state(self.alice, SURVEY) == {"choices": None, "submissions_count": 0}
        assert self.view_state(self.alice, SURVEY)["choices"] is None
        assert row_counts()["XModuleUserStateSummaryField"] == 0


class ThumbsTests(XBlockRequestsTestCase):
    """xblock-sdk's ThumbsBlock: a per-learner flag and two shared counters."""

    def test_counters_add_up_across_learners_and_requests(self) -> None:
        votes = [(self.alice, "up"), (self.bob, "up"), (self.carol, "down"), (self.alice, "up")]
        replies = [self.post(user, THUMBS, "vote", {"voteType": vote}) for user, vote in votes]

        assert replies[-1] == {"up": 3, "down": 1}
        assert self.stored_summary(THUMBS, "upvotes") == 3
        assert self.stored_summary(THUMBS, "downvotes") == 1
        for user in (self.alice, self.bob, self.carol):
            assert self.stored_state(user, THUMBS) == {"voted": True}

    def test_a_learner_who_did_not_vote_reads_defaults(self) -> None:
        self.post(self.alice, THUMBS, "vote", {"voteType": "down"})

        block = self.fresh_block(self.bob, THUMBS)

        assert block.voted is False
        assert (block.upvotes, block.downvotes) == (0, 1)


class DoneTests(XBlockRequestsTestCase):
    """done-xblock: a user_state flag, and a ``grade`` event the runtime stores."""

    def test_toggle_is_stored_and_graded(self) -> None:
        assert self.post(self.alice, DONE, "toggle_button", {"done": True}) == {"state": True}
        assert self.post(self.bob, DONE, "toggle_button", {"done": True}) == {"state": True}
        assert self.post(self.bob, DONE, "toggle_button", {"done": False}) == {"state": False}

        assert self.fresh_block(self.alice, DONE).done is True
        assert self.fresh_block(self.bob, DONE).done is False
        assert self.fresh_block(self.carol, DONE).done is False
        alice = StudentModule.objects.get(student=self.alice, module_state_key=DONE)
        bob = StudentModule.objects.get(student=self.bob, module_state_key=DONE)
        assert (json.loads(alice.state or ""), alice.grade, alice.max_grade) == (
            {"done": True},
            1,
            1,
        )
        assert (json.loads(bob.state or ""), bob.grade, bob.max_grade) == ({"done": False}, 0, 1)


class AllScopesTests(XBlockRequestsTestCase):
    """xblock-sdk's AllScopesBlock: one field per scope, saved through the field-data service."""

    def save_all_scopes(self, user: Any, usage_key: Any, label: str, **kwargs: Any) -> None:
        runtime = new_request(self.content, user, **kwargs)
        block = runtime.get_block(usage_key)
        block.user_state_field = f"{label} state"
        block.preferences_field = f"{label} preference"
        block.user_info_field = f"{label} info"
        block.user_state_summary_field = f"{label} summary"
        block.save()

    def test_each_scope_lands_in_its_table_and_is_shared_as_scoped(self) -> None:
        self.save_all_scopes(self.alice, ALL_SCOPES, "alice")

        assert self.stored_state(self.alice, ALL_SCOPES) == {"user_state_field": "alice state"}
        assert self.stored_summary(ALL_SCOPES, "user_state_summary_field") == "alice summary"
        preference = XModuleStudentPrefsField.objects.get(student=self.alice)
        assert (preference.module_type, preference.field_name, preference.value) == (
            BlockTypeKeyV1("xblock.v1", "allscopes_demo"),
            "preferences_field",
            '"alice preference"',
        )
        info = XModuleStudentInfoField.objects.get(student=self.alice)
        assert (info.field_name, info.value) == ("user_info_field", '"alice info"')

        # Another block of the same type: alice's preference and info follow her there, her
        # state and the first block's summary do not.
        other_block = self.fresh_block(self.alice, ALL_SCOPES_2)
        assert other_block.preferences_field == "alice preference"
        assert other_block.user_info_field == "alice info"
        assert other_block.user_state_field == "This is user_state!"
        assert other_block.user_state_summary_field == "This is user_state_summary!"

        # Another learner on the same block sees only the summary.
        bobs_block = self.fresh_block(self.bob, ALL_SCOPES)
        assert bobs_block.user_state_summary_field == "alice summary"
        assert bobs_block.user_state_field == "This is user_state!"
        assert bobs_block.preferences_field == "This is preferences!"
        assert bobs_block.user_info_field == "This is user_info!"

    def test_anonymous_memory_store_keeps_scopes_apart_within_a_request(self) -> None:
        runtime = new_request(self.content, AnonymousUser())
        first = runtime.get_block(ALL_SCOPES)
        first.user_state_field = "mine"
        first.preferences_field = "dark mode"
        first.user_info_field = "UTC"
        first.user_state_summary_field = "shared"
        first.save()

        second = runtime.get_block(ALL_SCOPES_2)
        assert second.preferences_field == "dark mode"
        assert second.user_info_field == "UTC"
        assert second.user_state_field == "This is user_state!"
        assert second.user_state_summary_field == "This is user_state_summary!"
        again = runtime.get_block(ALL_SCOPES)
        assert (again.user_state_field, again.user_state_summary_field) == ("mine", "shared")
        assert row_counts() == dict.fromkeys(row_counts(), 0)


class NothingPersistedTests(XBlockRequestsTestCase):
    """Anonymous visitors and ephemeral previews never touch the database."""

    def setUp(self) -> None:
        super().setUp()
        # Real learners' data that must stay exactly as it is.
        self.post(self.alice, POLL, "vote", {"choice": "B"})
        self.post(self.alice, THUMBS, "vote", {"voteType": "up"})
        self.post(self.alice, DONE, "toggle_button", {"done": True})
        self.before = row_counts()

    @contextmanager
    def assert_no_statements(self) -> Iterator[None]:
        """Assert that the block runs no statement on either alias."""
        with ExitStack() as stack:
            captured = {
                alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
                for alias in ALIASES
            }
            yield
        assert {alias: context.captured_queries for alias, context in captured.items()} == {
            alias: [] for alias in ALIASES
        }

    def use_every_block(self, runtime: MinimalRuntime) -> dict[str, Any]:
        """Vote, submit and toggle everything in one request; return the replies."""
        return {
            "poll": runtime.call_json_handler(runtime.get_block(POLL), "vote", {"choice": "R"}),
            "survey": runtime.call_json_handler(
                runtime.get_block(SURVEY), "vote", {"enjoy": "N", "recommend": "N", "learn": "N"}
            ),
            "thumbs": runtime.call_json_handler(
                runtime.get_block(THUMBS), "vote", {"voteType": "down"}
            ),
            "done": runtime.call_json_handler(
                runtime.get_block(DONE), "toggle_button", {"done": True}
            ),
        }

    def test_anonymous_visitor(self) -> None:
        runtime = new_request(self.content, AnonymousUser())

        with self.assert_no_statements():
            replies = self.use_every_block(runtime)
            # Later blocks of the same request share the visitor's in-memory state.
            assert runtime.call_get_handler(runtime.get_block(POLL), "student_view_user_state") == {
                "choice": "R",
                "tally": {**EMPTY_TALLY, "R": 1},  # shared data is not read either
                "submissions_count": 1,
            }

        assert replies["poll"]["success"]
        assert replies["survey"]["success"]
        assert replies["thumbs"] == {"up": 0, "down": 1}
        assert [event.event_type for event in runtime.events].count("grade") == 1
        assert row_counts() == self.before
        # The next request of an anonymous visitor starts from scratch.
        assert self.view_state(AnonymousUser(), POLL)["choice"] is None
        assert self.stored_summary(POLL, "tally") == {**EMPTY_TALLY, "B": 1}
        assert self.stored_summary(THUMBS, "upvotes") == 1

    def test_ephemeral_preview_by_a_real_user(self) -> None:
        runtime = new_request(self.content, self.alice, ephemeral=True)

        with self.assert_no_statements():
            replies = self.use_every_block(runtime)

        # Alice's real vote is invisible to the preview, and the preview does not change it.
        assert replies["poll"]["success"]
        assert replies["thumbs"] == {"up": 0, "down": 1}
        assert row_counts() == self.before
        assert self.stored_state(self.alice, POLL) == {"choice": "B", "submissions_count": 1}
        assert self.stored_state(self.alice, DONE) == {"done": True}
        assert not XModuleUserStateSummaryField.objects.filter(field_name="downvotes").exists()
        assert self.view_state(self.alice, POLL)["choice"] == "B"
        assert self.view_state(self.alice, SURVEY)["choices"] is None


@override_settings(KVSTATE_ANONYMOUS_CACHE="default")
class AnonymousCacheTests(NothingPersistedTests):
    """With KVSTATE_ANONYMOUS_CACHE, anonymous and preview state lasts across requests."""

    def setUp(self) -> None:
        super().setUp()
        caches["default"].clear()  # locmem: this process's own cache
        self.factory = RequestFactory()

    def request(self, user: Any, session: Any, **kwargs: Any) -> MinimalRuntime:
        """Start a request of ``user`` in the browser session ``session``."""
        request = self.factory.get("/")
        request.user = user
        request.session = session
        return MinimalRuntime(self.content, StudentDataProvider.for_request(request, **kwargs))

    def test_anonymous_vote_is_kept_across_requests_of_the_visitor(self) -> None:
        session = SessionStore()
        with self.assert_no_statements():
            first = self.request(AnonymousUser(), session)
            replies = self.use_every_block(first)
            assert replies["poll"]["success"]

            later = self.request(AnonymousUser(), session)
            assert later.call_get_handler(later.get_block(POLL), "student_view_user_state") == {
                "choice": "R",
                "tally": {**EMPTY_TALLY, "R": 1},  # the visitor's own, not the learners' one
                "submissions_count": 1,
            }
            assert later.get_block(DONE).done is True
            assert later.get_block(THUMBS).voted is True
            again = later.call_json_handler(later.get_block(POLL), "vote", {"choice": "B"})
            assert again["success"] is False  # already voted, as for a learner

            stranger = self.request(AnonymousUser(), SessionStore())
            assert stranger.get_block(POLL).choice is None

        assert session.modified  # so SessionMiddleware saves it and sends the cookie
        assert isinstance(session[VISITOR_SESSION_KEY], str)
        assert row_counts() == self.before
        assert self.stored_summary(POLL, "tally") == {**EMPTY_TALLY, "B": 1}

    def test_preview_is_kept_and_apart_from_the_anonymous_visit(self) -> None:
        session = SessionStore()
        with self.assert_no_statements():
            self.use_every_block(self.request(self.alice, session, ephemeral=True))
            preview = self.request(self.alice, session, ephemeral=True)
            assert preview.get_block(POLL).choice == "R"
            assert self.request(AnonymousUser(), session).get_block(POLL).choice is None
        assert row_counts() == self.before
        # Alice's real vote is untouched.
        assert self.view_state(self.alice, POLL)["choice"] == "B"

    def test_a_signed_in_learner_still_uses_the_database(self) -> None:
        runtime = self.request(self.alice, SessionStore())
        assert runtime.student_data.persistent
        assert runtime.student_data.memory_store is None
        assert runtime.get_block(POLL).choice == "B"

    def test_the_visitor_id_survives_a_new_session_key(self) -> None:
        session = SessionStore()
        request = self.factory.get("/")
        request.session = session
        visitor = visitor_id(request)
        session.cycle_key()  # as login() does
        assert visitor_id(request) == visitor

    def test_without_a_session_state_lasts_one_request(self) -> None:
        request = self.factory.get("/")
        request.user = AnonymousUser()
        provider = StudentDataProvider.for_request(request)
        assert isinstance(provider.memory_store, EphemeralKeyValueStore)

    @override_settings(KVSTATE_ANONYMOUS_CACHE=None)
    def test_without_the_setting_state_lasts_one_request(self) -> None:
        session = SessionStore()
        runtime = self.request(AnonymousUser(), session)
        assert isinstance(runtime.student_data.memory_store, EphemeralKeyValueStore)
        self.use_every_block(runtime)
        assert self.request(AnonymousUser(), session).get_block(POLL).choice is None
        assert VISITOR_SESSION_KEY not in session


class ProviderTests(XBlockRequestsTestCase):
    """How a provider spreads one request's blocks over FieldDataCaches."""

    def test_one_cache_per_learning_context_extended_block_by_block(self) -> None:
        self.post(self.alice, POLL, "vote", {"choice": "R"})
        provider = StudentDataProvider(self.alice)
        runtime = MinimalRuntime(self.content, provider)

        poll = runtime.get_block(POLL)
        assert poll.choice == "R"
        cache = provider.cache_for(COURSE)
        assert cache is not None
        assert runtime.get_block(THUMBS).voted is False
        assert provider.cache_for(COURSE) is cache
        assert runtime.get_block(OTHER_POLL).choice is None
        assert provider.cache_for(OTHER_COURSE) not in (None, cache)

        # A block already loaded in this request costs nothing more.
        with self.assertNumQueries(0):
            assert runtime.get_block(POLL).choice == "R"

    def test_prefetch_then_read_without_queries(self) -> None:
        self.post(self.alice, POLL, "vote", {"choice": "R"})
        self.post(self.alice, SURVEY, "vote", {"enjoy": "Y", "recommend": "Y", "learn": "Y"})
        provider = StudentDataProvider(self.alice)
        runtime = MinimalRuntime(self.content, provider)
        blocks = [runtime.get_block(key) for key in (POLL, SURVEY, THUMBS, DONE, OTHER_POLL)]

        provider.prefetch(blocks)

        with self.assertNumQueries(0):
            assert [block.submissions_count for block in blocks[:2]] == [1, 1]
            assert (blocks[2].voted, blocks[3].done, blocks[4].choice) == (False, False, None)
            assert blocks[1].tally["enjoy"] == {"Y": 1, "N": 0, "M": 0}

    def test_memory_store_is_per_provider(self) -> None:
        assert StudentDataProvider(self.alice).memory_store is None
        assert StudentDataProvider(self.alice).persistent
        preview = StudentDataProvider(self.alice, ephemeral=True)
        anonymous = StudentDataProvider(AnonymousUser())
        assert isinstance(preview.memory_store, EphemeralKeyValueStore)
        assert preview.memory_store is not anonymous.memory_store
        assert (preview.persistent, anonymous.persistent) == (False, False)
        assert (preview.user_id, anonymous.user_id) == (self.alice.pk, None)


@override_settings(KVSTATE_HISTORY_BLOCK_TYPES="__all__")
class HistoryTests(XBlockRequestsTestCase):
    """With history on for every block type, each handler call leaves one snapshot."""

    def test_one_history_row_per_request(self) -> None:
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.post(self.alice, OPEN_POLL, "vote", {"choice": "R"})
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.post(self.alice, OPEN_POLL, "vote", {"choice": "B"})

        module = StudentModule.objects.get(student=self.alice, module_state_key=OPEN_POLL)
        states = [
            json.loads(entry.state or "null")
            for entry in StudentModuleHistory.objects.for_module(module.pk)
        ]
        assert states == [
            {"choice": "B", "submissions_count": 2},
            {"choice": "R", "submissions_count": 1},
        ]
