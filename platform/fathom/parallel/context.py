"""Who this rank is inside one model instance, and the process groups it talks over.

A model instance runs on ``W`` ranks (``world_size``; W = TP). Routed experts are split over
``ep_size`` expert shards, ``ep_size`` dividing ``W``:

* rank ``r`` holds expert shard ``ep_rank = r // (W // ep_size)``: experts
  ``[ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size)``;
* the ``W // ep_size`` ranks sharing an expert shard split each of its experts' intermediate
  dimension (TP inside EP): ``moe_tp_rank = r % (W // ep_size)`` of ``moe_tp_size = W // ep_size``.

Everything else (attention heads, dense MLPs, shared experts, vocab) is split over all W ranks.
Model code receives a ``ParallelContext`` explicitly; there is no global state, and W = 1 runs
the same code (collectives are no-ops when ``tp_group`` is None). See docs/sharding.md.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in one model instance (W = ``world_size`` ranks, ``ep_size`` expert shards)."""

    rank: int = 0
    world_size: int = 1
    ep_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tp_group: Any = None  # torch ProcessGroup over all W ranks; None when W == 1

    def __post_init__(self) -> None:
        check_sizes(self.world_size, self.ep_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.world_size > 1 and self.tp_group is None:
            raise ValueError(f"world_size {self.world_size} > 1 needs a tp_group (use init_parallel)")

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> ParallelContext:
        """W = 1, EP = 1: the whole model on one device, no process groups."""
        return cls(device=torch.device(device))

    @property
    def moe_tp_size(self) -> int:
        """Ranks that share one expert shard and split each expert's intermediate dim."""
        return self.world_size // self.ep_size

    @property
    def ep_rank(self) -> int:
        """Index of the expert shard this rank holds."""
        return self.rank // self.moe_tp_size

    @property
    def moe_tp_rank(self) -> int:
        return self.rank % self.moe_tp_size

    def local_experts(self, n_routed_experts: int) -> range:
        """Global ids of the routed experts whose weights live on this rank, in the order the rank
        stacks them (local index = id - start). The one answer: the MoE layer and the loader's
        sharding plan both ask here."""
        if n_routed_experts % self.ep_size:
            raise ValueError(
                f"n_routed_experts={n_routed_experts} is not divisible by ep_size={self.ep_size}"
            )
        per = n_routed_experts // self.ep_size
        return range(self.ep_rank * per, (self.ep_rank + 1) * per)


def check_sizes(world_size: int, ep_size: int) -> None:
    """Raise a ValueError naming the bad size unless 1 <= ep_size and ep_size divides world_size."""
    if world_size < 1:
        raise ValueError(f"tensor_parallel_size (world_size) must be >= 1, got {world_size}")
    if ep_size < 1 or world_size % ep_size:
        raise ValueError(
            f"expert_parallel_size={ep_size} must be >= 1 and divide tensor_parallel_size={world_size}"
        )


def default_backend(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_parallel(
    rank: int,
    world_size: int,
    ep_size: int = 1,
    *,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout_s: float = 300.0,
) -> ParallelContext:
    """Join (or create) the default torch.distributed group for this rank and build its context.

    Called once per rank process (test subprocesses, Ray rank workers). ``device`` defaults to
    ``cuda:<local rank>`` when CUDA is available, else cpu; ``backend`` to nccl on CUDA, gloo on CPU.
    W = 1 builds no process group at all.
    """
    check_sizes(world_size, ep_size)
    if device is None:
        if torch.cuda.is_available():
            device = f"cuda:{rank % torch.cuda.device_count()}"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return ParallelContext(device=dev)
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = master_addr
        os.environ["MASTER_PORT"] = str(master_port)
        dist.init_process_group(
            backend=backend or default_backend(dev),
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return ParallelContext(rank=rank, world_size=world_size, ep_size=ep_size, device=dev,
                           tp_group=dist.group.WORLD)


def destroy_parallel() -> None:
    """Tear down the default process group if this process created one."""
    if dist.is_initialized():
        dist.destroy_process_group()
