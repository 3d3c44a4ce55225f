"""The contract with the operator: the tenants Secret it renders from Tenant objects (keys in
other Secrets) is what the ingress loads, as the mounted file or as the Secret manifest."""

import base64

import yaml

from fathom.tenancy.registry import load_registry
from fathom_operator.tenants import SECRET_KEY, render_secret

TENANTS = [
    {"apiVersion": "fathom.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a", "generation": 1},
     "spec": {"apiKeys": [{"secretKeyRef": {"name": "team-a-keys", "key": "current"}},
                          {"secretKeyRef": {"name": "team-a-keys", "key": "next"}}],
              "weight": 2, "priorityClass": 1, "limits": {"requestsPerMinute": 30}}},
    {"apiVersion": "fathom.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "broken", "generation": 1},
     "spec": {"apiKeys": [{"secretKeyRef": {"name": "missing", "key": "k"}}]}},
]
SECRETS = {"team-a-keys": {"data": {"current": base64.b64encode(b"sk-current").decode(),
                                    "next": base64.b64encode(b"sk-next").decode()}}}


def test_rendered_secret_loads_mounted_and_as_manifest(tmp_path):
    secret = render_secret("ns", TENANTS, SECRETS, now="2026-11-29T00:00:00Z").secret
    mounted = tmp_path / "mount"
    mounted.mkdir()
    (mounted / SECRET_KEY).write_bytes(base64.b64decode(secret["data"][SECRET_KEY]))
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(yaml.safe_dump(secret))
    for source in (mounted / SECRET_KEY, mounted, manifest):
        reg = load_registry(source)
        assert set(reg.tenants) == {"team-a"}  # the broken one is left out by the operator
        a = reg.tenants["team-a"]
        assert (a.weight, a.priority, a.limits.requests_per_minute) == (2.0, 1, 30)
        assert reg.authenticate("Bearer sk-current") is a and reg.authenticate("Bearer sk-next") is a
        assert reg.authenticate("Bearer sk-old") is None
    assert "sk-current" not in manifest.read_text()
