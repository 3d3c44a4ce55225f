import json
import os
import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from fathom.telemetry import configure_tracing, ray_runtime_env_vars, with_tracing_env
from fathom.telemetry.tracing import build_span_exporters, exporter_names

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    "env, names",
    [
        ({}, []),  # no exporter and no endpoint: tracing off, no connection errors
        (ENDPOINT, ["otlp_proto_http"]),  # an endpoint alone means OTLP, http/protobuf by default
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp,console",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http", "console"],
        ),
    ],
)
def test_exporters_follow_the_standard_env(env, names):
    assert exporter_names(env) == names


def test_exporter_classes_are_the_sdk_ones():
    env = {"OTEL_TRACES_EXPORTER": "otlp,console", **ENDPOINT}
    assert [type(e) for e in build_span_exporters(env)] == [HttpExporter, ConsoleSpanExporter]
    grpc = build_span_exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert [type(e) for e in grpc] == [GrpcExporter]


def test_bad_settings_name_the_variable():
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER.*'zipkn'"):
        build_span_exporters({"OTEL_TRACES_EXPORTER": "zipkn"})
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        exporter_names({"OTEL_TRACES_EXPORTER": "none,console"})


def test_configure_is_idempotent_per_process(spans):
    provider = configure_tracing("test")
    assert provider is not None and provider is configure_tracing("other")


def test_ray_workers_get_the_tracing_env(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc")
    monkeypatch.setenv("FATHOM_TRACE_RECORD_CONTENT", "true")
    monkeypatch.setenv("UNRELATED", "x")
    env = ray_runtime_env_vars()
    assert env["OTEL_SERVICE_NAME"] == "svc" and env["FATHOM_TRACE_RECORD_CONTENT"] == "true"
    assert "UNRELATED" not in env
    merged = with_tracing_env({"pip": [], "env_vars": {"OTEL_SERVICE_NAME": "explicit"}})
    assert merged["env_vars"]["OTEL_SERVICE_NAME"] == "explicit" and merged["pip"] == []


SCRIPT = """
import json, sys
from fathom.telemetry import configure_tracing, get_tracer, flush_tracing
provider = configure_tracing("replica")
with get_tracer().start_as_current_span("probe") as s:
    recording = s.is_recording()
flush_tracing()
print(json.dumps({"recording": recording, "installed": provider is not None,
                  "resource": dict(provider.resource.attributes) if provider else {},
                  "sampler": provider.sampler.get_description() if provider else None}), file=sys.stderr)
"""


def run_fresh(env: dict) -> tuple[dict, str]:
    """configure_tracing in a fresh process with ``env``: (its report, its stdout)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update(env, PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("platform")))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, env=full, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout


def test_fresh_process_honours_service_name_sampler_and_console():
    report, stdout = run_fresh(
        {
            "OTEL_SERVICE_NAME": "fleet-a",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
        }
    )
    assert report["resource"]["service.name"] == "fleet-a"
    assert report["resource"]["fathom.component"] == "replica"
    assert report["sampler"].startswith("TraceIdRatioBased{1.0")
    assert report["recording"] and '"name": "probe"' in stdout

    report, stdout = run_fresh({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_off"})
    assert report["resource"]["service.name"] == "fathom"
    assert not report["recording"] and '"name": "probe"' not in stdout


def test_nowhere_to_send_means_no_provider_and_no_cost():
    report, stdout = run_fresh({})  # no exporter, no endpoint
    assert not report["installed"] and not report["recording"] and stdout == ""
    report, _ = run_fresh({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert not report["installed"]
