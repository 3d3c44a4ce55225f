"""`fathom serve`: start (or join) Ray, deploy the app, show progress, serve until SIGTERM or Ctrl-C.

Secure defaults: the API binds 127.0.0.1 unless `--host`; a local Ray instance runs without
its dashboard (and so without the job-submission API), with token auth (Ray >= 2.59) and with
every Ray socket on 127.0.0.1 (`_loopback_node`). The only socket of ours is the HTTP API, which parses JSON and nothing else.

What the user sees (`fathom.serve.console`): Fathom's lines only. Ray's output goes to a log
file that is kept, and named, only when something failed. `fathom.serve.preflight` has already
checked what it can without Ray; what only Ray can tell is reported here in one line each: a
shape the joined cluster cannot hold, a model replica that fails to start (its error; then
`fathom serve` exits 1), a tenants file edit that fails to reload (the old tenants stay).

Stopping (SIGTERM or Ctrl-C): while loading, at once. While serving, the ingress stops
accepting (503 + Retry-After, /health 503), in-flight requests get up to
`graceful_shutdown_timeout_s` with a count-down (a second Ctrl-C cuts it short), then Ray
stops. A local Ray instance is stopped whole (its processes end with it, so an idle stop takes
a second or two); on a joined cluster (`--address`) only our app is deleted.
"""

import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray import serve
from ray.serve.api import RunTarget

from fathom.api.serve import ServeSettings
from fathom.serve.app import APP_NAME, build_app
from fathom.serve.console import Console
from fathom.serve.preflight import shape_problem
from fathom.serve.ray_tuning import export_serve_throughput_env
from fathom.serve.status import (
    ReplicaWatch,
    TenantsWatch,
    details,
    progress_line,
    startup_failure,
    within,
)
from fathom.telemetry import progress
from fathom.tenancy.registry import TenantConfigError, describe_tenants
from fathom.worker.source_root import with_source_root

logger = logging.getLogger("fathom.serve")

POLL_S = 0.25
SHUTDOWN_SLACK_S = 15.0  # for Ray to stop after the grace period, before the watchdog exits hard
DRAIN_CALL_TIMEOUT_S = 2.0
RAY_STOP_S = 5.0  # for ray.shutdown (~1.5 s when Ray answers)
DELETE_APP_S = 60.0  # for serve.delete on a joined cluster (its replicas stop gracefully)


class StartupFailed(RuntimeError):
    """The app cannot start: the message is one line for the console, `details` (e.g. the
    replica's traceback) go to the log."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class Interrupted(Exception):
    """SIGTERM or Ctrl-C before the app was serving."""


class Stopper:
    """SIGTERM / SIGINT handler: the first one asks to stop, each further one to hurry."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, *_) -> None:
        self.signals += 1
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _export_source_root() -> None:
    """Make `fathom` importable in Ray's worker processes even when it is not installed (a
    source checkout): a local Ray instance inherits this process's environment."""
    os.environ["PYTHONPATH"] = with_source_root(os.environ.get("PYTHONPATH"))


def start_ray(settings: ServeSettings, console: Console | None = None) -> None:
    """Join `settings.address`, or start a private local Ray instance (loopback, no dashboard)."""
    console = console or Console()
    if ray.is_initialized():
        return
    if settings.address:
        console.say(f"joining Ray cluster at {settings.address}")
        ray.init(address=settings.address, logging_level=logging.ERROR, log_to_driver=False)
        return
    console.say("starting a local Ray instance (dashboard off, bound to 127.0.0.1)")
    _export_source_root()
    export_serve_throughput_env()  # the proxy reads them from the environment it inherits
    _loopback_node()
    _private_token_file()
    ray.init(
        address="local",  # a new instance: never join another `ray start` cluster on this machine
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        namespace=APP_NAME,
    )
    _private_token_file()  # Ray may have just written it (0644)
    # Ray >= 2.59 turns token auth on for a new local instance unless RAY_AUTH_MODE says otherwise
    # (setting the variable ourselves after `import ray` would leave this process's cached config
    # behind the GCS's); it records the mode in the environment.
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        console.say(f"Ray token auth on (token file {_RAY_TOKEN_FILE}, mode 0600); Ray's sockets are on 127.0.0.1 "
                    "but each Serve replica's gRPC server for calls between deployments, which Ray binds on every "
                    "interface (it requires the token)")
    else:
        console.say("warning: RAY_AUTH_MODE is not `token`: Ray takes calls without authentication, on 127.0.0.1 "
                    "and on each Serve replica's gRPC server, which Ray binds on every interface: anyone who can "
                    "reach this machine can call the model replicas")

