"""A small asyncio Kubernetes client (aiohttp) for the few calls the handlers make themselves.

Credentials come from the same `kopf.ConnectionInfo` that kopf logs in with (kubeconfig or
in-cluster service account), so the operator talks to one API server with one identity.
Writes are JSON merge patches; `Conflict` is raised on HTTP 409 so callers can re-read and retry.
"""

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

FIELD_MANAGER = "fathom-operator"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Conflict(ApiError):
    """HTTP 409: stale resourceVersion or an object that already exists."""


@dataclass(frozen=True)
class ResourceRef:
    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = "/api/v1" if self.group == "" else f"/apis/{self.group}/{self.version}"
        parts = [base]
        if namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return "/".join(parts)


MODEL_SERVICES = ResourceRef("fathom.dev", "v1alpha1", "modelservices")
TENANTS = ResourceRef("fathom.dev", "v1alpha1", "tenants")
RAY_SERVICES = ResourceRef("ray.io", "v1", "rayservices")
SERVICES = ResourceRef("", "v1", "services")
SECRETS = ResourceRef("", "v1", "secrets")
CLAIMS = ResourceRef("", "v1", "persistentvolumeclaims")
JOBS = ResourceRef("batch", "v1", "jobs")
INFERENCE_POOLS = ResourceRef("inference.networking.k8s.io", "v1", "inferencepools")
CRDS = ResourceRef("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=info.ca_path or None)
    if info.ca_data:
        data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        if "BEGIN CERTIFICATE" not in data:
            data = base64.b64decode(data).decode()
        ctx.load_verify_locations(cadata=data)
    cert, key = info.certificate_path, info.private_key_path
    with tempfile.TemporaryDirectory() as tmp:
        if info.certificate_data:
            cert = _write(tmp, "cert.pem", info.certificate_data)
        if info.private_key_data:
            key = _write(tmp, "key.pem", info.private_key_data)
        if cert:
            ctx.load_cert_chain(cert, key)
    return ctx


def _write(directory: str, name: str, data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    if b"-----BEGIN" not in raw:
        raw = base64.b64decode(raw)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(raw)
    return path


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class KubeClient:
    """GET/LIST/CREATE/PATCH/DELETE against one API server; 404 on GET is `None`.

    With `token_file` (the in-cluster service account) the token is read from the file for every
    request: the kubelet rotates bound service-account tokens (about hourly)."""

    def __init__(self, info: kopf.ConnectionInfo, token_file: str | None = None):
        self.server = info.server.rstrip("/")
        self.token_file, self.scheme = token_file, info.scheme or "Bearer"
        headers = {"User-Agent": FIELD_MANAGER}
        if info.token:
            headers["Authorization"] = f"{self.scheme} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info))
        self.session = aiohttp.ClientSession(headers=headers, auth=auth, connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=30))

    def _rotated_token(self) -> str:
        """The service-account token as the kubelet last wrote it (re-read when the file changes)."""
        mtime = os.stat(self.token_file).st_mtime_ns
        if mtime != getattr(self, "_token_mtime", None):
            with open(self.token_file, encoding="utf-8") as f:
                self._token_header = f"{self.scheme} {f.read().strip()}"
            self._token_mtime = mtime
        return self._token_header

    async def close(self) -> None:
        await self.session.close()

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                    params: dict | None = None) -> dict | None:
        kwargs: dict[str, Any] = {"params": params or {}, "headers": {}}
        if body is not None:
            kwargs["json"] = body
            kwargs["headers"]["Content-Type"] = content_type
        if self.token_file:
            kwargs["headers"]["Authorization"] = self._rotated_token()
        async with self.session.request(method, self.server + path, **kwargs) as resp:
            if resp.status == 404 and method in ("GET", "DELETE"):
                return None
            if resp.status >= 400:
                message = await resp.text()
                cls = Conflict if resp.status == 409 else ApiError
                raise cls(resp.status, f"{method} {path}: {message[:500]}")
            return await resp.json(content_type=None)

    async def get(self, ref: ResourceRef, namespace: str | None, name: str, sub: str | None = None) -> dict | None:
        return await self._call("GET", ref.path(namespace, name, sub))

    async def list(self, ref: ResourceRef, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        params = {"labelSelector": selector} if selector else None
        result = await self._call("GET", ref.path(namespace), params=params)
        return list((result or {}).get("items") or [])

    async def create(self, ref: ResourceRef, namespace: str, body: dict) -> dict:
        return await self._call("POST", ref.path(namespace), body, params={"fieldManager": FIELD_MANAGER})

    async def patch(self, ref: ResourceRef, namespace: str, name: str, body: dict, sub: str | None = None) -> dict:
        return await self._call("PATCH", ref.path(namespace, name, sub), body, "application/merge-patch+json",
                                params={"fieldManager": FIELD_MANAGER})

    async def delete(self, ref: ResourceRef, namespace: str, name: str) -> dict | None:
        return await self._call("DELETE", ref.path(namespace, name))

    async def get_crd(self, name: str) -> dict | None:
        """A CustomResourceDefinition by name, through `list` (all the chart's RBAC grants on CRDs)."""
        result = await self._call("GET", CRDS.path(), params={"fieldSelector": f"metadata.name={name}"})
        return next((c for c in (result or {}).get("items") or [] if c["metadata"]["name"] == name), None)

    async def has_resource(self, ref: ResourceRef) -> bool:
        """Whether the API server serves `ref` (e.g. KubeRay's CRDs are installed)."""
        try:
            found = await self._call("GET", ref.path().rsplit("/", 1)[0])
        except ApiError:
            return False
        return any(r.get("name") == ref.plural for r in (found or {}).get("resources") or [])
