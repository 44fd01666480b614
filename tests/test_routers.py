"""StudentModuleHistoryRouter sends history, and only history, to its own database."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import connections, router
from django.test import SimpleTestCase, TestCase

from kvstate.conf import HISTORY_ALIAS
from kvstate.models import (
    StudentModule,
    StudentModuleHistory,
    XModuleStudentInfoField,
    XModuleStudentPrefsField,
    XModuleUserStateSummaryField,
)
from kvstate.routers import StudentModuleHistoryRouter
from kvstate.testing.factories import StudentModuleFactory, UserFactory
from tests.test_checks import without_history_alias

OTHER_MODELS = (
    StudentModule,
    XModuleUserStateSummaryField,
    XModuleStudentPrefsField,
    XModuleStudentInfoField,
    get_user_model(),
)

# (db, app_label, model_name) -> what allow_migrate answers with the history alias configured.
ALLOW_MIGRATE = {
    (HISTORY_ALIAS, "kvstate", "studentmodulehistory"): True,
    ("default", "kvstate", "studentmodulehistory"): False,
    ("other", "kvstate", "studentmodulehistory"): False,
    (HISTORY_ALIAS, "kvstate", "studentmodule"): False,
    (HISTORY_ALIAS, "kvstate", "xmodulestudentprefsfield"): False,
    (HISTORY_ALIAS, "kvstate", None): False,
    (HISTORY_ALIAS, "auth", "user"): False,
    (HISTORY_ALIAS, "contenttypes", None): False,
    ("default", "kvstate", "studentmodule"): None,
    ("default", "kvstate", "xmoduleuserstatesummaryfield"): None,
    ("default", "kvstate", None): None,
    ("default", "auth", "user"): None,
    ("other", "kvstate", "studentmodule"): None,
    ("other", "auth", "user"): None,
}


class RouterDecisionsTests(SimpleTestCase):
    def setUp(self) -> None:
        self.router = StudentModuleHistoryRouter()

    def test_history_reads_and_writes_go_to_the_history_alias(self) -> None:
        assert self.router.db_for_read(StudentModuleHistory) == HISTORY_ALIAS
        assert self.router.db_for_write(StudentModuleHistory) == HISTORY_ALIAS

    def test_other_models_are_left_to_other_routers(self) -> None:
        for model in OTHER_MODELS:
            with self.subTest(model=model.__name__):
                assert self.router.db_for_read(model) is None
                assert self.router.db_for_write(model) is None

    def test_allow_migrate_matrix(self) -> None:
        actual = {
            (db, app, model): self.router.allow_migrate(db, app, model_name=model)
            for db, app, model in ALLOW_MIGRATE
        }
        assert actual == ALLOW_MIGRATE

    def test_allow_relation_between_history_and_its_module(self) -> None:
        module = StudentModule(id=1)
        history = StudentModuleHistory(student_module_id=1)
        assert self.router.allow_relation(history, module) is True
        assert self.router.allow_relation(module, history) is True
        assert self.router.allow_relation(module, get_user_model()(id=1)) is None

    def test_without_the_history_alias_the_router_has_no_opinion(self) -> None:
        with without_history_alias():
            for model in (StudentModuleHistory, *OTHER_MODELS):
                with self.subTest(model=model.__name__):
                    assert self.router.db_for_read(model) is None
                    assert self.router.db_for_write(model) is None
            actual = {
                (db, app, model): self.router.allow_migrate(db, app, model_name=model)
                for db, app, model in ALLOW_MIGRATE
            }
            assert set(actual.values()) == {None}

    def test_without_the_history_alias_history_stays_on_default(self) -> None:
        # Through Django's router chain, as the ORM asks it.
        with without_history_alias():
            assert router.db_for_write(StudentModuleHistory) == "default"
            assert router.db_for_read(StudentModuleHistory) == "default"
            assert router.allow_migrate("default", "kvstate", model_name="studentmodulehistory")

    def test_djangos_router_chain_uses_it(self) -> None:
        assert router.db_for_write(StudentModuleHistory) == HISTORY_ALIAS
        assert router.db_for_read(StudentModuleHistory) == HISTORY_ALIAS
        assert router.db_for_write(StudentModule) == "default"
        assert StudentModuleHistory.objects.all().db == HISTORY_ALIAS
        assert StudentModule.objects.all().db == "default"


class RoutedQueriesTests(TestCase):
    databases = {"default", HISTORY_ALIAS}

    def test_history_rows_are_written_to_and_read_from_the_history_database(self) -> None:
        module = StudentModuleFactory(state='{"a": 1}')
        with (
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.assertNumQueries(0, using="default"),
        ):
            # One INSERT on the history database, nothing on default.
            StudentModuleHistory.objects.create(
                student_module_id=module.pk, created=module.modified, state=module.state
            )
        with (
            self.assertNumQueries(1, using=HISTORY_ALIAS),
            self.assertNumQueries(0, using="default"),
        ):
            # One SELECT on the history database.
            assert [h.state for h in StudentModuleHistory.objects.all()] == ['{"a": 1}']

    def test_other_rows_are_written_to_default(self) -> None:
        with self.assertNumQueries(0, using=HISTORY_ALIAS):
            StudentModuleFactory(student=UserFactory())
        assert StudentModule.objects.using("default").count() == 1
        history_tables = connections[HISTORY_ALIAS].introspection.table_names()
        assert StudentModule._meta.db_table not in history_tables
