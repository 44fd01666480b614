"""DjangoXBlockUserStateClient: edx-user-state-client's conformance suite, and statement budgets.

History lives on its own alias in these settings and is written when the state's transaction
commits. In production the client is called outside any transaction, so each call commits
(and writes its history) before it returns. Django's ``TestCase`` keeps one transaction open
for the whole test instead, so the suite, which reads ``get_history`` right after a ``set``,
runs twice:

- ``ConformanceTests`` (``TestCase``): each write helper runs inside
  ``captureOnCommitCallbacks(execute=True)``, which plays the commit that ends a client call.
- ``CommittedConformanceTests`` (``TransactionTestCase``): nothing simulated; every call
  commits for real and history follows through ``on_commit`` as in production.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.test import TestCase, TransactionTestCase, override_settings
from django.test.utils import CaptureQueriesContext
from edx_user_state_client import tests as conformance
from opaque_keys.edx.keys import UsageKey
from opaque_keys.edx.locator import CourseLocator

from kvstate.conf import HISTORY_ALIAS
from kvstate.models import StudentModule, StudentModuleHistory
from kvstate.testing.factories import UserFactory
from kvstate.user_state_client import DjangoXBlockUserStateClient

COURSE = CourseLocator("kvstate", "Client", "2026")


def problem(i: int, course: CourseLocator = COURSE) -> UsageKey:
    return course.make_usage_key("problem", f"p{i}")


class _ConformanceSetup:
    """What both runs of the suite share: real users, recorded block types, a fresh client."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.client = DjangoXBlockUserStateClient()

    def _user(self, user: int) -> str:
        """Return the username of user ``user``, creating the user first (a real row)."""
        return UserFactory(username=f"user{user}").username  # type: ignore[no-any-return]

    @staticmethod
    def _block_type(block: int) -> str:
        # History is kept for "problem" blocks by default (as in Open edX); the suite's own
        # "block_type" would leave none and fail its history tests.
        return "problem"


