import pytest
import yaml
from pydantic import ValidationError

from fathom.api.tenant import TenantManifest, TenantSpec, hash_api_key

FILE = f"""
apiVersion: fathom.dev/v1alpha1
kind: Tenant
metadata: {{name: team-a, uid: ignored-server-field}}
spec:
  apiKeys: [{{sha256: {hash_api_key("sk-a").upper()}}}]
  models: [deepseek-v3]
  priorityClass: 1
  weight: 2
  limits: {{requestsPerMinute: 600, tokensPerMinute: 100000, monthlyTokenBudget: 1000000000}}
---
apiVersion: fathom.dev/v1alpha1
kind: Tenant
metadata: {{name: ops}}
spec:
  role: admin
  apiKeys: [{{sha256: {hash_api_key("sk-ops")}}}, {{sha256: {hash_api_key("sk-ops-2")}}}]
"""


def test_a_tenants_file_is_a_stream_of_manifests():
    tenants = [TenantManifest.model_validate(doc) for doc in yaml.safe_load_all(FILE)]
    assert [t.name for t in tenants] == ["team-a", "ops"]
    assert tenants[0].spec.digests == [hash_api_key("sk-a")]  # normalised to lowercase
    assert tenants[0].spec.limits.tokens_per_minute == 100000 and tenants[0].spec.weight == 2
    assert tenants[1].spec.role == "admin" and len(tenants[1].spec.digests) == 2
    assert tenants[0].to_wire()["apiVersion"] == "fathom.dev/v1alpha1"


def test_secret_key_ref_is_for_clusters_only():
    spec = TenantSpec.model_validate({"apiKeys": [{"secretKeyRef": {"name": "s", "key": "k"}}]})
    with pytest.raises(ValueError, match=r"tenants.yaml: apiKeys\[0\] uses secretKeyRef"):
        spec.require_digests_only("tenants.yaml")


@pytest.mark.parametrize("bad, needle", [
    ({"apiKeys": []}, "apiKeys"),
    ({"apiKeys": [{}]}, "exactly one of sha256, secretKeyRef"),
    ({"apiKeys": [{"sha256": "a" * 64, "secretKeyRef": {"name": "s", "key": "k"}}]}, "exactly one"),
    ({"apiKeys": [{"key": "sk-plaintext"}]}, "key"),
    ({"apiKeys": [{"sha256": "a" * 64}], "role": "root"}, "role"),
    ({"apiKeys": [{"sha256": "a" * 64}], "limits": {"requestsPerMinute": 0}}, "requestsPerMinute"),
])
def test_invalid_tenants_name_the_problem(bad, needle):
    with pytest.raises(ValidationError, match=needle):
        TenantSpec.model_validate(bad)


def test_manifest_kind_is_checked():
    with pytest.raises(ValidationError, match="kind"):
        TenantManifest.model_validate({"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
                                       "metadata": {"name": "x"}, "spec": {"apiKeys": [{"sha256": "a" * 64}]}})
