"""Pre-delete hook of the Fathom chart: delete the ModelServices and Tenants the release created
while the operator still runs, and wait until they are gone.

Why: the operator puts a finalizer on them (it must stop the autoscaler and re-render the
tenants Secret). Were helm to delete the operator first, nothing would remove the finalizers
and the objects, with their RayServices and GPUs, would hang in Terminating. Standard library
only, so any Python image runs it (the chart uses the operator's).

Input: FATHOM_CLEANUP, a JSON list of [plural, namespace, name]; FATHOM_CLEANUP_TIMEOUT seconds.
The API server is the in-cluster one (service account token and CA), or $KUBE_API_URL if set.
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def connection() -> tuple[str, dict, ssl.SSLContext | None]:
    if os.environ.get("KUBE_API_URL"):
        return os.environ["KUBE_API_URL"].rstrip("/"), {}, None
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    with open(f"{SA}/token") as f:
        headers = {"Authorization": f"Bearer {f.read().strip()}"}
    return f"https://{host}:{port}", headers, ssl.create_default_context(cafile=f"{SA}/ca.crt")


def call(method: str, url: str, headers: dict, context) -> int:
    """HTTP status of the request; 404 counts as done."""
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            print(f"{method} {url}: HTTP {exc.code} {exc.read()[:300]!r}", file=sys.stderr)
        return exc.code


def main() -> int:
    server, headers, context = connection()
    targets = [tuple(t) for t in json.loads(os.environ["FATHOM_CLEANUP"])]
    deadline = time.monotonic() + float(os.environ.get("FATHOM_CLEANUP_TIMEOUT", "300"))
    urls = {t: f"{server}/apis/fathom.dev/v1alpha1/namespaces/{t[1]}/{t[0]}/{t[2]}" for t in targets}
    for target, url in urls.items():
        if call("DELETE", url, headers, context) not in (200, 202, 404):
            return 1
        print(f"deleting {target[0]} {target[1]}/{target[2]}", flush=True)
    pending = set(targets)
    while pending and time.monotonic() < deadline:
        pending = {t for t in pending if call("GET", urls[t], headers, context) != 404}
        if pending:
            time.sleep(1)
    for plural, namespace, name in sorted(pending):
        print(f"{plural} {namespace}/{name} still exists: is the Fathom operator running?", file=sys.stderr)
    return 1 if pending else 0


if __name__ == "__main__":
    sys.exit(main())
