"""kopf handlers: thin shims over `sync` (reconcile) and `autoscaler` (policy loop).

ModelService: create/update/resume and a resync timer run the same level-based pass; a daemon
per object runs the autoscaler. Children carry owner references, so deleting a ModelService
lets the Kubernetes garbage collector remove its RayService and Service (no finalizer needed).
Tenant: any change (and a timer, to pick up rotated Secrets) rewrites the namespace's tenants
Secret; deletion goes through a finalizer so the Secret drops the tenant before it is gone.
"""

import asyncio
import copy
import logging
from dataclasses import dataclass

import kopf

from fathom_operator import autoscaler, kube, sync
from fathom_operator.kube import KubeClient

MS = ("fathom.dev", "v1alpha1", "modelservices")
TENANT = ("fathom.dev", "v1alpha1", "tenants")


@dataclass
class Config:
    """Operator settings (CLI flags)."""

    resync_seconds: float = 30.0
    tenant_resync_seconds: float = 60.0
    metrics_url_template: str = autoscaler.DEFAULT_METRICS_URL
    allow_host_path: bool = False  # ModelServices may mount node directories (hostPath)
    metrics_key_secret: str | None = None  # NAMESPACE/NAME of the scrape key (fathom_operator.credentials)


_state: dict = {}  # "info": the ConnectionInfo kopf logged in with; "client": our KubeClient on it


def login(**kwargs) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig; the same credentials for kopf and our client.

    Kubeconfig users with exec plugins or auth providers (EKS, GKE) get their token from the
    official `kubernetes` client library when it is installed.
    """
    info = kopf.login_with_service_account(**kwargs)
    _state["token_file"] = kube.SERVICE_ACCOUNT_TOKEN if info is not None else None
    if info is None:
        info = kopf.login_with_kubeconfig(**kwargs)
        if info is not None and not (info.token or info.certificate_path or info.certificate_data or info.username):
            try:
                info = kopf.login_via_client(**kwargs) or info
            except kopf.LoginError:
                pass
    if info is not None:
        _state["info"] = info
    return info


def client() -> KubeClient:
    """The operator's API client on kopf's login credentials (one per event loop, made on first use)."""
    loop = asyncio.get_running_loop()
    if _state.get("client") is None or _state.get("loop") is not loop or _state.get("for") is not _state.get("info"):
        if "info" not in _state:
            raise kopf.TemporaryError("not logged in yet", delay=1)
        old = _state.get("client")
        if old is not None and _state.get("loop") is loop:  # re-login (new credentials): retire the old session
            loop.create_task(old.close())
        _state["client"] = KubeClient(_state["info"], token_file=_state.get("token_file"))
        _state["loop"], _state["for"] = loop, _state["info"]
    return _state["client"]


def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.finalizer = "fathom.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fathom.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="fathom.dev")
    settings.posting.level = logging.INFO
    # Timers are stopped before a deleted object's finalizer is released: check often, not every 60 s.
    settings.background.cancellation_polling = 0.5
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


async def close(**_) -> None:
    session = _state.pop("client", None)
    if session is not None and _state.pop("loop", None) is asyncio.get_running_loop():
        await session.close()


def _event(obj: dict, type_: str, reason: str, message: str) -> None:
    kopf.event(obj, type=type_, reason=reason, message=message[:1000])


def model_service_handler(config: Config):
    async def model_service_changed(body: kopf.Body, **_) -> None:
        """On change, and as the level-based resync (RayService readiness, drifted children)."""
        await sync.sync_model_service(client(), _plain(body), notify=_event, allow_host_path=config.allow_host_path,
                                      metrics_key_secret=config.metrics_key_secret)
    return model_service_changed


def autoscaler_daemon(config: Config):
    async def model_service_autoscaler(name: str, namespace: str, stopped: kopf.DaemonStopped,
                                       logger: kopf.Logger, **_) -> None:
        def notify(obj: dict, reason: str, message: str) -> None:
            _event(obj, "Normal", reason, message)

        await autoscaler.run(client(), namespace, name, stopped, notify=notify,
                             url_template=config.metrics_url_template, logger=logger,
                             allow_host_path=config.allow_host_path, metrics_key_secret=config.metrics_key_secret)
    return model_service_autoscaler


async def tenant_changed(namespace: str, **_) -> None:
    await sync.sync_tenants(client(), namespace)


async def tenant_deleted(name: str, namespace: str, **_) -> None:
    await sync.sync_tenants(client(), namespace, deleting=name)


def build_registry(config: Config | None = None) -> kopf.OperatorRegistry:
    """A registry with every handler, timers set from `config` (tests use short intervals)."""
    config = config or Config()
    reg = kopf.OperatorRegistry()
    kopf.on.login(registry=reg)(login)
    kopf.on.startup(registry=reg)(configure)
    kopf.on.cleanup(registry=reg)(close)
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(*MS, registry=reg, id="reconcile")(model_service_handler(config))
        on(*TENANT, registry=reg, id="render-tenants")(tenant_changed)
    kopf.timer(*MS, registry=reg, interval=config.resync_seconds, initial_delay=config.resync_seconds,
               id="model_service_resync")(model_service_handler(config))
    kopf.daemon(*MS, registry=reg, id="autoscaler", cancellation_timeout=5.0, cancellation_polling=0.5)(
        autoscaler_daemon(config))
    kopf.timer(*TENANT, registry=reg, interval=config.tenant_resync_seconds, id="resync",
               initial_delay=config.tenant_resync_seconds)(tenant_changed)
    kopf.on.delete(*TENANT, registry=reg, id="render-tenants-on-delete")(tenant_deleted)
    return reg


def _plain(body: kopf.Body) -> dict:
    """A plain-dict snapshot of kopf's live body (the pure functions take dicts)."""
    return copy.deepcopy(dict(body))
