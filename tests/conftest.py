"""Suite-wide hooks (markers by directory, leaked threads), and the in-memory span fixtures of
the telemetry tests."""

import sys
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fathom.telemetry import configure_tracing
from support.redis_server import redis_server

pytest_plugins = ("support.ray_fixtures",)  # ray_local, ray_multinode: one of each per session

TESTS = Path(__file__).resolve().parent
DIRECTORY_MARKERS = ("unit", "integration", "operator", "helm", "gpu")
SLOW_DIRECTORIES = ("integration",)  # real Ray, subprocesses, model loads: minutes in all


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on them
def pytest_collection_modifyitems(config, items):
    """Mark each test with its directory (`-m unit`, `-m "not helm"`, ...); everything under
    integration/ is also `slow`, so `pytest -m "not slow"` is the edit-test loop."""
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue  # a test outside tests/ (given on the command line)
        if top in DIRECTORY_MARKERS:
            item.add_marker(top)
        if top in SLOW_DIRECTORIES:
            item.add_marker("slow")


def pytest_sessionfinish(session, exitstatus):
    """Name the threads still alive when the suite ends: a leaked daemon thread that holds
    tensors at interpreter exit can abort the process after every test has passed."""
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if alive:
        print(f"\nthreads alive at session end: {sorted(alive)}", file=sys.stderr)


@pytest.fixture
def redis_address(tmp_path):
    """`host:port` of a real, empty redis-server that lives as long as the test."""
    with redis_server(tmp_path) as address:
        yield address


@pytest.fixture(scope="session")
def _memory_exporter():
    """One in-memory exporter on this process's (idempotent) provider, whoever configured it."""
    exporter = InMemorySpanExporter()
    configure_tracing("test", span_processors=[SimpleSpanProcessor(exporter)])
    return exporter


@pytest.fixture
def spans(_memory_exporter):
    """The in-memory exporter, emptied before the test."""
    _memory_exporter.clear()
    yield _memory_exporter
    _memory_exporter.clear()


def _by_name(finished, name):
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in finished]}"
    return found[0]


@pytest.fixture
def by_name():
    """``by_name(finished_spans, name)``: the one span of that name (fails naming what exists)."""
    return _by_name


@pytest.fixture
def wait_spans(spans):
    """``wait_spans(*names)``: the finished spans once every named one has ended. A SERVER span
    ends just after the last byte is sent, so the client may see the response first."""

    def wait(*names: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            done = spans.get_finished_spans()
            if all(any(s.name == n for s in done) for n in names) or time.monotonic() > deadline:
                return done
            time.sleep(0.01)

    return wait
