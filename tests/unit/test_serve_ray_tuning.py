"""Ray Serve's throughput settings reach every process of the app, and the environment wins."""

from fathom.api.serve import RAY_SERVE_THROUGHPUT_ENV, ServeSettings
from fathom.serve.app import build_app
from fathom.serve.ray_tuning import serve_throughput_env


def test_the_environment_overrides_each_setting():
    assert serve_throughput_env({}) == RAY_SERVE_THROUGHPUT_ENV
    env = serve_throughput_env({"RAY_SERVE_USE_GRPC_BY_DEFAULT": "0", "UNRELATED": "x"})
    assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "0" and "UNRELATED" not in env
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in env  # it would open ports beside --host:--port


def test_both_deployments_carry_them(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_FREEZE_GC_ON_STARTUP", "0")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc")  # the tracing variables still travel too
    ingress = build_app(ServeSettings())._bound_deployment
    model = ingress.init_args[0]._bound_deployment
    for deployment in (ingress, model):
        env = deployment.ray_actor_options["runtime_env"]["env_vars"]
        assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1" and env["RAY_SERVE_FREEZE_GC_ON_STARTUP"] == "0"
        assert env["OTEL_SERVICE_NAME"] == "svc"
