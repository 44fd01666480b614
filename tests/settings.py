"""Settings for kvstate's tests and demo: two aliases on the database chosen by KVSTATE_TEST_DB.

KVSTATE_TEST_DB = sqlite (default, no server) | postgres | mariadb, or a cluster started by
``scripts/cluster/*`` for the tests marked ``cluster`` (``python -m pytest -m cluster``):

- ``galera``: the two aliases on node 1 of the 3-node Galera cluster (KVSTATE_GALERA_PORT,
  default 13306), and ``node2``/``node3`` (+ ``_history``) on the other nodes, as test mirrors
  (same databases, other servers). ``tests.cluster.NodeRouter`` sends a thread's queries to the
  node it is pinned to.
- ``pg-replica``: the two aliases on the primary (KVSTATE_PG_REPLICA_PORT, default 15432) and
  ``replica`` on the hot standby, behind an ordinary read/write-split router listed after
  kvstate's: reads to the replica, writes to the primary.

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


def _database(name: str, port: int | None = None, mirror: str | None = None) -> dict[str, Any]:
    """Return alias settings for database ``name``; ``port``: a cluster server's (loopback)."""
    name += _suffix
    if _backend == "sqlite":
        # Files, not memory: threads in the concurrency tests need a shared database.
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(BASE_DIR / f"kvstate_{name}.sqlite3"),
            "TEST": {"NAME": str(BASE_DIR / f"test_kvstate_{name}.sqlite3")},
            "OPTIONS": {"timeout": 20},
        }

    def env(key: str, default: str) -> str:
        if port is not None:
            # A cluster server started by scripts/cluster/*: loopback, default users.
            return str(port) if key.endswith("_PORT") else default
        return os.environ.get(key, default)

    if _backend in ("postgres", "pg-replica"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": f"kvstate_{name}",
            "USER": env("KVSTATE_PG_USER", "postgres"),
            "PASSWORD": env("KVSTATE_PG_PASSWORD", ""),
            "HOST": env("KVSTATE_PG_HOST", "127.0.0.1"),
            "PORT": env("KVSTATE_PG_PORT", "5432"),
            "TEST": {"MIRROR": mirror},
        }
    if _backend in ("mariadb", "galera"):
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": f"kvstate_{name}",
            "USER": env("KVSTATE_MYSQL_USER", "root"),
            "PASSWORD": env("KVSTATE_MYSQL_PASSWORD", ""),
            "HOST": env("KVSTATE_MYSQL_HOST", "127.0.0.1"),
            "PORT": env("KVSTATE_MYSQL_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci", "MIRROR": mirror},
        }
    raise ValueError(
        f"KVSTATE_TEST_DB={_backend!r}: use sqlite, postgres, mariadb, galera or pg-replica"
    )


DATABASES = {
    "default": _database("default"),
    "student_module_history": _database("history"),
}

if _backend == "galera":
    _first = int(os.environ.get("KVSTATE_GALERA_PORT", "13306"))
    DATABASES = {
        "default": _database("default", _first),
        "student_module_history": _database("history", _first),
    }
    for _node in (2, 3):
        _port = _first + _node - 1
        DATABASES[f"node{_node}"] = _database("default", _port, mirror="default")
        DATABASES[f"node{_node}_history"] = _database(
            "history", _port, mirror="student_module_history"
        )
    # Unpinned threads (and system checks) fall through to kvstate's router.
    DATABASE_ROUTERS = ["tests.cluster.NodeRouter", *DATABASE_ROUTERS]
elif _backend == "pg-replica":
    _primary = int(os.environ.get("KVSTATE_PG_REPLICA_PORT", "15432"))
    DATABASES = {
        "default": _database("default", _primary),
        "student_module_history": _database("history", _primary),
        "replica": _database("default", _primary + 1, mirror="default"),
    }
    # kvstate's router first (SPEC §10), then the deployment's split router.
    DATABASE_ROUTERS = [*DATABASE_ROUTERS, "tests.cluster.ReadReplicaRouter"]

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
