"""kmock's KubernetesEmulator plus the API-server semantics the operator relies on.

The emulator stores objects and serves list/watch/get/create/patch/delete over HTTP. A real API
server also: assigns uid, resourceVersion, generation and creationTimestamp (and a name from
`generateName`); refuses a patch
whose `metadata.resourceVersion` is stale (409); separates the status subresource from the
main resource; serves /scale as an autoscaling/v1 Scale mapped onto `.spec.replicas`; and
garbage-collects dependents through ownerReferences. Those are added here, nothing else.
"""

import asyncio
import contextlib
import datetime
import itertools
import threading
import time
import uuid

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kopf
import yaml
from kmock._internal import enums, rendering
from kmock._internal.dicts import patch_dict

from fathom.api.crd import all_crds
from fathom_operator.__main__ import parse_args, run_operator


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)
    status_subresource: set = attrs.field(factory=set, init=False)
    _rv: int = attrs.field(default=0, init=False)

    def _next_rv(self) -> str:
        self._rv = next(self._versions)
        return str(self._rv)

    def register(self, group: str, version: str, plural: str, kind: str, *, status: bool = False,
                 scale: bool = False, namespaced: bool = True) -> None:
        subresources = {s for s, on in (("status", status), ("scale", scale)) if on}
        self.resources[f"{group}/{version}/{plural}" if group else f"{version}/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, subresources=subresources,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
        if status:
            self.status_subresource.add((group, plural))

    async def __call__(self, raw_request):
        # kmock cannot parse the cluster-scoped /api/v1/namespaces; answer as an API server does
        # to an operator without cluster-wide RBAC on namespaces (kopf then trusts --namespace).
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                              "reason": "Forbidden", "code": 403,
                                              "message": "namespaces is forbidden"}, status=403)
        return await super().__call__(raw_request)

    def register_fathom(self) -> None:
        for crd in all_crds().values():
            names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
            self.register(crd["spec"]["group"], version["name"], names["plural"], names["kind"],
                          status="status" in version["subresources"], scale="scale" in version["subresources"])

    def _key(self, request: rendering.Request):
        for key in self.objects:
            resource, namespace, name = key
            if resource == request.resource and namespace == request.namespace and name == request.name:
                return key
        return None

    async def _handle(self, request: rendering.Request):
        key = None
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            if not meta.get("name") and meta.get("generateName"):  # kopf's Events
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), generation=1,
                        creationTimestamp=_now())
        elif request.resource is not None and request.action == enums.action.UPDATE and request.name:
            key = self._key(request)
            if key is not None and not self.objects[key].deleted and isinstance(request.data, dict):
                self._prepare_patch(request, self.objects[key].raw)
            elif key is not None and not self.objects[key].deleted and isinstance(request.data, list):
                self._prepare_json_patch(request, self.objects[key].raw)
        elif request.resource is not None and request.action == enums.action.DELETE and request.name:
            key = self._key(request)
        uid = self.objects[key].raw["metadata"].get("uid") if key and not self.objects[key].deleted else None
        try:
            return await super()._handle(request)
        finally:
            if uid and self.objects[key].deleted:
                await self._collect_garbage(uid)

    def _prepare_patch(self, request: rendering.Request, current: dict) -> None:
        data = request.data
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        expected = meta.pop("resourceVersion", None)
        if expected is not None and expected != current["metadata"].get("resourceVersion"):
            raise kmock.KubernetesError(status=409, reason="Conflict",
                                        message=f"the object has been modified (resourceVersion {expected} is stale)")
        has_status = (request.resource.group, request.resource.plural) in self.status_subresource
        if request.subresource == "status":
            for k in list(data):
                if k not in ("status", "metadata"):
                    del data[k]
        elif request.subresource == "scale":
            replicas = (data.get("spec") or {}).get("replicas")
            data.clear()
            data["spec"] = {"replicas": replicas}
        elif has_status:
            data.pop("status", None)
        if "spec" in data and patch_dict(current.get("spec") or {}, data["spec"] or {}) != (current.get("spec") or {}):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = self._next_rv()
        data["metadata"] = meta

    def _prepare_json_patch(self, request: rendering.Request, current: dict) -> None:
        """RFC 6902 patches: a failed `test` op is 422 (kopf relies on it), not a server error."""
        try:
            jsonpatch.apply_patch(current, request.data, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": self._next_rv()})

    async def _serve_watch(self, request: rendering.Request):
        """As kmock's, but the bus is marked in the same critical section as the snapshot is taken,
        so a write landing between the initial replay and the live stream is not lost."""
        yield b""
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion", "")
        since = int(since) if since.isdigit() else 0  # as a real server: only what changed after the list
        async with self._lock:
            marker = await bus.mark()
            objs = [o for o in self._KubernetesEmulator__get_objs(request, strict=False) if not o.deleted]
            events = [{"type": "ADDED", "object": o.raw} for o in objs
                      if int(o.raw.get("metadata", {}).get("resourceVersion") or 0) > since]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if self._KubernetesEmulator__check(request, request.resource, meta.get("namespace"), meta.get("name"),
                                                   strict=False):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _serve_list(self, request: rendering.Request):
        async with self._lock:
            version = str(self._rv)
        result = await super()._serve_list(request)
        result["metadata"] = {"resourceVersion": version}
        return result

    async def _serve_fetch(self, request: rendering.Request):
        obj = await super()._serve_fetch(request)
        return self._as_scale(obj) if request.subresource == "scale" else obj

    async def _serve_update(self, request: rendering.Request):
        obj = await super()._serve_update(request)
        return self._as_scale(obj) if request.subresource == "scale" else obj

    @staticmethod
    def _as_scale(obj: dict) -> dict:
        meta = obj["metadata"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
                "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": (obj.get("status") or {}).get("selector", "")}}

    async def _collect_garbage(self, uid: str) -> None:
        """Delete (cascading) every object with an ownerReference to `uid`, as the GC would."""
        orphans = []
        async with self._lock:
            for (resource, _, _), obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                refs = obj.raw.get("metadata", {}).get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs):
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
                    orphans.append(raw["metadata"].get("uid"))
        for child in orphans:
            if child:
                await self._collect_garbage(child)


