"""The operator's RBAC is least privilege: exactly the resources and verbs it uses, no
wildcards, nothing cluster-wide in namespaced mode but CRD discovery. (test_helm_rbac_observed
shows the grants suffice for the real operator.)"""

from support.helm_value_sets import NAMESPACED

# (apiGroup, resource) -> verbs the operator (kopf + fathom_operator) uses.
OPERATOR_RULES = {
    ("fathom.dev", "modelservices"): {"get", "list", "watch", "patch"},
    ("fathom.dev", "tenants"): {"list", "watch", "patch"},
    ("fathom.dev", "modelservices/status"): {"patch"},
    ("fathom.dev", "tenants/status"): {"patch"},
    ("ray.io", "rayservices"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("", "secrets"): {"get", "create", "patch"},
    ("", "persistentvolumeclaims"): {"get", "create", "patch"},
    ("batch", "jobs"): {"get", "create", "patch"},
    ("inference.networking.k8s.io", "inferencepools"): {"get", "create", "patch"},
    ("", "events"): {"create"},
}
DISCOVERY_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


def flatten(role: dict) -> dict:
    granted: dict = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_cluster_wide_rbac_grants_exactly_what_the_operator_uses(helm):
    objs = helm.template()
    roles = {o["metadata"]["name"]: flatten(o) for o in objs if o["kind"] == "ClusterRole"}
    assert roles == {"fathom-operator": OPERATOR_RULES, "fathom-operator-cluster": DISCOVERY_RULES}
    bindings = [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "fathom", "namespace": "fathom"}]
    assert [o["kind"] for o in objs if o["kind"] in ("Role", "RoleBinding")] == ["Role", "RoleBinding"]
    assert_metrics_key_role(objs)


def assert_metrics_key_role(objs: list[dict]) -> None:
    """The one Role beyond the reconciled objects: in the release namespace, read the scrape key's
    Secret by name and create it once (fathom_operator.credentials)."""
    (role,) = [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "fathom-operator-metrics-key"]
    assert role["metadata"]["namespace"] == "fathom"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["fathom-metrics-key"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]


def test_namespaced_rbac_is_one_role_per_watched_namespace(helm):
    objs = helm.template(NAMESPACED)
    cluster_roles = [o for o in objs if o["kind"] == "ClusterRole"]
    assert [flatten(r) for r in cluster_roles] == [DISCOVERY_RULES], "only CRD discovery stays cluster-wide"
    roles = [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "fathom-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["fathom", "research"]
    assert all(flatten(r) == OPERATOR_RULES for r in roles)
    assert_metrics_key_role(objs)
    for b in (o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "fathom-operator"):
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fathom-operator"}
        assert b["subjects"][0]["namespace"] == "fathom"


def test_operator_runs_as_its_own_service_account(helm):
    objs = helm.template({"serviceAccount": {"name": "fathom-op"}})
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "fathom-op"
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == "fathom-op"
