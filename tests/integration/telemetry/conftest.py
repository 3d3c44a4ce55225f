import os
import sys
import time

import pytest
import ray
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fathom.telemetry import configure_tracing, with_tracing_env
from fathom.telemetry.receiver import OtlpReceiver

TRACING_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_BSP_SCHEDULE_DELAY",
    "FATHOM_METRICS_PUSH_INTERVAL_S",
)


@pytest.fixture(scope="session")
def receiver():
    """A loopback OTLP/HTTP receiver that every Ray process of these tests exports to."""
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def ray_cluster(receiver):
    """A local Ray for one test module (shut down after it: later modules start their own
    clusters); workers inherit the tracing env through ``with_tracing_env`` (the same path
    the app uses), not through os.environ."""
    path = os.pathsep.join(p for p in sys.path if p.endswith(("platform", "operators")))
    saved = {k: os.environ.get(k) for k in TRACING_ENV}
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="fathom-it",
        OTEL_BSP_SCHEDULE_DELAY="50",
        FATHOM_METRICS_PUSH_INTERVAL_S="0.5",
    )
    try:
        env = with_tracing_env({"env_vars": {"PYTHONPATH": path}})
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert env["env_vars"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.endpoint
    # address="local": always a private instance, even if another `ray start` cluster runs on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()


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
