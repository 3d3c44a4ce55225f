"""What `fathom serve` refuses before starting Ray: the model (directory, hub id through a real
Hugging Face cache), its config and sharding, and a shape that does not fit the machine."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fathom.api.serve import ServeSettings
from fathom.model.config import DeepseekConfig
from fathom.serve.preflight import (
    PreflightError,
    check_checkpoint,
    is_hub_id,
    needs,
    resolve_model,
    shape_problem,
    sharding_problem,
)
from fathom.worker.demo import DEMO_CONFIG, demo_checkpoint_dir

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def serve_settings(**engine) -> ServeSettings:
    return ServeSettings(engine=engine)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A copy of the demo checkpoint (config.json, model.safetensors, tokenizer)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-v3"
    shutil.copytree(demo_checkpoint_dir(), path)
    return path


def fill_hub_cache(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return repo / "snapshots" / REVISION


def test_a_missing_or_wrong_path_is_refused(tmp_path):
    with pytest.raises(PreflightError, match=r"model /no/such/ckpt: no such directory \(MODEL is a checkpoint"):
        resolve_model(serve_settings(model="/no/such/ckpt"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match="not a directory"):
        resolve_model(serve_settings(model=str(tmp_path / "file")))
    with pytest.raises(PreflightError, match="no config.json"):
        check_checkpoint(tmp_path, serve_settings())


def test_a_directory_is_made_absolute_and_keeps_its_name(demo, monkeypatch):
    monkeypatch.chdir(demo.parent)
    s = resolve_model(serve_settings(model="tiny-v3"))
    assert s.engine.model == str(demo) and s.model_name == "tiny-v3"


def test_config_and_weights_are_checked(demo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo, bad)
    (bad / "config.json").write_text(json.dumps({**DEMO_CONFIG, "hiden_size": 3}))
    with pytest.raises(PreflightError, match="unknown field.*'hiden_size'"):
        check_checkpoint(bad, serve_settings())
    (bad / "config.json").write_text(json.dumps(DEMO_CONFIG))
    (bad / "model.safetensors").unlink()
    with pytest.raises(PreflightError, match=r"no \*.safetensors weights"):
        check_checkpoint(bad, serve_settings())
    with pytest.raises(PreflightError, match="--max-model-len 4096 exceeds the model's context"):
        check_checkpoint(demo, serve_settings(max_model_len=4096))
    check_checkpoint(demo, serve_settings(tensor_parallel_size=4, expert_parallel_size=2))
    no_mtp = tmp_path / "no-mtp"
    shutil.copytree(demo, no_mtp)
    (no_mtp / "config.json").write_text(json.dumps({**DEMO_CONFIG, "num_nextn_predict_layers": 0}))
    with pytest.raises(PreflightError, match="--speculative-config mtp: model .* has no MTP module"):
        check_checkpoint(no_mtp, serve_settings(speculative_config={"method": "mtp"}))


def test_sharding_must_divide_heads_widths_and_experts():
    config = DeepseekConfig.from_dict(DEMO_CONFIG)  # 8 heads, 16 experts of width 64, dense width 512
    assert sharding_problem(config, 8, 8) is None and sharding_problem(config, 4, 2) is None
    assert sharding_problem(config, 16, 16) == ("--tensor-parallel-size 16 does not divide its 8 attention heads; "
                                                "choose a divisor of 8")
    three = DeepseekConfig.from_dict({**DEMO_CONFIG, "n_routed_experts": 12, "n_group": 4})
    assert "--expert-parallel-size 8 does not divide its 12 routed experts" in sharding_problem(three, 8, 8)
    narrow = DeepseekConfig.from_dict({**DEMO_CONFIG, "moe_intermediate_size": 6})
    assert "expert width (moe_intermediate_size)" in sharding_problem(narrow, 8, 2)


def test_shape_must_fit_the_cpus_and_gpus():
    def s(tp, replicas, ep=1):
        return ServeSettings(engine={"tensor_parallel_size": tp, "expert_parallel_size": ep}, num_replicas=replicas)

    assert needs(s(2, 2), gpus=0) == {"CPU": 4.0}
    assert needs(s(2, 2), gpus=8) == {"CPU": 4.0, "GPU": 4.0}
    assert needs(s(1, 3), gpus=0) == {} and needs(s(1, 3), gpus=2) == {"GPU": 3.0}
    assert shape_problem(s(2, 1, 2), cpus=2, gpus=0, where="this machine") is None
    assert shape_problem(s(2, 2, 2), cpus=2, gpus=0, where="this machine") == (
        "--tensor-parallel-size 2 × --num-replicas 2 needs 4 CPUs (one per rank worker), but Ray has 2 on this "
        "machine: lower --num-replicas or --tensor-parallel-size, or join a larger cluster with --address")
    assert "needs 3 GPUs (one per replica), but Ray has 2 on the cluster" in shape_problem(
        s(1, 3), cpus=64, gpus=2, where="the cluster")
    assert shape_problem(s(4, 1), cpus=64, gpus=None, where="this machine") is None  # GPUs unknown: CPUs only


def test_hub_ids_are_told_from_paths(demo):
    assert is_hub_id("deepseek-ai/DeepSeek-V2-Lite") and is_hub_id("org/name.v2")
    for path in ("/abs/dir", "./rel", "../up/x", "a/b/c", "~/ckpt", str(demo), "org/../x"):
        assert not is_hub_id(path), path


def test_hub_id_resolves_from_the_local_cache_offline(demo, tmp_path):
    """In a fresh process (huggingface_hub reads its environment at import)."""
    cache = tmp_path / "hub"
    snapshot = fill_hub_cache(cache, "acme/tiny-v3", demo)
    code = ("from fathom.serve.preflight import preflight; from fathom.api.serve import ServeSettings;"
            "s = preflight(ServeSettings(engine={'model': '%s'}, port=0)); print(s.engine.model, s.model_name)")
    for repo, want in (("acme/tiny-v3", f"{snapshot} acme/tiny-v3"), ("acme/absent", None)):
        out = subprocess.run([sys.executable, "-c", code % repo], check=False, capture_output=True, text=True,
                             timeout=60, env={**_env(), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
        if want:
            assert out.returncode == 0 and out.stdout.strip() == want, out.stderr
        else:
            assert "PreflightError: model acme/absent is not in the Hugging Face cache" in out.stderr
            assert "HF_HUB_OFFLINE=1 forbids downloading it" in out.stderr and str(cache) in out.stderr


def test_bad_inputs_fail_in_one_line_without_starting_ray(tmp_path):
    """As a user meets them: the command exits 1 at once with one line on stderr."""
    cases = {
        ("/no/such/ckpt",): "model /no/such/ckpt: no such directory",
        ("acme/not-cached",): "model acme/not-cached is not in the Hugging Face cache",
        ("--tensor-parallel-size", "2", "--expert-parallel-size", "2", "--num-replicas", "4096"):
            "--tensor-parallel-size 2 × --num-replicas 4096 needs 8192 CPUs (one per rank worker), but Ray has",
    }
    for argv, message in cases.items():
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "fathom.cli", "serve", "--port", "0", *argv], check=False,
                             capture_output=True, text=True, timeout=60,
                             env={**_env(), "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
        elapsed = time.monotonic() - t0
        assert out.returncode == 1 and out.stdout == "", (argv, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"fathom serve: error: {message}"), out.stderr
        assert elapsed < 10, f"{argv} took {elapsed:.1f}s: it must fail before starting Ray"


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT / 'operators'}"}
