import base64
import logging
import os
import time

import pytest
import yaml

from fathom.tenancy.keys import digest
from fathom.tenancy.registry import (
    TenantConfigError,
    TenantRegistry,
    TenantSource,
    load_registry,
    parse_manifests,
    tenant_manifest,
)
from fathom.tenancy.tenant_policy import OPEN_POLICY, Limits


def tenant_yaml(name: str, *keys: str, **spec) -> str:
    doc = {"apiVersion": "fathom.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
           "spec": {"apiKeys": [{"sha256": digest(k)} for k in keys], **spec}}
    return yaml.safe_dump(doc)


STREAM = yaml.safe_dump_all([
    tenant_manifest(
        "team-a", ["sk-a1", "sk-a2"], role="admin", models=["fathom-demo"], priorityClass=2, weight=3,
        limits={"requestsPerMinute": 60, "tokensPerMinute": 10000, "maxConcurrentRequests": 4,
                "maxTokensPerRequest": 512, "monthlyTokenBudget": 1000000},
    ),
    tenant_manifest("team-b", ["sk-b"]),
])


def test_manifest_stream_becomes_policies():
    reg = TenantRegistry.from_manifests(parse_manifests(STREAM, "t.yaml"))
    a, b = reg.tenants["team-a"], reg.tenants["team-b"]
    assert (a.role, a.models, a.priority, a.weight) == ("admin", frozenset({"fathom-demo"}), 2, 3.0)
    assert a.limits == Limits(60, 10000, 4, 512, 1000000)
    assert a.key_digests == (digest("sk-a1"), digest("sk-a2"))
    assert (b.role, b.models, b.limits, b.is_admin) == ("user", frozenset(), Limits(), False)
    assert b.allows_model("anything") and not a.allows_model("other")


def test_both_keys_of_a_rotation_authenticate():
    reg = TenantRegistry.from_manifests(parse_manifests(STREAM, "t.yaml"))
    assert reg.authenticate("Bearer sk-a1").name == "team-a"
    assert reg.authenticate("Bearer sk-a2").name == "team-a"
    assert reg.authenticate("Bearer sk-b").name == "team-b"
    assert reg.authenticate("Bearer sk-zzz") is None
    assert reg.authenticate(None) is None
    assert reg.tenants["team-a"].cache_salt != reg.tenants["team-b"].cache_salt


def test_no_tenants_is_open_mode():
    reg = TenantRegistry()
    assert reg.open and reg.authenticate(None) is OPEN_POLICY


@pytest.mark.parametrize(
    "text,needle",
    [
        (tenant_yaml("a", "k") + "---\n" + tenant_yaml("a", "k2"), "defined twice"),
        (tenant_yaml("a", "k") + "---\n" + tenant_yaml("b", "k"), "share an API key"),
        (tenant_yaml("a", "k", limits={"requestsPerMinut": 3}), "requestsPerMinut"),
        (tenant_yaml("a", "k", weight=-1), "weight"),
        (("apiVersion: fathom.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\nspec:\n  apiKeys:\n"
         "  - secretKeyRef: {name: s, key: k}\n"), "secretKeyRef"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_tenants_name_the_problem(text, needle):
    with pytest.raises(TenantConfigError, match=needle):
        TenantRegistry.from_manifests(parse_manifests(text, "t.yaml"))


def test_plaintext_key_in_file_is_not_echoed(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("apiVersion: fathom.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n"
                 "spec:\n  apiKeys:\n  - sha256: sk-plaintext-oops\n")
    with pytest.raises(TenantConfigError) as e:
        load_registry(f)
    assert "apiKeys" in str(e.value) and "sk-plaintext-oops" not in str(e.value)


def test_secret_manifest_and_mounted_secret_directory(tmp_path):
    secret = tmp_path / "secret.yaml"
    encoded = base64.b64encode(STREAM.encode()).decode()
    secret.write_text(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: fathom-tenants}}\n"
                      f"type: Opaque\ndata:\n  tenants.yaml: {encoded}\n")
    assert set(load_registry(secret).tenants) == {"team-a", "team-b"}
    mount = tmp_path / "mount"
    (mount / "..data").mkdir(parents=True)  # kubelet's hidden atomic-swap directory is skipped
    (mount / "..data" / "tenants.yaml").write_text(STREAM)
    os.symlink("..data/tenants.yaml", mount / "tenants.yaml")
    assert set(load_registry(mount).tenants) == {"team-a", "team-b"}


def test_source_reloads_on_change_and_keeps_last_good(tmp_path, caplog):
    f = tmp_path / "tenants.yaml"
    f.write_text(tenant_yaml("a", "old"))
    src = TenantSource(f, poll_s=0.0)
    assert src.current().authenticate("Bearer old").name == "a"
    f.write_text(tenant_yaml("a", "old", "new"))
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert src.current().authenticate("Bearer new").name == "a"
    with caplog.at_level(logging.ERROR):
        f.write_text("kind: Tenant\n")
        os.utime(f, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        assert src.current().authenticate("Bearer new").name == "a"
    assert "keeping the previous ones" in caplog.text


def test_open_mode_is_announced(caplog):
    with caplog.at_level(logging.WARNING):
        assert TenantSource(None).current().open
    assert "open" in caplog.text


def test_missing_file_is_open_until_it_appears(tmp_path):
    f = tmp_path / "mount" / "tenants.yaml"  # an optional Secret not created yet
    src = TenantSource(f, poll_s=0.0)
    assert src.current().open
    f.parent.mkdir()
    f.write_text(tenant_yaml("a", "k"))
    assert src.current().authenticate("Bearer k").name == "a"


def test_example_tenants_file_loads_with_its_demo_keys():
    from pathlib import Path

    reg = load_registry(Path(__file__).resolve().parents[2] / "examples" / "tenants.yaml")
    names = [reg.authenticate(f"Bearer {k}").name for k in ("sk-team-a-demo", "sk-team-b-demo", "sk-ops-demo")]
    assert names == ["team-a", "team-b", "ops"]
    assert reg.tenants["ops"].is_admin and reg.tenants["team-a"].weight == 2
