"""The suite's Ray: one local instance and one two-node cluster per session, not one per module.

A pytest plugin (tests/conftest.py loads it). Tests ask for a module-scoped fixture:

- ``ray_local``: the local Ray instance that ``fathom serve`` starts (``start_ray``: a private
  instance with Ray's token auth and no dashboard, the Serve throughput settings in its
  environment). The driver's namespace is the app's (``fathom``); tests name the
  namespace of their named actors, and per-process settings (the telemetry tests' OTLP
  endpoint) go in the actor's or deployment's ``runtime_env``, never in the instance's.
- ``ray_multinode``: a ``ray.cluster_utils.Cluster`` of two nodes with 2 CPUs each, for the
  tests that place ranks or replicas across nodes; started with token auth like the local one.

A driver holds one connection, so the session connects to one at a time: the collection hook
below runs the modules that use the local instance, then those that use the cluster, after
all others, so each is started once (asking for them in another order still works, with a
restart). After each module Serve is shut down, and the app's detached actors (tenancy state,
metrics hub) and its key-value checkpoints are removed, so the next module starts clean.

Tests that run `fathom serve` or the README's snippet as a subprocess (test_cli_serve,
test_tenancy_cli, test_readme_offline) start their own Ray in that process: starting it is
what they test.
"""

import os
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parents[1])
APP_NAMESPACE = "fathom"  # fathom.serve.app.APP_NAME: the driver's, the tenancy actor's, the hub's
CLUSTER_NODES, CPUS_PER_NODE = 2, 2
LOCAL, MULTINODE = "ray_local", "ray_multinode"
STARTED: list[str] = []  # what this session started, for the terminal summary


def _tests_on_pythonpath() -> None:
    """Ray's worker processes inherit the driver's environment: let them import `support.*`."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != TESTS]
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, *paths])


class SessionRay:
    """Starts each Ray at most once (in the order the hook gives) and connects the driver."""

    def __init__(self) -> None:
        self.connected: str | None = None
        self.cluster = None

    def local(self) -> None:
        if self.connected == LOCAL:
            return
        self._disconnect()
        from fathom.api.serve import ServeSettings
        from fathom.serve.launch import start_ray

        _tests_on_pythonpath()
        start_ray(ServeSettings())  # exports the source root and the Serve settings first
        self.connected = LOCAL
        STARTED.append("a local instance")

    def multinode(self):
        import ray

        if self.connected == MULTINODE:
            return self.cluster
        self._disconnect()
        if self.cluster is None:
            self.cluster = self._start_cluster()
        ray.init(address=self.cluster.address)
        self.connected = MULTINODE
        return self.cluster

    def _start_cluster(self):
        from ray._private.authentication.authentication_token_setup import (
            enable_token_auth_by_default,
            ensure_token_if_auth_enabled,
        )
        from ray.cluster_utils import Cluster

        from fathom.serve.launch import _export_source_root

        _tests_on_pythonpath()
        _export_source_root()  # the cluster's processes inherit it: workers import this checkout
        # What ray.init() does for a new local instance, which Cluster() does not: token auth on
        # (unless RAY_AUTH_MODE says otherwise), a token generated if there is none.
        enable_token_auth_by_default()
        ensure_token_if_auth_enabled(create_token_if_missing=True)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": CPUS_PER_NODE, "include_dashboard": False})
        for _ in range(CLUSTER_NODES - 1):
            c.add_node(num_cpus=CPUS_PER_NODE)
        c.wait_for_nodes()
        STARTED.append(f"a {CLUSTER_NODES}-node cluster")
        return c

    def clean(self) -> None:
        """Leave the connected Ray as a fresh one would be for the next module."""
        import ray
        from ray import serve
        from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_list

        if not ray.is_initialized():
            return
        serve.shutdown()
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == APP_NAMESPACE:
                try:
                    ray.kill(ray.get_actor(actor["name"], namespace=APP_NAMESPACE))
                except ValueError:
                    pass  # already gone
        for key in _internal_kv_list("", namespace=APP_NAMESPACE):
            _internal_kv_del(key, namespace=APP_NAMESPACE)

    def _disconnect(self) -> None:
        """Shut the local instance down, or leave the cluster (it runs on for later modules)."""
        import ray

        if ray.is_initialized():
            self.clean()
            ray.shutdown()
        self.connected = None

    def close(self) -> None:
        self._disconnect()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None


@pytest.fixture(scope="session")
def session_ray():
    rays = SessionRay()
    yield rays
    rays.close()


@pytest.fixture(scope="module")
def ray_local(session_ray):
    """The session's local Ray instance, connected; cleaned (Serve, app actors) after the module."""
    session_ray.local()
    yield
    session_ray.clean()


@pytest.fixture(scope="module")
def ray_multinode(session_ray):
    """The session's two-node cluster (``ray.cluster_utils.Cluster``), connected; cleaned after
    the module."""
    cluster = session_ray.multinode()
    yield cluster
    session_ray.clean()


def _ray_group(item) -> int:
    names = getattr(item, "fixturenames", ())
    return 2 if MULTINODE in names else 1 if LOCAL in names else 0


def pytest_collection_modifyitems(config, items):
    """Run modules without Ray first, then those on the local instance, then those on the
    cluster, each module kept whole: each Ray starts once. Order within a group is unchanged."""
    group: dict[Path, int] = {}
    for item in items:
        group[item.path] = max(group.get(item.path, 0), _ray_group(item))
    items.sort(key=lambda item: group[item.path])  # stable


def pytest_terminal_summary(terminalreporter):
    if STARTED:
        terminalreporter.write_line(f"Ray started by the test session: {', '.join(STARTED)}")
