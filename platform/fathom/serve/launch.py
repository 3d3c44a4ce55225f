"""`fathom serve`: start (or join) Ray, deploy the app, show progress, serve until SIGTERM.

Secure defaults: the API binds 127.0.0.1 unless `--host`; a local Ray instance runs without
its dashboard (and so without the job-submission API) and with every Ray socket on
127.0.0.1. The only socket of ours is the HTTP API, which parses JSON and nothing else.

Shutdown (SIGTERM or Ctrl-C): the ingress stops accepting (503 + Retry-After, /health 503),
in-flight requests get up to `graceful_shutdown_timeout_s` to finish, then Serve and Ray stop.
"""

import json
import logging
import os
import signal
import socket
import sys
import threading
import time

import ray
from ray import serve
from ray.serve.api import RunTarget

from fathom.api.serve import ServeSettings
from fathom.serve.app import APP_NAME, build_app
from fathom.serve.ray_tuning import export_serve_throughput_env
from fathom.tenancy.registry import TenantConfigError, describe_tenants
from fathom.worker.source_root import with_source_root

logger = logging.getLogger("fathom.serve")

POLL_S = 0.5
SHUTDOWN_SLACK_S = 30.0  # for Serve and Ray to stop after the grace period


def _say(msg: str) -> None:
    print(f"fathom: {msg}", flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """Why the API cannot listen on host:port (checked before starting Ray), or None."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        return f"cannot listen on {host}:{port}: {e.strerror} (choose another with --port / --host)"
    return None


def _export_source_root() -> None:
    """Make `fathom` importable in Ray's worker processes even when it is not installed (a
    source checkout): a local Ray instance inherits this process's environment."""
    os.environ["PYTHONPATH"] = with_source_root(os.environ.get("PYTHONPATH"))


def start_ray(settings: ServeSettings) -> None:
    """Join `settings.address`, or start a private local Ray instance (loopback, no dashboard)."""
    if ray.is_initialized():
        return
    if settings.address:
        _say(f"joining Ray cluster at {settings.address}")
        ray.init(address=settings.address, logging_level=logging.WARNING, log_to_driver=False)
        return
    _say("starting a local Ray instance (dashboard off, bound to 127.0.0.1)")
    _export_source_root()
    export_serve_throughput_env()  # the proxy reads them from the environment it inherits
    _private_token_file()
    ray.init(
        address="local",  # a new instance: never join another `ray start` cluster on this machine
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
        namespace=APP_NAME,
    )
    _private_token_file()  # Ray may have just written it (0644)
    # Ray >= 2.59 turns token auth on for a new local instance unless RAY_AUTH_MODE says otherwise
    # (setting the variable ourselves after `import ray` would leave this process's cached config
    # behind the GCS's); it records the mode in the environment.
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        logger.info("Ray token auth is on (token file %s, mode 0600). Ray's GCS and raylet also listen on "
                    "every interface (Ray has no option to bind them to loopback); without the token they "
                    "refuse every call.", _RAY_TOKEN_FILE)
    else:
        _say("warning: RAY_AUTH_MODE is not `token`: Ray's GCS and raylet listen on every interface "
             "without authentication; anyone who can reach this machine can run code in it")


_RAY_TOKEN_FILE = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))


def _private_token_file() -> None:
    """Ray's auth token file readable by its owner only (Ray writes it 0644)."""
    if os.path.exists(_RAY_TOKEN_FILE):
        os.chmod(_RAY_TOKEN_FILE, 0o600)


def deploy(settings: ServeSettings, show_progress: bool = True):
    """Start Serve's proxy on host:port and deploy the app; return the ingress handle once
    it is running (raises RuntimeError with Serve's message if the deployment fails)."""
    settings = _with_tenants(settings)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # our own progress lines instead
    serve.start(http_options={"host": settings.host, "port": settings.port},
                proxy_location="HeadOnly" if not settings.address else "EveryNode")
    gpus = 1.0 if settings.engine.tensor_parallel_size == 1 and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    what = settings.engine.model or "the built-in demo model"
    _say(f"loading {what} as `{settings.model_name}` (TP={settings.engine.tensor_parallel_size}, "
         f"EP={settings.engine.expert_parallel_size}, replicas={settings.num_replicas})")
    if APP_NAME in serve.status().applications:
        # Replace, not update in place: a RUNNING status could still be the old version's, and
        # its replicas (other shapes, other placement) would keep answering until they drain.
        _say(f"removing the running `{APP_NAME}` app first")
        serve.delete(APP_NAME)
    [handle] = serve.run_many([RunTarget(build_app(settings, gpus), name=APP_NAME, route_prefix="/")],
                              wait_for_applications_running=False)
    wait_running(show_progress)
    return handle


