"""FieldDataCache: what it prefetches and for whom, read-only and anonymous caches, asides,
required blocks, scorable locations and scopes it does not store."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.test import TestCase
from opaque_keys.edx.asides import AsideUsageKeyV1, AsideUsageKeyV2
from opaque_keys.edx.block_types import BlockTypeKeyV1
from xblock.exceptions import InvalidScopeError
from xblock.fields import BlockScope, Scope, UserScope

from kvstate import sql
from kvstate.model_data import DjangoKeyValueStore, FieldDataCache, get_score, set_score
from kvstate.models import (
    StudentModule,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.testing.factories import (
    StudentInfoFactory,
    StudentModuleFactory,
    StudentPrefsFactory,
    UserFactory,
    UserStateSummaryFactory,
)
from tests.blocks import (
    ASIDE_TYPE,
    COURSE_KEY,
    AuthoredBlock,
    ConditionalBlock,
    Key,
    NoteAside,
    ScoredBlock,
    StateBlock,
    TreeBlock,
    aside,
    block,
    key,
    no_queries,
    prefs_key,
    rebuilt,
    state_key,
    usage,
    with_note_aside,
)

DATABASES = {"default", "student_module_history"}


def row_count() -> int:
    return sum(
        model.objects.count()
        for model in (
            StudentModule,
            XModuleUserStateSummaryField,
            XModuleStudentPrefsField,
            XModuleStudentInfoField,
        )
    )


def every_field_key(block_: Any) -> dict[str, Key]:
    """Return the key of each user-scope field of ``block_`` (a StateBlock or NoteAside)."""
    return {
        name: key(block_, name)
        for name, field in block_.fields.items()
        if field.scope
        in (Scope.user_state, Scope.user_state_summary, Scope.preferences, Scope.user_info)
    }


class TestReadOnly(TestCase):
    """``read_only=True``: reads work, writes are silent no-ops that issue no statement."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        StudentModuleFactory(student=self.user, module_state_key=usage(), state='{"answer": 1}')
        StudentInfoFactory(student=self.user, field_name="nickname")
        self.block = block(usage(), self.user.pk)
        self.cache = FieldDataCache([self.block], COURSE_KEY, self.user, read_only=True)
        self.kvs = DjangoKeyValueStore(self.cache)

    def test_reads_work(self) -> None:
        with no_queries(self):
            assert self.kvs.get(key(self.block, "answer")) == 1
            assert self.kvs.get(key(self.block, "nickname")) == "old_value"

    def test_set_many_is_a_silent_no_op(self) -> None:
        keys = every_field_key(self.block)
        before = row_count()
        with no_queries(self):
            self.kvs.set_many(dict.fromkeys(keys.values(), "new"))
            self.kvs.set(keys["theme"], "new")
        assert row_count() == before
        assert self.kvs.get(keys["answer"]) == 1
        assert not self.kvs.has(keys["theme"])
        assert json.loads(StudentModule.objects.get().state) == {"answer": 1}

    def test_delete_is_a_silent_no_op(self) -> None:
        with no_queries(self):
            self.kvs.delete(key(self.block, "answer"))
            self.kvs.delete(key(self.block, "nickname"))
            # Open edX returns before looking the key up: a missing key is no error either.
            self.kvs.delete(key(self.block, "attempts"))
        assert self.kvs.get(key(self.block, "answer")) == 1
        assert json.loads(StudentModule.objects.get().state) == {"answer": 1}
        assert XModuleStudentInfoField.objects.count() == 1

    def test_invalid_keys_still_raise(self) -> None:
        bad = key(self.block, "answer")._replace(scope=Scope.settings)
        with no_queries(self), pytest.raises(InvalidScopeError):
            self.kvs.set_many({bad: 1})
        with no_queries(self), pytest.raises(InvalidScopeError):
            self.kvs.delete(bad)

    def test_descendants_cache_can_be_read_only(self) -> None:
        cache = FieldDataCache.cache_for_block_descendents(
            COURSE_KEY, self.user, self.block, read_only=True
        )
        with no_queries(self):
            cache.set_many({key(self.block, "answer"): 2})
        assert cache.get(key(self.block, "answer")) == 1


