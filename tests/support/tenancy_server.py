"""A real HTTP server (uvicorn on a random port, in a thread) around the Serve app's FastAPI
surface and an in-process ModelServer on the demo model, configured with a tenants file."""

import asyncio
import socket
import threading
import time
from typing import Self

import uvicorn
import yaml

from fathom.api.serve import ServeSettings
from fathom.serve.frontend import Frontend
from fathom.serve.model_server import ModelServer
from fathom.serve.routes import build_api
from fathom.tenancy.admission import LocalTenancyClient
from fathom.tenancy.gate import TenancyGate
from fathom.tenancy.keys import KeyFile
from fathom.tenancy.registry import TenantSource, tenant_manifest

MODEL = "fathom-demo"


def write_tenants(path, tenants: dict[str, dict]) -> None:
    """tenants: name -> {"keys": [...], **spec}; written as a YAML stream of Tenant manifests."""
    docs = [tenant_manifest(name, t["keys"], **{k: v for k, v in t.items() if k != "keys"})
            for name, t in tenants.items()]
    path.write_text(yaml.safe_dump_all(docs))


def settings(tenants_file, **engine) -> ServeSettings:
    engine = {"max_model_len": 256, "max_num_seqs": 8, **engine}
    return ServeSettings(engine=engine, max_ongoing_requests=max(64, engine["max_num_seqs"]),
                         tenants=str(tenants_file) if tenants_file else None)


class HttpServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def app_for(model_server: ModelServer, s: ServeSettings, shared: bool = False):
    """The FastAPI app. `shared`: tenancy state in the cluster-wide actor (Ray must be up);
    otherwise in this process, so that tests do not see each other's usage."""
    tenancy = None if shared else TenancyGate(TenantSource(s.tenants), LocalTenancyClient(), s.model_name,
                                              s.engine.pricing, KeyFile(s.metrics_key_file))
    if tenancy is not None:
        model_server.tenancy_client = tenancy.client  # the replica meters abandoned streams here
    return build_api(Frontend(model_server, s, tenancy=tenancy))


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)
