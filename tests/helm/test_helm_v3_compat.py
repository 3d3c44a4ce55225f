"""Helm 3 compatibility: most users still run helm v3. The chart lints clean under helm 3.17,
renders exactly the same objects as under helm 4 for every value set. (That its values schema
refuses the same bad values under both is in test_helm_values_schema.py.)"""

import pytest

from support.helm_value_sets import VALUE_SETS


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean_under_helm3(helm3, name):
    out = helm3.lint(VALUE_SETS[name])
    assert out.returncode == 0 and "[WARNING]" not in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm3_and_helm4_render_the_same_objects(helm, helm3, name):
    assert helm3.run("version", "--short").stdout.startswith("v3.")
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
    assert sorted(helm3.template(VALUE_SETS[name]), key=key) == sorted(helm.template(VALUE_SETS[name]), key=key)