def _with_tenants(settings: ServeSettings) -> ServeSettings:
    """Validate the tenants file now (a clear error, not a failed replica), say whether the API
    is open, and make its path absolute for the replicas."""
    try:
        _say(describe_tenants(settings.tenants))
    except TenantConfigError as e:
        raise RuntimeError(str(e)) from None
    if settings.tenants is None:
        return settings
    return settings.model_copy(update={"tenants": os.path.abspath(settings.tenants)})


def wait_running(show_progress: bool) -> None:
    t0, last = time.monotonic(), ""
    while True:
        app = serve.status().applications.get(APP_NAME)
        status = app.status if app else "NOT_STARTED"
        if status == "RUNNING":
            _say(f"model ready in {time.monotonic() - t0:.1f}s")
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(_failure_message(app))
        line = _progress_line(app)
        if show_progress and line != last:
            _say(f"{line} ({time.monotonic() - t0:.0f}s)")
            last = line
        time.sleep(POLL_S)


def _progress_line(app) -> str:
    if app is None:
        return "deploying"
    parts = []
    for name, d in sorted(app.deployments.items()):
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(d.replica_states.items()))
        parts.append(f"{name}: {counts or d.status.lower()}")
    return "; ".join(parts) or "deploying"


def _failure_message(app) -> str:
    msgs = [app.message] if app.message else []
    for name, d in app.deployments.items():
        if d.message:
            msgs.append(f"{name}: {d.message}")
    return "deployment failed: " + ("\n".join(msgs) or "see the Ray logs")


def banner(settings: ServeSettings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    body = json.dumps({"model": settings.model_name, "messages": [{"role": "user", "content": "Hello!"}],
                       "max_tokens": 32})
    exposed = "" if settings.host in ("127.0.0.1", "localhost", "::1") else (
        f"note: the API listens on {settings.host}, reachable from the network; "
        "use --tenants FILE for API keys\n")
    return exposed + (
        f"serving `{settings.model_name}` at {url}/v1 (OpenAI API; readiness {url}/health/ready, "
        f"metrics {url}/metrics)\n"
        f"try:\n  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
        "Ctrl-C or SIGTERM stops the server (in-flight requests finish first)."
    )


def drain(handle, grace_s: float) -> None:
    """Stop accepting, then wait up to `grace_s` for in-flight requests."""
    deadline = time.monotonic() + grace_s
    try:
        while (left := handle.drain.remote().result(timeout_s=5)) and time.monotonic() < deadline:
            _say(f"waiting for {left} in-flight request(s)")
            time.sleep(POLL_S)
    except Exception as e:  # noqa: BLE001 - the ingress may already be gone; shut down regardless
        _say(f"drain skipped ({type(e).__name__})")


def serve_forever(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT; return the process exit status."""
    if settings.port == 0:
        settings = settings.model_copy(update={"port": free_port(settings.host)})
    elif not settings.address and (problem := port_problem(settings.host, settings.port)):
        print(f"fathom serve: error: {problem}", file=sys.stderr)
        return 1
    try:
        start_ray(settings)
        handle = deploy(settings)
    except RuntimeError as e:
        print(f"fathom serve: error: {e}", file=sys.stderr)
        _shutdown(joined=bool(settings.address))
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    print(banner(settings), flush=True)
    while not stop.wait(1.0):
        pass
    _say("shutting down: no new requests; finishing in-flight ones")
    _watchdog(settings.graceful_shutdown_timeout_s + SHUTDOWN_SLACK_S)
    drain(handle, settings.graceful_shutdown_timeout_s)
    _shutdown(joined=bool(settings.address))
    return 0


def _watchdog(seconds: float) -> None:
    """Exit hard if shutdown hangs (e.g. SIGTERM went to the whole process group and Ray's own
    processes are already gone, so calls into Ray never return)."""

    def expire() -> None:
        print("fathom: shutdown timed out; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _shutdown(joined: bool = False) -> None:
    """Stop what we started: on a cluster we joined (--address), only our app; else Serve and Ray."""
    try:
        if joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()
        _say("stopped")
