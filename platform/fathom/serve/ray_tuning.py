"""Ray Serve's throughput settings (`fathom.api.serve.RAY_SERVE_THROUGHPUT_ENV`), on by default.

Ray reads them once, when `ray.serve` is imported in a process, so they travel in each
deployment's `runtime_env` and, for a Ray instance that `fathom serve` starts itself, in the
environment its proxy inherits. A variable already set in the environment wins. Measured on
the demo model (benchmarks/serving_overhead.py, 2 cores): gRPC between deployments takes the
ingress's CPU per request from ~10 ms to ~7 ms and the replica's from ~4 ms to ~2 ms.
"""

import os

from fathom.api.serve import RAY_SERVE_THROUGHPUT_ENV


def serve_throughput_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The settings, each overridden by the environment's value when it has one."""
    env = os.environ if environ is None else environ
    return {k: env.get(k, v) for k, v in RAY_SERVE_THROUGHPUT_ENV.items()}


def export_serve_throughput_env() -> None:
    """Put them in this process's environment (before a local Ray instance starts, so its
    proxy and every worker inherit them)."""
    for k, v in RAY_SERVE_THROUGHPUT_ENV.items():
        os.environ.setdefault(k, v)


def grpc_between_deployments() -> bool:
    """Whether handle calls from this process go over gRPC (a handle made elsewhere, e.g. in
    the driver that bound the app, keeps that process's default until told)."""
    return os.environ.get("RAY_SERVE_USE_GRPC_BY_DEFAULT") == "1"
