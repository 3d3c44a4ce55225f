"""The import-linter contracts in pyproject.toml are what CI runs (`lint-imports`); this checks
that they hold on the tree and that they would catch a back edge: a copy of the packages with
one upward import inserted must fail the layers contract."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    """Run lint-imports with the repo's own contracts over the packages under `tree`."""
    config = tree / "pyproject.toml"
    shutil.copy(ROOT / "pyproject.toml", config)
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=tree, capture_output=True, check=False,
                          text=True, env={"PYTHONPATH": f"{tree / 'platform'}:{tree / 'operators'}", "PATH": ""},
                          timeout=300)


@pytest.fixture
def tree(tmp_path):
    for root in ("platform", "operators"):
        shutil.copytree(ROOT / root, tmp_path / root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return tmp_path


def test_layers_contract_is_declared():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = [c for c in contracts if c["type"] == "layers"]
    assert layers and layers[0]["layers"][:1] == ["cli"] and layers[0]["layers"][-1] == "api"
    assert all(not c.get("allow_indirect_imports", False) for c in contracts)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is a dev dependency")
@pytest.mark.parametrize("module, back_edge", [
    ("platform/fathom/engine/scheduler.py", "import fathom.worker.factory"),  # engine -> worker
    ("platform/fathom/model/deepseek.py", "import fathom.engine.scheduler"),  # model -> engine
    ("platform/fathom/tenancy/gate.py", "import fathom.serve.routes"),  # tenancy -> serve
])
def test_a_back_edge_breaks_the_build(tree, module, back_edge):
    kept = lint(tree)
    assert kept.returncode == 0 and "BROKEN" not in kept.stdout, kept.stdout  # the copy as it is
    path = tree / module
    path.write_text(path.read_text() + f"\n{back_edge}  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout
