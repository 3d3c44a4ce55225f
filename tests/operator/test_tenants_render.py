"""render_secret, the pure part of Tenants -> tenants Secret."""

import base64

from fathom.api.tenant import hash_api_key
from fathom_operator.tenants import read_secret_file, render_secret


def tenant(name: str, *keys: dict, generation: int = 1) -> dict:
    return {"metadata": {"name": name, "generation": generation}, "spec": {"apiKeys": list(keys)}}


def test_one_key_names_one_tenant():
    key = {"sha256": hash_api_key("sk-shared")}
    out = render_secret("ns", [tenant("b", key), tenant("a", key), tenant("c", {"sha256": "c" * 64})], {}, now="T")
    assert [t.name for t in read_secret_file(out.secret)] == ["a", "c"]
    assert out.statuses["b"]["phase"] == "Invalid"
    assert "already a key of tenant 'a'" in out.statuses["b"]["conditions"][0]["message"]


def test_secret_key_refs_are_hashed_and_statuses_are_stable():
    secrets = {"s": {"data": {"k": base64.b64encode(b"  sk-plain\n").decode()}}}
    first = render_secret("ns", [tenant("a", {"secretKeyRef": {"name": "s", "key": "k"}})], secrets, now="T1")
    assert read_secret_file(first.secret)[0].spec.digests == [hash_api_key("sk-plain")]  # trimmed, as files are
    assert b"sk-plain" not in base64.b64decode(first.secret["data"]["tenants.yaml"])
    again = render_secret("ns", [{**tenant("a", {"secretKeyRef": {"name": "s", "key": "k"}}),
                                  "status": first.statuses["a"]}], secrets, now="T2")
    assert again.statuses["a"] == first.statuses["a"] and again.secret == first.secret  # idempotent


def test_missing_key_in_secret_is_named():
    out = render_secret("ns", [tenant("a", {"secretKeyRef": {"name": "s", "key": "nope"}})],
                        {"s": {"data": {"k": "eA=="}}}, now="T")
    assert out.statuses["a"]["conditions"][0]["message"] == "spec.apiKeys[0]: Secret 's' has no key 'nope'"
