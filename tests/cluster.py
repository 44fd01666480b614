"""What the cluster tests share: routers, node pinning, cluster control and figures.

The clusters are started by ``scripts/cluster/galera`` and ``scripts/cluster/pg-replica``; the
tests marked ``@pytest.mark.cluster("galera")`` / ``("pg-replica")`` run when KVSTATE_TEST_DB
names that cluster (see ``tests/conftest.py`` and ``tests/settings.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connection, connections

log = logging.getLogger("tests.cluster")

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "cluster"
GALERA_NODES = (1, 2, 3)

#: Client ports of each cluster, as its script uses them.
PORTS = {
    "galera": [int(os.environ.get("KVSTATE_GALERA_PORT", "13306")) + n for n in range(3)],
    "pg-replica": [int(os.environ.get("KVSTATE_PG_REPLICA_PORT", "15432")) + n for n in range(2)],
}


def reachable(cluster: str) -> bool:
    """Return whether every server of ``cluster`` accepts TCP connections."""
    for port in PORTS[cluster]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except OSError:
            return False
    return True


# Galera ------------------------------------------------------------------------------------

_pinned = threading.local()


@contextmanager
def on_node(node: int) -> Iterator[None]:
    """Send this thread's kvstate queries to Galera node ``node`` (1, 2 or 3)."""
    _pinned.node = node
    try:
        yield
    finally:
        _pinned.node = None


def node_alias(node: int, history: bool = False) -> str:
    """Return the alias of ``node``'s state (or history) database."""
    if node == 1:
        return "student_module_history" if history else "default"
    return f"node{node}_history" if history else f"node{node}"


class NodeRouter:
    """Route a pinned thread's reads and writes to its node, as an app server behind one node.

    Listed first; unpinned threads (the test itself, system checks) get no answer and fall
    through to kvstate's router.
    """

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        node = getattr(_pinned, "node", None)
        if node is None:
            return None
        from kvstate.models import StudentModuleHistory

        return node_alias(node, history=model is StudentModuleHistory)

    db_for_write = db_for_read


def galera(*args: str) -> str:
    """Run ``scripts/cluster/galera ARGS`` and return what it printed."""
    done = subprocess.run(
        [str(SCRIPTS / "galera"), *args], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def synced_read(alias: str) -> None:
    """Make ``alias``'s node apply every write committed anywhere before it reads on.

    ``wsrep_sync_wait=1`` for this session from now on (the writers keep the default, 0).
    """
    with connections[alias].cursor() as cursor:
        cursor.execute("SET SESSION wsrep_sync_wait = 1")


# PostgreSQL primary + hot standby ----------------------------------------------------------


class ReadReplicaRouter:
    """An ordinary read/write split: every read to the replica, every write to the primary."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "replica"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True


@contextmanager
def replay_paused() -> Iterator[None]:
    """Pause WAL replay on the standby: the replica lags the primary until the block ends."""
    with connections["replica"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with connections["replica"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")


def figures(test: str, **values: Any) -> None:
    """Log a test's figures at INFO under ``tests.cluster`` (the README quotes them)."""
    log.info("%s [%s] %s", test, connection.vendor, " ".join(f"{k}={v}" for k, v in values.items()))
