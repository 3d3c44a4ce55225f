"""A rank worker: one Ray actor per rank of a model instance.

It joins the instance's torch.distributed group (gloo on CPU, nccl on CUDA) through
`fathom.parallel.context.init_parallel`, loads only its shard of the checkpoint, holds its
copy of the latent KV cache and runs every step the driver sends (the same `ModelRunner` as
the in-process executor). Rank 0 also samples and returns the tokens. With data-parallel
attention (D > 1) a rank holds its attention group's KV cache and runs the group's rows of each
step (`fathom.worker.dp_step`); each group's TP rank 0 samples them. Every
`eplb.step_interval` steps all ranks rebalance the experts together (`fathom.model.rebalance`)."""

import os
import socket

import ray
import torch

from fathom.engine.step_input import StepInput, StepOutput
from fathom.model.rebalance import rebalance
from fathom.telemetry.spans import forward_step_span
from fathom.telemetry.tracing import configure_tracing
from fathom.worker.dp_step import run_group_step
from fathom.worker.kv_budget import CacheSpec, blocks_for, resolve_dtype
from fathom.worker.model_runner import ModelRunner


# No task events: one `execute` per rank per engine step would fill the GCS's task-event store
# (up to RAY_task_events_max_num_task_in_gcs = 100k tasks, hundreds of MiB) for no reader (Serve's
# own actors run without them too).
@ray.remote(enable_task_events=False)
class RankWorker:
    def __init__(self, rank: int, world_size: int, ep_size: int, threads: int = 1, *, dp_size: int = 1,
                 num_redundant_experts: int = 0, eplb_step_interval: int = 0):
        self.rank, self.world_size, self.ep_size = rank, world_size, ep_size
        self.dp_size, self.redundant, self.eplb_interval = dp_size, num_redundant_experts, eplb_step_interval
        self.steps = 0
        configure_tracing("rank")
        torch.set_num_threads(max(1, threads))
        self.model = self.runner = self.spec = None
        self.block_size = 0

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port on it (rank 0 hosts the process-group rendezvous)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def load(self, master_addr: str, master_port: int, model_dir: str, dtype: str, spec: CacheSpec,
             quantization: str = "auto", mtp: bool = False) -> int:
        """Join the group, load this rank's shard (and its MTP module's with ``mtp``); return how
        many KV blocks fit on this rank."""
        from fathom.model.loader import load_model
        from fathom.parallel.context import init_parallel

        ctx = init_parallel(self.rank, self.world_size, self.ep_size, dp_size=self.dp_size,
                            num_redundant_experts=self.redundant, master_addr=master_addr, master_port=master_port)
        self.model = load_model(model_dir, ctx, resolve_dtype(dtype, ctx.device), quantization=quantization,
                                mtp=mtp)
        self.block_size, self.spec, self.model_dir = spec.block_size, spec, model_dir
        return blocks_for(self.model, spec)

    def allocate(self, num_blocks: int) -> int:
        """Allocate the KV cache (the same block count on every rank); returns the vocab size."""
        self.runner = ModelRunner(self.model, num_blocks, self.block_size, self.spec.dtype_for(self.model),
                                  samples=self.model.ctx.tp_rank == 0, model_dir=self.model_dir)
        return self.model.config.vocab_size

    def execute(self, step: StepInput) -> StepOutput | None:
        with forward_step_span(step.trace_contexts, rank=self.rank, world_size=self.world_size,
                               num_tokens=len(step.token_ids)):
            if self.dp_size == 1:
                out = self.runner.execute(step)
            else:
                out = run_group_step(self.runner, step, self.model.ctx.dp_rank)
        self.steps += 1
        if self.eplb_interval and self.steps % self.eplb_interval == 0:
            r = rebalance(self.model)  # between steps, on every rank: the same counts, the same placement
            if out is not None:
                out.moe_expert_tokens = [sum(col) for col in zip(*r.expert_load, strict=True)]
                out.moe_imbalance = r.imbalance_before
        return out

    def ping(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()