class TestAnonymousUser(TestCase):
    """An anonymous visitor's state lives in the cache only: no statement, no row."""

    databases = DATABASES

    def test_nothing_reaches_the_database(self) -> None:
        StudentModuleFactory(module_state_key=usage(), state='{"answer": "someone else"}')
        visitor = AnonymousUser()
        blocks = [block(usage(name), None) for name in ("p1", "p2")]
        with no_queries(self):
            cache = FieldDataCache(blocks[:1], COURSE_KEY, visitor)
            cache.add_blocks_to_cache(blocks[1:])
            kvs = DjangoKeyValueStore(cache)
            keys = every_field_key(blocks[0])
            assert not kvs.has(keys["answer"])
            kvs.set_many({k: f"v-{name}" for name, k in keys.items()})
            assert {name: kvs.get(k) for name, k in keys.items()} == {
                name: f"v-{name}" for name in keys
            }
            kvs.delete(keys["theme"])
            assert not kvs.has(keys["theme"])
            assert len(cache) == 3  # one user_state block, the summary and the info row
        assert row_count() == 1  # only the other learner's row
        assert not FieldDataCache(blocks, COURSE_KEY, visitor).has(keys["answer"])

    def test_values_are_still_validated(self) -> None:
        kvs = DjangoKeyValueStore(FieldDataCache([block()], COURSE_KEY, AnonymousUser()))
        with pytest.raises(ValueError, match="NaN"):
            kvs.set(state_key("answer", None), float("nan"))
        with pytest.raises(InvalidScopeError):
            kvs.set(key(block(), "answer")._replace(scope=Scope.content), 1)
        assert not kvs.has(state_key("answer", None))


