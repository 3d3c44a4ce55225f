"""Shared pieces of the Helm chart tests: paths, the real helm binary, a renderer over it.

(Kept out of conftest.py so that test modules can import them: `from support.helm_support import ...`.)
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fathom"
INSTALL_HELM = ROOT / ".ci" / "install-helm"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


KUBERAY_FIXTURES = ROOT / "tests" / "fixtures" / "kuberay"  # KubeRay's published CRD (see its README)


def kuberay_reference() -> Path:
    """KubeRay's published CRDs, kept in the repository as test fixtures."""
    return KUBERAY_FIXTURES


def find_helm(major: int = 4) -> str:
    """$HELM (or $HELM3), else a helm of that major version on PATH, else the one
    .ci/install-helm extracts into .tools/bin/ (installing it first)."""
    env = os.environ.get("HELM" if major == 4 else "HELM3")
    if env:
        return env
    on_path = shutil.which("helm")
    if on_path:
        out = subprocess.run([on_path, "version", "--short"], check=False, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.startswith(f"v{major}."):
            return on_path
    return str(runpy.run_path(str(INSTALL_HELM))["install"](major))


@dataclass
class Helm:
    """Runs the real helm binary on the staged chart."""

    bin: str
    chart: Path
    workdir: Path
    _renders: dict = field(default_factory=dict)

    def run(self, *args: str, values: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [self.bin, *args]
        if values is not None:
            path = self.workdir / f"values-{abs(hash(yaml.safe_dump(values)))}.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["-f", str(path)]
        env = {**os.environ, "HELM_CACHE_HOME": str(self.workdir / "cache"),
               "HELM_CONFIG_HOME": str(self.workdir / "config"), "HELM_DATA_HOME": str(self.workdir / "data")}
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)

    def template(self, values: dict | None = None, namespace: str = "fathom", release: str = "fathom",
                 kube_version: str = "1.37.0") -> list[dict]:
        """Render the chart and return its objects; fails the test with helm's stderr on error.

        Renders are memoised per arguments (helm is deterministic); callers get fresh copies."""
        key = (yaml.safe_dump(values), namespace, release, kube_version)
        if key not in self._renders:
            out = self.run("template", release, str(self.chart), "--namespace", namespace, "--include-crds",
                           "--kube-version", kube_version, values=values)
            assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
            self._renders[key] = out.stdout
        return [doc for doc in yaml.load_all(self._renders[key], Loader=LOADER) if doc]

    def template_error(self, values: dict) -> str:
        """Render values that must be refused; return helm's error text."""
        out = self.run("template", "fathom", str(self.chart), "--namespace", "fathom", values=values)
        assert out.returncode != 0, f"helm accepted bad values {values}:\n{out.stdout[:2000]}"
        return out.stderr

    def lint(self, values: dict | None = None) -> subprocess.CompletedProcess:
        return self.run("lint", "--strict", str(self.chart), "--namespace", "fathom", values=values)

    def notes(self, values: dict | None = None) -> str:
        """NOTES.txt as an install prints it (a client-side dry run: no cluster needed)."""
        out = self.run("install", "fathom", str(self.chart), "--namespace", "fathom", "--dry-run=client",
                       values=values)
        assert out.returncode == 0, f"helm install --dry-run failed:\n{out.stderr}"
        assert "NOTES:" in out.stdout, "the chart printed no NOTES"
        return out.stdout.split("NOTES:", 1)[1]
