"""The Ray rank-worker executor: W RankWorker actors in one placement group, driven in lockstep.

The driver (the engine, in the Serve replica or `fathom.LLM`) schedules once per step, puts the
step's compact StepInput in the object store once and sends it to every rank; rank 0's sampled
tokens come back (with data-parallel attention, each group's driver's, merged in row order). A rank that dies or stalls fails the step with `EngineDeadError` (all ranks'
results are awaited with a timeout, and a failed rank is noticed as soon as its result is), the
remaining workers are killed so none is left blocked in a collective, and the executor stays
dead: the engine fails its in-flight requests and reports itself unhealthy."""

import os
from pathlib import Path

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fathom.api.engine import EngineSettings
from fathom.engine.errors import EngineDeadError
from fathom.engine.step_input import StepInput, StepOutput
from fathom.telemetry.tracing import ray_runtime_env_vars
from fathom.worker.dp_step import merge_outputs
from fathom.worker.kv_budget import CacheSpec
from fathom.worker.placement import create_rank_placement_group
from fathom.worker.rank_worker import RankWorker
from fathom.worker.source_root import with_source_root


class RayExecutor:
    def __init__(self, model_dir: str | Path, settings: EngineSettings, spec: CacheSpec, *,
                 cpus_per_rank: float = 1.0, step_timeout_s: float = 300.0, load_timeout_s: float = 600.0):
        if not ray.is_initialized():
            ray.init(include_dashboard=False)
        self.world_size, self.tp = settings.world_size, settings.tensor_parallel_size
        self.dp = settings.data_parallel_size
        self.step_timeout_s = step_timeout_s
        self._dead: str | None = None
        # GPUs in the cluster decide (the driver, e.g. a Serve replica, may itself have none).
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        self.pg = create_rank_placement_group(self.world_size, use_gpu, cpus_per_rank)
        env = {**ray_runtime_env_vars(),  # ranks trace like this process (OTEL_*)
               "PYTHONPATH": with_source_root(os.environ.get("PYTHONPATH"))}
        self.workers = [
            RankWorker.options(
                num_cpus=cpus_per_rank, num_gpus=1 if use_gpu else 0, runtime_env={"env_vars": env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
            ).remote(r, self.world_size, settings.moe_ep_size, max(1, int(cpus_per_rank)), dp_size=self.dp,
                     num_redundant_experts=settings.eplb.num_redundant_experts,
                     eplb_step_interval=settings.eplb.step_interval)
            for r in range(self.world_size)
        ]
        try:
            addr, port = ray.get(self.workers[0].address.remote(), timeout=load_timeout_s)
            mtp = settings.speculative_config is not None
            blocks = self._all([w.load.remote(addr, port, str(model_dir), settings.dtype, spec, settings.quantization,
                                              mtp) for w in self.workers], load_timeout_s, "loading the model")
            self.num_kv_blocks = min(blocks)
            self.vocab_size = self._all([w.allocate.remote(self.num_kv_blocks) for w in self.workers],
                                        load_timeout_s, "allocating the KV cache")[0]
        except BaseException:
            self.shutdown()
            raise

    def execute(self, step: StepInput) -> StepOutput:
        self.check_health()
        ref = ray.put(step)
        outs = self._all([w.execute.remote(ref) for w in self.workers], self.step_timeout_s, "running a step")
        if self.dp == 1:
            return outs[0]
        merged = merge_outputs(step, outs[:: self.tp])  # each group's driver: its TP rank 0
        merged.moe_expert_tokens, merged.moe_imbalance = outs[0].moe_expert_tokens, outs[0].moe_imbalance
        return merged

    def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)

    def ping(self, timeout_s: float = 10.0) -> None:
        """Actively probe every rank (health endpoints); raises EngineDeadError if one is gone."""
        self.check_health()
        self._all([w.ping.remote() for w in self.workers], timeout_s, "health check")

    def rank_nodes(self) -> list[str]:
        """Ray node id of each rank, rank 0 first ([] once shut down)."""
        return ray.get([w.node_id.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in getattr(self, "workers", []):
            ray.kill(w, no_restart=True)
        self.workers = []
        if getattr(self, "pg", None) is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def _all(self, refs: list, timeout_s: float, what: str) -> list:
        """Results of every rank's ref, in rank order; the first failure (or the timeout) kills the instance."""
        pending, index = list(refs), {r: i for i, r in enumerate(refs)}
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
            if not done:
                self._fail(f"rank worker(s) {sorted(index[r] for r in pending)} did not finish {what} "
                           f"within {timeout_s:.0f}s")
            try:
                ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - a dead actor or an exception inside it
                self._fail(f"rank worker {index[done[0]]} failed while {what}: {type(e).__name__}: {_first_line(e)}")
        return ray.get(refs)

    def _fail(self, message: str):
        self._dead = f"model instance is unhealthy: {message}"
        self.shutdown()
        raise EngineDeadError(self._dead)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""
