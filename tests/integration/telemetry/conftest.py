import os

import pytest

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
def tracing_env(ray_local, receiver):
    """The session's local Ray, and the ``runtime_env`` under which an actor exports to the
    receiver: built by ``with_tracing_env`` from the tracing variables (the path the app uses),
    given per actor with ``.options(runtime_env=tracing_env)``."""
    saved = {k: os.environ.get(k) for k in TRACING_ENV}
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="fathom-it",
        OTEL_BSP_SCHEDULE_DELAY="50",
        FATHOM_METRICS_PUSH_INTERVAL_S="0.5",
    )
    try:
        env = with_tracing_env()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert env["env_vars"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.endpoint
    return env
