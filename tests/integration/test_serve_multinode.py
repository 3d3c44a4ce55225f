"""The Serve app on a two-node Ray cluster (`ray.cluster_utils.Cluster`, 2 CPUs per node):
greedy completions through HTTP with TP=2/EP=2 and 2 replicas equal transformers' generate()
token for token; a TP=4 replica places its ranks on both nodes and still matches."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import ray
import torch
from ray import serve

from fathom.api.serve import ServeSettings
from fathom.serve.app import APP_NAME
from fathom.serve.launch import deploy, free_port
from fathom.worker.demo import demo_checkpoint_dir
from support.model_testing import save_reference

pytestmark = pytest.mark.timeout(300)
MAX_NEW = 8


@pytest.fixture(scope="module")
def cluster(ray_multinode):
    """The session's two-node cluster; the app's HTTP port."""
    yield free_port()
    serve.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random transformers DeepSeek-V3 (save_pretrained), plus a byte-level tokenizer."""
    path = tmp_path_factory.mktemp("v3")
    hf = save_reference(path, "v3", seed=11)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_checkpoint_dir() / name, path / name)
    return path, hf


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 17, 9, 23, 3, 12)]


def hf_greedy(hf, ids: list[int]) -> list[int]:
    out = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(ids):].tolist()


def settings(path, port: int, tp: int, ep: int, replicas: int) -> ServeSettings:
    return ServeSettings(
        engine={"model": str(path), "tensor_parallel_size": tp, "expert_parallel_size": ep, "dtype": "float32",
                "max_num_seqs": 4, "block_size": 4, "kv_cache_memory": 1 << 20},
        port=port, num_replicas=replicas, max_ongoing_requests=8, max_queued_requests=16,
    )


async def greedy_over_http(port: int, model: str, ps: list[list[int]]) -> list[list[int]]:
    async def one(client: httpx.AsyncClient, ids: list[int]) -> list[int]:
        r = await client.post("/v1/completions", json={
            "model": model, "prompt": ids, "max_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True,
            "logprobs": 0, "return_tokens_as_token_ids": True})
        assert r.status_code == 200, r.text
        tokens = r.json()["choices"][0]["logprobs"]["tokens"]
        return [int(t.removeprefix("token_id:")) for t in tokens]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        return list(await asyncio.gather(*(one(client, p) for p in ps)))


def replica_placements() -> set[tuple[str, ...]]:
    handle = serve.get_deployment_handle("model", app_name=APP_NAME)
    return {tuple(handle.placement.remote().result(timeout_s=60)) for _ in range(8)}


def test_tp2_ep2_two_replicas_over_http_equal_transformers(cluster, checkpoint):
    path, hf = checkpoint
    s = settings(path, cluster, tp=2, ep=2, replicas=2)
    deploy(s, show_progress=False)
    ps = prompts()
    assert asyncio.run(greedy_over_http(cluster, s.model_name, ps)) == [hf_greedy(hf, p) for p in ps]
    placements = replica_placements()
    assert all(len(p) == 2 and len(set(p)) == 1 for p in placements)  # each instance's 2 ranks on one node
    assert serve.status().applications[APP_NAME].deployments["model"].replica_states.get("RUNNING") == 2


def test_tp4_replica_spans_both_nodes(cluster, checkpoint):
    path, hf = checkpoint
    s = settings(path, cluster, tp=4, ep=2, replicas=1)
    deploy(s, show_progress=False)  # replaces the app
    [placement] = replica_placements()
    assert len(placement) == 4 and len(set(placement)) == 2, "4 one-CPU ranks cannot fit one 2-CPU node"
    ps = prompts()[:3]
    assert asyncio.run(greedy_over_http(cluster, s.model_name, ps)) == [hf_greedy(hf, p) for p in ps]


def test_cli_joins_the_cluster_with_address_and_leaves_it_running(cluster, checkpoint):
    """`fathom serve --address` deploys onto the running cluster; SIGTERM removes only its app."""
    path, _ = checkpoint
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "platform")}
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "fathom.cli", "serve", "--address", address, "--port", str(cluster),
         "--model", str(path), "--served-model-name", "joined", "--dtype", "float32", "--max-num-seqs", "4",
         "--max-ongoing-requests", "8", "--kv-cache-memory", str(1 << 20)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C or SIGTERM"):
            break
    out = "".join(lines)
    assert f"joining Ray cluster at {address}" in out and "starting a local Ray" not in out, out
    r = httpx.post(f"http://127.0.0.1:{cluster}/v1/completions", timeout=60,
                   json={"model": "joined", "prompt": [1, 2, 3], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    assert ray.is_initialized() and len([n for n in ray.nodes() if n["Alive"]]) == 2  # the cluster lives on
    assert APP_NAME not in serve.status().applications
