"""Chart metadata: the chart deploys the Python package's version, and KubeRay is an optional
dependency that is off by default."""

import tomllib

import yaml

from support.helm_support import CHART, ROOT


def chart_meta() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def test_app_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    meta = chart_meta()
    assert meta["apiVersion"] == "v2" and meta["type"] == "application"
    assert meta["appVersion"] == version, f"Chart.yaml appVersion {meta['appVersion']} != pyproject {version}"


def test_kuberay_is_an_optional_dependency_off_by_default():
    (dep,) = chart_meta()["dependencies"]
    assert dep["name"] == "kuberay-operator" and dep["condition"] == "kuberay-operator.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["kuberay-operator"] == {"enabled": False}


def test_images_default_to_the_app_version(helm):
    objs = helm.template({"modelServices": [{"name": "m", "spec": {"model": {"uri": "hf://a/b"}}}]})
    version = chart_meta()["appVersion"]
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"fathom-operator:{version}")
    (ms,) = [o for o in objs if o["kind"] == "ModelService"]
    assert ms["spec"]["image"] == f"ghcr.io/fathom-serve/fathom:{version}"


def test_the_chart_as_shipped_needs_its_dependency_built(helm):
    """Documents the one step a source checkout needs: helm refuses an unbuilt dependency."""
    out = helm.run("template", "fathom", str(CHART))
    if (CHART / "charts").is_dir():  # `helm dependency build` was run here: renders fine
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode != 0 and "kuberay-operator" in out.stderr
