import os
import sys

import pytest
import ray

from fathom.telemetry import with_tracing_env
from support.otlp_receiver import OtlpReceiver

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