class ConformanceTests(_ConformanceSetup, conformance.UserStateClientTestBase, TestCase):
    __test__ = True

    def _committed(self, write: Any, *args: Any, **kwargs: Any) -> Any:
        with self.captureOnCommitCallbacks(using="default", execute=True):
            return write(*args, **kwargs)

    def set(self, *args: Any, **kwargs: Any) -> Any:
        return self._committed(super().set, *args, **kwargs)

    def set_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._committed(super().set_many, *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._committed(super().delete, *args, **kwargs)

    def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._committed(super().delete_many, *args, **kwargs)


class CommittedConformanceTests(
    _ConformanceSetup, conformance.UserStateClientTestBase, TransactionTestCase
):
    __test__ = True


class ConformanceSuiteSizeTests(TestCase):
    def test_the_suite_still_has_its_34_tests(self) -> None:
        # A new edx-user-state-client release that adds or drops tests should be noticed.
        names = [n for n in dir(conformance.UserStateClientTestBase) if n.startswith("test_")]
        assert len(names) == 34


def make_users(n: int, prefix: str = "learner") -> list[Any]:
    """Create ``n`` users in one statement; return them with their ids."""
    user_model = get_user_model()
    user_model.objects.bulk_create([user_model(username=f"{prefix}{i}") for i in range(n)])
    return list(user_model.objects.filter(username__startswith=prefix).order_by("id"))


def store(
    users: list[Any], keys: list[UsageKey], state: str | None = '{"a": 1}', **fields: Any
) -> None:
    """Give every user a row with ``state`` (and ``fields``) for every block, in one statement."""
    StudentModule.objects.bulk_create(
        StudentModule(
            student=user,
            module_state_key=key,
            course_id=key.context_key,
            module_type=key.block_type,
            state=state,
            **fields,
        )
        for user in users
        for key in keys
    )


class ClientBudgetTests(TestCase):
    """SPEC §7 for the client. Inside TestCase; the client's multi-statement writes open
    ``atomic(savepoint=False)``, so no SAVEPOINT/RELEASE statements appear. The numbers are the
    same on SQLite, PostgreSQL and MariaDB (all three have INSERT ... RETURNING)."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.username = self.user.username
        self.client = DjangoXBlockUserStateClient(self.user)
        self.keys = [problem(i) for i in range(50)]

    def committed(self) -> Any:
        return self.captureOnCommitCallbacks(using="default", execute=True)

    def test_set_many_over_50_new_blocks(self) -> None:
        # default: read the 50 rows (none), INSERT the 50 rows; history: one INSERT.
        with (
            self.assertNumQueries(2, using="default"),
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.committed(),
        ):
            self.client.set_many(self.username, {key: {"a": 1} for key in self.keys})
        assert StudentModule.objects.count() == 50

    def test_set_many_over_50_existing_blocks(self) -> None:
        store([self.user], self.keys)
        # default: read the 50 rows, one compare-and-swap UPDATE for all; history: one INSERT.
        with (
            self.assertNumQueries(2, using="default"),
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.committed(),
        ):
            self.client.set_many(self.username, {key: {"b": 2} for key in self.keys})
        assert self.client.get(self.username, self.keys[49]).state == {"a": 1, "b": 2}

    def test_set_many_over_50_blocks_half_new(self) -> None:
        store([self.user], self.keys[:25])
        # default: read, INSERT the 25 new rows, swap the 25 others (3, SPEC allows 4);
        # history: one INSERT of 50 rows.
        with (
            self.assertNumQueries(3, using="default"),
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.committed(),
        ):
            self.client.set_many(self.username, {key: {"b": 2} for key in self.keys})
        assert StudentModuleHistory.objects.using(HISTORY_ALIAS).count() == 50

    def test_get_many_over_50_blocks(self) -> None:
        store([self.user], self.keys)
        with self.assertNumQueries(1, using="default"):  # one SELECT of the 50 rows, no join
            found = list(self.client.get_many(self.username, self.keys))
        assert [entry.block_key for entry in found] == self.keys

    def test_delete_many_over_50_blocks(self) -> None:
        store([self.user], self.keys)
        # default: read the rows, one swap to '{}' for all; history: one INSERT.
        with (
            self.assertNumQueries(2, using="default"),
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.committed(),
        ):
            self.client.delete_many(self.username, self.keys)
        assert list(self.client.get_many(self.username, self.keys)) == []

    def test_without_a_user_object_each_username_is_looked_up_once(self) -> None:
        other = UserFactory()
        client = DjangoXBlockUserStateClient()
        for username, calls in ((self.username, 3), (other.username, 2)):
            for call in range(calls):
                with self.subTest(username=username, call=call):
                    # The first call per username looks the user up (1), then reads the row
                    # and inserts or swaps it (2). Later calls skip the lookup.
                    expected = 3 if call == 0 else 2
                    with self.assertNumQueries(expected, using="default"), self.committed():
                        client.set_many(username, {self.keys[0]: {"call": call}})
        with self.assertNumQueries(1, using="default"):  # get_many: no lookup any more
            assert next(client.get_many(other.username, self.keys[:1])).state == {"call": 1}

    def test_get_history_takes_two_statements_however_long_it_is(self) -> None:
        for length in (1, 50):
            key = problem(100 + length)
            for i in range(length):
                with self.committed():
                    self.client.set(self.username, key, {"i": i})
            for client in (self.client, DjangoXBlockUserStateClient()):
                with self.subTest(length=length, knows_user=client.user is not None):
                    # default: the module's id (joined with the user table when this client
                    # has not looked the username up); history: all entries in one SELECT.
                    with (
                        self.assertNumQueries(1, using="default"),
                        self.assertNumQueries(1, using=HISTORY_ALIAS),
                    ):
                        entries = list(client.get_history(self.username, key))
                    assert [e.state for e in entries] == [{"i": i} for i in reversed(range(length))]
                    assert [e.updated for e in entries] == sorted(
                        (e.updated for e in entries), reverse=True
                    )

    def test_get_history_of_a_missing_row_reads_no_history(self) -> None:
        with (
            self.assertNumQueries(1, using="default"),
            self.assertNumQueries(0, using=HISTORY_ALIAS),
            self.assertRaises(self.client.DoesNotExist),
        ):
            next(self.client.get_history(self.username, self.keys[0]))


class IterationBudgetTests(TestCase):
    """iter_all_for_block / iter_all_for_course: one statement per page, never per row."""

    databases = {"default", HISTORY_ALIAS}
    PAGE = 10

    def client_with_pages(self) -> DjangoXBlockUserStateClient:
        client = DjangoXBlockUserStateClient()
        client.iteration_page_size = self.PAGE
        return client

    def iterate_counting(self, iterator: Any, statements: int) -> list[Any]:
        with CaptureQueriesContext(connections["default"]) as queries:
            found = list(iterator)
        assert len(queries) == statements
        # Every page is bounded by the page size (constant memory) and by keyset, not OFFSET.
        assert all(f"LIMIT {self.PAGE}" in q["sql"] for q in queries)
        assert not any("OFFSET" in q["sql"] for q in queries)
        return found

    def test_iter_all_for_block_grows_with_pages_not_rows(self) -> None:
        key = problem(1)
        # 25 rows: pages of 10, 10, 5 (the short page ends it): 3 statements.
        # 100 rows: ten full pages and one empty page that ends it: 11 statements.
        for rows, statements in ((25, 3), (100, 11)):
            with self.subTest(rows=rows):
                StudentModule.objects.all().delete()
                users = make_users(rows + 3, prefix=f"r{rows}_")
                store(users[:rows], [key])
                store(users[rows : rows + 1], [key], state="{}")  # deleted: skipped
                store(users[rows + 1 : rows + 2], [key], state=None)  # score only: skipped
                store(users[rows + 2 :], [problem(2)])  # another block
                found = self.iterate_counting(
                    self.client_with_pages().iter_all_for_block(key), statements
                )
                assert sorted(e.username for e in found) == sorted(u.username for u in users[:rows])
                assert {e.block_key for e in found} == {key}

    def test_iter_all_for_course_grows_with_pages_not_rows(self) -> None:
        other_course = CourseLocator("kvstate", "Other", "2026")
        keys = [problem(i) for i in range(4)] + [COURSE.make_usage_key("html", "h")]
        # 25 rows (5 blocks x 5 users): pages of 10, 10, 5: 3 statements.
        # 100 rows (5 blocks x 20 users): ten full pages and an empty one: 11 statements.
        for users_count, statements in ((5, 3), (20, 11)):
            with self.subTest(rows=5 * users_count):
                StudentModule.objects.all().delete()
                users = make_users(users_count, prefix=f"c{users_count}_")
                store(users, keys)
                store(users, [problem(9, other_course)])  # another course
                store(users[:3], [problem(8)], state="{}")  # deleted: skipped
                found = self.iterate_counting(
                    self.client_with_pages().iter_all_for_course(COURSE), statements
                )
                assert sorted((e.username, str(e.block_key)) for e in found) == sorted(
                    (u.username, str(k)) for u in users for k in keys
                )

    def test_iter_all_for_course_of_one_block_type(self) -> None:
        keys = [problem(i) for i in range(2)] + [COURSE.make_usage_key("html", "h")]
        users = make_users(25)
        store(users, keys)
        # 50 problem rows: five full pages and an empty one.
        found = self.iterate_counting(
            self.client_with_pages().iter_all_for_course(COURSE, block_type="problem"), 6
        )
        assert sorted((e.username, str(e.block_key)) for e in found) == sorted(
            (u.username, str(k)) for u in users for k in keys[:2]
        )


class BranchedKeyTests(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def test_history_and_iteration_see_rows_written_with_a_branched_key(self) -> None:
        # Rows are stored under the branchless key; every read must find them either way.
        user = UserFactory()
        client = DjangoXBlockUserStateClient(user)
        branched = CourseLocator("kvstate", "Client", "2026", branch="draft").make_usage_key(
            "problem", "p1"
        )
        with self.captureOnCommitCallbacks(using="default", execute=True):
            client.set(user.username, branched, {"a": 1})
        for key in (branched, problem(1)):
            with self.subTest(key=str(key)):
                for fresh in (client, DjangoXBlockUserStateClient()):
                    states = [e.state for e in fresh.get_history(user.username, key)]
                    assert states == [{"a": 1}]
                assert [e.state for e in client.iter_all_for_block(key)] == [{"a": 1}]


class OpenEdxEdgeCaseTests(TestCase):
    """Where Open edX's client behaves in a particular way, kvstate's does the same (SPEC §9)."""

    databases = {"default", HISTORY_ALIAS}

    def setUp(self) -> None:
        self.user = UserFactory()
        self.client = DjangoXBlockUserStateClient(self.user)

    def test_get_history_without_history_rows_raises_when_iterated(self) -> None:
        html = COURSE.make_usage_key("html", "h1")  # a type whose writes leave no history
        with self.captureOnCommitCallbacks(using="default", execute=True):
            self.client.set(self.user.username, html, {"a": 1})
        entries = self.client.get_history(self.user.username, html)  # a generator: no error yet
        # default: the module's id; history: the (empty) history.
        with (
            self.assertNumQueries(1, using="default"),
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.assertRaises(self.client.DoesNotExist),
        ):
            next(entries)

    def test_set_many_for_an_unknown_username_raises_the_user_models_does_not_exist(self) -> None:
        user_model = get_user_model()
        for states in ({problem(1): {"a": 1}}, {problem(1): {}}):
            with self.subTest(states=states), self.assertRaises(user_model.DoesNotExist) as info:
                self.client.set_many("nobody", states)
            assert "'nobody'" in str(info.exception)
        assert not StudentModule.objects.exists()

    def test_delete_many_for_an_unknown_username_does_nothing(self) -> None:
        with self.assertNumQueries(1, using="default"):  # the username lookup
            self.client.delete_many("nobody", [problem(1)])

    def test_a_client_of_an_anonymous_user_stores_and_reads_nothing(self) -> None:
        StudentModule.objects.bulk_create(  # a row of a user whose username is empty
            [StudentModule(student=UserFactory(username=""), module_state_key=problem(1))]
        )
        visitor = AnonymousUser()
        client = DjangoXBlockUserStateClient(visitor)
        name = visitor.get_username()
        # Calls about the anonymous learner's (empty) username answer without a query.
        with self.assertNumQueries(0, using="default"):
            client.set_many(name, {problem(1): {"a": 1}})
            client.set(name, problem(2), {"a": 1})
            client.delete_many(name, [problem(1)])
            assert list(client.get_many(name, [problem(1), problem(2)])) == []
            with self.assertRaises(client.DoesNotExist):
                client.get(name, problem(1))
            with self.assertRaises(client.DoesNotExist):
                next(client.get_history(name, problem(1)))
        assert StudentModule.objects.get().state is None

    def test_user_state_batch_size_is_the_iteration_page_size(self) -> None:
        users = make_users(25)
        store(users, [problem(1)])
        for setting, page in ((None, 1000), (10, 10), (7, 7)):
            overrides = {} if setting is None else {"USER_STATE_BATCH_SIZE": setting}
            with self.subTest(setting=setting), override_settings(**overrides):
                with CaptureQueriesContext(connections["default"]) as queries:
                    found = list(DjangoXBlockUserStateClient().iter_all_for_block(problem(1)))
                assert len(found) == 25
                assert all(f"LIMIT {page}" in q["sql"] for q in queries)
                assert len(queries) == 25 // page + 1
        # A client's own iteration_page_size still wins.
        client = DjangoXBlockUserStateClient()
        client.iteration_page_size = 5
        with (
            override_settings(USER_STATE_BATCH_SIZE=10),
            CaptureQueriesContext(connections["default"]) as queries,
        ):
            assert len(list(client.iter_all_for_course(COURSE))) == 25
        assert len(queries) == 6
