"""values.schema.json refuses bad values at install time, with a message naming the value;
and the defaults, documentation and schema agree."""

import json
import runpy

import jsonschema
import pytest
import yaml

from support.helm_support import CHART, ROOT
from support.helm_value_sets import BAD_VALUES


@pytest.fixture(params=["helm", "helm3"])
def any_helm(request):
    """helm 4, then helm 3 (most users still run it): the schema must refuse the same values."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("values,words", BAD_VALUES, ids=[str(i) for i in range(len(BAD_VALUES))])
def test_bad_values_are_refused_with_a_message_naming_them(any_helm, values, words):
    err = any_helm.template_error(values)
    assert "values don't meet the specifications of the schema" in err, err
    for word in words:
        assert word in err, f"the error does not name {word!r}:\n{err}"


def test_lint_reports_bad_values_too(helm):
    out = helm.lint({"operator": {"replicas": 3}})
    assert out.returncode != 0 and "replicas" in out.stdout + out.stderr


def load_defaults() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_defaults_and_examples_satisfy_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(load_defaults(), schema)


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    """Dotted keys documented one by one: maps that are values themselves (labels...) are leaves."""
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith(
                ("resources", "Probe", "securityContext", "SecurityContext", "exporters", "selector",
                 "operatorPodLabels", "labels")):
            keys += leaf_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


HELM_DOCS = runpy.run_path(str(ROOT / ".ci" / "helm-docs"))


def test_every_value_is_documented_in_values_yaml_and_the_readme():
    documented = [key for key, _ in HELM_DOCS["documented"]((CHART / "values.yaml").read_text())]
    undocumented = set(leaf_keys(load_defaults())) - set(documented)
    assert not undocumented, f"values without a `# --` comment in values.yaml: {sorted(undocumented)}"
    readme = (CHART / "README.md").read_text()
    assert readme == HELM_DOCS["render"](readme), "README values table is stale: run python .ci/helm-docs"
    missing = [k for k in documented if f"| {k} |" not in readme]
    assert not missing, f"values missing from the README table: {missing}"


def test_resources_outside_the_watched_namespaces_are_refused(helm):
    values = {"operator": {"watchNamespaces": ["fathom"]},
              "tenants": [{"name": "team-x", "namespace": "ml",
                           "spec": {"apiKeys": [{"secretKeyRef": {"name": "k", "key": "k"}}]}}]}
    err = helm.template_error(values)
    assert 'Tenant "team-x" is in namespace "ml", which operator.watchNamespaces [fathom] leaves unwatched' in err