def _loopback_node() -> None:
    """Every socket of the local Ray instance on 127.0.0.1: GCS, raylet, object manager, each
    worker's gRPC server, the dashboard agent and the runtime-env agent bind the node's IP when
    it is loopback, and `*` or the host's address otherwise. `ray.init(_node_ip_address=
    "127.0.0.1")` cannot ask for that (Ray replaces loopback with a reachable address); the
    single-machine mode Ray uses on macOS and Windows can (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0:
    the node's IP is 127.0.0.1). Read by Ray at import, so set for the processes Ray starts and
    for this one's already imported constants."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


_RAY_TOKEN_FILE = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))


def _private_token_file() -> None:
    """Ray's auth token file readable by its owner only (Ray writes it 0644)."""
    if os.path.exists(_RAY_TOKEN_FILE):
        os.chmod(_RAY_TOKEN_FILE, 0o600)


def check_cluster(settings: ServeSettings) -> None:
    """The shape against what the cluster has now that Ray is up (a joined cluster is only
    known here; a local one was checked before starting)."""
    total = ray.cluster_resources()
    where = "the cluster" if settings.address else "this machine"
    if problem := shape_problem(settings, total.get("CPU", 0.0), total.get("GPU", 0.0), where):
        raise StartupFailed(problem)


def deploy(settings: ServeSettings, show_progress: bool = True, console: Console | None = None,
           stop: Stopper | None = None):
    """Start Serve's proxy on host:port and deploy the app; return the ingress handle once it is
    running. Raises StartupFailed with the model replica's error if it cannot start, Interrupted
    if `stop` is requested meanwhile."""
    console = console or Console()
    settings = _with_tenants(settings, console)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # our own progress lines instead
    serve.start(http_options={"host": settings.host, "port": settings.port},
                proxy_location="HeadOnly" if not settings.address else "EveryNode")
    gpus = 1.0 if settings.engine.world_size == 1 and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    what = settings.engine.model or "the built-in demo model"
    console.say(f"loading {what} as `{settings.model_name}` (TP={settings.engine.tensor_parallel_size}, "
                f"DP={settings.engine.data_parallel_size}, EP={settings.engine.moe_ep_size}, replicas={settings.num_replicas})")
    if APP_NAME in serve.status().applications:
        # Replace, not update in place: a RUNNING status could still be the old version's, and
        # its replicas (other shapes, other placement) would keep answering until they drain.
        console.say(f"removing the running `{APP_NAME}` app first")
        serve.delete(APP_NAME)
    [handle] = serve.run_many([RunTarget(build_app(settings, gpus), name=APP_NAME, route_prefix="/")],
                              wait_for_applications_running=False)
    wait_running(show_progress, console, stop)
    return handle


def _with_tenants(settings: ServeSettings, console: Console) -> ServeSettings:
    """Say how requests are authenticated; make the tenants path absolute for the replicas."""
    if settings.api_key_sha256 is not None:
        console.say("API key required (--api-key): `Authorization: Bearer <key>` on every request")
        return settings
    try:
        console.say(describe_tenants(settings.tenants))
    except TenantConfigError as e:
        raise StartupFailed(str(e)) from None
    if settings.tenants is None:
        return settings
    return settings.model_copy(update={"tenants": os.path.abspath(settings.tenants)})


def wait_running(show_progress: bool, console: Console | None = None, stop: Stopper | None = None) -> None:
    console = console or Console()
    loads = progress.ProgressFile(os.environ[progress.ENV]) if os.environ.get(progress.ENV) else None
    t0, last, replicas = time.monotonic(), "", ReplicaWatch()
    while True:
        if stop is not None and stop.requested:
            raise Interrupted
        app = serve.status().applications.get(APP_NAME)
        status = app.status if app else "NOT_STARTED"
        if show_progress and loads is not None:
            console.loading(loads.read())
        if status == "RUNNING":
            console.say(f"model ready in {time.monotonic() - t0:.1f}s")
            return
        if failure := startup_failure(app):
            raise StartupFailed(failure, details(app))
        replicas.report(app, console)  # some replica failed while another runs: say so, go on
        line = progress_line(app)
        if show_progress and line != last:
            console.say(f"{line} ({time.monotonic() - t0:.0f}s)")
            last = line
        time.sleep(POLL_S)