class TestAsides(TestCase):
    """Asides given to the cache are prefetched: their usage keys (V1 and V2) and every field."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        self.block = block(usage(), self.user.pk)

    def store_aside_rows(self) -> None:
        u = usage()
        for key_class in (AsideUsageKeyV1, AsideUsageKeyV2):
            StudentModuleFactory(
                student=self.user,
                module_state_key=key_class(u, ASIDE_TYPE),
                state=json.dumps({"answer": key_class.__name__}),
            )
        UserStateSummaryFactory(usage_id=AsideUsageKeyV2(u, ASIDE_TYPE), field_name="votes")
        StudentPrefsFactory(
            student=self.user,
            module_type=BlockTypeKeyV1("xblock_asides.v1", ASIDE_TYPE),
            field_name="theme",
        )
        StudentInfoFactory(student=self.user, field_name="badge")

    def assert_aside_rows_cached(self, cache: FieldDataCache) -> None:
        v1, v2 = aside(self.block, v1=True), aside(self.block)
        with no_queries(self):
            assert cache.get(key(v1, "answer")) == "AsideUsageKeyV1"
            assert cache.get(key(v2, "answer")) == "AsideUsageKeyV2"
            for name in ("votes", "theme", "badge"):
                assert cache.get(key(v2, name)) == "old_value", name

    @with_note_aside
    def test_aside_types_as_strings(self) -> None:
        self.store_aside_rows()
        # One statement for the four scopes (a UNION ALL), aside keys included.
        with self.assertNumQueries(1, using="default"):
            cache = FieldDataCache([self.block], COURSE_KEY, self.user, asides=[ASIDE_TYPE])
        self.assert_aside_rows_cached(cache)

    def test_aside_instances(self) -> None:
        # An aside instance brings its own fields: no plugin lookup needed. 1: the four
        # scopes' union.
        self.store_aside_rows()
        with self.assertNumQueries(1, using="default"):
            cache = FieldDataCache([self.block], COURSE_KEY, self.user, asides=[aside(self.block)])
        self.assert_aside_rows_cached(cache)

    @with_note_aside
    def test_second_write_of_every_aside_field(self) -> None:
        # Open edX prefetched no aside field, so a second write of one (a new request, a new
        # cache) tried to insert the row again and failed (SPEC §8.5).
        the_aside = aside(self.block)
        keys = every_field_key(the_aside)
        cache = FieldDataCache([self.block], COURSE_KEY, self.user, asides=[ASIDE_TYPE])
        with self.captureOnCommitCallbacks(using="default", execute=True):
            DjangoKeyValueStore(cache).set_many(dict.fromkeys(keys.values(), "first"))

        second = rebuilt(cache, [self.block], asides=[ASIDE_TYPE])
        assert {name: second.get(k) for name, k in keys.items()} == dict.fromkeys(keys, "first")
        with self.captureOnCommitCallbacks(using="default", execute=True):
            DjangoKeyValueStore(second).set_many(dict.fromkeys(keys.values(), "second"))

        third = rebuilt(cache, [self.block], asides=[ASIDE_TYPE])
        assert {name: third.get(k) for name, k in keys.items()} == dict.fromkeys(keys, "second")

    def test_unknown_aside_type_prefetches_its_user_state(self) -> None:
        StudentModuleFactory(
            student=self.user,
            module_state_key=AsideUsageKeyV2(usage(), "not_installed"),
            state='{"x": 1}',
        )
        with self.assertLogs("kvstate.model_data", "WARNING") as logs:
            cache = FieldDataCache([self.block], COURSE_KEY, self.user, asides=["not_installed"])
        assert "not_installed" in logs.output[0]
        aside_key = state_key("x", self.user.pk, AsideUsageKeyV2(usage(), "not_installed"))
        assert cache.get(aside_key) == 1

    @with_note_aside
    def test_block_and_aside_preferences_do_not_collide(self) -> None:
        # A block whose type is the aside's type, with a preference of the same name: the
        # family tells them apart (SPEC §2).
        same_type = block(usage(), self.user.pk, block_type=ASIDE_TYPE)
        block_key = key(same_type, "theme")
        aside_key = key(aside(same_type), "theme")
        assert (block_key.block_scope_id, block_key.field_name) == (ASIDE_TYPE, "theme")
        assert (aside_key.block_scope_id, aside_key.field_name) == (ASIDE_TYPE, "theme")

        cache = FieldDataCache([same_type], COURSE_KEY, self.user, asides=[ASIDE_TYPE])
        cache.set_many({block_key: "block"})
        cache.set_many({aside_key: "aside"})

        stored = XModuleStudentPrefsField.objects.values_list("module_type", "value")
        assert sorted((str(module_type), value) for module_type, value in stored) == [
            (f"block-type-v1:xblock_asides.v1:{ASIDE_TYPE}", '"aside"'),
            (ASIDE_TYPE, '"block"'),
        ]
        fresh = rebuilt(cache, [same_type], asides=[ASIDE_TYPE])
        assert (fresh.get(block_key), fresh.get(aside_key)) == ("block", "aside")


class TestDescendants(TestCase):
    """Caching a block and its descendants, with a depth and a filter."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        # root -> (a -> (a1 -> (a11)), b)
        self.a11 = TreeBlock("a11")
        self.a1 = TreeBlock("a1", self.a11)
        self.a = TreeBlock("a", self.a1)
        self.b = TreeBlock("b")
        self.root = TreeBlock("root", self.a, self.b)
        self.all = [self.root, self.a, self.b, self.a1, self.a11]
        for tree_block in self.all:
            StudentModuleFactory(
                student=self.user,
                module_state_key=tree_block.scope_ids.usage_id,
                state=json.dumps({"answer": tree_block.scope_ids.usage_id.block_id}),
            )

    def cached(self, cache: FieldDataCache) -> set[str]:
        """Return the names of the tree blocks whose state the cache holds."""
        with no_queries(self):
            return {
                b.scope_ids.usage_id.block_id
                for b in self.all
                if cache.has(state_key("answer", self.user.pk, b.scope_ids.usage_id))
            }

    def test_all_depths(self) -> None:
        for depth, expected in [
            (None, {"root", "a", "b", "a1", "a11"}),
            (0, {"root"}),
            (1, {"root", "a", "b"}),
            (2, {"root", "a", "b", "a1"}),
        ]:
            with self.subTest(depth=depth):
                cache = FieldDataCache.cache_for_block_descendents(
                    COURSE_KEY, self.user, self.root, depth=depth
                )
                assert self.cached(cache) == expected

    def test_one_statement_for_the_whole_tree(self) -> None:
        # TreeBlocks have fields in every scope: one statement for all of them, whatever the
        # size.
        with self.assertNumQueries(1, using="default"):
            FieldDataCache.cache_for_block_descendents(COURSE_KEY, self.user, self.root)

    def test_filter_skips_a_block_but_not_its_children(self) -> None:
        cache = FieldDataCache.cache_for_block_descendents(
            COURSE_KEY, self.user, self.root, block_filter=lambda b: b is not self.a
        )
        assert self.cached(cache) == {"root", "b", "a1", "a11"}

    def test_add_block_descendents_extends_a_cache(self) -> None:
        cache = FieldDataCache([self.b], COURSE_KEY, self.user)
        cache.add_block_descendents(self.a, depth=1)
        assert self.cached(cache) == {"b", "a", "a1"}

    def test_a_block_reached_twice_is_cached_once(self) -> None:
        shared = TreeBlock("shared")
        root = TreeBlock("dag", TreeBlock("left", shared), TreeBlock("right", shared))
        with self.assertNumQueries(1, using="default"):  # the four scopes' union
            cache = FieldDataCache.cache_for_block_descendents(COURSE_KEY, self.user, root)
        assert len(cache) == 0

    def test_old_names(self) -> None:
        # Third-party code still calls the descriptor-era names, with these keywords.
        cache = FieldDataCache.cache_for_descriptor_descendents(
            COURSE_KEY,
            self.user,
            self.root,
            depth=1,
            descriptor_filter=lambda d: d is not self.b,
            asides=None,
            read_only=False,
        )
        assert self.cached(cache) == {"root", "a"}
        cache.add_descriptor_descendents(self.a1, depth=None, descriptor_filter=lambda d: True)
        assert self.cached(cache) == {"root", "a", "a1", "a11"}
        cache.add_descriptors_to_cache([self.b])
        assert self.cached(cache) == {"root", "a", "a1", "a11", "b"}


