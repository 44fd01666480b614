"""Settings for kvstate's tests and demo: two aliases on the database chosen by KVSTATE_TEST_DB.

KVSTATE_TEST_DB = sqlite (default, no server) | postgres | mariadb.
Server coordinates come from KVSTATE_PG_* / KVSTATE_MYSQL_* (defaults: this machine's servers).
"""

import os
import uuid
from pathlib import Path
from typing import Any

from demo_site.static import xblock_sdk_static_dir

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "kvstate-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "kvstate",
    # The workbench (outside the kvstate package): its pages run in the browser tests.
    "demo_site",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
STATIC_URL = "/static/"
STATICFILES_DIRS = [xblock_sdk_static_dir()]
DATABASE_ROUTERS = ["kvstate.routers.StudentModuleHistoryRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_backend = os.environ.get("KVSTATE_TEST_DB", "sqlite")
# Lets several runs share one database server (or one checkout) without trampling each other.
_suffix = os.environ.get("KVSTATE_TEST_DB_SUFFIX", "")


def _database(name: str) -> dict[str, Any]:
    name += _suffix
    if _backend == "sqlite":
        # Files, not memory: threads in the concurrency tests need a shared database.
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(BASE_DIR / f"kvstate_{name}.sqlite3"),
            "TEST": {"NAME": str(BASE_DIR / f"test_kvstate_{name}.sqlite3")},
            "OPTIONS": {"timeout": 20},
        }
    if _backend == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": f"kvstate_{name}",
            "USER": os.environ.get("KVSTATE_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("KVSTATE_PG_PASSWORD", ""),
            "HOST": os.environ.get("KVSTATE_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("KVSTATE_PG_PORT", "5432"),
        }
    if _backend == "mariadb":
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": f"kvstate_{name}",
            "USER": os.environ.get("KVSTATE_MYSQL_USER", "root"),
            "PASSWORD": os.environ.get("KVSTATE_MYSQL_PASSWORD", ""),
            "HOST": os.environ.get("KVSTATE_MYSQL_HOST", "127.0.0.1"),
            "PORT": os.environ.get("KVSTATE_MYSQL_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci"},
        }
    raise ValueError(f"KVSTATE_TEST_DB={_backend!r}: use sqlite, postgres or mariadb")


DATABASES = {
    "default": _database("default"),
    "student_module_history": _database("history"),
}

# Redis (Django's RedisCache) backs the cache-store tests; every run gets its own key prefix
# and deletes its keys, so runs sharing one server never see each other's entries.
REDIS_URL = os.environ.get("KVSTATE_REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "redis": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"kvstate-test{_suffix}-{uuid.uuid4().hex[:12]}",
        "TIMEOUT": 600,
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"kvstate": {"handlers": ["console"], "level": "WARNING"}},
}