@contextlib.asynccontextmanager
async def emulated_cluster(*, kuberay: bool = True, inference_extension: bool = False):
    """An ApiServer on a local port with the resources the operator uses registered (KubeRay's
    RayService unless `kuberay=False`, the Inference Extension's InferencePool if asked for)."""
    async with ApiServer() as api, kmock.Server(api):
        api.register_fathom()
        if kuberay:
            api.register("ray.io", "v1", "rayservices", "RayService", status=True)
        if inference_extension:
            api.register("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool", status=True)
        api.register("", "v1", "services", "Service")
        api.register("", "v1", "secrets", "Secret")
        api.register("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
        api.register("batch", "v1", "jobs", "Job")
        api.register("", "v1", "events", "Event")
        api.register("", "v1", "namespaces", "Namespace", namespaced=False)  # kopf's backbone
        api.register("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                     namespaced=False)
        yield api


def write_kubeconfig(path, url: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
    }))


@contextlib.asynccontextmanager
async def operator_running(*flags: str):
    """`python -m fathom_operator FLAGS` in a thread with its own event loop, until the block exits.

    A thread (as kopf's own KopfRunner does) keeps kopf's task accounting away from the
    emulator's server tasks, which live in the test's loop.
    """
    stop, ready = threading.Event(), threading.Event()
    settings = kopf.OperatorSettings()
    settings.queueing.exit_timeout = 0.5
    settings.queueing.idle_timeout = 1.0
    args = parse_args(["--resync-seconds", "0.5", *flags])
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run_operator(args, stop_flag=stop, ready_flag=ready, settings=settings))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test below)
            errors.append(exc)

    thread = threading.Thread(target=target, name="fathom-operator", daemon=True)
    thread.start()
    await eventually(lambda: ready.is_set() or errors, timeout=30)
    if errors:
        raise errors[0]
    try:
        yield thread
    finally:
        stop.set()
        await eventually(lambda: not thread.is_alive(), timeout=30)
    if errors:
        raise errors[0]


async def eventually(check, timeout: float = 30.0, interval: float = 0.05):
    """Poll the async or sync `check` until it returns a truthy value; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)