def banner(settings: ServeSettings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    ask = "What is 47 + 38?" if settings.engine.model is None else "Hello!"  # the demo model does arithmetic
    body = json.dumps({"model": settings.model_name, "messages": [{"role": "user", "content": ask}],
                       "max_tokens": 64})
    keyed = settings.tenants is not None or settings.api_key_sha256 is not None
    exposed = "" if settings.host in ("127.0.0.1", "localhost", "::1") or keyed else (
        f"note: the API listens on {settings.host}, reachable from the network; "
        "use --api-key KEY or --tenants FILE for API keys\n")
    auth = ' -H "Authorization: Bearer $FATHOM_API_KEY"' if keyed else ""
    whose = "the key given to --api-key" if settings.api_key_sha256 else f"a tenant's key from {settings.tenants}"
    hint = f"  (first: export FATHOM_API_KEY=<{whose}>)\n" if keyed else ""
    return exposed + (
        f"serving `{settings.model_name}` at {url}/v1 (OpenAI API; readiness {url}/health/ready, "
        f"metrics {url}/metrics)\n"
        f"try:\n  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'\n{hint}"
        "Ctrl-C or SIGTERM stops the server (in-flight requests finish first)."
    )


def drain(handle, grace_s: float, console: Console | None = None, stop: Stopper | None = None) -> None:
    """Stop accepting, then wait up to `grace_s` for in-flight requests, counting down."""
    console = console or Console()
    deadline = time.monotonic() + grace_s
    waited = False
    try:
        while left := within(DRAIN_CALL_TIMEOUT_S + 1, lambda: handle.drain.remote().result(timeout_s=DRAIN_CALL_TIMEOUT_S)):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.signals > 1):
                console.status(f"stopping with {left} request(s) still in flight", final=True)
                return
            if not waited and not console.tty:  # a log gets the line once; a terminal a count-down
                console.say(f"waiting up to {remaining:.0f}s for {left} in-flight request(s) (Ctrl-C again: stop now)")
            waited = True
            console.status(f"waiting for {left} in-flight request(s): {remaining:.0f}s left (Ctrl-C again: stop now)")
            time.sleep(POLL_S)
        if waited:
            console.status("in-flight requests finished", final=True)
    except Exception as e:  # noqa: BLE001 - the ingress (or Ray) may already be gone; stop regardless
        why = "Ray is not answering: its processes were stopped too" if isinstance(e, TimeoutError) else type(e).__name__
        console.status(f"drain skipped ({why})", final=True)


def serve_forever(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT; return the process exit status (0; 1 if the app could not start;
    130 if stopped before it was serving)."""
    console, stop = Console(), Stopper()
    stop.install()
    if settings.port == 0:
        settings = settings.model_copy(update={"port": free_port(settings.host)})
    work = Path(tempfile.mkdtemp(prefix="fathom-serve-"))
    console.quiet(str(work / "ray-output.log"))
    if not settings.address:
        os.environ[progress.ENV] = str(work / "load-progress.jsonl")  # inherited by the local Ray instance
    code = _run(settings, console, stop)
    _watchdog(SHUTDOWN_SLACK_S, console)
    _shutdown(joined=bool(settings.address), console=console)
    console.restore()
    if code in (0, 130):
        _remove(work)
    else:
        console.say(f"the full error and Ray's output: {work / 'ray-output.log'}")
    return code


def _run(settings: ServeSettings, console: Console, stop: Stopper) -> int:
    try:
        start_ray(settings, console)
        stop.install()  # again: ray.init installs its own SIGTERM handler
        if stop.requested:
            raise Interrupted
        check_cluster(settings)
        handle = deploy(settings, console=console, stop=stop)
    except StartupFailed as e:
        console.error(str(e))
        if e.details:
            print(f"fathom serve: {e}\n{e.details}", file=sys.stderr, flush=True)  # fd 2: the log
        return 1
    except Interrupted:
        console.say("interrupted before the model was ready; stopping")
        return 130
    console.print(banner(settings))
    watch, replicas, beat = TenantsWatch(settings.tenants), ReplicaWatch(), 0
    while not stop.event.wait(1.0):
        watch.check(console)
        beat += 1
        if beat % 5 == 0:
            replicas.check(console)
    console.say("shutting down: no new requests; in-flight ones may finish")
    _watchdog(settings.graceful_shutdown_timeout_s + SHUTDOWN_SLACK_S, console)
    drain(handle, settings.graceful_shutdown_timeout_s, console, stop)
    return 0


def _watchdog(seconds: float, console: Console) -> None:
    """Exit hard if stopping hangs (e.g. SIGTERM went to the whole process group and Ray's own
    processes are already gone, so calls into Ray never return)."""

    def expire() -> None:
        console.error("Ray did not stop in time; exiting")
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _shutdown(joined: bool = False, console: Console | None = None) -> None:
    """Stop what we started: on a cluster we joined (--address), only our app; else the whole
    local instance (Serve's controller, replicas and rank workers go with it)."""
    console = console or Console()
    if not ray.is_initialized():
        return
    try:
        if joined:
            within(DELETE_APP_S, lambda: serve.delete(APP_NAME))
    finally:
        try:
            within(RAY_STOP_S, ray.shutdown)
        except TimeoutError:
            pass  # Ray's processes are gone already (they were signalled with us)
        console.say("stopped")


def _remove(work: Path) -> None:
    for f in work.iterdir():
        f.unlink(missing_ok=True)
    work.rmdir()