class TestLastModified(TestCase):
    """``last_modified`` is the stored row's ``modified``, or None without a value."""

    databases = DATABASES

    def test_every_scope(self) -> None:
        user = UserFactory()
        the_block = block(usage(), user.pk)
        keys = every_field_key(the_block)
        cache = FieldDataCache([the_block], COURSE_KEY, user)
        assert {name: cache.last_modified(k) for name, k in keys.items()} == dict.fromkeys(keys)

        with self.captureOnCommitCallbacks(using="default", execute=True):
            cache.set_many({k: 1 for name, k in keys.items() if name != "attempts"})

        stored = {
            "answer": StudentModule.objects.get().modified,
            "tally": XModuleUserStateSummaryField.objects.get().modified,
            "theme": XModuleStudentPrefsField.objects.get().modified,
            "nickname": XModuleStudentInfoField.objects.get().modified,
        }
        for fdc in (cache, rebuilt(cache, [the_block])):
            modified = {name: fdc.last_modified(keys[name]) for name in stored}
            assert modified == stored
            # attempts is absent, but its row (the block's user_state) was written.
            assert fdc.last_modified(keys["attempts"]) == stored["answer"]


class TestParameterLimits(TestCase):
    """Prefetching more keys than a statement may carry."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()

    def store_blocks(self, count: int) -> list[Any]:
        blocks = [block(usage(f"b{n}"), self.user.pk) for n in range(count)]
        StudentModule.objects.bulk_create(
            StudentModule(
                student=self.user,
                module_state_key=b.scope_ids.usage_id,
                course_id=COURSE_KEY,
                module_type="problem",
                state=json.dumps({"answer": n}),
            )
            for n, b in enumerate(blocks)
        )
        XModuleUserStateSummaryField.objects.bulk_create(
            XModuleUserStateSummaryField(
                usage_id=b.scope_ids.usage_id, field_name="tally", value=str(n)
            )
            for n, b in enumerate(blocks)
        )
        return blocks

    def assert_all_cached(self, cache: FieldDataCache, blocks: list[Any]) -> None:
        assert len(cache) == 2 * len(blocks)
        for n, b in enumerate(blocks):
            assert (cache.get(key(b, "answer")), cache.get(key(b, "tally"))) == (n, n)

    def test_2000_blocks_take_one_statement(self) -> None:
        # 2,000 blocks is over the 999 parameters Django assumes for SQLite; kvstate asks SQLite
        # for its real limit, so it still sends one statement for the four scopes (at most
        # 2,001 parameters for user_state, 2,001 for user_state_summary and a few for the
        # others). PostgreSQL and MariaDB allow 65,535.
        blocks = self.store_blocks(2000)
        assert sql.max_query_params(connections["default"]) > 2 * 2001 + 10
        with self.assertNumQueries(1, using="default"):
            cache = FieldDataCache(blocks, COURSE_KEY, self.user)
        self.assert_all_cached(cache, blocks)

    def test_chunks_under_a_lower_limit(self) -> None:
        blocks = self.store_blocks(25)
        # With 11 parameters a statement: user_state takes 1 per block (its id; the course is
        # matched in Python) plus the learner, so 10 blocks a select -> 3 selects of 11, 11
        # and 6 parameters (on PostgreSQL 2 each: the ids are one array); user_state_summary
        # takes 1 per block plus its one field name, 10 a select -> 11, 11, 6; preferences 3
        # (learner, block type, field name), user_info 2 (learner, field name). Selects are
        # packed in order while their parameters fit in 11: [11] [11] [6] [11] [11] [6+3+2]
        # = 6 statements, on PostgreSQL [2+2+2] [11] [11] [6+3+2] = 4.
        statements = 4 if connections["default"].vendor == "postgresql" else 6
        with (
            mock.patch("kvstate.sql.max_query_params", return_value=11),
            self.assertNumQueries(statements, using="default"),
        ):
            cache = FieldDataCache(blocks, COURSE_KEY, self.user)
        self.assert_all_cached(cache, blocks)


class TestScores(TestCase):
    """``set_score``/``get_score``: the grade columns of a block's row."""

    databases = DATABASES

    def test_score_keeps_the_state(self) -> None:
        user = UserFactory()
        assert get_score(user.pk, usage()) is None
        when = set_score(user.pk, usage(), 1.0, 4.0)
        row = get_score(user.pk, usage())
        assert row is not None
        assert (row.grade, row.max_grade, row.state, row.modified) == (1.0, 4.0, None, when)

        cache = FieldDataCache([block(usage(), user.pk)], COURSE_KEY, user)
        with self.captureOnCommitCallbacks(using="default", execute=True):
            cache.set_many({state_key("answer", user.pk): "x"})
        set_score(user.pk, usage(), 3.0, 4.0)
        row = get_score(user.pk, usage())
        assert row is not None
        assert (row.grade, json.loads(row.state)) == (3.0, {"answer": "x"})


