"""Chart metadata: the chart deploys the Python package's version and installs as shipped, with
no dependency to fetch (KubeRay is a prerequisite, installed with its own chart)."""

import json
import tomllib

import jsonschema
import yaml

from fathom.api.crd import all_crds
from fathom.api.model_service import ModelServiceSpec
from support.helm_support import CHART, ROOT


def chart_meta() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def test_app_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    meta = chart_meta()
    assert meta["apiVersion"] == "v2" and meta["type"] == "application"
    assert meta["appVersion"] == version, f"Chart.yaml appVersion {meta['appVersion']} != pyproject {version}"


def test_the_chart_has_no_dependencies_to_fetch():
    assert "dependencies" not in chart_meta()
    assert not (CHART / "charts").exists() and not (CHART / "Chart.lock").exists()
    assert "kuberay-operator" not in yaml.safe_load((CHART / "values.yaml").read_text())


def test_images_default_to_the_app_version(helm):
    objs = helm.template({"modelServices": [{"name": "m", "spec": {"model": {"uri": "hf://a/b"}}}]})
    version = chart_meta()["appVersion"]
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"fathom-operator:{version}")
    (ms,) = [o for o in objs if o["kind"] == "ModelService"]
    assert ms["spec"]["image"] == f"ghcr.io/fathom-serve/fathom:{version}"


def test_the_chart_as_shipped_lints_strict_and_installs_offline(helm):
    """What a user runs from a checkout, on the chart directory itself, with empty helm caches
    and no repositories configured (Helm.run points HELM_*_HOME into the test's directory)."""
    lint = helm.run("lint", "--strict", str(CHART))
    assert lint.returncode == 0 and "[WARNING]" not in lint.stdout, lint.stdout + lint.stderr
    out = helm.run("install", "fathom", str(CHART), "-n", "fathom", "--create-namespace", "--dry-run=client")
    assert out.returncode == 0, out.stderr


def test_notes_warn_about_unpublished_images_and_the_kuberay_prerequisite(helm):
    notes = helm.notes()
    version = chart_meta()["appVersion"]
    assert f"operator:   ghcr.io/fathom-serve/fathom-operator:{version}" in notes
    assert "not published" in notes and "ImagePullBackOff" in notes
    assert "kubectl get crd rayservices.ray.io" in notes and "helm install kuberay-operator" in notes
    custom = helm.notes({"operator": {"image": {"repository": "registry.example.com/op"}}})
    assert f"operator:   registry.example.com/op:{version}" in custom


def test_notes_model_service_example_is_valid_and_needs_no_files(helm):
    """The ModelService the notes give is applied from the command line (users of the chart
    have no examples/ directory) and is valid against the CRD and the pydantic model."""
    notes = helm.notes()
    assert "examples/" not in notes
    (line,) = [ln.strip() for ln in notes.splitlines() if ln.strip().startswith("echo '{")]
    manifest = json.loads(line.split("'")[1])
    assert line.endswith("| kubectl apply -n fathom -f -")
    ModelServiceSpec.model_validate(manifest["spec"])
    crd = all_crds()["fathom.dev_modelservices.yaml"]
    jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]).validate(manifest)
