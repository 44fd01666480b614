"""Settings of kvstate's workbench: SQLite, history on its own database, anonymous state in a cache.

Used by ``./demo`` and ``./demo serve`` (``DJANGO_SETTINGS_MODULE=demo_site.settings``). The
databases are two SQLite files under ``demo_site/db/`` (``KVSTATE_DEMO_DB_DIR`` moves them).
"""

from __future__ import annotations

import os
from pathlib import Path

from demo_site.static import xblock_sdk_static_dir

BASE_DIR = Path(__file__).resolve().parent
DB_DIR = Path(os.environ.get("KVSTATE_DEMO_DB_DIR", BASE_DIR / "db"))
DB_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "kvstate-workbench-not-secret"  # a local demo, never deployed
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
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
    "demo_site",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "demo_site.urls"
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
# xblock-sdk's jQuery and XBlock JavaScript runtime, served as workbench/...
STATICFILES_DIRS = [xblock_sdk_static_dir()]
LOGIN_URL = "/admin/login/"

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB_DIR / "workbench.sqlite3"},
    "student_module_history": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DB_DIR / "workbench_history.sqlite3",
    },
}
DATABASE_ROUTERS = ["kvstate.routers.StudentModuleHistoryRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Anonymous visitors' state across requests: one process (runserver), so memory will do.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "TIMEOUT": 14 * 24 * 3600,  # as long as a session lives
    }
}
KVSTATE_ANONYMOUS_CACHE = "default"
# The workbench shows history for every block type (Open edX keeps it for problems only).
KVSTATE_HISTORY_BLOCK_TYPES = "__all__"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"kvstate": {"handlers": ["console"], "level": "WARNING"}},
}
