"""Cluster tests run only against their cluster; elsewhere they skip, or fail when required.

``@pytest.mark.cluster("galera")`` / ``("pg-replica")`` marks a test that needs that cluster
(started by ``scripts/cluster/<name> start``) and ``KVSTATE_TEST_DB=<name>``. Under another
KVSTATE_TEST_DB it is skipped, with the command that would run it. Under its own it runs, and
is skipped when the cluster is not up, unless ``KVSTATE_REQUIRE_CLUSTERS=1`` (CI), which turns
that into a failure: CI must never pass by skipping them. A run on one cluster deselects the
other cluster's tests (they cannot run on these settings).
"""

from __future__ import annotations

import os

import pytest

from tests.cluster import reachable

CLUSTERS = ("galera", "pg-replica")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backend = os.environ.get("KVSTATE_TEST_DB", "sqlite")
    required = os.environ.get("KVSTATE_REQUIRE_CLUSTERS") == "1"
    up: dict[str, bool] = {}
    kept, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("cluster")
        if marker is None:
            kept.append(item)
            continue
        [cluster] = marker.args
        assert cluster in CLUSTERS, f"{item.nodeid}: unknown cluster {cluster!r}"
        if backend in CLUSTERS and backend != cluster:
            deselected.append(item)
            continue
        kept.append(item)
        how = (
            f"scripts/cluster/{cluster} start && "
            f"KVSTATE_TEST_DB={cluster} python -m pytest -m cluster"
        )
        if backend != cluster:
            reason = f"needs the {cluster} cluster: {how}"
        elif not up.setdefault(cluster, reachable(cluster)):
            reason = f"the {cluster} cluster is not up: {how}"
        else:
            continue
        if required:
            raise pytest.UsageError(f"KVSTATE_REQUIRE_CLUSTERS=1, but {item.nodeid} {reason}")
        item.add_marker(pytest.mark.skip(reason=reason))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