class TestBuilding(TestCase):
    databases = DATABASES

    def test_user_is_required(self) -> None:
        with pytest.raises(TypeError, match="AnonymousUser"):
            FieldDataCache([], COURSE_KEY, None)  # type: ignore[arg-type]

    def test_no_user_fields_no_statement(self) -> None:
        user = UserFactory()
        with no_queries(self):
            FieldDataCache([block(usage(), user.pk, AuthoredBlock)], COURSE_KEY, user)
            FieldDataCache([], COURSE_KEY, user)

    def test_authored_fields_are_not_prefetched(self) -> None:
        # StateBlock's content/settings fields belong to the content store, not to kvstate.
        # 1: the union of its four kvstate scopes.
        user = UserFactory()
        with self.assertNumQueries(1, using="default") as ctx:
            FieldDataCache([block(usage(), user.pk, StateBlock)], COURSE_KEY, user)
        sql_text = " ".join(q["sql"] for q in ctx.captured_queries)
        assert "'title'" not in sql_text
        assert "'body'" not in sql_text

    def test_prefs_key_helper_matches_xblock(self) -> None:
        user = UserFactory()
        assert key(block(usage(), user.pk), "theme") == prefs_key("theme", user.pk)
        assert NoteAside.entry_point == "xblock_asides.v1"


class TestBranchedKeys(TestCase):
    """Usage keys carrying a branch or version are stored, and found, without them."""

    databases = DATABASES

    def test_branch_is_ignored(self) -> None:
        user = UserFactory()
        branched_course = COURSE_KEY.for_branch("draft-branch")
        branched = usage("p1", course=branched_course)
        StudentModuleFactory(student=user, module_state_key=usage(), state='{"answer": 1}')
        UserStateSummaryFactory(usage_id=usage(), field_name="tally")
        the_block = block(branched, user.pk)
        cache = FieldDataCache([the_block], COURSE_KEY, user)
        assert cache.get(key(the_block, "answer")) == 1
        assert cache.get(key(the_block, "tally")) == "old_value"
        with self.captureOnCommitCallbacks(using="default", execute=True):
            cache.set_many({key(the_block, "answer"): 2, key(the_block, "tally"): 3})
        assert json.loads(StudentModule.objects.get().state) == {"answer": 2}
        assert XModuleUserStateSummaryField.objects.get().value == "3"
        fresh = rebuilt(cache, [block(usage(), user.pk)])
        assert (fresh.get(key(the_block, "answer")), fresh.get(key(the_block, "tally"))) == (2, 3)


