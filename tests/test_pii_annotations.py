"""PII annotations (Open edX's OEP-30 convention) on each model, true to what kvstate does."""

from __future__ import annotations

import re

from django.apps import apps
from django.test import SimpleTestCase

from kvstate import operations

#: The choices edx-platform's ``.pii_annotations.yml`` allows.
PII_TYPES = {
    "id",
    "name",
    "username",
    "password",
    "location",
    "phone_number",
    "email_address",
    "birth_date",
    "ip",
    "external_service",
    "biography",
    "gender",
    "sex",
    "image",
    "video",
    "other",
}
RETIREMENT = {"retained", "local_api", "consumer_api", "third_party"}
ANNOTATION = re.compile(r"^\s*\.\. (no_pii|pii|pii_types|pii_retirement):(.*)$", re.MULTILINE)


def annotations(model: type) -> dict[str, str]:
    return {token: data.strip() for token, data in ANNOTATION.findall(model.__doc__ or "")}


class PiiAnnotationTests(SimpleTestCase):
    def test_every_model_carries_the_annotations(self) -> None:
        models = list(apps.get_app_config("kvstate").get_models())
        assert len(models) == 5
        for model in models:
            found = annotations(model)
            with self.subTest(model.__name__):
                assert "PII:" not in (model.__doc__ or "")  # the old ad-hoc notes are gone
                if "no_pii" in found:
                    assert set(found) == {"no_pii"}
                    continue
                assert set(found) == {"pii", "pii_types", "pii_retirement"}
                assert found["pii"]
                assert {t.strip() for t in found["pii_types"].split(",")} <= PII_TYPES
                assert found["pii_retirement"] in RETIREMENT

    def test_what_is_retired_is_what_erase_user_deletes(self) -> None:
        # local_api: retired by a call in this platform, kvstate.operations.erase_user.
        retired = {
            model._meta.db_table
            for model in apps.get_app_config("kvstate").get_models()
            if annotations(model).get("pii_retirement") == "local_api"
        }
        shared = {
            model._meta.db_table
            for model in apps.get_app_config("kvstate").get_models()
            if "no_pii" in annotations(model)
        }
        assert retired | shared == set(operations.TABLES)
        assert shared == {operations.SUMMARY}
        for model in apps.get_app_config("kvstate").get_models():
            if model._meta.db_table in retired:
                assert "erase_user" in (model.__doc__ or "")
