"""What `fathom serve` reads of the running app and reports on its console: Serve's status as
one progress line, a replica's error as one line (`replica_error`), start-up failures, replica
failures that Serve retries, and edits of the tenants file; `within` bounds a call into Ray
(whose processes may be gone)."""

import re
import threading
from pathlib import Path

from ray import serve

from fathom.serve.app import APP_NAME
from fathom.serve.console import Console
from fathom.tenancy.registry import TenantConfigError, load_registry

STATUS_CALL_S = 3.0
_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt)\w*): (.+)$")


def progress_line(app) -> str:
    if app is None:
        return "deploying"
    parts = []
    for name, d in sorted(app.deployments.items()):
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(d.replica_states.items()))
        parts.append(f"{name}: {counts or d.status.lower()}")
    return "; ".join(parts) or "deploying"


def startup_failure(app) -> str | None:
    """One line when the app cannot start: a deployment failed, or a replica of one failed to
    start while none of its replicas runs (Serve would retry; an error in loading a model is
    not one that goes away, so we stop at the first)."""
    if app is None:
        return None
    for name, d in sorted(app.deployments.items()):
        running = d.replica_states.get("RUNNING", 0)
        failed = d.status in ("DEPLOY_FAILED", "UNHEALTHY") or "failed to start" in (d.message or "")
        if failed and not running:
            what = "a model replica" if name == "model" else f"the {name} deployment"
            return f"{what} failed to start: {replica_error(d.message or app.message or 'see the Ray logs')}"
    if app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return f"deployment failed: {replica_error(app.message or 'see the Ray logs')}"
    return None


class ReplicaWatch:
    """Reports, once each, what Serve says about a deployment that is not simply fine: a replica
    failure that Serve retries (another replica still runs, or the app is already serving) as
    an error line, and anything else (e.g. replicas waiting for resources) as a note."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def report(self, app, console: Console) -> None:
        for name, d in sorted((app.deployments if app else {}).items()):
            message = d.message or ""
            failed = "fail" in message.lower() or d.status in ("UNHEALTHY", "DEPLOY_FAILED")
            if not message and not failed:
                continue
            line = replica_error(message or d.status) if failed else " ".join(message.split())
            if line in self.seen:
                continue
            self.seen.add(line)
            if failed:
                running = d.replica_states.get("RUNNING", 0)
                console.error(f"a {name} replica failed ({running} running; Ray Serve retries it): {line}")
            else:
                console.say(f"{name}: {line}")

    def check(self, console: Console) -> None:
        """While serving: the app's status, bounded in time (Ray may be going away)."""
        try:
            app = within(STATUS_CALL_S, lambda: serve.status().applications.get(APP_NAME))
        except Exception:  # noqa: BLE001 - a status we cannot read is not worth a line
            return
        self.report(app, console)


def details(app) -> str:
    return "\n\n".join(f"{name}: {d.message}" for name, d in sorted(app.deployments.items()) if d.message)


def replica_error(message: str) -> str:
    """The exception at the end of Serve's message (`Type: text`, module path dropped), or the
    message's first line."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", message).splitlines() if ln.strip()]
    for line in reversed(lines):
        if m := _EXC_LINE.match(line):
            return f"{m.group(1)}: {m.group(2)}"
    return lines[0] if lines else message


class TenantsWatch:
    """Reports on the console whether an edited tenants file reloads (the ingress replicas
    reload it themselves; a broken edit keeps the previous tenants there)."""

    def __init__(self, path: str | None):
        self.path = path
        self.signature = self._signature()

    def _signature(self) -> tuple:
        if self.path is None:
            return ()
        p = Path(self.path)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        try:
            return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except OSError:
            return ("missing",)

    def check(self, console: Console) -> None:
        sig = self._signature()
        if sig == self.signature:
            return
        self.signature = sig
        try:
            registry = load_registry(self.path)
        except (TenantConfigError, OSError) as e:
            console.error(f"tenants file not reloaded, the previous tenants stay in force: {e}")
            return
        console.say(f"tenants reloaded from {self.path}: {len(registry.tenants)} tenant(s)")


def within(seconds: float, call):
    """call() on a helper thread; TimeoutError if it has not returned within `seconds` (a call
    into Ray whose processes are gone, e.g. SIGTERM sent to the whole process group, would
    never return)."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, call()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result.append((False, e))

    thread = threading.Thread(target=run, name="fathom-bounded-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if not result:
        raise TimeoutError(f"no answer within {seconds:.0f}s")
    ok, value = result[0]
    if not ok:
        raise value
    return value