class TestRequiredBlocks(TestCase):
    """Descendants include the blocks a block requires (a conditional's sources), each once."""

    databases = DATABASES

    def setUp(self) -> None:
        self.user = UserFactory()
        uid = self.user.pk
        # The conditional's source is a problem elsewhere in the course, not one of its
        # children; the learner's answer to it decides what the conditional shows.
        self.source = block(usage("source"), uid)
        self.child = block(usage("child"), uid)
        self.conditional = block(usage("cond", "conditional"), uid, ConditionalBlock)
        self.conditional.child_blocks = [self.child]
        self.conditional.set_sources(self.source)
        for b in (self.source, self.child):
            StudentModuleFactory(
                student=self.user,
                module_state_key=b.scope_ids.usage_id,
                state=json.dumps({"answer": "done"}),
            )

    def test_a_sources_state_is_prefetched(self) -> None:
        cache = FieldDataCache.cache_for_block_descendents(COURSE_KEY, self.user, self.conditional)
        with no_queries(self):
            assert cache.get(key(self.source, "answer")) == "done"
            assert cache.get(key(self.child, "answer")) == "done"

    def test_required_blocks_count_as_one_level_down_and_are_filtered(self) -> None:
        shallow = FieldDataCache.cache_for_block_descendents(
            COURSE_KEY, self.user, self.conditional, depth=0
        )
        filtered = FieldDataCache.cache_for_block_descendents(
            COURSE_KEY, self.user, self.conditional, block_filter=lambda b: b is not self.source
        )
        with no_queries(self):
            assert not shallow.has(key(self.source, "answer"))
            assert not filtered.has(key(self.source, "answer"))
            assert filtered.has(key(self.child, "answer"))

    def test_a_source_that_is_also_a_child_is_cached_once(self) -> None:
        self.conditional.set_sources(self.child, self.source, self.child)
        seen: list[Any] = []
        FieldDataCache.cache_for_block_descendents(
            COURSE_KEY, self.user, self.conditional, block_filter=lambda b: seen.append(b) or True
        )
        assert [b.scope_ids.usage_id.block_id for b in seen] == ["cond", "child", "source"]


class TestScorableLocations(TestCase):
    """``scorable_locations``: usage keys of the cached blocks that are graded."""

    databases = DATABASES

    def test_blocks_with_a_score(self) -> None:
        user = UserFactory()
        scored = [block(usage(f"s{i}"), user.pk, ScoredBlock) for i in range(2)]
        plain = block(usage("plain"), user.pk)
        cache = FieldDataCache([scored[0], plain], COURSE_KEY, user)
        assert cache.scorable_locations == {scored[0].scope_ids.usage_id}
        cache.add_blocks_to_cache([scored[1]])
        assert cache.scorable_locations == {b.scope_ids.usage_id for b in scored}

    def test_descendants_too(self) -> None:
        user = UserFactory()
        scored = block(usage("s1"), user.pk, ScoredBlock)
        root = block(usage("cond", "conditional"), user.pk, ConditionalBlock).set_sources(scored)
        cache = FieldDataCache.cache_for_block_descendents(COURSE_KEY, user, root)
        assert cache.scorable_locations == {scored.scope_ids.usage_id}

    def test_empty_for_anonymous_users(self) -> None:
        cache = FieldDataCache([block(usage(), None, ScoredBlock)], COURSE_KEY, AnonymousUser())
        assert cache.scorable_locations == set()


class TestNonUserScopes(TestCase):
    """On ``FieldDataCache`` itself, as in Open edX, a scope kvstate does not store has no value.

    ``DjangoKeyValueStore`` still raises ``InvalidScopeError`` for them (SPEC §3).
    """

    databases = DATABASES

    def test_get_has_and_last_modified(self) -> None:
        user = UserFactory()
        cache = FieldDataCache([block(usage(), user.pk)], COURSE_KEY, user)
        kvs = DjangoKeyValueStore(cache)
        unnamed = Scope(UserScope.ONE, BlockScope.DEFINITION)
        for scope in (Scope.content, Scope.settings, Scope.children, Scope.parent, unnamed):
            k = Key(scope, user.pk, usage(), "title")
            with self.subTest(scope=str(scope)), no_queries(self):
                with pytest.raises(KeyError, match="title"):
                    cache.get(k)
                assert cache.has(k) is False
                assert cache.last_modified(k) is None
                for call in (kvs.get, kvs.has, kvs.delete):
                    with pytest.raises(InvalidScopeError):
                        call(k)
                with pytest.raises(InvalidScopeError):
                    kvs.set(k, 1)
